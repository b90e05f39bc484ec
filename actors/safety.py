"""Vetting: whether a validated tool call may run, must wait for a human, or is refused.

``vet`` runs before any call (SPEC §6). In order:

1. **Built-in checks** that no policy can override with ``allow``: file paths
   must stay inside the workspace and must not name credential files;
   ``run_shell`` commands are parsed and every sub-command is checked (pipes,
   ``;``, ``&&``, ``||``, ``$( )``, backticks, ``<( )``, ``bash -c``, ``eval``,
   ``find -exec``, wrappers such as ``env``/``timeout``/``xargs``). A refusal is
   verdict ``deny`` with rule ``builtin:<check>``. Some commands (network,
   ``git push``, package installs) are a built-in ``ask``.
2. **Policy rules**, ``tool`` or ``tool(arg-glob)``: ``deny`` rules first, then
   ``ask``, then ``allow``; the first match wins, so deny always wins.
3. **No rule matched**: ``allow`` for ``read``/``write`` tools, ``ask`` for
   ``exec``, ``external`` and ``network`` ones.

A glob matches the call's primary argument (file tools: ``path``;
``run_shell``: ``command``; ``send_email``: ``to``; ``http_get``: ``url``; a
custom tool: its first ``str`` parameter). ``*`` matches anything including
``/``; ``**/`` also matches no directory at all, so ``read_file(**/.env)``
matches ``.env`` and ``a/b/.env``.

Restrictive rules (deny, ask) fire on *any* spelling of the argument: for file
tools the path as written, normalised and resolved inside the workspace; for
``run_shell`` the whole command and each sub-command. Permissive rules (allow)
must cover what actually runs: the resolved path, and *every* sub-command of a
shell command (``run_shell(ls *)`` does not allow ``ls; rm x``). A built-in
``ask`` is overridden only by an allow rule with an argument glob that covers
the sub-command (``run_shell(pip install *)``), never by a bare ``run_shell``.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Literal, NamedTuple, TypeVar, Union, get_args, get_origin

import msgspec

from fleetlog.actors.tools import (
    BUILTIN_TOOLS,
    ToolSpec,
    _real_dir,
    is_credential_path,
    resolve_in_workspace,
)
from fleetlog.events.errors import ToolRefused
from fleetlog.events.schema import (
    CancelRequested,
    ContextCompacted,
    EventBase,
    LimitExceeded,
    ModelCallFailed,
    ModelCallRequested,
    ModelCallRetried,
    ModelResponded,
    ReviewDecided,
    ReviewRequested,
    SessionCancelled,
    SessionClaimed,
    SessionCompleted,
    SessionCreated,
    SessionFailed,
    SnapshotTaken,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallProposed,
    ToolCallRejected,
    ToolCallStarted,
    ToolCallVetted,
    UnknownEvent,
)

__all__ = ["Policy", "Verdict", "Vetting", "check_shell", "redact", "redact_event", "vet"]

Verdict = Literal["allow", "ask", "deny"]


class Vetting(msgspec.Struct, frozen=True):
    verdict: Verdict
    risk: str
    reason: str
    rule: str = ""  # the policy rule that matched ("builtin:<check>" for a built-in check)


class Policy(msgspec.Struct, frozen=True):
    """``[policy]``: rules ``tool`` or ``tool(arg-glob)``; a malformed rule is a ``ValueError``."""

    deny: list[str] = []
    ask: list[str] = []
    allow: list[str] = []

    def __post_init__(self) -> None:
        for rule in (*self.deny, *self.ask, *self.allow):
            _parse_rule(rule)

    @classmethod
    def default(cls) -> Policy:
        """The rules used when the configuration has no ``[policy]`` section."""
        return cls(
            deny=[],
            ask=["send_email", "http_get"],
            allow=["read_file", "list_dir", "write_file", "run_shell"],
        )


# --- rules and globs -------------------------------------------------------------------

_RULE = re.compile(r"\s*([A-Za-z0-9_*?\[\]!-]+)\s*(?:\((.*)\))?\s*", re.DOTALL)


def _compile_glob(glob: str) -> re.Pattern[str]:
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif c == "*":
            while i < n and glob[i] == "*":
                i += 1
            out.append(".*")
        elif c == "?":
            out.append(".")
            i += 1
        elif c == "[" and (end := glob.find("]", i + 2)) > 0:
            body = glob[i + 1 : end].replace("\\", "\\\\")
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"[{body}]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out), re.DOTALL)


@functools.lru_cache(maxsize=1024)
def _parse_rule(rule: str) -> tuple[re.Pattern[str], re.Pattern[str] | None]:
    m = _RULE.fullmatch(rule)
    if m is None:
        raise ValueError(f"policy rule {rule!r} is not of the form `tool` or `tool(glob)`")
    arg = m.group(2)
    if arg is not None and not arg.strip():
        raise ValueError(f"policy rule {rule!r} has an empty argument glob")
    return _compile_glob(m.group(1)), None if arg is None else _compile_glob(arg.strip())


def _rule_matches(rule: str, tool: str, spellings: list[str], *, explicit: bool = False) -> bool:
    name, arg = _parse_rule(rule)
    if not name.fullmatch(tool):
        return False
    if arg is None:
        return not explicit
    return any(arg.fullmatch(s) for s in spellings)


# --- vetting ---------------------------------------------------------------------------


@dataclass
class _Unit:
    """Something that runs and must be covered by an allow rule (a path, a sub-command)."""

    spellings: list[str]
    verdict: Verdict = "allow"
    reason: str = ""
    rule: str = ""


@dataclass
class _Subject:
    spellings: list[str] = field(default_factory=list)  # restrictive rules match any of these
    units: list[_Unit] = field(default_factory=list)  # allow rules must cover every unit
    deny: tuple[str, str] | None = None  # (reason, rule) of a built-in refusal


_PRIMARY = {
    "read_file": "path",
    "write_file": "path",
    "list_dir": "path",
    "run_shell": "command",
    "send_email": "to",
    "http_get": "url",
}


def vet(spec: ToolSpec, kwargs: dict[str, Any], policy: Policy, workspace: Path) -> Vetting:
    """Whether a validated call may run (``allow``), needs a human (``ask``), or never runs."""
    risk = spec.risk
    subject = _subject(spec, kwargs, workspace)
    if subject.deny is not None:
        return Vetting("deny", risk, subject.deny[0], subject.deny[1])
    for rule in policy.deny:
        if _rule_matches(rule, spec.name, subject.spellings):
            return Vetting("deny", risk, f"denied by policy rule {rule!r}", rule)
    for rule in policy.ask:
        if _rule_matches(rule, spec.name, subject.spellings):
            return Vetting("ask", risk, f"policy rule {rule!r} requires review", rule)
    for unit in subject.units:
        if unit.verdict == "ask" and not any(
            _rule_matches(r, spec.name, unit.spellings, explicit=True) for r in policy.allow
        ):
            return Vetting("ask", risk, unit.reason, unit.rule)
    allowed = _covering_allow(policy.allow, spec.name, subject)
    if allowed is not None:
        return Vetting("allow", risk, f"allowed by policy rule {allowed!r}", allowed)
    if risk in ("read", "write"):
        return Vetting("allow", risk, f"no policy rule matched; {risk} tools are allowed")
    return Vetting("ask", risk, f"no policy rule matched; {risk} tools need review")


def _covering_allow(rules: list[str], tool: str, subject: _Subject) -> str | None:
    if not subject.units:  # e.g. a shell command that is only a comment
        return next((r for r in rules if _rule_matches(r, tool, subject.spellings)), None)
    used: list[str] = []
    for unit in subject.units:
        rule = next((r for r in rules if _rule_matches(r, tool, unit.spellings)), None)
        if rule is None:
            return None
        if rule not in used:
            used.append(rule)
    return ", ".join(used)


def _subject(spec: ToolSpec, kwargs: dict[str, Any], workspace: Path) -> _Subject:
    builtin = spec.name in BUILTIN_TOOLS
    key = _PRIMARY.get(spec.name) if builtin else _first_str_param(spec)
    value = kwargs.get(key) if key else None
    if key == "path" and builtin:
        return _file_subject(spec.name, "." if value is None else str(value), workspace)
    if spec.name == "run_shell" and builtin:
        return _shell_subject(str(value or ""), workspace)
    if value is None:
        return _Subject(units=[_Unit([])])
    text = str(value)
    subject = _Subject(spellings=[text], units=[_Unit([text])])
    if spec.name == "http_get" and builtin:
        scheme = text.split(":", 1)[0].lower() if ":" in text else ""
        if scheme not in ("http", "https"):
            subject.deny = (f"{_show(text)} is not an http(s) URL", "builtin:url")
    return subject


def _first_str_param(spec: ToolSpec) -> str | None:
    for f in msgspec.structs.fields(spec.input_type):
        t = f.type
        if t is str or (get_origin(t) in (Union, UnionType) and str in get_args(t)):
            return f.name
    return None


def _file_subject(tool: str, path: str, workspace: Path) -> _Subject:
    subject = _Subject(spellings=[path, os.path.normpath(path or ".")])
    try:
        resolved = resolve_in_workspace(workspace, path, tool=tool)
    except ToolRefused as err:
        subject.deny = (err.reason, "builtin:workspace")
        return subject
    canonical = resolved.relative_to(_real_dir(str(workspace))).as_posix()
    subject.spellings.append(canonical)
    unit = _Unit([canonical])
    subject.units.append(unit)
    if tool != "list_dir" and (is_credential_path(path) or is_credential_path(canonical)):
        if tool == "read_file":
            subject.deny = (f"{_show(path)} is a credential file", "builtin:credentials")
        else:
            unit.verdict = "ask"
            unit.reason = f"{_show(path)} is a credential file"
            unit.rule = "builtin:credentials"
    return subject


def _shell_subject(command: str, workspace: Path) -> _Subject:
    analysis = _ShellAnalyzer(workspace)
    analysis.source(command, 0)
    subject = _Subject(spellings=[command], deny=analysis.deny)
    for cmd in analysis.commands:
        spellings = [cmd.text] if cmd.text == cmd.effective else [cmd.text, cmd.effective]
        subject.spellings.extend(spellings)
        subject.units.append(_Unit(spellings, cmd.verdict, cmd.reason, cmd.rule))
        if cmd.verdict == "deny" and subject.deny is None:
            subject.deny = (cmd.reason, cmd.rule)
    return subject


def check_shell(command: str, workspace: Path) -> Vetting:
    """The built-in verdict on a shell command alone, before any policy rule."""
    subject = _shell_subject(command, workspace)
    if subject.deny is not None:
        return Vetting("deny", "exec", subject.deny[0], subject.deny[1])
    for unit in subject.units:
        if unit.verdict == "ask":
            return Vetting("ask", "exec", unit.reason, unit.rule)
    return Vetting("allow", "exec", "no built-in check objects")


def _show(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --- the shell parser ------------------------------------------------------------------
#
# Just enough of POSIX sh to find every command a string will run: quoting, escapes,
# operators, redirections, here-documents, and the places code hides in (command and
# process substitution, `${...}`, `sh -c`, `eval`, `find -exec`). It errs towards
# finding too many commands (heredoc bodies with unquoted delimiters are not searched,
# everything else is), and anything it cannot read is refused rather than guessed at.


@dataclass
class _Word:
    text: str = ""  # quotes removed; substitutions kept as their source text
    subs: list[str] = field(default_factory=list)  # code run while expanding the word
    dynamic: bool = False  # its value is only known at run time ($var, $(...), ...)
    glob: bool = False  # has an unquoted *, ? or [


@dataclass
class _Simple:
    words: list[_Word] = field(default_factory=list)
    redirects: list[tuple[str, _Word]] = field(default_factory=list)
    header: bool = False  # `for x in ...` / `case ... in`: not a command, only its words run


_OPERATORS = (
    "<<<", "<<-", "&>>",
    "&&", "||", ";;", "|&", "&>", ">>", ">&", ">|", "<<", "<&", "<>",
    ";", "|", "&", "(", ")", "<", ">", "\n",
)  # fmt: skip
_REDIRECTS = frozenset({"<<<", "<<-", "&>>", "&>", ">>", ">&", ">|", "<<", "<&", "<>", "<", ">"})
_OUTPUT_REDIRECTS = frozenset({"&>>", "&>", ">>", ">|", "<>", ">"})
_WORD_END = frozenset(" \t\n;&|()<>")
_Token = tuple[str, _Word | None]  # (operator, None) or ("", word)


class _Lexer:
    def __init__(self, src: str, start: int = 0) -> None:
        self.s = src
        self.i = start
        self.heredocs: list[tuple[str, bool]] = []
        self.delimiter_next: bool | None = None  # the next word ends a heredoc (<<- strips tabs)

    def tokens(self, *, until_close: bool = False) -> list[_Token]:
        s, depth = self.s, 0
        out: list[_Token] = []
        while self.i < len(s):
            c = s[self.i]
            if c in " \t":
                self.i += 1
            elif s.startswith("\\\n", self.i):
                self.i += 2
            elif c == "#":
                end = s.find("\n", self.i)
                self.i = len(s) if end < 0 else end
            elif s.startswith(("<(", ">("), self.i):
                self.i += 2
                src = self._balanced()
                out.append(("", _Word(f"<({src})", [src], dynamic=True)))
            elif op := next((o for o in _OPERATORS if s.startswith(o, self.i)), None):
                if op == ")" and until_close and depth == 0:
                    return out
                depth += {"(": 1, ")": -1}.get(op, 0)
                self.i += len(op)
                if op in ("<<", "<<-"):
                    self.delimiter_next = op == "<<-"
                out.append((op, None))
                if op == "\n":
                    self._skip_heredoc_bodies()
            else:
                word = self._word()
                if word.text.isdigit() and s[self.i : self.i + 1] in ("<", ">"):
                    continue  # a file descriptor number, as in 2>&1
                if self.delimiter_next is not None:
                    self.heredocs.append((word.text, self.delimiter_next))
                    self.delimiter_next = None
                out.append(("", word))
        if until_close:
            raise ValueError("unbalanced parenthesis in $( ) or <( )")
        return out

    def _skip_heredoc_bodies(self) -> None:
        s = self.s
        while self.heredocs:
            delimiter, strip_tabs = self.heredocs.pop(0)
            while self.i < len(s):
                end = s.find("\n", self.i)
                line = s[self.i : len(s) if end < 0 else end]
                self.i = len(s) if end < 0 else end + 1
                if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                    break

    def _balanced(self) -> str:
        """The source of a ``$(...)`` whose ``(`` was just consumed; consumes the ``)``."""
        inner = _Lexer(self.s, self.i)
        inner.tokens(until_close=True)
        src = self.s[self.i : inner.i]
        self.i = inner.i + 1
        return src

    def _word(self) -> _Word:
        s, w, buf = self.s, _Word(), []
        while self.i < len(s) and s[self.i] not in _WORD_END:
            c = s[self.i]
            if c == "\\":
                buf.append(s[self.i + 1 : self.i + 2])
                self.i += 2
            elif c == "'":
                end = s.find("'", self.i + 1)
                if end < 0:
                    raise ValueError("unbalanced single quote")
                buf.append(s[self.i + 1 : end])
                self.i = end + 1
            elif c == '"':
                self.i += 1
                self._double_quoted(w, buf)
            elif c == "`":
                self._backtick(w, buf)
            elif c == "$":
                self._dollar(w, buf, quoted=False)
            else:
                w.glob = w.glob or c in "*?["
                buf.append(c)
                self.i += 1
        w.text = "".join(buf)
        return w

    def _double_quoted(self, w: _Word, buf: list[str]) -> None:
        s = self.s
        while True:
            if self.i >= len(s):
                raise ValueError("unbalanced double quote")
            c = s[self.i]
            if c == '"':
                self.i += 1
                return
            if c == "\\" and s[self.i + 1 : self.i + 2] in ('"', "\\", "$", "`", "\n"):
                buf.append(s[self.i + 1].strip("\n"))
                self.i += 2
            elif c == "`":
                self._backtick(w, buf)
            elif c == "$":
                self._dollar(w, buf, quoted=True)
            else:
                buf.append(c)
                self.i += 1

    def _backtick(self, w: _Word, buf: list[str]) -> None:
        s, j, inner = self.s, self.i + 1, []
        while True:
            if j >= len(s):
                raise ValueError("unbalanced backtick")
            if s[j] == "\\" and s[j + 1 : j + 2] in ("`", "\\", "$"):
                inner.append(s[j + 1])
                j += 2
            elif s[j] == "`":
                break
            else:
                inner.append(s[j])
                j += 1
        self.i = j + 1
        src = "".join(inner)
        w.subs.append(src)
        w.dynamic = True
        buf.append(f"`{src}`")

    def _dollar(self, w: _Word, buf: list[str], *, quoted: bool) -> None:
        s, i = self.s, self.i
        nxt = s[i + 1 : i + 2]
        if nxt == "(":
            arithmetic = s.startswith("$((", i)
            self.i += 2
            src = self._balanced()
            if not arithmetic:
                w.subs.append(src)
            w.dynamic = True
            buf.append(f"$({src})")
        elif nxt == "{":
            self.i += 2
            buf.append("${" + self._braced(w) + "}")
            w.dynamic = True
        elif nxt == "'" and not quoted:  # $'...' (ANSI-C quoting): escapes are not decoded here
            j = i + 2
            while j < len(s) and s[j] != "'":
                j += 2 if s[j] == "\\" else 1
            if j >= len(s):
                raise ValueError("unbalanced $'...' quote")
            buf.append(s[i + 2 : j])
            w.dynamic = True
            self.i = j + 1
        elif nxt and (nxt.isalnum() or nxt in "_@*#?$!-"):
            j = i + 2
            if nxt.isalpha() or nxt == "_":
                while j < len(s) and (s[j].isalnum() or s[j] == "_"):
                    j += 1
            buf.append(s[i:j])
            w.dynamic = True
            self.i = j
        else:
            buf.append("$")
            self.i += 1

    def _braced(self, w: _Word) -> str:
        """The body of ``${...}`` (``${`` just consumed); command substitutions in it run."""
        s, start, depth = self.s, self.i, 0
        while self.i < len(s):
            c = s[self.i]
            if c == "\\":
                self.i += 2
            elif c in "'\"":
                end = s.find(c, self.i + 1)
                if end < 0:
                    raise ValueError("unbalanced quote in ${...}")
                self.i = end + 1
            elif c == "`":
                self._backtick(w, [])
            elif s.startswith("$(", self.i):
                self.i += 2
                w.subs.append(self._balanced())
            elif c == "{":
                depth += 1
                self.i += 1
            elif c == "}":
                if depth == 0:
                    self.i += 1
                    return s[start : self.i - 1]
                depth -= 1
                self.i += 1
            else:
                self.i += 1
        raise ValueError("unbalanced ${")


_KEYWORDS = frozenset({"if", "then", "else", "elif", "do", "while", "until", "!", "{", "}"})
_ENDINGS = frozenset({"fi", "done", "esac", "function"})
_HEADERS = frozenset({"for", "case", "select"})


def _parse(src: str) -> list[list[_Simple]]:
    """Pipelines of simple commands, in order; raises ValueError on what sh would not accept."""
    pipelines: list[list[_Simple]] = []
    stages: list[_Simple] = []
    current = _Simple()
    pending: str | None = None
    for op, word in _Lexer(src).tokens():
        if pending is not None:
            if word is None:
                raise ValueError(f"redirection {pending!r} has no target")
            current.redirects.append((pending, word))
            pending = None
        elif word is not None:
            current.words.append(word)
        elif op in _REDIRECTS:
            pending = op
        elif op in ("|", "|&"):
            stages.append(current)
            current = _Simple()
        else:
            stages.append(current)
            pipelines.append(stages)
            stages, current = [], _Simple()
    if pending is not None:
        raise ValueError(f"redirection {pending!r} has no target")
    stages.append(current)
    pipelines.append(stages)

    result: list[list[_Simple]] = []
    for stages in pipelines:
        kept = []
        for cmd in stages:
            while cmd.words and cmd.words[0].text in _KEYWORDS | _ENDINGS:
                cmd.words.pop(0)
            if cmd.words and cmd.words[0].text in _HEADERS:
                cmd.header = True
            if cmd.words or cmd.redirects:
                kept.append(cmd)
        if kept:
            result.append(kept)
    return result


# --- what the commands do --------------------------------------------------------------

_MAX_DEPTH = 6
# Anchored at a name's start with a possessive name and a bounded body, so that a long
# command cannot make the search quadratic.
_FORK_BOMB = re.compile(
    r"(?<![\w:.])([A-Za-z_:][\w:.]*+)\s*\(\s*\)\s*\{[^}]{0,256}?\1\s*\|\s*\1\s*&", re.DOTALL
)
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\+?=")
_PRIVILEGE = frozenset({"sudo", "su", "doas", "pkexec", "runuser", "run0"})
_SHELLS = frozenset({"sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "fish", "busybox"})
_INTERPRETER = re.compile(
    r"(?:python|pypy)[\d.]*|perl|ruby|node|nodejs|php|pwsh|lua|deno|bun|tclsh|osascript"
)
_SOURCING = frozenset({"eval", "source", "."})
_FETCHERS = frozenset({"curl", "wget", "fetch", "aria2c", "http", "https", "xh", "lwp-request"})
_NETWORK = _FETCHERS | {
    "ssh", "scp", "sftp", "rsync", "nc", "ncat", "netcat", "telnet", "ftp", "socat", "ssh-copy-id",
}  # fmt: skip
_DISK_TOOLS = frozenset({"mke2fs", "mkswap", "wipefs", "fdisk", "sfdisk", "gdisk", "parted"})
_POWER = frozenset({"shutdown", "reboot", "halt", "poweroff"})
_SAFE_DEVICES = frozenset({"/dev/null", "/dev/zero", "/dev/stdout", "/dev/stderr", "/dev/tty"})
_BLOCK_DEVICE = re.compile(
    r"/dev/(?:sd[a-z]|hd[a-z]|vd[a-z]|xvd[a-z]|nvme\d|mmcblk\d|disk\d|md\d|dm-\d|loop\d|mapper/)"
)
_DEVICE_READERS = frozenset({"ls", "stat", "lsblk", "df", "file", "blkid", "readlink"})
# Commands whose arguments are not files they read (`echo .env >> .gitignore` is fine).
_NON_READERS = frozenset({"echo", "printf", "mkdir", "touch", "test", "[", "true", "false"})
_GIT_NETWORK = frozenset({"pull", "fetch", "clone", "ls-remote"})
_GIT_OPTS_WITH_VALUE = frozenset({"-C", "-c", "--git-dir", "--work-tree", "--namespace"})
# wrapper -> (its options that take a separate value, positional words before the command)
_WRAPPERS: dict[str, tuple[frozenset[str], int]] = {
    "nohup": (frozenset(), 0),
    "time": (frozenset(), 0),
    "command": (frozenset(), 0),
    "builtin": (frozenset(), 0),
    "exec": (frozenset({"-a"}), 0),
    "setsid": (frozenset(), 0),
    "chronic": (frozenset(), 0),
    "unbuffer": (frozenset(), 0),
    "nice": (frozenset({"-n", "--adjustment"}), 0),
    "ionice": (frozenset({"-c", "-n", "-p", "--class", "--classdata"}), 0),
    "stdbuf": (frozenset({"-i", "-o", "-e"}), 0),
    "timeout": (frozenset({"-s", "--signal", "-k", "--kill-after"}), 1),
    "xargs": (
        frozenset({"-I", "-n", "-P", "-d", "-L", "-s", "-E", "-a", "--max-args", "--max-procs"}),
        0,
    ),
}


def _basename(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def _is_interpreter(name: str) -> bool:
    return name in _SHELLS or bool(_INTERPRETER.fullmatch(name))


def _effective(words: list[_Word]) -> tuple[list[_Word], bool]:
    """The command a simple command really runs: past ``VAR=x``, ``env``, ``timeout``, ...

    Also says whether ``xargs`` feeds it arguments from stdin.
    """
    via_xargs = False
    for _ in range(10):
        while words and _ASSIGNMENT.match(words[0].text):
            words = words[1:]
        if not words:
            break
        name = _basename(words[0].text)
        if name == "env":
            k = 1
            while k < len(words):
                t = words[k].text
                if t in ("-u", "--unset", "-C", "--chdir"):
                    k += 2
                elif t.startswith("-") or _ASSIGNMENT.match(t):
                    k += 1
                else:
                    break
            if k >= len(words):
                return words[:1], via_xargs  # a bare `env`: it prints the environment
            words = words[k:]
            continue
        wrapper = _WRAPPERS.get(name)
        if wrapper is None:
            break
        with_value, positional = wrapper
        k = 1
        while k < len(words) and words[k].text.startswith("-") and words[k].text != "-":
            if words[k].text == "--":
                k += 1
                break
            k += 2 if words[k].text in with_value else 1
        k += positional
        if k >= len(words):
            break
        via_xargs = via_xargs or name == "xargs"
        words = words[k:]
    return words, via_xargs


@dataclass
class _Command:
    text: str  # as written, words joined by single spaces
    effective: str  # past assignments and wrappers
    name: str
    verdict: Verdict = "allow"
    reason: str = ""
    rule: str = ""


#: A finding: (verdict, one-line reason, "builtin:<check>").
_Hit = tuple[Verdict, str, str]


class _ShellAnalyzer:
    def __init__(self, workspace: Path) -> None:
        root = os.path.abspath(workspace)
        self.roots = {root, os.path.realpath(root)}
        self.workspace = os.path.realpath(root)
        self.cwd: str | None = self.workspace  # tracked through `cd`; None: unknown
        self.commands: list[_Command] = []
        self.deny: tuple[str, str] | None = None

    def _refuse(self, reason: str, rule: str) -> None:
        if self.deny is None:
            self.deny = (reason, rule)

    def source(self, src: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            self._refuse(f"shell code nested more than {_MAX_DEPTH} levels deep", "builtin:shell")
            return
        if _FORK_BOMB.search(src):
            self._refuse("the command is a fork bomb", "builtin:destructive")
        try:
            pipelines = _parse(src)
        except ValueError as err:
            self._refuse(f"cannot parse the shell command: {err}", "builtin:shell-syntax")
            return
        for stages in pipelines:
            ran = [self._simple(cmd, depth) for cmd in stages]
            self._check_pipeline(ran)

    def _check_pipeline(self, ran: list[tuple[str, list[_Word]] | None]) -> None:
        fetching: str | None = None
        for stage in ran:
            if stage is None:
                continue
            name, words = stage
            if fetching and _is_interpreter(name) and _program_from_stdin(name, words):
                self._refuse(
                    f"pipes a download ({fetching}) into {name}: remote code execution",
                    "builtin:remote-exec",
                )
            if name in _FETCHERS:
                fetching = name

    def _simple(self, cmd: _Simple, depth: int) -> tuple[str, list[_Word]] | None:
        fetch_in_subs = False
        for word in [*cmd.words, *(target for _, target in cmd.redirects)]:
            for sub in word.subs:
                before = len(self.commands)
                self.source(sub, depth + 1)
                fetch_in_subs |= any(c.name in _FETCHERS for c in self.commands[before:])
        if cmd.header:
            return None
        words, via_xargs = _effective(cmd.words)
        name = _basename(words[0].text) if words else ""
        record = _Command(
            text=" ".join(w.text for w in cmd.words),
            effective=" ".join(w.text for w in words),
            name=name,
        )
        hit = self._check(name, words, cmd, depth, fetch_in_subs=fetch_in_subs, via_xargs=via_xargs)
        if hit is not None:
            record.verdict, record.reason, record.rule = hit
        self.commands.append(record)
        return name, words

    def _check(
        self,
        name: str,
        words: list[_Word],
        cmd: _Simple,
        depth: int,
        *,
        fetch_in_subs: bool,
        via_xargs: bool,
    ) -> _Hit | None:
        """The first deny that applies, else the first ask, else ``None``."""
        args = words[1:]
        texts = [w.text for w in args]
        if name in _PRIVILEGE:
            return "deny", f"{name} runs commands with elevated privileges", "builtin:privilege"
        if name in _SHELLS or name == "eval":
            script = _dash_c_script(texts) if name in _SHELLS else " ".join(texts)
            if script is not None:
                self.source(script, depth + 1)
        if fetch_in_subs and (_is_interpreter(name) or name in _SOURCING):
            return "deny", f"{name} runs code downloaded from the network", "builtin:remote-exec"
        hit = self._destructive(name, args, cmd, depth, via_xargs=via_xargs)
        if hit is not None and hit[0] == "deny":
            return hit
        deny = _secrets(name, words, cmd)
        if deny is not None:
            return deny
        return hit or _needs_review(name, texts)

    def _destructive(
        self, name: str, args: list[_Word], cmd: _Simple, depth: int, *, via_xargs: bool
    ) -> _Hit | None:
        texts = [w.text for w in args]
        rule = "builtin:destructive"
        if name.startswith("mkfs") or name in _DISK_TOOLS:
            return "deny", f"{name} formats or partitions disks", rule
        if (
            name in _POWER
            or (name in ("init", "telinit") and texts[:1] in (["0"], ["6"]))
            or (name == "systemctl" and bool({"poweroff", "reboot", "halt", "kexec"} & set(texts)))
        ):
            return "deny", f"{name} shuts down or reboots the machine", rule
        if name == "kill" and "-1" in _kill_targets(texts):
            return "deny", "kill -1 signals every process", rule
        for t in texts:
            value = t.split("=", 1)[-1]
            if name == "dd" and t.startswith("of=/dev/") and value not in _SAFE_DEVICES:
                return "deny", f"dd writes to the device {value}", rule
            if _BLOCK_DEVICE.match(value) and name not in _DEVICE_READERS:
                return "deny", f"{name} touches the disk device {value}", rule
        for op, target in cmd.redirects:
            if op in _OUTPUT_REDIRECTS and _BLOCK_DEVICE.match(target.text):
                return "deny", f"writes to the disk device {target.text}", rule
        if name == "rm":
            return self._check_rm(args, via_xargs=via_xargs)
        if name in ("chmod", "chown", "chgrp") and _has_flag(texts, "R", "--recursive"):
            for w in args:
                if not w.text.startswith("-") and self._outside(w):
                    return "deny", f"{name} -R on {_show(w.text)}: outside the workspace", rule
        if name == "find":
            return self._check_find(args, depth)
        if name in ("cd", "pushd"):
            self._cd(args)
        return None

    # -- paths -------------------------------------------------------------------------

    def _inside(self, path: str) -> bool:
        return any(path == r or path.startswith(r.rstrip("/") + "/") for r in self.roots)

    def _full(self, text: str) -> str | None:
        if os.path.isabs(text):
            return os.path.normpath(text)
        if self.cwd is None:
            return None
        return os.path.normpath(os.path.join(self.cwd, text))

    def _outside(self, w: _Word) -> bool:
        """Whether a path argument names something outside the workspace (``~`` counts)."""
        if w.text.startswith(("~", "$HOME", "${HOME}")):
            return True
        if w.dynamic:
            return False
        full = self._full(w.text)
        return full is not None and not self._inside(full)

    def _check_rm(self, args: list[_Word], *, via_xargs: bool) -> _Hit | None:
        rule = "builtin:destructive"
        recursive, targets, options_done = False, [], False
        for w in args:
            t = w.text
            if not options_done and t == "--":
                options_done = True
            elif not options_done and t.startswith("--"):
                if t == "--no-preserve-root":
                    return "deny", "rm --no-preserve-root", rule
                recursive = recursive or t == "--recursive"
            elif not options_done and t.startswith("-") and len(t) > 1:
                recursive = recursive or bool(set(t[1:]) & {"r", "R"})
            else:
                targets.append(w)
        flag = "rm -r" if recursive else "rm"
        ask: _Hit | None = None
        if recursive and via_xargs:
            ask = "ask", "rm -r deletes paths read from stdin", rule
        for w in targets:
            t = w.text
            if t.startswith(("~", "$HOME", "${HOME}")):
                if recursive:
                    return "deny", f"{flag} {_show(t)}: the home directory", rule
                continue
            full = None if w.dynamic else self._full(t)
            if full is None:
                if recursive and ask is None:
                    why = "is only known at run time" if w.dynamic else "follows a cd to unknown"
                    ask = "ask", f"{flag} {_show(t)}: the target {why}", rule
                continue
            if not self._inside(full):
                return "deny", f"{flag} {_show(t)}: outside the workspace", rule
            if recursive and (full in self.roots or (w.glob and _only_glob(t))):
                return "deny", f"{flag} {_show(t)} would delete the whole workspace", rule
            if not w.glob and not self._inside(os.path.realpath(full)):
                return "deny", f"{flag} {_show(t)} resolves outside the workspace", rule
        return ask

    def _check_find(self, args: list[_Word], depth: int) -> _Hit | None:
        starts: list[_Word] = []
        for w in args:
            if w.text.startswith(("-", "(", "!")):
                break
            starts.append(w)
        texts = [w.text for w in args]
        destructive = "-delete" in texts
        i = 0
        while i < len(args):
            if texts[i] in ("-exec", "-execdir", "-ok", "-okdir"):
                j = i + 1
                while j < len(args) and texts[j] not in (";", "+"):
                    j += 1
                ran = self._simple(_Simple(words=args[i + 1 : j]), depth + 1)
                destructive = destructive or (ran is not None and ran[0] in ("rm", "shred"))
                i = j
            i += 1
        if destructive:
            for w in starts or [_Word(".")]:
                if self._outside(w):
                    reason = f"find {_show(w.text)} deletes outside the workspace"
                    return "deny", reason, "builtin:destructive"
        return None

    def _cd(self, args: list[_Word]) -> None:
        targets = [w for w in args if not w.text.startswith("-") or w.text == "-"]
        if not targets or targets[0].text in ("~", "~/"):
            self.cwd = self.workspace  # HOME is the workspace inside run_shell
            return
        w = targets[0]
        if w.dynamic or w.text == "-":
            self.cwd = None
        elif w.text.startswith("~/"):
            self.cwd = os.path.normpath(os.path.join(self.workspace, w.text[2:]))
        else:
            self.cwd = self._full(w.text)


def _secrets(name: str, words: list[_Word], cmd: _Simple) -> _Hit | None:
    rule = "builtin:credentials"
    if name not in _NON_READERS:
        for w in words[1:]:
            for value in (w.text, w.text.split("=", 1)[-1]):
                if is_credential_path(value):
                    return "deny", f"{name} reads the credential file {_show(value)}", rule
    for op, target in cmd.redirects:
        if op in ("<", "<>") and is_credential_path(target.text):
            return "deny", f"reads the credential file {_show(target.text)}", rule
    texts = [w.text for w in words[1:]]
    if _dumps_environment(name, texts) or any(
        "/proc/" in w.text and "/environ" in w.text for w in words
    ):
        return "deny", f"{name} prints the environment (secrets)", "builtin:env-dump"
    return None


def _needs_review(name: str, texts: list[str]) -> _Hit | None:
    if name in _NETWORK:
        return "ask", f"{name} reaches the network", "builtin:network"
    if name == "git":
        sub = _git_subcommand(texts)
        if sub == "push":
            return "ask", "git push publishes commits to a remote", "builtin:git-push"
        if sub in _GIT_NETWORK:
            return "ask", f"git {sub} reaches the network", "builtin:network"
    installer = _package_install(name, texts)
    if installer:
        return "ask", f"{installer} installs packages", "builtin:package-install"
    return None


def _has_flag(texts: list[str], short: str, long: str) -> bool:
    return any(
        t == long or (t.startswith("-") and not t.startswith("--") and short in t[1:])
        for t in texts
    )


def _only_glob(text: str) -> bool:
    """``*``, ``./*``, ``.*``, ``*/``...: a pattern that names everything in a directory."""
    return all(c in "*?./[]!" for c in text)


def _dash_c_script(texts: list[str]) -> str | None:
    """The script of ``sh -c SCRIPT`` (also ``-lc``, ``-ec``...), if that is the form."""
    for i, t in enumerate(texts):
        if not t.startswith("-") or t == "-":
            return None
        if not t.startswith("--") and "c" in t[1:]:
            return texts[i + 1] if i + 1 < len(texts) else None
    return None


def _program_from_stdin(name: str, words: list[_Word]) -> bool:
    """Whether an interpreter reads its program from stdin (``| sh``, ``| python3 -``)."""
    # Options that make the program something other than stdin: sh -c; python -c/-m;
    # perl/ruby/node -e; php -r.
    not_stdin = "c" if name in _SHELLS else "cmeEr"
    for t in (w.text for w in words[1:]):
        if t == "-":
            return True
        if t.startswith("--"):
            continue
        if not t.startswith("-"):
            return False  # a script file: stdin is only data
        if name in _SHELLS and "s" in t[1:]:
            return True
        if any(c in t[1:] for c in not_stdin):
            return False
    return True


def _kill_targets(texts: list[str]) -> list[str]:
    rest = texts
    if rest and rest[0].startswith("-") and rest[0] != "--":
        rest = rest[2:] if rest[0] in ("-s", "-n") else rest[1:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    return rest


def _dumps_environment(name: str, texts: list[str]) -> bool:
    if name == "printenv" or (name == "env" and not texts):
        return True
    if name == "set":
        return not texts
    if name in ("export", "declare", "typeset"):
        return all(t.startswith("-") for t in texts) and (
            not texts or "-p" in texts or "-x" in texts
        )
    return False


def _git_subcommand(texts: list[str]) -> str | None:
    i = 0
    while i < len(texts):
        t = texts[i]
        if t in _GIT_OPTS_WITH_VALUE:
            i += 2
        elif t.startswith("-"):
            i += 1
        else:
            return t
    return None


def _package_install(name: str, texts: list[str]) -> str | None:
    sub = next((t for t in texts if not t.startswith("-")), None)
    if re.fullmatch(r"pip[\d.]*|pipx", name) and sub in ("install", "download"):
        return name
    if _INTERPRETER.fullmatch(name) and name.startswith(("python", "pypy")):
        for i, t in enumerate(texts[:-2]):
            if t == "-m" and texts[i + 1] == "pip" and texts[i + 2] in ("install", "download"):
                return f"{name} -m pip"
    if name == "uv" and (
        sub == "add"
        or (sub in ("pip", "tool") and texts[texts.index(sub) + 1 :][:1] == ["install"])
    ):
        return "uv"
    if name in ("npm", "pnpm", "yarn", "bun") and (
        sub in ("install", "i", "add", "ci") or (name == "yarn" and sub is None)
    ):
        return name
    if name in ("npx", "pnpx", "bunx", "uvx"):
        return name
    if name in ("gem", "cargo", "go", "composer") and sub in ("install", "add", "get", "require"):
        return name
    if name in (
        "apt",
        "apt-get",
        "yum",
        "dnf",
        "apk",
        "brew",
        "conda",
        "mamba",
        "snap",
    ) and sub in (
        "install",
        "add",
    ):
        return name
    return None


# --- redaction -------------------------------------------------------------------------
#
# SPEC §9: secrets found in any text an event carries are redacted before the event is
# written. ``redact`` cleans one string; ``redact_event`` cleans every field of an event that
# can hold model, tool, user or operator text (``_TEXT_FIELDS``) and leaves ids alone.
#
# Every pattern stops at quotes and backslashes, so redacting JSON text (with its escapes)
# leaves valid JSON behind. A pattern whose first character is a JSON escape letter
# (b f n r t u) also refuses to start right after a backslash: in JSON text ``\npm_...`` is a
# newline and ``pm_...``, and replacing ``npm_...`` would leave a dangling ``\``. Patterns
# are kept tight (a fixed prefix, a minimum length, a required shape) so that ids, hashes,
# paths and ordinary words go through untouched; a secret with no recognisable shape is
# caught only next to a telling key (``password=``, ``"api_key":``, ``token:``).

_REDACTED = "[REDACTED]"


class _Secret(NamedTuple):
    """A secret's pattern, what replaces it, and a cheap gate that any match must pass."""

    pattern: re.Pattern[str]
    replacement: str
    # a match contains one of these substrings (lowercased for a case-insensitive
    # pattern), or this regex (with a literal first character, so fast) finds something
    needles: tuple[str, ...] | re.Pattern[str]
    fold: bool  # the needles are lowercase: look for them in the lowercased text


def _secret(regex: str, *needles: str, gate: str = "", replacement: str = _REDACTED) -> _Secret:
    pattern = re.compile(regex)
    if gate:
        return _Secret(pattern, replacement, re.compile(gate), fold=False)
    fold = bool(pattern.flags & re.IGNORECASE)
    return _Secret(pattern, replacement, tuple(n.lower() if fold else n for n in needles), fold)


# Where a word starts: after a non-word character, or right after a JSON escape (\n, \t, ...),
# so that a secret on its own line is found in JSON text too (``\nsk-...``), where ``\b`` fails.
_START = r"(?:(?<!\w)|(?<=\\[bfnrt]))"

# Redacting runs for every text field of every event appended, so most patterns are skipped
# by a substring test (``str.__contains__`` is ~25x faster than a regex scan).
_SECRET_PATTERNS: list[_Secret] = [
    # PEM and PGP private keys: RSA, EC, DSA, OPENSSH, ENCRYPTED, PKCS#8 (the
    # "private_key" of a GCP service-account JSON), "PGP PRIVATE KEY BLOCK". Without its
    # END line (a truncated key) the base64 body that follows goes too.
    _secret(
        r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[^\"]*?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
        r"|(?:[A-Za-z0-9+/=\s]|\\n|\\r)*)",
        "-----BEGIN",
    ),
    # [user]:password@ in a URL (postgres://, https://, redis://, amqp://, ...)
    _secret(r"://([^/\s:@\"'\\]*):[^/\s@\"'\\]+@", "://", replacement=rf"://\1:{_REDACTED}@"),
    # Authorization / Proxy-Authorization headers: any scheme's credentials
    _secret(
        r"(?i)(authorization(?:\\?[\"'])?\s*[:=]\s*(?:\\?[\"'])?\s*"
        r"(?:bearer|basic|token|bot|digest)\s+)[A-Za-z0-9._~+/=-]{8,}",
        "authorization",
        replacement=rf"\1{_REDACTED}",
    ),
    # a bare "Bearer <token>": the token must look like one (a digit, or an inner
    # separator), so that "the bearer instrument" stays
    _secret(
        "(?i)" + _START + r"(bearer)\s+(?=[A-Za-z0-9._~+/=-]*?(?:[0-9]|[._~+/-][A-Za-z0-9]))"
        r"[A-Za-z0-9._~+/=-]{8,}",
        "bearer",
        replacement=rf"\1 {_REDACTED}",
    ),
    # Anthropic sk-ant-api03-/sk-ant-admin01-, OpenAI sk-, sk-proj-, sk-svcacct-
    _secret(_START + r"sk-[A-Za-z0-9_-]{16,}", "sk-"),
    # Stripe secret and restricted keys, webhook secrets. Publishable keys (pk_live_,
    # pk_test_) are meant to ship in web pages: they are not secrets and are kept.
    _secret(r"(?<!\\)" + _START + r"[sr]k_(?:live|test)_[A-Za-z0-9]{16,}", "k_live_", "k_test_"),
    _secret(_START + r"whsec_[A-Za-z0-9]{24,}", "whsec_"),
    # AWS access key ids (long-term AKIA, temporary ASIA); the secret access key has no
    # shape of its own and is caught by its key (aws_secret_access_key = ...)
    _secret(_START + r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", "AKIA", "ASIA", "ABIA", "ACCA"),
    # GitHub: personal, OAuth, user-to-server, server-to-server, refresh; fine-grained PATs
    _secret(_START + r"gh[pousr]_[A-Za-z0-9]{20,}", "ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    _secret(_START + r"github_pat_[A-Za-z0-9_]{20,}", "github_pat_"),
    # GitLab: personal, pipeline trigger, runner, deploy, feed, SCIM tokens
    _secret(
        _START + r"gl(?:pat|ptt|rt|dt|ft|soat)-[A-Za-z0-9_-]{20,}",
        "glpat-",
        "glptt-",
        "glrt-",
        "gldt-",
        "glft-",
        "glsoat-",
    ),
    # Slack: bot, user, app-level, refresh tokens; incoming webhook URLs
    _secret(_START + r"xox[abposre]-[A-Za-z0-9-]{10,}", "xox"),
    _secret(_START + r"xapp-[0-9]-[A-Za-z0-9-]{10,}", "xapp-"),
    _secret(
        r"(hooks\.slack\.com/(?:services|workflows|triggers)/)[A-Za-z0-9_/-]{8,}",
        "hooks.slack.com/",
        replacement=rf"\1{_REDACTED}",
    ),
    # Discord: webhook URLs and bot tokens (base64 user id . timestamp . hmac)
    _secret(
        r"(discord(?:app)?\.com/api/webhooks/[0-9]+/)[A-Za-z0-9_-]{20,}",
        "discord",
        replacement=rf"\1{_REDACTED}",
    ),
    _secret(
        _START + r"[MNO][A-Za-z0-9_-]{23,27}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,}",
        gate=r"\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27}",
    ),
    # Google: API keys, OAuth access and refresh tokens, OAuth client secrets
    _secret(_START + r"AIza[0-9A-Za-z_-]{35}", "AIza"),
    _secret(_START + r"ya29\.[0-9A-Za-z_-]{20,}", "ya29."),
    _secret(_START + r"1//0[0-9A-Za-z_-]{30,}", "1//0"),
    _secret(_START + r"GOCSPX-[0-9A-Za-z_-]{20,}", "GOCSPX-"),
    # JSON Web Tokens (Kubernetes service-account tokens among them)
    _secret(_START + r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", "eyJ"),
    # Hugging Face user and org tokens
    _secret(_START + r"(?:hf|api_org)_[A-Za-z0-9]{30,}", "hf_", "api_org_"),
    # npm access tokens (also as .npmrc's _authToken=npm_...)
    _secret(r"(?<!\\)" + _START + r"npm_[A-Za-z0-9]{30,}", "npm_"),
    # PyPI and TestPyPI API tokens (macaroons)
    _secret(_START + r"pypi-AgE[A-Za-z0-9_-]{40,}", "pypi-AgE"),
    # Twilio: an account or API key SID followed by its auth token or secret (basic-auth
    # form ``AC...:token``) keeps the SID and loses the token; API key SIDs go too.
    _secret(
        _START + r"((?:AC|SK)[0-9a-fA-F]{32}):[A-Za-z0-9]{32}\b",
        gate=r"[AS][CK][0-9a-fA-F]{32}:",
        replacement=rf"\1:{_REDACTED}",
    ),
    _secret(_START + r"SK[0-9a-fA-F]{32}\b", gate=r"SK[0-9a-fA-F]{32}"),
    # SendGrid, Mailgun, DigitalOcean, Heroku (new format; older UUID keys only by key name)
    _secret(_START + r"SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}", "SG."),
    _secret(_START + r"key-[0-9a-zA-Z]{32}\b", "key-"),
    _secret(_START + r"do[por]_v1_[a-f0-9]{64}\b", "_v1_"),
    _secret(_START + r"HRKU-[A-Za-z0-9_-]{20,}", "HRKU-"),
    # Shopify access tokens and shared secrets
    _secret(
        _START + r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b", "shpat_", "shpca_", "shppa_", "shpss_"
    ),
    # Azure SAS signatures (sig=... in a URL or a connection string); AccountKey= and
    # SharedAccessKey= are caught by their key
    _secret(
        r"((?:[?&;]|\\u0026)sig=)[A-Za-z0-9%+/=_-]{16,}", "sig=", replacement=rf"\1{_REDACTED}"
    ),
    # HashiCorp Vault service, batch and recovery tokens; Terraform Cloud API tokens
    _secret(_START + r"hv[sbr]\.[A-Za-z0-9_-]{24,}", "hvs.", "hvb.", "hvr."),
    _secret(_START + r"[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=-]{60,}", ".atlasv1."),
    # Databricks, Doppler, Linear, Postman, New Relic, Grafana, age
    _secret(_START + r"dapi[a-h0-9]{32}(?:-[0-9]+)?\b", "dapi"),
    _secret(_START + r"dp\.(?:st|ct|pt|sa|scim|audit)\.[A-Za-z0-9_.-]{20,}", "dp."),
    _secret(_START + r"lin_api_[A-Za-z0-9]{40,}", "lin_api_"),
    _secret(_START + r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}\b", "PMAK-"),
    _secret(_START + r"NRAK-[A-Z0-9]{27}\b", "NRAK-"),
    _secret(_START + r"glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}\b", "glsa_"),
    _secret(_START + r"AGE-SECRET-KEY-1[0-9A-Z]{58}\b", "AGE-SECRET-KEY-1"),
    # Telegram bot tokens: <bot id>:AA<33 characters>
    _secret(_START + r"[0-9]{6,12}:AA[A-Za-z0-9_-]{30,}", ":AA"),
    # .npmrc's _auth=<base64 of user:password>
    _secret(
        r"(?i)(?:(?<![\w.])|(?<=\\[bfnrt]))(_auth\s*=\s*)[A-Za-z0-9+/]{8,}=*",
        "_auth",
        replacement=rf"\1{_REDACTED}",
    ),
]
_SECRET_KEYS = (
    r"password|passwd|passphrase|pwd|pgpassword|secret|client_secret|secret_key"
    r"|secret_access_key|api[_-]?key|access[_-]?key|access[_-]?token|auth[_-]?token"
    r"|refresh[_-]?token|token|private[_-]?key|account[_-]?key|shared[_-]?access[_-]?key"
    r"|client[_-]key[_-]data"
)
# A fast gate for _KEY_VALUE, run on the lowercased text (a case-insensitive scan is ~7x
# slower): every key above is one of these words plus [a-z_-] letters, then : or =.
_KEY_GATE = re.compile(r"(?:pass|pwd|secret|key|token)[a-z_-]*(?:\\?[\"'])?[ \t]*[:=]")
# The value: a whole quoted string, or one bare word, on the key's line (``_Secret:`` ending
# a line of code does not make the next line's first word a secret). A double-quoted value
# never starts with , : ] } -- in JSON text that quote closes the string the key is in.
_KEY_VALUE = re.compile(
    r"(?i)(?:(?<![A-Za-z])|(?<=\\[bfnrt]))"
    rf"((?:{_SECRET_KEYS})(?![A-Za-z])(?:\\?[\"'])?[ \t]*[:=][ \t]*)"
    r"(\"(?![,:\]}])[^\"\\\n]*\""
    r"|'[^'\"\\\n]*'"
    r"|\\\"[^\"\\\n]*\\\""
    r"|(?:\\?[\"'])?[^\s\"'&,;:\\{}\[\]][^\s\"'&,;\\{}\[\]]*)"
)


def _redact_value(m: re.Match[str]) -> str:
    key, value = m.group(1), m.group(2)
    for quote in ('\\"', '"', "'"):
        if len(value) >= 2 * len(quote) and value.startswith(quote) and value.endswith(quote):
            return f"{key}{quote}{_REDACTED}{quote}"
    opening = re.match(r"\\?[\"']", value)
    if opening:
        return f"{key}{opening.group(0)}{_REDACTED}"
    # a JSON member such as "token": 5 stays valid JSON, and so does an escaped one (\"token\": 5)
    # in JSON text held in a JSON string
    if key.rstrip(" \t:=").endswith('\\"'):
        return f'{key}\\"{_REDACTED}\\"'
    if key.rstrip(" \t:=").endswith('"'):
        return f'{key}"{_REDACTED}"'
    return f"{key}{_REDACTED}"


_MAX_PASSES = 8


def redact(text: str) -> str:
    """Replace secrets (API keys, tokens, private keys, passwords) with ``[REDACTED]``.

    Idempotent, and safe on JSON text: the result of redacting ``json.dumps(x)``
    is still valid JSON. Returns ``text`` itself when there is nothing to redact.
    """
    # Redacting one secret can uncover another (``ghp_...AIza...`` glued together: once
    # the first is gone the second starts a word), so repeat until nothing changes.
    for _ in range(_MAX_PASSES):
        clean = _redact_once(text)
        if clean is text or clean == text:
            return text
        text = clean
    return text


def _redact_once(text: str) -> str:
    lower = ""
    for pattern, replacement, needles, fold in _SECRET_PATTERNS:
        if isinstance(needles, re.Pattern):
            if needles.search(text) is None:
                continue
        else:
            haystack = text
            if fold:
                haystack = lower = lower or text.lower()
            for needle in needles:
                if needle in haystack:
                    break
            else:
                continue
        clean = pattern.sub(replacement, text)
        if clean != text:
            text, lower = clean, ""
    if _KEY_GATE.search(lower or text.lower()) is None:
        return text
    return _KEY_VALUE.sub(_redact_value, text)


#: The fields of each event type that can hold model, tool, user or operator text, and so
#: are redacted before the event is written. Every other ``str`` field is an id, a name or
#: a code (session, call, request and task ids, tool and model names, idempotency keys,
#: owners, tenants, verdicts, rules, stop reasons, hashes) and is never touched: rewriting
#: one would break replay. ``tests/test_redaction.py`` fails for a ``str`` field that is in
#: neither list. JSON-text fields (``ModelResponded.content``, ``ToolCallProposed.input``,
#: ``SnapshotTaken.state``) stay valid JSON: ``redact`` is JSON-safe.
_TEXT_FIELDS: dict[type[EventBase], tuple[str, ...]] = {
    SessionCreated: ("prompt", "system"),
    SessionClaimed: (),
    CancelRequested: ("note",),
    SessionCompleted: ("result",),
    SessionFailed: ("error",),
    SessionCancelled: ("note",),
    # folded from events already redacted; rare, so cleaning it again costs little
    SnapshotTaken: ("state",),
    ModelCallRequested: (),
    ModelCallRetried: ("error",),
    # every content block: text, tool_use input, thinking, server tool use and results
    ModelResponded: ("content",),
    ModelCallFailed: ("error",),
    ToolCallProposed: ("input",),
    # a reason may quote the call's arguments (a command, a path)
    ToolCallVetted: ("reason",),
    ToolCallRejected: ("reason",),
    ReviewRequested: ("reason",),
    ReviewDecided: ("note",),
    ToolCallStarted: (),
    ToolCallCompleted: ("output",),
    ToolCallFailed: ("error",),
    ContextCompacted: ("summary",),
    LimitExceeded: ("detail",),
    UnknownEvent: (),  # read-only: it is never written
}

_E = TypeVar("_E", bound=EventBase)


def redact_event(event: _E) -> _E:
    """``event`` with its text fields (``_TEXT_FIELDS``) redacted; ``event`` itself if clean.

    Runs on every append: an event with no text fields costs one dict lookup, and only
    ``str`` values are redacted (a ``BlobRef`` has been written already and is left alone).
    A type missing from the table has all of its ``str`` fields redacted, to be safe.
    """
    names = _TEXT_FIELDS.get(type(event))
    if names is None:
        names = _TEXT_FIELDS.setdefault(type(event), _str_fields(type(event)))
    if not names:
        return event
    changes: dict[str, str] | None = None
    for name in names:
        value = getattr(event, name)
        if isinstance(value, str) and value:
            clean = redact(value)
            if clean is not value and clean != value:
                if changes is None:
                    changes = {}
                changes[name] = clean
    if changes is None:
        return event
    return msgspec.structs.replace(event, **changes)


def _str_fields(cls: type[EventBase]) -> tuple[str, ...]:
    """The fields of ``cls`` that may hold a ``str`` (``str``, ``Payload``, optional ``str``)."""
    names = []
    for info in msgspec.structs.fields(cls):
        kinds = get_args(info.type) if isinstance(info.type, UnionType) else (info.type,)
        if str in kinds:
            names.append(info.name)
    return tuple(names)
