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

import base64
import binascii
import fnmatch
import functools
import glob
import itertools
import os
import re
import time
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
    ContextRepaired,
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
    confined: str = ""  # why the call is allowed only because the sandbox contains it


_PRIMARY = {
    "read_file": "path",
    "write_file": "path",
    "list_dir": "path",
    "run_shell": "command",
    "send_email": "to",
    "http_get": "url",
    "read_output": "call_id",
}


def vet(
    spec: ToolSpec,
    kwargs: dict[str, Any],
    policy: Policy,
    workspace: Path,
    *,
    sandboxed: bool = True,
) -> Vetting:
    """Whether a validated call may run (``allow``), needs a human (``ask``), or never runs.

    ``sandboxed``: whether ``run_shell`` runs confined (``sandbox.py``). Code that no
    reading of the text can judge (interpreter code, code piped into a shell, command
    names computed at run time) is allowed to run confined, and needs review without
    the sandbox. Never raises: a check that fails or runs out of time denies the call.
    """
    try:
        return _vet(spec, kwargs, policy, workspace, sandboxed=sandboxed)
    except Exception as err:
        return Vetting("deny", spec.risk, _check_error(err), "builtin:check-error")


def _vet(
    spec: ToolSpec, kwargs: dict[str, Any], policy: Policy, workspace: Path, *, sandboxed: bool
) -> Vetting:
    risk = spec.risk
    subject = _subject(spec, kwargs, workspace, sandboxed=sandboxed)
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
    note = f"; {subject.confined} (runs confined in the sandbox)" if subject.confined else ""
    allowed = _covering_allow(policy.allow, spec.name, subject)
    if allowed is not None:
        return Vetting("allow", risk, f"allowed by policy rule {allowed!r}{note}", allowed)
    if risk in ("read", "write"):
        return Vetting("allow", risk, f"no policy rule matched; {risk} tools are allowed{note}")
    return Vetting("ask", risk, f"no policy rule matched; {risk} tools need review")


def _check_error(err: BaseException) -> str:
    if isinstance(err, _CheckTimeout):
        return f"the vetting check ran out of time ({_TIME_BUDGET_S:g}s): {err}"
    if isinstance(err, RecursionError):
        return "the vetting check failed: the input is nested too deeply"
    detail = " ".join(str(err).split())[:120]
    return f"the vetting check failed: {type(err).__name__}" + (f": {detail}" if detail else "")


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


def _subject(
    spec: ToolSpec, kwargs: dict[str, Any], workspace: Path, *, sandboxed: bool
) -> _Subject:
    builtin = spec.name in BUILTIN_TOOLS
    key = _PRIMARY.get(spec.name) if builtin else _first_str_param(spec)
    value = kwargs.get(key) if key else None
    if key == "path" and builtin:
        return _file_subject(spec.name, "." if value is None else str(value), workspace)
    if spec.name == "run_shell" and builtin:
        return _shell_subject(str(value or ""), workspace, sandboxed=sandboxed)
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


# Files inside the workspace that run code or configure the runtime when someone else
# (git, the operator, a later fleet) uses the workspace: writing them needs review.
_GIT_CODE_FILES = frozenset({"config", "config.worktree"})


def _protected_file(canonical: str) -> str | None:
    """Why writing ``canonical`` (relative to the workspace) needs review, if it does."""
    parts = [p for p in canonical.lower().split("/") if p not in ("", ".")]
    for i, part in enumerate(parts):
        rest = parts[i + 1 :]
        if part == ".git" and rest:
            if "hooks" in rest[:-1] or (rest[0] == "hooks" and len(rest) == 1):
                return "is a git hook: git runs it, also outside the sandbox"
            if rest[-1] in _GIT_CODE_FILES:
                return "is a git configuration file: it can make git run commands"
            if rest[:2] == ["info", "attributes"]:
                return "is git's attributes file: it can select filter commands"
    if parts and parts[-1] == ".gitmodules":
        return "is .gitmodules: it tells git where to fetch submodules from"
    if parts and (parts[0] == ".fleetlog" or parts[-1] == "fleetlog.toml"):
        return "is one of the runtime's own files (its home or configuration)"
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
    elif tool == "write_file":
        why = _protected_file(canonical) or _protected_file(os.path.normpath(path))
        if why is not None:
            unit.verdict = "ask"
            unit.reason = f"{_show(path)} {why}"
            unit.rule = "builtin:protected-file"
    return subject


def _shell_subject(command: str, workspace: Path, *, sandboxed: bool = True) -> _Subject:
    subject = _Subject(spellings=[command])
    if len(command) > _MAX_COMMAND_CHARS:
        subject.deny = (
            f"the command is {len(command)} characters; vetting reads at most {_MAX_COMMAND_CHARS}",
            "builtin:check-error",
        )
        return subject
    if "\x00" in command:
        subject.deny = ("the command contains a NUL byte", "builtin:check-error")
        return subject
    analysis = _ShellAnalyzer(workspace, sandboxed=sandboxed)
    try:
        analysis.source(command, 0)
    except Exception as err:
        subject.deny = (_check_error(err), "builtin:check-error")
        return subject
    subject.deny = analysis.deny
    for cmd in analysis.commands:
        spellings = [cmd.text] if cmd.text == cmd.effective else [cmd.text, cmd.effective]
        subject.spellings.extend(spellings)
        verdict, reason, rule = cmd.verdict, cmd.reason, cmd.rule
        if verdict == "box":
            if sandboxed:
                subject.confined = subject.confined or reason
                verdict, reason, rule = "allow", "", ""
            else:
                verdict = "ask"
                reason = f"{reason}; it needs review while the sandbox is off"
        subject.units.append(_Unit(spellings, _as_verdict(verdict), reason, rule))
        if verdict == "deny" and subject.deny is None:
            subject.deny = (reason, rule)
    return subject


def _as_verdict(verdict: str) -> Verdict:
    return "deny" if verdict == "deny" else "ask" if verdict == "ask" else "allow"


def check_shell(command: str, workspace: Path, *, sandboxed: bool = True) -> Vetting:
    """The built-in verdict on a shell command alone, before any policy rule; never raises."""
    try:
        subject = _shell_subject(command, workspace, sandboxed=sandboxed)
    except Exception as err:
        return Vetting("deny", "exec", _check_error(err), "builtin:check-error")
    if subject.deny is not None:
        return Vetting("deny", "exec", subject.deny[0], subject.deny[1])
    for unit in subject.units:
        if unit.verdict == "ask":
            return Vetting("ask", "exec", unit.reason, unit.rule)
    if subject.confined:
        return Vetting("allow", "exec", f"{subject.confined}: runs confined in the sandbox")
    return Vetting("allow", "exec", "no built-in check objects")


def _show(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --- the shell parser ------------------------------------------------------------------
#
# Just enough of POSIX sh to find every command a string will run: quoting, escapes,
# operators, redirections, here-documents, and the places code hides in (command and
# process substitution, `${...}`, `sh -c`, `eval`, `find -exec`). It errs towards
# finding too many commands (a heredoc's body is kept with its delimiter word, so that a
# body fed to a shell or an interpreter is read as code), and anything it cannot read is
# refused rather than guessed at.


@dataclass
class _Word:
    text: str = ""  # quotes removed; substitutions kept as their source text
    subs: list[str] = field(default_factory=list)  # code run while expanding the word
    dynamic: bool = False  # its value is only known at run time ($var, $(...), ...)
    glob: bool = False  # has an unquoted *, ? or [
    raw: str = ""  # the source text of the word, for expanding it once variables are known
    quoted: bool = False  # has a quote or a backslash (a quoted heredoc delimiter)
    body: str | None = None  # a heredoc delimiter's body
    computed: bool = False  # the expansion of a variable, a substitution or a glob


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
    def __init__(self, src: str, start: int = 0, nesting: int = 0) -> None:
        if nesting > _MAX_NESTING:
            raise ValueError(f"substitutions nested more than {_MAX_NESTING} levels deep")
        self.s = src
        self.i = start
        self.nesting = nesting
        self.heredocs: list[tuple[_Word, bool]] = []
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
                    self.heredocs.append((word, self.delimiter_next))
                    self.delimiter_next = None
                out.append(("", word))
        if until_close:
            raise ValueError("unbalanced parenthesis in $( ) or <( )")
        return out

    def _skip_heredoc_bodies(self) -> None:
        s = self.s
        while self.heredocs:
            word, strip_tabs = self.heredocs.pop(0)
            lines: list[str] = []
            while self.i < len(s):
                end = s.find("\n", self.i)
                line = s[self.i : len(s) if end < 0 else end]
                self.i = len(s) if end < 0 else end + 1
                if strip_tabs:
                    line = line.lstrip("\t")
                if line == word.text:
                    break
                lines.append(line)
            word.body = "\n".join(lines)

    def _balanced(self) -> str:
        """The source of a ``$(...)`` whose ``(`` was just consumed; consumes the ``)``."""
        inner = _Lexer(self.s, self.i, self.nesting + 1)
        inner.tokens(until_close=True)
        src = self.s[self.i : inner.i]
        self.i = inner.i + 1
        return src

    def _word(self) -> _Word:
        s, w, buf, start = self.s, _Word(), [], self.i
        while self.i < len(s) and s[self.i] not in _WORD_END:
            c = s[self.i]
            w.quoted = w.quoted or c in "\\'\""
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
        w.raw = s[start : self.i]
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
        elif nxt == "'" and not quoted:  # $'...' (ANSI-C quoting)
            j = i + 2
            while j < len(s) and s[j] != "'":
                j += 2 if s[j] == "\\" else 1
            if j >= len(s):
                raise ValueError("unbalanced $'...' quote")
            buf.append(_decode_escapes(s[i + 2 : j]))
            w.quoted = True
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
#
# Each simple command is expanded as far as its text allows (variables assigned earlier in
# the command, ``${X:-default}``, ``$(echo x)``, ``$'\x..'``, ``$IFS`` splitting, globs in
# command position), unwrapped (``env``, ``timeout``, ``busybox``, ``flock``, ...), and
# checked. A finding is a verdict, a one-line reason and a rule. Besides ``deny`` and
# ``ask`` there is ``box``: code that no reading of the text can judge (interpreter code,
# code piped into a shell, a command name only known at run time). It runs confined in
# the sandbox without a prompt, and needs review when the sandbox is off.

_MAX_DEPTH = 6
_MAX_NESTING = 48  # $( inside $( inside ...: deeper than this is refused, not recursed into
_MAX_COMMAND_CHARS = 100_000  # sh -c takes at most 128 KiB in one argument on Linux
_TIME_BUDGET_S = 2.0
_MAX_VARIANTS = 8  # expansions of one command checked one by one
_MAX_GLOB_MATCHES = 256
_UNKNOWN = "\x02"  # in an expanded value: a part only known at run time


class _CheckTimeout(Exception):
    pass


# Anchored at a name's start with a possessive name and a bounded body, so that a long
# command cannot make the search quadratic.
_FORK_BOMB = re.compile(
    r"(?<![\w:.])([A-Za-z_:][\w:.]*+)\s*\(\s*\)\s*\{[^}]{0,256}?\1\s*\|\s*\1\s*&", re.DOTALL
)
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\+?=")
_PRIVILEGE = frozenset({"sudo", "sudoedit", "su", "doas", "pkexec", "runuser", "run0", "sg"})
_SHELLS = frozenset({"sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "fish", "yash", "csh"})
_SHELLS |= {"tcsh", "rbash"}
_INTERPRETER = re.compile(
    r"(?:python|pypy)[\d.]*|perl[\d.]*|ruby[\d.]*|jruby|node|nodejs|php[\d.]*|pwsh|powershell"
    r"|lua(?:jit)?[\d.]*|deno|bun|tclsh[\d.]*|wish|osascript|Rscript|julia|irb|guile|racket"
)
# interpreter -> (short options whose value is inline code, long ones, short ones taking a
# separate value that is not code)
_INLINE_CODE: tuple[tuple[re.Pattern[str], str, frozenset[str], str], ...] = (
    (re.compile(r"(?:python|pypy)[\d.]*"), "c", frozenset(), "WXQ"),
    (re.compile(r"perl[\d.]*"), "eE", frozenset(), ""),
    (re.compile(r"ruby[\d.]*|jruby"), "e", frozenset(), "rI"),
    (re.compile(r"node|nodejs|bun"), "ep", frozenset({"--eval", "--print"}), "r"),
    (re.compile(r"php[\d.]*"), "rRBE", frozenset(), "dcf"),
    (re.compile(r"lua(?:jit)?[\d.]*|Rscript|osascript|guile|racket"), "e", frozenset(), "l"),
    (re.compile(r"julia"), "eE", frozenset({"--eval", "--print"}), ""),
    (re.compile(r"pwsh|powershell"), "c", frozenset({"-command", "-encodedcommand"}), ""),
)
_AWKS = frozenset({"awk", "gawk", "mawk", "nawk", "busybox-awk"})
_SOURCING = frozenset({"eval", "source", "."})
_FETCHERS = frozenset({"curl", "wget", "fetch", "aria2c", "http", "https", "xh", "lwp-request"})
_RAW_SOCKETS = frozenset({"nc", "ncat", "netcat", "socat", "telnet", "openssl-s_client"})
_NETWORK = _FETCHERS | _RAW_SOCKETS | {
    "ssh", "scp", "sftp", "rsync", "ftp", "ssh-copy-id", "kubectl", "gh", "gcloud", "aws",
    "az", "vault", "doctl", "heroku", "flyctl", "terraform",
}  # fmt: skip
_DNS = frozenset({"dig", "nslookup", "host", "drill", "resolvectl", "ping", "ping6"})
_DNS |= {"traceroute", "tracepath", "mtr", "whois", "getent"}
_DISK_TOOLS = frozenset({"mke2fs", "mkswap", "wipefs", "fdisk", "sfdisk", "gdisk", "parted"})
_POWER = frozenset({"shutdown", "reboot", "halt", "poweroff", "kexec"})
_SAFE_DEVICES = frozenset({"/dev/null", "/dev/zero", "/dev/stdout", "/dev/stderr", "/dev/tty"})
_BLOCK_DEVICE = re.compile(
    r"/dev/(?:sd[a-z]|hd[a-z]|vd[a-z]|xvd[a-z]|nvme\d|mmcblk\d|disk\d|md\d|dm-\d|loop\d|mapper/)"
)
_DEVICE_READERS = frozenset({"ls", "stat", "lsblk", "df", "file", "blkid", "readlink"})
# Commands whose arguments are names, not files they print (`echo .env >> .gitignore`,
# `chmod 600 .env`, `ls ~/.ssh` are fine).
_NON_READERS = frozenset(
    {"echo", "printf", "mkdir", "touch", "test", "[", "[[", "true", "false", "ls", "stat"}
    | {"du", "realpath", "readlink", "basename", "dirname", "chmod", "chown", "chgrp", "rm"}
    | {"rmdir", "unlink", "shred", "which", "type", "command", "file", "export", "unset"}
    | {"cd", "pushd", "popd", "exit", "return", "local", "readonly", "declare", "typeset"}
    | {"set", "shift", "trap", "wait", "alias", "unalias", "hash", "getopts"}
    # their operands are not paths at all
    | {"kill", "sleep", "seq", "date", "expr", "exit", "jobs", "fg", "bg", "id", "whoami"}
    | {"uname", "hostname", "nproc", "tput", "stty", "yes", "usleep", "ulimit", "umask"}
)
# Commands whose first operand is a pattern or a program, not a file (`grep -rn .env src/`).
_PATTERN_FIRST = frozenset({"grep", "egrep", "fgrep", "rg", "ag", "ack", "ack-grep", "zgrep"})
_PATTERN_FIRST |= {"sed", "jq", "yq", "gojq", "locate", "pgrep", "pkill"} | _AWKS
# (options whose value is a pattern, options whose value is a file that is read)
_PATTERN_OPTIONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "grep": (frozenset({"-e", "--regexp"}), frozenset({"-f", "--file"})),
    "rg": (frozenset({"-e", "--regexp", "-g", "--glob", "--iglob", "-t", "-T"}), frozenset({"-f"})),
    "sed": (frozenset({"-e", "--expression"}), frozenset({"-f", "--file"})),
    "awk": (frozenset({"-v", "-F", "--assign", "--field-separator"}), frozenset({"-f"})),
    "jq": (frozenset({"--arg", "--argjson"}), frozenset({"-f", "--from-file"})),
    "find": (
        frozenset({"-name", "-iname", "-path", "-ipath", "-wholename", "-iwholename"})
        | {"-regex", "-iregex", "-lname", "-ilname"},
        frozenset(),
    ),
}
# git sub-commands whose path operands are not printed (`git rm --cached .env`)
_GIT_NON_READERS = frozenset(
    {"add", "rm", "mv", "status", "check-ignore", "ls-files", "update-index", "restore"}
    | {"checkout", "reset", "clean", "commit", "init", "check-attr", "switch", "branch"}
    | {"tag", "stash", "fetch", "pull", "push", "clone", "remote", "config", "rev-parse"}
    | {"sparse-checkout", "lfs", "update-ref", "worktree", "gc", "fsck", "describe"}
)
_GIT_NETWORK = frozenset({"pull", "fetch", "clone", "ls-remote", "submodule"})
_GIT_OPTS_WITH_VALUE = frozenset({"-C", "-c", "--git-dir", "--work-tree", "--namespace"})
# git configuration keys whose value is a command git runs (the value of alias.* only when
# it starts with "!")
_GIT_CODE_KEYS = re.compile(
    r"alias\..*|core\.(?:pager|editor|sshcommand|fsmonitor|askpass|hookspath|gitproxy)"
    r"|sequence\.editor|diff\.external|diff\..*\.(?:textconv|command)|filter\..*"
    r"|merge\..*\.driver|credential\.helper|credential\..*\.helper|gpg\..*program"
    r"|uploadpack\.packobjectshook|include\.path|includeif\..*|pager\..*|interactive\.difffilter"
    r"|man\..*\.(?:cmd|path)|web\.browser|browser\..*\.(?:cmd|path)|remote\..*\.(?:uploadpack|receivepack)"
    r"|protocol\.allow|protocol\..*\.allow|core\.sshcommand|ssh\.variant|instaweb\..*"
)
# wrapper -> (its options that take a separate value, positional words before the command)
_WRAPPERS: dict[str, tuple[frozenset[str], int]] = {
    "nohup": (frozenset(), 0),
    "time": (frozenset({"-f", "--format", "-o", "--output"}), 0),
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
        frozenset({"-I", "-n", "-P", "-d", "-L", "-s", "-E", "-a", "--max-args", "--max-procs"})
        | {"--delimiter", "--arg-file", "--max-lines", "-i", "--replace"},
        0,
    ),
    "busybox": (frozenset(), 0),
    "toybox": (frozenset(), 0),
    "taskset": (frozenset(), 1),
    "chrt": (frozenset(), 1),
    "numactl": (frozenset({"-C", "-N", "-m", "-i", "-p", "--physcpubind", "--cpunodebind"}), 0),
    "prlimit": (frozenset({"-p", "--pid"}), 0),
    "strace": (frozenset({"-o", "-e", "-p", "-s", "-u", "-E", "-a", "-b", "-I", "-P", "-X"}), 0),
    "ltrace": (frozenset({"-o", "-e", "-p", "-s", "-u", "-n", "-a", "-A", "-D", "-x"}), 0),
    "flock": (frozenset({"-w", "--timeout", "-E", "--conflict-exit-code"}), 1),
    "caffeinate": (frozenset({"-t", "-w"}), 0),
    "catchsegv": (frozenset(), 0),
    "valgrind": (frozenset(), 0),
    "firejail": (frozenset(), 0),
    "proxychains": (frozenset({"-f"}), 0),
    "proxychains4": (frozenset({"-f"}), 0),
    "torsocks": (frozenset(), 0),
    "faketime": (frozenset({"-f"}), 1),
    "doit": (frozenset(), 0),
    "entr": (frozenset(), 0),
    "parallel": (frozenset({"-j", "--jobs", "-S", "--sshlogin"}), 0),
    "watch": (frozenset({"-n", "--interval", "-d", "-g", "-q"}), 0),
    "script": (frozenset({"-E", "-o", "-T", "-I", "-O", "-B", "--log-timing"}), 0),
}
# runners that hand their operands to `sh -c` joined by spaces (unless told otherwise)
_JOINING_RUNNERS = frozenset({"watch", "parallel"})
# commands that only list what is under a directory: a home directory operand is fine
_LISTS_ONLY = frozenset({"find", "tree", "df", "git", "cd", "pushd", "ls", "du"})
_ENV_SAFE = frozenset({"PATH", "HOME", "LANG", "TERM", "PWD", "LC_ALL", "LC_CTYPE", "SHELL"})
_ENV_SAFE |= {"USER", "LOGNAME", "TZ", "TMPDIR", "OLDPWD", "SHLVL", "HOSTNAME", "COLUMNS"}
# Where a write outside the workspace is harmless (the sandbox's /tmp is its own).
_WRITABLE_OUTSIDE = ("/tmp/", "/var/tmp/", "/dev/shm/", "/dev/fd/", "/proc/self/fd/")
# Credential directories: archiving or copying one reads every key in it.
_CREDENTIAL_DIRS = frozenset(
    {".ssh", ".gnupg", ".aws", ".azure", ".kube", ".docker", ".password-store"}
    | {".terraform.d", ".huggingface", ".vault.d", ".gcloud", ".oci", ".pki"}
)
_CREDENTIAL_DIR_PAIRS = frozenset(
    {(".config", "gcloud"), (".config", "gh"), (".config", "hub"), (".cache", "huggingface")}
    | {(".config", "doctl"), (".config", "op"), (".local", "share/keyrings")}
)
# Concrete credential locations that a glob (`cat ~/.ss*/*`, `cat /root/.aws/c*`) may name.
_CREDENTIAL_TEMPLATES = (
    *(
    f"{home}/{tail}"
    for home in ("~", "/root", "/home/user")
    for tail in (
        ".ssh/id_rsa", ".ssh/id_ed25519", ".ssh/config", ".ssh/known_hosts",
        ".aws/credentials", ".aws/config", ".config/gcloud/credentials.db",
        ".config/gcloud/application_default_credentials.json", ".config/gh/hosts.yml",
        ".azure/accesstokens.json", ".vault-token", ".terraform.d/credentials.tfrc.json",
        ".cargo/credentials.toml", ".my.cnf", ".cache/huggingface/token",
        ".huggingface/token", ".kube/config", ".docker/config.json", ".git-credentials",
        ".netrc", ".npmrc", ".pypirc", ".pgpass", ".envrc", ".env",
        ".gnupg/private-keys-v1.d/key.key", ".config/gcloud/access_tokens.db",
    )
    ),
    "/etc/shadow", "/etc/gshadow", "/etc/sudoers",
)  # fmt: skip
# (command, positional words in order) that print a credential.
_CREDENTIAL_PRINTERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gh", ("auth", "token")),
    ("gcloud", ("auth", "print-access-token")),
    ("gcloud", ("auth", "print-identity-token")),
    ("gcloud", ("print-access-token",)),
    ("gcloud", ("config", "config-helper")),
    ("aws", ("configure", "get")),
    ("aws", ("configure", "export-credentials")),
    ("aws", ("sts", "get-session-token")),
    ("aws", ("ecr", "get-login-password")),
    ("aws", ("secretsmanager", "get-secret-value")),
    ("aws", ("sso", "get-role-credentials")),
    ("aws", ("ssm", "get-parameter")),
    ("aws", ("ssm", "get-parameters")),
    ("az", ("account", "get-access-token")),
    ("az", ("keyvault", "secret", "show")),
    ("az", ("keyvault", "secret", "download")),
    ("kubectl", ("create", "token")),
    ("vault", ("token", "lookup")),
    ("vault", ("print", "token")),
    ("vault", ("read",)),
    ("vault", ("kv", "get")),
    ("vault", ("token", "create")),
    ("git", ("credential", "fill")),
    ("git", ("credential-store",)),
    ("git", ("credential-cache",)),
    ("security", ("find-generic-password",)),
    ("security", ("find-internet-password",)),
    ("secret-tool", ("lookup",)),
    ("pass", ("show",)),
    ("op", ("read",)),
    ("op", ("item", "get")),
    ("heroku", ("auth:token",)),
    ("npm", ("token",)),
    ("doctl", ("auth", "token")),
    ("keyring", ("get",)),
    ("gpg", ("--export-secret-keys",)),
    ("gpg", ("--export-secret-subkeys",)),
    ("docker", ("login", "--password-stdin")),
)
# System, privilege and persistence commands: refused.
_SYSTEM_DENY: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        ("useradd", "usermod", "userdel", "groupadd", "groupmod", "groupdel", "adduser"),
        ("manages user accounts", "builtin:privilege"),
    ),
    **dict.fromkeys(
        ("deluser", "passwd", "chpasswd", "chage", "gpasswd", "vipw", "vigr", "visudo"),
        ("manages user accounts or passwords", "builtin:privilege"),
    ),
    **dict.fromkeys(
        ("setcap", "setfattr", "capsh"), ("sets file capabilities", "builtin:privilege")
    ),
    **dict.fromkeys(
        ("nsenter", "unshare", "chroot", "pivot_root", "switch_root", "lxc-attach"),
        ("enters or creates namespaces or roots", "builtin:privilege"),
    ),
    **dict.fromkeys(
        ("insmod", "rmmod", "modprobe", "depmod", "kmod"),
        ("loads or unloads kernel modules", "builtin:system"),
    ),
    **dict.fromkeys(
        ("iptables", "ip6tables", "nft", "ufw", "firewall-cmd", "ebtables", "arptables"),
        ("changes the firewall", "builtin:system"),
    ),
    **dict.fromkeys(
        ("iptables-restore", "ip6tables-restore", "tc", "ifconfig", "route", "brctl"),
        ("changes the network configuration", "builtin:system"),
    ),
    **dict.fromkeys(
        ("umount", "swapon", "swapoff", "losetup", "cryptsetup"),
        ("changes mounts or devices", "builtin:system"),
    ),
    **dict.fromkeys(
        ("service", "update-rc.d", "chkconfig", "launchctl", "initctl", "systemd-run"),
        ("manages system services", "builtin:system"),
    ),
    **dict.fromkeys(
        ("at", "batch", "anacron"), ("schedules commands to run later", "builtin:persistence")
    ),
    **dict.fromkeys(
        ("hostnamectl", "timedatectl", "localectl", "auditctl", "setenforce"),
        ("changes the system configuration", "builtin:system"),
    ),
    "killall5": ("signals every process", "builtin:destructive"),
    "telinit": ("changes the runlevel", "builtin:destructive"),
}
_SYSTEMCTL_READ = frozenset({"status", "show", "cat", "list-units", "list-unit-files", "is-active"})
_SYSTEMCTL_READ |= {"is-enabled", "is-failed", "list-timers", "list-sockets", "help", "--version"}
_CONTAINERS = frozenset({"docker", "podman", "nerdctl", "ctr", "crictl", "lxc", "incus"})
_CONTAINER_ESCAPES = re.compile(
    r"--privileged|--(?:pid|net|network|ipc|uts|userns|cgroupns)=?host|--cap-add|--device"
    r"|--security-opt|docker\.sock|--volumes-from"
)
_SHELL_IN_CODE = re.compile(
    r"(?:\bsystem|\bpopen|\bexec[lv]p?e?|\bspawn\w*|check_output|check_call|getoutput"
    r"|getstatusoutput|subprocess\.(?:run|call|Popen)|\bPopen|execSync|execFileSync|spawnSync"
    r"|shell_exec|passthru|proc_open|IO\.popen|Open3\.\w+|%x|\bqx)"
    r"\s*[({\[]?\s*(\[\s*)?(['\"])((?:\\.|(?!\2)[^\\]){1,4096})\2"
)
_STRING_IN_CODE = re.compile(r"""(['"])((?:\\.|(?!\1)[^\\\n]){1,1024})\1""")
_PATH_IN_CODE = re.compile(r"(?<![\w.$])~/[\w.@%+=:,/~*?-]+")
_FETCH_IN_CODE = re.compile(
    r"urlopen|urllib|requests\.(?:get|post)|https?\.get|\bfetch\s*\(|LWP|Net::HTTP|open-uri"
    r"|URI\.open|file_get_contents\s*\(\s*['\"]https?:|\bcurl\b|\bwget\b|http\.client|socket"
)
_EXEC_IN_CODE = re.compile(r"\b(?:exec|eval|Function|compile|system|popen|spawn)\s*\(|\|\s*sh\b")
# a literal path written by interpreter code: (regex with a named group "p")
_WRITE_IN_CODE = (
    re.compile(r"""open\s*\(\s*(['"])(?P<p>[^'"\n]+)\1\s*,\s*(?:mode\s*=\s*)?['"][^'"]*[wax+]"""),
    re.compile(r"""(['"])\s*\+?>>?\s*(?P<p>[^'"\n&|]+)\1"""),
    re.compile(r"""open\s*\(?\s*[\w$]+\s*,\s*['"]\+?>>?['"]\s*,\s*(['"])(?P<p>[^'"\n]+)\1"""),
    re.compile(
        r"""Path\s*\(\s*(['"])(?P<p>[^'"\n]+)\1\s*\)\s*\.\s*"""
        r"(?:write_text|write_bytes|touch|symlink_to|hardlink_to|chmod|mkdir|unlink|rename)"
    ),
    re.compile(
        r"(?:writeFile|appendFile|createWriteStream|File\.(?:write|open)|truncate|mkdir|makedirs"
        r"|rmtree|unlink|remove|chmod|chown|rmdir)\w*\s*\(\s*(['\"])(?P<p>[^'\"\n]+)\1"
    ),
    re.compile(
        r"(?:copy\w*|move|rename|replace|symlink\w*|link|copyFile\w*|cp|mv|ln_s)\s*\(\s*"
        r"""[^,()]+,\s*(['"])(?P<p>[^'"\n]+)\1"""
    ),
)


def _basename(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def _is_interpreter(name: str) -> bool:
    return name in _SHELLS or bool(_INTERPRETER.fullmatch(name))


_ESCAPES = re.compile(r"\\(x[0-9a-fA-F]{1,2}|u[0-9a-fA-F]{1,4}|U[0-9a-fA-F]{1,8}|[0-7]{1,3}|c.|.)")
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n"}
_SIMPLE_ESCAPES |= {"r": "\r", "t": "\t", "v": "\v"}


def _decode_escapes(text: str) -> str:
    """``$'...'``, ``echo -e`` and ``printf`` escapes: ``\\x72``, ``\\162``, ``\\n``..."""

    def one(m: re.Match[str]) -> str:
        e = m.group(1)
        try:
            if e[0] in "xuU":
                return chr(int(e[1:], 16))
            if e[0] in "01234567":
                return chr(int(e, 8) & 0xFF)
        except (ValueError, OverflowError):
            return ""
        if e[0] == "c":
            return chr(ord(e[1]) & 0x1F)
        return _SIMPLE_ESCAPES.get(e, e)

    return _ESCAPES.sub(one, text)


def _printf(args: list[str]) -> str | None:
    """What ``printf FORMAT ARGS...`` prints, for %s, %b, %c, %d and %% only."""
    if not args:
        return None
    fmt, rest, out = args[0], list(args[1:]), []
    for _ in range(64):
        i = 0
        while i < len(fmt):
            c = fmt[i]
            if c != "%":
                j = fmt.find("%", i)
                j = len(fmt) if j < 0 else j
                out.append(_decode_escapes(fmt[i:j]))
                i = j
                continue
            spec = fmt[i + 1 : i + 2]
            if spec == "%":
                out.append("%")
            elif spec in ("s", "b", "c", "d"):
                value = rest.pop(0) if rest else ""
                out.append(
                    _decode_escapes(value) if spec == "b" else value[:1] if spec == "c" else value
                )
            else:
                return None
            i += 2
        if not rest:
            return "".join(out)
    return None


@dataclass
class _Command:
    text: str  # as written, words joined by single spaces
    effective: str  # past assignments and wrappers
    name: str
    words: list[_Word] = field(default_factory=list)  # the effective words
    verdict: str = "allow"  # allow, ask, deny, or box (runs confined, else needs review)
    reason: str = ""
    rule: str = ""


#: A finding: (verdict, one-line reason, "builtin:<check>"); verdict "box" is explained above.
_Hit = tuple[str, str, str]
_RANK = {"deny": 3, "ask": 2, "box": 1}


def _worst(hits: list[_Hit | None]) -> _Hit | None:
    best: _Hit | None = None
    for hit in hits:
        if hit is not None and (best is None or _RANK[hit[0]] > _RANK[best[0]]):
            best = hit
    return best


@dataclass
class _Unwrapped:
    words: list[_Word]
    via_xargs: bool = False
    scripts: list[_Word] = field(default_factory=list)  # code the wrappers run with sh -c


def _effective(words: list[_Word]) -> _Unwrapped:
    """The command a simple command really runs: past ``VAR=x``, ``env``, ``timeout``, ...

    Also says whether ``xargs`` feeds it arguments from stdin, and collects the scripts
    that runners hand to ``sh -c`` (``watch``, ``script -c``, ``flock -c``, ``env -S``).
    """
    out = _Unwrapped(words)
    for _ in range(16):
        words = out.words
        while words and _ASSIGNMENT.match(words[0].text) and not words[0].text.startswith("-"):
            words = words[1:]
        out.words = words
        if not words:
            break
        name = _basename(words[0].text)
        if name == "env":
            k = 1
            while k < len(words):
                t = words[k].text
                if t in ("-u", "--unset", "-C", "--chdir"):
                    k += 2
                elif t in ("-S", "--split-string") or t.startswith(("-S", "--split-string=")):
                    split = t.split("=", 1)[1] if t.startswith("--split-string=") else t[2:]
                    if split:
                        out.scripts.append(_Word(split, dynamic=words[k].dynamic))
                        k += 1
                    elif k + 1 < len(words):
                        out.scripts.append(words[k + 1])
                        k += 2
                    else:
                        k += 1
                    out.words = words[k:]
                    return out
                elif t.startswith("-") or _ASSIGNMENT.match(t):
                    k += 1
                else:
                    break
            if k >= len(words):
                out.words = words[:1]  # a bare `env`: it prints the environment
                return out
            out.words = words[k:]
            continue
        wrapper = _WRAPPERS.get(name)
        if wrapper is None:
            break
        with_value, positional = wrapper
        k = 1
        while k < len(words) and words[k].text.startswith("-") and words[k].text != "-":
            t = words[k].text
            if t == "--":
                k += 1
                break
            if name in ("script", "flock") and (
                t in ("-c", "--command") or (not t.startswith("--") and t.endswith("c"))
            ):
                if k + 1 < len(words):
                    out.scripts.append(words[k + 1])
                out.words = []
                return out
            if name == "watch" and t in ("-x", "--exec"):
                with_value = with_value - {"joined"}
                name = "watch-x"
            k += 2 if t in with_value else 1
        if name == "taskset" and any(w.text in ("-p", "--pid") for w in words[1:k]):
            out.words = []
            return out
        k += positional
        if name == "flock" and k < len(words) and words[k].text in ("-c", "--command"):
            if k + 1 < len(words):
                out.scripts.append(words[k + 1])
            out.words = []
            return out
        if k >= len(words):
            if name in ("script",):
                out.words = []
                return out
            break
        if name in _JOINING_RUNNERS:
            rest = words[k:]
            inputs: list[_Word] = []
            if name == "parallel" and any(w.text in (":::", "::::") for w in rest):
                cut = next(i for i, w in enumerate(rest) if w.text in (":::", "::::"))
                rest, inputs = rest[:cut], rest[cut + 1 :]
            text = " ".join(w.raw or shlex_quote(w.text) for w in rest)
            dynamic = any(w.dynamic for w in rest)
            for arg in inputs[:_MAX_VARIANTS] or [_Word("")]:
                script = f"{text} {arg.raw or shlex_quote(arg.text)}" if arg.text else text
                out.scripts.append(_Word(script, dynamic=dynamic or arg.dynamic))
            out.words = []
            return out
        out.via_xargs = out.via_xargs or name == "xargs"
        out.words = words[k:]
    return out


def shlex_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'" if re.search(r"[^\w@%+=:,./-]", text) else text


def _operands(args: list[_Word], with_value: frozenset[str] = frozenset()) -> list[_Word]:
    """The non-option words of a command (options and the values of ``with_value`` ones)."""
    out, skip, done = [], False, False
    for w in args:
        t = w.text
        if skip:
            skip = False
        elif done or t == "-" or not t.startswith("-"):
            out.append(w)
        elif t == "--":
            done = True
        elif t in with_value:
            skip = True
    return out


def _option_values(args: list[_Word], names: frozenset[str]) -> list[_Word]:
    """The values of options in ``names``: ``-o x``, ``-ox``, ``--out=x``, ``of=x``."""
    out: list[_Word] = []
    for i, w in enumerate(args):
        t = w.text
        if t in names and i + 1 < len(args):
            out.append(args[i + 1])
            continue
        for n in names:
            if n.startswith("--") and t.startswith(n + "="):
                out.append(_Word(t[len(n) + 1 :], dynamic=w.dynamic, glob=w.glob))
            elif n.endswith("=") and t.startswith(n):
                out.append(_Word(t[len(n) :], dynamic=w.dynamic, glob=w.glob))
            elif (
                len(n) == 2
                and n[0] == "-"
                and n[1] != "-"
                and t.startswith(n)
                and len(t) > 2
                and not t.startswith("--")
            ):
                out.append(_Word(t[2:], dynamic=w.dynamic, glob=w.glob))
    return out


def _has_flag(texts: list[str], short: str, long: str) -> bool:
    return any(
        t == long or (t.startswith("-") and not t.startswith("--") and short in t[1:])
        for t in texts
    )


def _only_glob(text: str) -> bool:
    """``*``, ``./*``, ``.*``, ``*/``...: a pattern that names everything in a directory."""
    return all(c in "*?./[]!" for c in text)


def _dash_c_script(words: list[_Word]) -> _Word | None:
    """The script of ``sh -c SCRIPT`` (also ``-lc``, ``-ec``...), if that is the form."""
    for i, w in enumerate(words):
        t = w.text
        if not t.startswith("-") or t == "-":
            return None
        if t in ("-o", "+o", "-O", "+O"):
            continue
        if not t.startswith("--") and "c" in t[1:]:
            return words[i + 1] if i + 1 < len(words) else _Word("")
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
            if t in ("--eval", "--print", "--command"):
                return False
            continue
        if not t.startswith("-"):
            return False  # a script file: stdin is only data
        if name in _SHELLS and "s" in t[1:]:
            return True
        if any(c in t[1:] for c in not_stdin):
            return False
    return True


def _inline_code(name: str, words: list[_Word]) -> list[_Word]:
    """The inline programs of an interpreter: ``python3 -c``, ``perl -ne``, ``node -e``..."""
    spec = next((s for s in _INLINE_CODE if s[0].fullmatch(name)), None)
    if spec is None:
        if name == "deno" and len(words) > 2 and words[1].text == "eval":
            return [words[2]]
        return []
    _, short, long_, valued = spec
    codes: list[_Word] = []
    i = 1
    while i < len(words):
        w = words[i]
        t = w.text
        low = t.lower()
        if t == "--":
            break
        head = low.split("=", 1)[0]
        if head in long_:
            if "=" in t:
                codes.append(_Word(t.split("=", 1)[1], dynamic=w.dynamic))
                i += 1
            else:
                codes.extend(words[i + 1 : i + 2])
                i += 2
            continue
        if t.startswith("--") or t == "-":
            i += 1
            continue
        if not t.startswith("-"):
            break  # a script file or module; the rest are its arguments
        cluster = t[1:]
        pos = next((k for k, ch in enumerate(cluster) if ch in short), -1)
        if pos >= 0:
            if cluster[pos + 1 :]:
                codes.append(_Word(cluster[pos + 1 :], dynamic=w.dynamic))
                i += 1
            else:
                codes.extend(words[i + 1 : i + 2])
                i += 2
            continue
        if name.startswith(("python", "pypy")) and "m" in cluster:
            break
        i += 2 if cluster[-1:] in tuple(valued) and len(cluster) == 1 else 1
    return codes


def _kill_targets(texts: list[str]) -> list[str]:
    rest = texts
    while rest and rest[0].startswith("-") and rest[0] != "--" and not rest[0][1:].isdigit():
        rest = rest[2:] if rest[0] in ("-s", "-n", "--signal") else rest[1:]
    if rest and rest[0].startswith("-") and rest[0][1:].isdigit() and len(rest) > 1:
        rest = rest[1:]  # kill -9 PID: the signal
    if rest and rest[0] == "--":
        rest = rest[1:]
    return rest


def _dumps_environment(name: str, texts: list[str]) -> bool:
    if name == "printenv":
        return not texts or not all(t in _ENV_SAFE for t in texts if not t.startswith("-"))
    if name == "env":
        return not texts
    if name == "set":
        return not texts
    if name in ("export", "declare", "typeset"):
        return all(t.startswith("-") for t in texts) and (
            not texts or "-p" in texts or "-x" in texts
        )
    return False


def _git_subcommand(texts: list[str]) -> tuple[str | None, int]:
    i = 0
    while i < len(texts):
        t = texts[i]
        if t in _GIT_OPTS_WITH_VALUE:
            i += 2
        elif t.startswith("-"):
            i += 1
        else:
            return t, i
    return None, i


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
    if name in ("dpkg", "rpm") and any(
        t in ("-i", "--install", "-U", "-ivh", "-Uvh") for t in texts
    ):
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
    ) and sub in ("install", "add", "remove", "purge", "erase", "autoremove", "del", "uninstall"):
        return name
    return None


_SIGNALLERS = frozenset({"kill", "pkill", "killall", "skill", "snice", "renice"})


def _needs_review(name: str, texts: list[str]) -> _Hit | None:
    if name in _NETWORK:
        return "ask", f"{name} reaches the network", "builtin:network"
    if name in _CONTAINERS:
        reason = f"{name} talks to a container daemon outside the sandbox (absent inside it)"
        return "box", reason, "builtin:container"
    if name == "git":
        sub, _ = _git_subcommand(texts)
        if sub == "push":
            return "ask", "git push publishes commits to a remote", "builtin:git-push"
        if sub in _GIT_NETWORK:
            return "ask", f"git {sub} reaches the network", "builtin:network"
    installer = _package_install(name, texts)
    if installer:
        removes = {"remove", "purge", "erase", "autoremove", "del", "uninstall"} & set(texts)
        verb = "removes" if removes else "installs"
        return "ask", f"{installer} {verb} packages", "builtin:package-install"
    if name in _SIGNALLERS:
        # In the sandbox it sees (and can signal) only its own processes; outside it, the
        # fleet's own processes are within reach.
        return "box", f"{name} signals processes", "builtin:signal"
    return None


def _credential_dir(path: str) -> bool:
    """Whether ``path`` is a directory of credentials (``~/.ssh``, ``~/.config/gcloud``)."""
    parts = [p for p in path.replace("\\", "/").lower().split("/") if p not in ("", ".")]
    if not parts:
        return False
    if parts[-1] in _CREDENTIAL_DIRS:
        return True
    return len(parts) >= 2 and (parts[-2], parts[-1]) in _CREDENTIAL_DIR_PAIRS


def _home_dir(path: str) -> bool:
    """Whether ``path`` is a home directory or holds them (``/root``, ``/home``, ``/home/x``)."""
    norm = os.path.normpath(path) if path.startswith("/") else path.rstrip("/")
    return norm in ("/root", "/home", "/") or bool(re.fullmatch(r"/home/[^/]+|/Users/[^/]+", norm))


def _has_magic(text: str) -> bool:
    """Whether ``text`` is a glob that matches something other than itself (not ``[``)."""
    return bool(re.search(r"[*?]|\[[^\]]+\]", text))


def _component_match(name: str, pattern: str) -> bool:
    if name.startswith(".") and not pattern.startswith("."):
        return False  # sh: a glob matches a leading dot only literally
    return fnmatch.fnmatchcase(name, pattern)


def _pattern_names_credential(pattern: str) -> str | None:
    """A credential location that the glob ``pattern`` may match (``~/.ss*/*``, ``.en?``)."""
    pat = [p for p in pattern.lower().split("/") if p not in ("", ".")]
    if not pat:
        return None
    absolute = pattern.startswith(("/", "~"))
    for template in _CREDENTIAL_TEMPLATES:
        parts = [p for p in template.split("/") if p]
        if template.startswith("/"):
            parts[0] = "/" + parts[0]
        if absolute:
            cand = parts
            pat_parts = list(pat)
            if pattern.startswith("/"):
                pat_parts[0] = "/" + pat_parts[0]
            if len(cand) != len(pat_parts):
                continue
        else:
            if len(pat) > len(parts) - 1:
                continue
            cand = parts[len(parts) - len(pat) :]
            pat_parts = pat
            if not pat_parts[-1].startswith("."):
                continue  # a relative pattern is checked against the files there instead
        if all(_component_match(c, p) for c, p in zip(cand, pat_parts, strict=True)):
            return template
    return None


class _ShellAnalyzer:
    def __init__(self, workspace: Path, *, sandboxed: bool = True) -> None:
        root = os.path.abspath(workspace)
        self.roots = {root, os.path.realpath(root)}
        self.workspace = os.path.realpath(root)
        self.cwd: str | None = self.workspace  # tracked through `cd`; None: unknown
        self.sandboxed = sandboxed
        self.commands: list[_Command] = []
        self.deny: tuple[str, str] | None = None
        # variables assigned by the command so far: their possible values, None: unknown
        self.vars: dict[str, list[str] | None] = {}
        self.deadline = time.monotonic() + _TIME_BUDGET_S

    def _refuse(self, reason: str, rule: str) -> None:
        if self.deny is None:
            self.deny = (reason, rule)

    def _tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _CheckTimeout("the command is too complex to vet")

    def source(self, src: str, depth: int, *, lenient: bool = False) -> bool:
        """Check every command ``src`` runs; False if it cannot be read (``lenient``: no deny)."""
        self._tick()
        if depth > _MAX_DEPTH:
            self._refuse(f"shell code nested more than {_MAX_DEPTH} levels deep", "builtin:shell")
            return False
        if _FORK_BOMB.search(src):
            self._refuse("the command is a fork bomb", "builtin:destructive")
        try:
            pipelines = _parse(src)
        except ValueError as err:
            if not lenient:
                self._refuse(f"cannot parse the shell command: {err}", "builtin:shell-syntax")
            return False
        for stages in pipelines:
            ran = [self._simple(cmd, depth, piped_in=k > 0) for k, cmd in enumerate(stages)]
            self._check_pipeline(ran, stages, depth)
        return True

    def _sub_source(self, code: _Word, depth: int, what: str) -> _Hit | None:
        """Check shell code given as a word (``sh -c``, ``watch``, ``git -c alias.x=!``)."""
        if code.dynamic:
            return "box", f"{what} runs shell code only known at run time", "builtin:opaque"
        self.source(code.text, depth + 1)
        return None

    # -- pipelines ---------------------------------------------------------------------

    def _check_pipeline(
        self, ran: list[_Command | None], stages: list[_Simple], depth: int
    ) -> None:
        fetching: str | None = None
        data: str | None = None  # what the previous stage prints, when the text says
        for k, record in enumerate(ran):
            if record is None:
                data = None
                continue
            name, words = record.name, record.words
            if k > 0 and _is_interpreter(name) and _program_from_stdin(name, words):
                if fetching:
                    self._refuse(
                        f"pipes a download ({fetching}) into {name}: remote code execution",
                        "builtin:remote-exec",
                    )
                hit: _Hit = ("box", f"{name} runs code it reads from a pipe", "builtin:opaque")
                if data is not None:
                    if name in _SHELLS:
                        self.source(data, depth + 1, lenient=True)
                    else:
                        hit = _worst([hit, self._scan_code(data, depth, name)]) or hit
                self._merge(record, hit)
            if name in _FETCHERS:
                fetching = name
            data = self._stage_output(record, data, stages[k])

    def _stage_output(self, record: _Command, data: str | None, cmd: _Simple) -> str | None:
        words = record.words
        if any(w.dynamic for w in words) or cmd.redirects:
            return None
        texts = [w.text for w in words[1:]]
        name = record.name
        if name == "echo":
            flags = set()
            while texts and re.fullmatch(r"-[neE]+", texts[0]):
                flags |= set(texts.pop(0)[1:])
            text = " ".join(texts)
            return (_decode_escapes(text) if "e" in flags else text) + "\n"
        if name == "printf":
            return _printf(texts)
        if data is None:
            return None
        if name == "base64" and _has_flag(texts, "d", "--decode"):
            try:
                raw = base64.b64decode("".join(data.split()) + "==", validate=False)
            except (ValueError, binascii.Error):
                return None
            return raw.decode("utf-8", "replace")
        if name in ("cat", "tee") and not [t for t in texts if not t.startswith("-")]:
            return data
        if name == "rev":
            return "\n".join(line[::-1] for line in data.split("\n"))
        if name == "xxd" and "-r" in texts:
            try:
                return bytes.fromhex("".join(data.split())).decode("utf-8", "replace")
            except ValueError:
                return None
        return None

    @staticmethod
    def _merge(record: _Command, hit: _Hit | None) -> None:
        if hit is not None and _RANK[hit[0]] > _RANK.get(record.verdict, 0):
            record.verdict, record.reason, record.rule = hit

    # -- simple commands ---------------------------------------------------------------

    def _simple(self, cmd: _Simple, depth: int, *, piped_in: bool = False) -> _Command | None:
        self._tick()
        fetch_in_subs = False
        for word in [*cmd.words, *(target for _, target in cmd.redirects)]:
            for sub in word.subs:
                before = len(self.commands)
                self.source(sub, depth + 1)
                fetch_in_subs |= any(c.name in _FETCHERS for c in self.commands[before:])
        for op, target in cmd.redirects:
            if op in ("<<", "<<-") and target.body and not target.quoted:
                probe = _Word()
                _scan_substitutions(target.body, probe)
                for sub in probe.subs:
                    self.source(sub, depth + 1)
        if cmd.header:
            self._header(cmd)
            return None
        variants = self._variants(cmd.words)
        record = _Command(text=" ".join(w.text for w in cmd.words), effective="", name="", words=[])
        worst: _Hit | None = None
        for words in variants:
            unwrapped = _effective(words)
            eff = unwrapped.words
            name = _basename(eff[0].text) if eff else ""
            if not record.words:
                record.effective = " ".join(w.text for w in eff)
                record.name, record.words = name, eff
            hits: list[_Hit | None] = [
                self._sub_source(s, depth, "a runner") for s in unwrapped.scripts
            ]
            hits.append(
                self._check(
                    name,
                    eff,
                    cmd,
                    depth,
                    fetch_in_subs=fetch_in_subs,
                    via_xargs=unwrapped.via_xargs,
                    piped_in=piped_in,
                )
            )
            hit = _worst(hits)
            if hit is not None and (worst is None or _RANK[hit[0]] > _RANK[worst[0]]):
                worst = hit
        if worst is not None:
            record.verdict, record.reason, record.rule = worst
        self._assign(cmd.words)
        self.commands.append(record)
        return record

    def _header(self, cmd: _Simple) -> None:
        """``for NAME in WORDS``: NAME takes each of the words."""
        words = cmd.words
        if len(words) >= 2 and words[0].text in ("for", "select"):
            values: list[str] | None = []
            items = words[3:] if len(words) > 2 and words[2].text == "in" else []
            for w in items:
                expanded = self._expand(w)
                if expanded is None or values is None:
                    values = None
                else:
                    values.extend(f for alt in expanded for f in alt[0].split("\x01") if f)
            if not items:
                values = None
            self.vars[words[1].text] = values

    def _assign(self, words: list[_Word]) -> None:
        """Remember ``X=value`` (alone, or after export/local/declare/readonly)."""
        if words and words[0].text in ("export", "local", "declare", "typeset", "readonly"):
            words = [w for w in words[1:] if not w.text.startswith("-")]
        elif not words or not all(_ASSIGNMENT.match(w.text) for w in words):
            # `read X`, `printf -v X`, `mapfile X`, `getopts o X`...: X becomes unknown
            if words and words[0].text in ("read", "mapfile", "readarray", "getopts", "printf"):
                for w in words[1:]:
                    if re.fullmatch(r"[A-Za-z_]\w*", w.text):
                        self.vars[w.text] = None
            return
        for w in words:
            if not _ASSIGNMENT.match(w.text):
                continue
            name, _, raw_value = w.raw.partition("=")
            name = name.rstrip("+")
            expanded = self._expand_raw(raw_value, split=False) if raw_value else [("", False)]
            self.vars[name] = None if expanded is None else [v for v, _ in expanded]

    # -- expansion ---------------------------------------------------------------------

    def _variants(self, words: list[_Word]) -> list[list[_Word]]:
        """The command's words after expansion, once for each combination of values."""
        variants: list[list[_Word]] = [[]]
        for i, w in enumerate(words):
            expanded = self._expand(w) if (w.dynamic or i == 0) else None
            if expanded is None:
                options = [[w]]
            else:
                options = []
                for value, glob in expanded:
                    if _UNKNOWN in value:
                        if [w] not in options:
                            options.append([w])
                        continue
                    fields = [f for f in value.split("\x01") if f] if "\x01" in value else [value]
                    computed = w.dynamic or (glob and _has_magic(value))
                    options.append(
                        [
                            _Word(f, subs=w.subs, glob=glob, raw=w.raw, quoted=w.quoted)
                            for f in fields
                        ]
                    )
                    for new in options[-1]:
                        new.computed = computed
            if i == 0 and expanded is not None:
                options = self._command_globs(options)
            if len(variants) * len(options) > _MAX_VARIANTS:
                options = options[:1] if expanded is None else [[w]]
            variants = [v + o for v in variants for o in options]
        return variants

    def _command_globs(self, options: list[list[_Word]]) -> list[list[_Word]]:
        """A glob in command position (``/b*/r[m]``) runs whatever it matches."""
        out: list[list[_Word]] = []
        for option in options:
            if option and _has_magic(option[0].text) and self.cwd is not None:
                pattern = option[0].text
                base = pattern if os.path.isabs(pattern) else os.path.join(self.cwd, pattern)
                matches = sorted(itertools.islice(glob.iglob(base), _MAX_GLOB_MATCHES))
                for m in matches[:_MAX_VARIANTS]:
                    out.append([_Word(m, computed=True), *option[1:]])
                if not matches:
                    out.append([_Word(pattern, dynamic=True, raw=pattern), *option[1:]])
            else:
                out.append(option)
        return out

    def _expand(self, w: _Word) -> list[tuple[str, bool]] | None:
        """The values a word can take (unquoted expansions split at \\x01), None: unknown."""
        if not w.dynamic:
            return [(w.text, w.glob)]
        return self._expand_raw(w.raw, split=True)

    def _expand_raw(self, raw: str, *, split: bool) -> list[tuple[str, bool]] | None:
        alts: list[tuple[str, bool]] = [("", False)]

        def add(values: list[str], glob: bool = False) -> bool:
            nonlocal alts
            if len(alts) * len(values) > _MAX_VARIANTS:
                return False
            alts = [(a + v, g or glob) for a, g in alts for v in values]
            return True

        i, n = 0, len(raw)
        while i < n:
            c = raw[i]
            if c == "\\":
                add([raw[i + 1 : i + 2]])
                i += 2
            elif c == "'":
                end = raw.find("'", i + 1)
                if end < 0:
                    return None
                add([raw[i + 1 : end]])
                i = end + 1
            elif c == '"':
                i += 1
                while i < n and raw[i] != '"':
                    d = raw[i]
                    if d == "\\" and raw[i + 1 : i + 2] in ('"', "\\", "$", "`"):
                        add([raw[i + 1]])
                        i += 2
                    elif d in "$`":
                        values, i = self._expansion(raw, i, quoted=True)
                        if values is None or not add(values):
                            return None
                    else:
                        add([d])
                        i += 1
                i += 1
            elif c in "$`":
                if raw.startswith("$'", i):
                    j = i + 2
                    while j < n and raw[j] != "'":
                        j += 2 if raw[j] == "\\" else 1
                    add([_decode_escapes(raw[i + 2 : j])])
                    i = j + 1
                    continue
                values, i = self._expansion(raw, i, quoted=False)
                if values is None:
                    return None
                if split:
                    values = [re.sub(r"[ \t\n]+", "\x01", v) for v in values]
                if not add(values, glob=any(ch in v for v in values for ch in "*?[")):
                    return None
            else:
                add([c], glob=c in "*?[")
                i += 1
        return alts

    def _expansion(self, raw: str, i: int, *, quoted: bool) -> tuple[list[str] | None, int]:
        """The values of the ``$...`` or backtick expansion at ``raw[i]``, and where it ends."""
        lexer = _Lexer(raw, i)
        if raw[i] == "`":
            probe = _Word()
            lexer._backtick(probe, [])
            return self._static_output(probe.subs[0]), lexer.i
        nxt = raw[i + 1 : i + 2]
        if raw.startswith("$((", i):
            lexer.i = i + 2
            lexer._balanced()
            return None, lexer.i
        if nxt == "(":
            lexer.i = i + 2
            src = lexer._balanced()
            return self._static_output(src), lexer.i
        if nxt == "{":
            lexer.i = i + 2
            body = lexer._braced(_Word())
            return self._braced_value(body), lexer.i
        m = re.match(r"[A-Za-z_]\w*|[0-9@*#?$!-]", raw[i + 1 :])
        if m is None:
            return ["$"], i + 1
        return self._var(m.group(0)), i + 1 + m.end()

    def _braced_value(self, body: str) -> list[str] | None:
        m = re.fullmatch(r"([A-Za-z_]\w*|[0-9@*#?$!-])(?:(:?[-=+?])(.*))?", body, re.DOTALL)
        if m is None:
            return None  # ${#X}, ${X%pat}, ${X/a/b}, ${!X}: not followed
        value = self._var(m.group(1))
        op, word = m.group(2), m.group(3)
        if op is None or op.endswith("?"):
            return value
        if value is None:
            value = [_UNKNOWN]  # unknown: any value, or none and the default
            if op.endswith(("-", "=")):
                value.append("")
        default = self._expand_raw(word or "", split=False)
        alternative = None if default is None else [v for v, _ in default]
        empty = [v for v in value if not v] if op.startswith(":") else []
        if op.endswith(("-", "=")):
            if not empty:
                return value
            return None if alternative is None else [v for v in value if v] + alternative
        # ${X:+word}: the word when X is set (and not empty), else nothing
        if alternative is None:
            return None
        return (alternative if len(empty) < len(value) else []) + ([""] if empty else [])

    def _var(self, name: str) -> list[str] | None:
        if name in self.vars:
            return self.vars[name]
        if name == "HOME":
            return ["~"]
        if name == "PWD":
            return None if self.cwd is None else [self.cwd]
        if name == "IFS":
            return [" "]
        if name in ("LANG", "LC_ALL"):
            return ["C.UTF-8"]
        if name == "TERM":
            return ["dumb"]
        return None

    def _static_output(self, src: str) -> list[str] | None:
        """What ``$(src)`` prints when ``src`` is a lone ``echo``/``printf`` of known words."""
        try:
            pipelines = _parse(src)
        except ValueError:
            return None
        if len(pipelines) != 1 or len(pipelines[0]) != 1:
            return None
        cmd = pipelines[0][0]
        if cmd.redirects or any(w.subs for w in cmd.words):
            return None
        texts: list[str] = []
        for w in cmd.words:
            expanded = self._expand(w)
            if expanded is None or len(expanded) != 1 or _UNKNOWN in expanded[0][0]:
                return None
            texts.extend(
                f for f in expanded[0][0].split("\x01") if f or "\x01" not in expanded[0][0]
            )
        if not texts:
            return None
        name, args = texts[0], texts[1:]
        if name == "echo":
            flags: set[str] = set()
            while args and re.fullmatch(r"-[neE]+", args[0]):
                flags |= set(args.pop(0)[1:])
            text = " ".join(args)
            return [(_decode_escapes(text) if "e" in flags else text).rstrip("\n")]
        if name == "printf":
            out = _printf(args)
            return None if out is None else [out.rstrip("\n")]
        return None

    # -- what one command does ---------------------------------------------------------

    def _check(
        self,
        name: str,
        words: list[_Word],
        cmd: _Simple,
        depth: int,
        *,
        fetch_in_subs: bool,
        via_xargs: bool,
        piped_in: bool,
    ) -> _Hit | None:
        """The worst finding: a deny, else an ask, else a box, else ``None``."""
        args = words[1:]
        texts = [w.text for w in args]
        if name in _PRIVILEGE:
            return "deny", f"{name} runs commands with elevated privileges", "builtin:privilege"
        hits: list[_Hit | None] = []
        if words and words[0].computed:
            reason = f"the command name is computed at run time (here {name})"
            hits.append(("box", reason, "builtin:opaque"))
        if words and words[0].dynamic:
            hits.append(("box", "the command name is only known at run time", "builtin:opaque"))
            as_rm = self._check_rm(args, via_xargs=via_xargs)
            if as_rm is not None and as_rm[0] == "deny":
                reason = f"a command computed at run time, with rm's arguments: {as_rm[1]}"
                return "deny", reason, as_rm[2]
        hits.append(self._code(name, words, cmd, depth, piped_in=piped_in))
        if fetch_in_subs and (_is_interpreter(name) or name in _SOURCING):
            return "deny", f"{name} runs code downloaded from the network", "builtin:remote-exec"
        hits.append(self._destructive(name, args, cmd, depth, via_xargs=via_xargs))
        hits.append(self._system(name, args, cmd))
        hits.append(self._reads(name, words, cmd))
        hits.append(self._writes(name, args, cmd))
        hits.append(self._redirect_hits(cmd))
        hits.append(_credential_printer(name, texts))
        if _dumps_environment(name, texts) or any(
            "/proc/" in w.text and "/environ" in w.text for w in words
        ):
            hits.append(("deny", f"{name} prints the environment (secrets)", "builtin:env-dump"))
        hits.append(_needs_review(name, texts))
        return _worst(hits)

    # -- code: shells, interpreters, runners ---------------------------------------------

    def _code(
        self, name: str, words: list[_Word], cmd: _Simple, depth: int, *, piped_in: bool
    ) -> _Hit | None:
        args = words[1:]
        texts = [w.text for w in args]
        stdin_body = self._stdin_program(cmd)
        if name in _SHELLS:
            script = _dash_c_script(args)
            if script is not None:
                return self._sub_source(script, depth, f"{name} -c")
            if _program_from_stdin(name, words) and stdin_body is not None:
                body, known = stdin_body
                if known:
                    self.source(body, depth + 1)
                return "box", f"{name} runs code fed to it as data", "builtin:opaque"
            return None
        if name == "eval":
            code = _Word(" ".join(texts), dynamic=any(w.dynamic for w in args))
            return self._sub_source(code, depth, "eval")
        if name == "alias":
            for w in args:
                if "=" in w.text:
                    self.source(w.text.split("=", 1)[1], depth + 1, lenient=True)
            return "box", "an alias changes what later commands run", "builtin:opaque"
        if name == "git":
            return self._git_code(args, depth)
        if name == "tar":
            return self._tar_code(args, depth)
        if name == "sed":
            return self._sed_code(args, depth)
        if name in _AWKS:
            return self._awk_code(args, depth)
        if name in ("vim", "vi", "nvim", "ex", "view", "vimdiff", "gvim", "rvim", "gdb"):
            return self._editor_code(name, args, depth)
        if name in ("make", "gmake", "bmake"):
            return self._make_code(args, cmd, depth, piped_in=piped_in)
        if name == "find":
            return None  # -exec is checked with the rest of find
        codes = _inline_code(name, words)
        if codes:
            hits: list[_Hit | None] = [("box", f"{name} runs inline code", "builtin:opaque")]
            for code in codes:
                if not code.dynamic:
                    hits.append(self._scan_code(code.text, depth, name))
            return _worst(hits)
        if _is_interpreter(name) and _program_from_stdin(name, words) and stdin_body:
            body, known = stdin_body
            hits = [("box", f"{name} runs code from a here-document", "builtin:opaque")]
            if known:
                hits.append(self._scan_code(body, depth, name))
            return _worst(hits)
        return None

    def _stdin_program(self, cmd: _Simple) -> tuple[str, bool] | None:
        """A here-document or here-string given as stdin: (its text, whether it is known)."""
        for op, target in reversed(cmd.redirects):
            if op in ("<<", "<<-"):
                body = target.body or ""
                return body, target.quoted or not ("$" in body or "`" in body)
            if op == "<<<":
                expanded = self._expand(target)
                if expanded is None or len(expanded) != 1 or _UNKNOWN in expanded[0][0]:
                    return target.text, False
                return expanded[0][0].replace("\x01", " "), True
            if op == "<":
                return None
        return None

    def _scan_code(self, code: str, depth: int, name: str) -> _Hit | None:
        """Interpreter code: literal credential paths, shell commands, writes, fetch-and-exec."""
        self._tick()
        hits: list[_Hit | None] = []
        for m in _SHELL_IN_CODE.finditer(code):
            shell = m.group(3)
            if m.group(1):  # a list: ["rm", "-rf", "/"]
                end = code.find("]", m.end())
                items = _STRING_IN_CODE.findall(code[m.start(1) : end if end > 0 else m.end()])
                shell = " ".join(shlex_quote(s) for _, s in items)
            self.source(_unescape_code(shell), depth + 1, lenient=True)
        if name.startswith(("perl", "ruby", "php")) or name in _SHELLS:
            for m in re.finditer(r"`([^`]{1,4096})`", code):
                self.source(m.group(1), depth + 1, lenient=True)
        literals = [_unescape_code(m.group(2)) for m in _STRING_IN_CODE.finditer(code)]
        literals += _PATH_IN_CODE.findall(code)
        for text in literals:
            hit = self._credential_text(text, name)
            if hit is not None:
                return hit
            if "/dev/tcp/" in text or "/dev/udp/" in text:
                return (
                    "deny",
                    f"{name} opens a network connection through /dev/tcp",
                    "builtin:exfiltration",
                )
        for pattern in _WRITE_IN_CODE:
            for m in pattern.finditer(code):
                hits.append(self._write_hit(_Word(_unescape_code(m.group("p"))), name))
        if _FETCH_IN_CODE.search(code) and _EXEC_IN_CODE.search(code):
            hits.append(("deny", f"{name} code downloads code and runs it", "builtin:remote-exec"))
        return _worst(hits)

    def _credential_text(self, text: str, name: str) -> _Hit | None:
        rule = "builtin:credentials"
        for candidate in (text, text.split("=", 1)[-1]):
            value = candidate.strip()
            if not value or len(value) > 4096:
                continue
            if is_credential_path(value) or _credential_dir(value):
                return "deny", f"{name} reads the credential file {_show(value)}", rule
            if any(c in value for c in "*?[") and (found := _pattern_names_credential(value)):
                return "deny", f"{name} reads {_show(value)}, which matches {found}", rule
        return None

    def _git_code(self, args: list[_Word], depth: int) -> _Hit | None:
        hits: list[_Hit | None] = []
        texts = [w.text for w in args]
        pairs: list[tuple[str, _Word]] = []
        for i, t in enumerate(texts[:-1]):
            if t == "-c":
                key, _, setting = args[i + 1].text.partition("=")
                pairs.append((key, _Word(setting, dynamic=args[i + 1].dynamic)))
        sub, at = _git_subcommand(texts)
        rest = args[at + 1 :]
        if sub == "config":
            ops = [w for w in rest if not w.text.startswith("-")]
            if len(ops) >= 2:
                pairs.append((ops[0].text, ops[1]))
                if _GIT_CODE_KEYS.fullmatch(ops[0].text.lower()) and not (
                    ops[0].text.lower().startswith("alias.") and not ops[1].text.startswith("!")
                ):
                    hits.append(
                        (
                            "ask",
                            f"git config {ops[0].text} sets a command git runs, also outside "
                            "the sandbox",
                            "builtin:git-config",
                        )
                    )
        for key, value in pairs:
            low = key.lower()
            if not _GIT_CODE_KEYS.fullmatch(low):
                continue
            if low.startswith("alias."):
                if value.text.startswith("!"):
                    hits.append(
                        self._sub_source(_Word(value.text[1:], dynamic=value.dynamic), depth, key)
                    )
            elif low not in ("include.path", "core.hookspath") and not low.startswith("includeif"):
                hits.append(self._sub_source(value, depth, key))
        for w in rest:
            for opt in ("--upload-pack=", "--receive-pack=", "--exec="):
                if w.text.startswith(opt):
                    hits.append(
                        self._sub_source(_Word(w.text[len(opt) :], dynamic=w.dynamic), depth, opt)
                    )
            if w.text.startswith("ext::"):
                hits.append(
                    self._sub_source(_Word(w.text[5:], dynamic=w.dynamic), depth, "git ext::")
                )
        for i, w in enumerate(rest[:-1]):
            if w.text in ("-u", "--upload-pack", "--receive-pack", "--exec"):
                hits.append(self._sub_source(rest[i + 1], depth, w.text))
        return _worst(hits)

    def _tar_code(self, args: list[_Word], depth: int) -> _Hit | None:
        hits: list[_Hit | None] = []
        for w in _option_values(
            args,
            frozenset(
                {"--to-command", "--use-compress-program", "-I", "--info-script", "-F"}
                | {"--new-volume-script", "--rsh-command"}
            ),
        ):
            hits.append(self._sub_source(w, depth, "tar"))
        for w in args:
            m = re.match(r"--checkpoint-action=(?:exec|ttyout|echo)?=?(.*)", w.text)
            if m and w.text.startswith("--checkpoint-action=exec="):
                hits.append(
                    self._sub_source(_Word(m.group(1), dynamic=w.dynamic), depth, "tar checkpoint")
                )
        return _worst(hits)

    def _sed_script(self, args: list[_Word]) -> tuple[list[_Word], list[_Word]]:
        """(the sed scripts, the file operands)."""
        scripts = _option_values(args, frozenset({"-e", "--expression"}))
        files: list[_Word] = []
        skip = False
        explicit = bool(scripts) or any(
            w.text in ("-f", "--file") or w.text.startswith("--file=") for w in args
        )
        for w in args:
            t = w.text
            if skip:
                skip = False
            elif t in ("-e", "--expression", "-f", "--file", "-l", "--line-length"):
                skip = True
            elif t.startswith("-") and t != "-":
                continue
            elif not explicit:
                scripts.append(w)
                explicit = True
            else:
                files.append(w)
        return scripts, files

    def _sed_code(self, args: list[_Word], depth: int) -> _Hit | None:
        scripts, _ = self._sed_script(args)
        hits: list[_Hit | None] = []
        for script in scripts:
            if script.dynamic:
                hits.append(("box", "sed runs a script only known at run time", "builtin:opaque"))
                continue
            for line in re.split(r"[;\n]", script.text):
                cmd = re.sub(
                    r"^\s*(?:\d+|\$|/(?:\\.|[^/])*/|\\(.)(?:\\.|(?!\1).)*\1)?"
                    r"(?:\s*,\s*(?:\d+|\$|/(?:\\.|[^/])*/))?\s*!?\s*",
                    "",
                    line,
                )
                if cmd.startswith("e"):
                    rest = cmd[1:].strip()
                    if rest:
                        self.source(rest, depth + 1)
                    hits.append(("box", "sed's e command runs shell code", "builtin:opaque"))
                elif cmd[:1] in ("w", "W") and cmd[1:2] in (" ", "\t"):
                    hits.append(self._write_hit(_Word(cmd[2:].strip()), "sed"))
                elif cmd[:1] in ("r", "R") and cmd[1:2] in (" ", "\t"):
                    hits.append(self._credential_text(cmd[2:].strip(), "sed"))
                elif cmd.startswith("s") and len(cmd) > 1:
                    delim = cmd[1]
                    parts = re.split(rf"(?<!\\){re.escape(delim)}", cmd[2:])
                    if len(parts) >= 3:
                        flags = parts[2]
                        if "e" in re.split(r"w", flags, maxsplit=1)[0]:
                            hits.append(
                                ("box", "sed's s///e flag runs shell code", "builtin:opaque")
                            )
                        if "w" in flags:
                            target = flags.split("w", 1)[1].strip()
                            hits.append(self._write_hit(_Word(target), "sed"))
        return _worst(hits)

    def _awk_code(self, args: list[_Word], depth: int) -> _Hit | None:
        if any(w.text == "-f" or w.text.startswith("--file") for w in args):
            return None
        ops = _operands(args, frozenset({"-v", "-F", "--assign", "--field-separator"}))
        if not ops:
            return None
        program = ops[0]
        if program.dynamic:
            return "box", "awk runs a program only known at run time", "builtin:opaque"
        code = program.text
        hits: list[_Hit | None] = [self._scan_code(code, depth, "awk")]
        if re.search(r"\bsystem\s*\(|\|\s*getline|\|&|print[f]?[^;}]*\|", code):
            hits.append(("box", "awk runs shell commands", "builtin:opaque"))
            for m in re.finditer(r"""(["'])((?:\\.|(?!\1)[^\\])*)\1\s*\|\s*getline""", code):
                self.source(m.group(2), depth + 1, lenient=True)
            for m in re.finditer(r"""print[f]?[^;}|]*\|\s*(["'])((?:\\.|(?!\1)[^\\])*)\1""", code):
                self.source(m.group(2), depth + 1, lenient=True)
        for m in re.finditer(r"""print[f]?[^;}>]*>>?\s*(["'])((?:\\.|(?!\1)[^\\])*)\1""", code):
            hits.append(self._write_hit(_Word(m.group(2)), "awk"))
        return _worst(hits)

    def _editor_code(self, name: str, args: list[_Word], depth: int) -> _Hit | None:
        cmds = _option_values(args, frozenset({"-c", "--cmd", "-ex", "--eval-command"}))
        cmds += [_Word(w.text[1:], dynamic=w.dynamic) for w in args if w.text.startswith("+")]
        hits: list[_Hit | None] = []
        if any(w.text in ("-s", "-S", "-x", "--batch", "-batch") for w in args):
            hits.append(("box", f"{name} runs a script", "builtin:opaque"))
        for c in cmds:
            if c.dynamic:
                hits.append(
                    ("box", f"{name} runs commands only known at run time", "builtin:opaque")
                )
                continue
            for piece in c.text.split("|"):
                part = piece.strip().lstrip(":").strip()
                m = re.match(r"(?:[\d,.$%]*\s*)?(?:!|sh(?:ell)?\s|call\s+system\(|r\s*!)(.*)", part)
                if m:
                    self.source(m.group(1).strip().strip("'\")"), depth + 1, lenient=True)
                    hits.append(("box", f"{name} runs shell commands", "builtin:opaque"))
                    continue
                m = re.match(r"(?:w|write|sav|saveas|wq|x)!?\s+(\S+)", part)
                if m:
                    hits.append(self._write_hit(_Word(m.group(1)), name))
                elif re.match(r"(?:py|python|pyx|perl|ruby|lua|so|source)\w*\b", part):
                    hits.append(("box", f"{name} runs script code", "builtin:opaque"))
        return _worst(hits)

    def _make_code(
        self, args: list[_Word], cmd: _Simple, depth: int, *, piped_in: bool
    ) -> _Hit | None:
        files = _option_values(args, frozenset({"-f", "--file", "--makefile"}))
        evals = _option_values(args, frozenset({"-E", "--eval"}))
        if evals:
            return "box", "make --eval runs a makefile given on the command line", "builtin:opaque"
        for f in files:
            if f.text in ("-", "/dev/stdin", "/proc/self/fd/0", "/dev/fd/0"):
                stdin = self._stdin_program(cmd)
                if stdin is not None and stdin[1]:
                    for line in stdin[0].split("\n"):
                        if line.startswith("\t"):
                            self.source(line.strip().lstrip("@-+"), depth + 1, lenient=True)
                return "box", "make runs a makefile read from stdin", "builtin:opaque"
        return None

    # -- destruction, system and privilege ---------------------------------------------

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
        if name == "kill":
            targets = _kill_targets(texts)
            if "-1" in targets:
                return "deny", "kill -1 signals every process", rule
            if "1" in targets:
                return "deny", "kill 1 signals init", rule
        if name in ("pkill", "killall") and any(t in ("init", "systemd", "-1") for t in texts):
            return "deny", f"{name} signals init", rule
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

    def _system(self, name: str, args: list[_Word], cmd: _Simple) -> _Hit | None:
        texts = [w.text for w in args]
        ops = [t for t in texts if not t.startswith("-")]
        if name in _SYSTEM_DENY:
            what, rule = _SYSTEM_DENY[name]
            if name == "at" and texts[:1] in (["-l"], ["-q"]):
                return None
            return "deny", f"{name} {what}", rule
        if name == "crontab":
            if (
                texts
                and all(t in ("-l", "-u") or not t.startswith("-") for t in texts)
                and "-l" in texts
            ):
                return None
            return "deny", "crontab installs commands that run later", "builtin:persistence"
        if name in ("systemctl", "loginctl"):
            sub = next((t for t in texts if not t.startswith("-")), None)
            if sub is None or sub in _SYSTEMCTL_READ:
                return None
            return "deny", f"{name} {sub} changes system services", "builtin:system"
        if name == "sysctl":
            if any(t in ("-w", "--write", "-p", "--load", "--system") for t in texts) or any(
                "=" in t for t in ops
            ):
                return "deny", "sysctl -w changes kernel parameters", "builtin:system"
            return None
        if name == "mount":
            if not texts or texts in (["-l"], ["--list"]):
                return None
            return "deny", "mount changes mounts", "builtin:system"
        if name == "ip":
            if any(
                t in ("add", "del", "delete", "set", "flush", "change", "replace", "append")
                for t in ops
            ):
                return "deny", "ip changes the network configuration", "builtin:system"
            return None
        if name in ("chmod", "chattr"):
            mode = ops[0] if ops else ""
            setuid = re.fullmatch(r"[0-7]{4,}", mode) and int(mode[-4]) & 6
            if name == "chmod" and (setuid or re.search(r"[ugoa]*[+=][rwxXt]*s", mode)):
                return "deny", f"chmod {mode} sets the setuid or setgid bit", "builtin:privilege"
        if name in _CONTAINERS:
            joined = " ".join(texts)
            if _CONTAINER_ESCAPES.search(joined):
                return (
                    "deny",
                    f"{name} starts a container with host privileges",
                    "builtin:privilege",
                )
            for value in _option_values(args, frozenset({"-v", "--volume", "--mount"})):
                if value.dynamic:
                    continue
                source = value.text.split(":", 1)[0]
                if "source=" in value.text or "src=" in value.text:
                    m = re.search(r"(?:source|src)=([^,]+)", value.text)
                    source = m.group(1) if m else source
                full = self._full(source) if source.startswith(("/", ".", "~")) else None
                if source.startswith("~") or (full is not None and not self._inside(full)):
                    return (
                        "deny",
                        f"{name} mounts {_show(source)} from the host",
                        "builtin:privilege",
                    )
        if name in _RAW_SOCKETS:
            execs = {"-e", "-c", "--exec", "--sh-exec", "--lua-exec"}
            scan = any(t.startswith("-") and not t.startswith("--") and "z" in t for t in texts)
            if name in ("nc", "ncat", "netcat") and scan and not execs & set(texts):
                return None  # nc -z: a port check that sends nothing (a network ask)
            reason = f"{name} opens a raw network connection (exfiltration)"
            return "deny", reason, "builtin:exfiltration"
        if name in _DNS and any(w.dynamic or w.subs for w in args):
            return (
                "deny",
                f"{name} sends data computed at run time to the network (DNS exfiltration)",
                "builtin:exfiltration",
            )
        if name in _DNS and name not in ("getent",):
            return "ask", f"{name} reaches the network", "builtin:network"
        if name == "kubectl":
            if ops[:2] == ["config", "view"] and any(t in ("--raw", "--flatten") for t in texts):
                return (
                    "deny",
                    "kubectl config view --raw prints cluster credentials",
                    "builtin:credentials",
                )
            if ops[:1] == ["get"] and any(
                o in ("secret", "secrets") or o.startswith("secret/") for o in ops[1:3]
            ):
                return "deny", "kubectl get secret prints secrets", "builtin:credentials"
        if (
            name == "gh"
            and ops[:2] == ["auth", "status"]
            and any(t in ("-t", "--show-token") for t in texts)
        ):
            return "deny", "gh auth status --show-token prints a token", "builtin:credentials"
        if name.startswith("docker-credential-"):
            return "deny", f"{name} prints registry credentials", "builtin:credentials"
        if (
            name == "npm"
            and ops[:2] == ["config", "get"]
            and any("auth" in o.lower() for o in ops[2:])
        ):
            return "deny", "npm config get prints a registry token", "builtin:credentials"
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

    def _reads(self, name: str, words: list[_Word], cmd: _Simple) -> _Hit | None:
        """Credential files among the words a command reads (patterns and outputs excluded)."""
        rule = "builtin:credentials"
        args = words[1:]
        for op, target in cmd.redirects:
            if op in ("<", "<>"):
                hit = self._credential_word(target, "")
                if hit is not None:
                    return hit
        if name in _NON_READERS:
            return None
        candidates = self._read_operands(name, args)
        boxed: _Hit | None = None
        for w in candidates:
            hit = self._credential_word(w, name)
            if hit is not None:
                return hit
            if not w.dynamic and _home_dir(w.text) and name not in _LISTS_ONLY:
                return "deny", f"{name} reads the home directory {_show(w.text)}", rule
            if w.dynamic and boxed is None and name:
                boxed = (
                    "box",
                    f"{name} reads {_show(w.text)}, a path only known at run time",
                    "builtin:opaque",
                )
        return boxed

    def _credential_word(self, w: _Word, name: str) -> _Hit | None:
        rule = "builtin:credentials"
        who = f"{name} reads" if name else "reads"
        values = [w.text]
        if "=" in w.text:
            values.append(w.text.split("=", 1)[1])
        if w.text.startswith("@"):
            values.append(w.text[1:])
        if ":" in w.text and not w.text.startswith(("/", "~", ".")) and "://" not in w.text:
            values.append(w.text.split(":", 1)[1])  # git show HEAD:.env
        for value in values:
            if not value:
                continue
            if is_credential_path(value):
                return "deny", f"{who} the credential file {_show(value)}", rule
            if _credential_dir(value) and name not in ("cd", "pushd", "mkdir"):
                return "deny", f"{who} the credential directory {_show(value)}", rule
            if w.glob:
                found = _pattern_names_credential(value)
                if found is not None:
                    return "deny", f"{who} {_show(value)}, which matches {found}", rule
                for match in self._glob_matches(value):
                    rel = os.path.relpath(match, self.workspace) if self._inside(match) else match
                    if is_credential_path(rel) or _credential_dir(rel):
                        return "deny", f"{who} {_show(value)}, which matches {_show(rel)}", rule
        return None

    def _glob_matches(self, pattern: str) -> list[str]:
        if self.cwd is None or pattern.startswith("~"):
            return []
        base = pattern if os.path.isabs(pattern) else os.path.join(self.cwd, pattern)
        self._tick()
        return list(itertools.islice(glob.iglob(base), _MAX_GLOB_MATCHES))

    def _read_operands(self, name: str, args: list[_Word]) -> list[_Word]:
        """The words of a command that may name files it reads."""
        writes = {id(w) for w in self._write_operands(name, args)}
        if name in _PATTERN_FIRST:
            key = "grep" if name in ("egrep", "fgrep", "zgrep", "ag", "ack", "ack-grep") else name
            key = "awk" if name in _AWKS else "jq" if name in ("yq", "gojq") else key
            patterns, files = _PATTERN_OPTIONS.get(key, (frozenset(), frozenset()))
            out: list[_Word] = list(_option_values(args, files))
            has_pattern = bool(_option_values(args, patterns)) or bool(out and name != "jq")
            if key == "sed":
                _, operands = self._sed_script(args)
                return out + operands
            skip = False
            for w in args:
                t = w.text
                if skip:
                    skip = False
                    continue
                if t in patterns or t in files:
                    skip = True
                    continue
                if key == "jq" and t in ("--slurpfile", "--rawfile"):
                    skip = True
                    continue
                if t.startswith("-") and t != "-":
                    continue
                if not has_pattern:
                    has_pattern = True  # the pattern, the program or the filter
                    continue
                out.append(w)
            if key == "jq":
                for i, w in enumerate(args[:-2]):
                    if w.text in ("--slurpfile", "--rawfile"):
                        out.append(args[i + 2])
            return out
        if name == "find":
            patterns = _PATTERN_OPTIONS["find"][0]
            out = []
            skip = False
            for w in args:
                if skip:
                    skip = False
                    continue
                if w.text in patterns:
                    skip = True
                    continue
                out.append(w)
            return out
        if name == "git":
            texts = [w.text for w in args]
            sub, at = _git_subcommand(texts)
            if sub in _GIT_NON_READERS:
                return []
            if sub == "grep":
                return self._read_operands("grep", args[at + 1 :])
            return [w for w in args[at + 1 :] if w.text != "--"]
        if name == "openssl":
            return [w for w in args if id(w) not in writes and w.text not in ("-out", "-keyout")]
        return [w for w in args if id(w) not in writes]

    # -- writes ------------------------------------------------------------------------

    def _write_operands(self, name: str, args: list[_Word]) -> list[_Word]:
        """The words of a command that name files or directories it writes."""
        ops = _operands(
            args, frozenset({"-t", "--target-directory", "-S", "--suffix", "-m", "--mode"})
        )
        if name in ("cp", "mv", "install", "ln", "rsync", "scp"):
            targets = _option_values(args, frozenset({"-t", "--target-directory"}))
            if targets:
                return targets + (ops if name == "mv" else [])
            if name == "install" and _has_flag([w.text for w in args], "d", "--directory"):
                return ops
            if len(ops) >= 2:
                return [ops[-1], *(ops[:-1] if name == "mv" else [])]
            return [_Word(".")] if name == "ln" else []
        if name == "tee":
            return ops
        if name in ("touch", "mkdir", "rmdir", "truncate", "shred", "unlink", "mkfifo", "mknod"):
            return _operands(
                args, frozenset({"-s", "--size", "-r", "--reference", "-m", "--mode", "-d", "-t"})
            )
        if name in ("chmod", "chown", "chgrp", "chattr", "setfacl"):
            return ops[1:]
        if name == "dd":
            return [_Word(w.text[3:], dynamic=w.dynamic) for w in args if w.text.startswith("of=")]
        in_place = any(
            w.text.startswith("--in-place")
            or (w.text.startswith("-") and not w.text.startswith("--") and "i" in w.text[1:])
            for w in args
        )
        if name == "sed" and in_place:
            return self._sed_script(args)[1]
        if name == "perl" and in_place:
            codes = {id(c) for c in _inline_code(name, [_Word(name), *args])}
            files = [w for w in ops if id(w) not in codes]
            return files if codes else files[1:]
        if name == "curl":
            return _option_values(
                args,
                frozenset(
                    {"-o", "--output", "--output-dir", "-c", "--cookie-jar", "-D", "--dump-header"}
                ),
            )
        if name == "wget":
            return _option_values(
                args,
                frozenset(
                    {
                        "-O",
                        "--output-document",
                        "-P",
                        "--directory-prefix",
                        "-o",
                        "--output-file",
                        "-a",
                        "--append-output",
                    }
                ),
            )
        if name == "tar":
            texts = [w.text for w in args]
            first = texts[0] if texts else ""
            extracting = (
                ("x" in first.lstrip("-") and not first.startswith("--"))
                or "--extract" in texts
                or "-x" in texts
            )
            creating = (
                any(c in first.lstrip("-") for c in "cru") and not first.startswith("--")
            ) or any(t in ("-c", "--create", "-r", "--append", "-u", "--update") for t in texts)
            out = _option_values(args, frozenset({"-C", "--directory"})) if extracting else []
            if creating:
                out += _option_values(args, frozenset({"-f", "--file"}))
                if first and not first.startswith("-") and "f" in first and len(args) > 1:
                    out.append(args[1])
            return out
        if name in ("unzip",):
            return _option_values(args, frozenset({"-d"}))
        if name in ("zip", "7z", "7za"):
            return ops[1:2] if name != "zip" else ops[:1]
        if name in (
            "gcc",
            "cc",
            "g++",
            "c++",
            "clang",
            "clang++",
            "ld",
            "rustc",
            "go",
            "sort",
            "pandoc",
            "patch",
            "as",
            "nvcc",
        ):
            return _option_values(args, frozenset({"-o", "--output"}))
        if name == "openssl":
            return _option_values(args, frozenset({"-out", "-keyout"}))
        if name == "ssh-keygen":
            return _option_values(args, frozenset({"-f"}))
        if name == "git":
            texts = [w.text for w in args]
            sub, at = _git_subcommand(texts)
            if sub == "clone":
                rest = _operands(
                    args[at + 1 :],
                    frozenset(
                        {
                            "-b",
                            "--branch",
                            "-o",
                            "--origin",
                            "--depth",
                            "-c",
                            "--config",
                            "--reference",
                            "--separate-git-dir",
                            "-u",
                            "--upload-pack",
                            "--template",
                        }
                    ),
                )
                return rest[1:2]
            if sub == "init":
                return _operands(
                    args[at + 1 :],
                    frozenset({"--template", "--separate-git-dir", "-b", "--initial-branch"}),
                )
        return []

    def _writes(self, name: str, args: list[_Word], cmd: _Simple) -> _Hit | None:
        hits: list[_Hit | None] = []
        for w in self._write_operands(name, args):
            hits.append(self._write_hit(w, name))
        if name == "ln" and any(
            (w.text.startswith("-") and "s" in w.text[1:] and not w.text.startswith("--"))
            or w.text == "--symbolic"
            for w in args
        ):
            ops = _operands(args, frozenset({"-t", "--target-directory", "-S", "--suffix"}))
            for target in ops[:-1] if len(ops) >= 2 else ops:
                if (
                    target.dynamic
                    or self._outside(target)
                    or not self._inside(os.path.realpath(self._full(target.text) or "/"))
                ):
                    hits.append(
                        (
                            "box",
                            f"ln -s makes a link to {_show(target.text)}, outside the workspace",
                            "builtin:opaque",
                        )
                    )
                    break
        return _worst(hits)

    def _redirect_hits(self, cmd: _Simple) -> _Hit | None:
        hits: list[_Hit | None] = []
        for op, target in cmd.redirects:
            if "/dev/tcp/" in target.text or "/dev/udp/" in target.text:
                return (
                    "deny",
                    f"opens a network connection through {_show(target.text)}",
                    "builtin:exfiltration",
                )
            if op in _OUTPUT_REDIRECTS or (op == ">&" and not re.fullmatch(r"\d+|-", target.text)):
                expanded = self._expand(target) if target.dynamic else [(target.text, target.glob)]
                if expanded is None:
                    hits.append(self._write_hit(target, ""))
                else:
                    for value, glob_ in expanded:
                        if _UNKNOWN in value:
                            hits.append(self._write_hit(target, ""))
                            continue
                        hits.append(
                            self._write_hit(_Word(value.replace("\x01", " "), glob=glob_), "")
                        )
        return _worst(hits)

    def _write_hit(self, w: _Word, name: str) -> _Hit | None:
        """Writing ``w``: denied outside the workspace, reviewed for git hooks and config."""
        who = f"{name} writes" if name else "writes"
        t = w.text
        if "/dev/tcp/" in t or "/dev/udp/" in t:
            return "deny", f"{who} to a network connection ({_show(t)})", "builtin:exfiltration"
        if w.dynamic:
            return "box", f"{who} to {_show(t)}, a path only known at run time", "builtin:opaque"
        if not t:
            return None
        rule = "builtin:write-outside"
        if t.startswith("~"):
            return "deny", f"{who} {_show(t)}: outside the workspace (the home directory)", rule
        full = self._full(t)
        if full is None:
            reason = f"{who} {_show(t)} after a cd to a directory only known at run time"
            return "box", reason, "builtin:opaque"
        if w.glob:
            full = os.path.dirname(re.split(r"[*?\[]", full, maxsplit=1)[0]) or "/"
        if not self._inside(full):
            # /tmp is the sandbox's own; but never a workspace's neighbours (other sessions)
            near = any(full.startswith(os.path.dirname(r.rstrip("/")) + "/") for r in self.roots)
            if full in _SAFE_DEVICES or full in ("/tmp", "/var/tmp", "/dev/shm"):
                return None
            if full.startswith(_WRITABLE_OUTSIDE) and os.path.isabs(t) and not near:
                return None
            return "deny", f"{who} {_show(t)}: outside the workspace", rule
        if not self._inside(os.path.realpath(full)):
            return "deny", f"{who} {_show(t)}, which resolves outside the workspace", rule
        relative = ""
        for r in self.roots:
            if full.startswith(r.rstrip("/") + "/"):
                relative = full[len(r.rstrip("/")) + 1 :]
        why = _protected_file(relative) if relative else None
        if why is not None:
            return "ask", f"{who} {_show(t)}, which {why}", "builtin:protected-file"
        return None

    # -- rm and find ---------------------------------------------------------------------

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
        executes = False
        hits: list[_Hit | None] = []
        i = 0
        while i < len(args):
            if texts[i] in ("-exec", "-execdir", "-ok", "-okdir"):
                executes = True
                j = i + 1
                while j < len(args) and texts[j] not in (";", "+"):
                    j += 1
                ran = self._simple(_Simple(words=args[i + 1 : j]), depth + 1)
                destructive = destructive or (ran is not None and ran.name in ("rm", "shred"))
                i = j
            elif texts[i] in ("-fprint", "-fprint0", "-fprintf", "-fls") and i + 1 < len(args):
                hits.append(self._write_hit(args[i + 1], "find"))
            i += 1
        if destructive:
            for w in starts or [_Word(".")]:
                if self._outside(w):
                    reason = f"find {_show(w.text)} deletes outside the workspace"
                    return "deny", reason, "builtin:destructive"
        if executes:
            names = _option_values(args, _PATTERN_OPTIONS["find"][0])
            for w in names:
                hit = self._credential_word(_Word(w.text, glob=True), "find")
                if hit is None and (
                    is_credential_path(w.text)
                    or any(
                        _component_match(n, w.text)
                        for n in (
                            ".env",
                            ".envrc",
                            ".netrc",
                            ".npmrc",
                            ".pypirc",
                            "id_rsa",
                            "id_ed25519",
                            "credentials",
                            ".git-credentials",
                            ".pgpass",
                        )
                    )
                ):
                    hit = (
                        "deny",
                        f"find -exec runs on files named {_show(w.text)} (credentials)",
                        "builtin:credentials",
                    )
                if hit is not None:
                    return hit
        return _worst(hits)

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


def _scan_substitutions(body: str, w: _Word) -> None:
    """The command substitutions in an unquoted here-document's body (they run)."""
    lexer = _Lexer(body)
    buf: list[str] = []
    while lexer.i < len(body):
        c = body[lexer.i]
        if c == "\\":
            lexer.i += 2
        elif c == "`":
            lexer._backtick(w, buf)
        elif c == "$":
            lexer._dollar(w, buf, quoted=True)
        else:
            lexer.i += 1


def _unescape_code(text: str) -> str:
    """A string literal's escapes (``\\"``, ``\\x2e``) decoded, for reading it as a path."""
    if "\\" not in text:
        return text
    return _decode_escapes(text)


def _credential_printer(name: str, texts: list[str]) -> _Hit | None:
    ops = [t for t in texts if not t.startswith("-") or t.startswith("--export-secret")]
    for cmd, seq in _CREDENTIAL_PRINTERS:
        if name != cmd:
            continue
        n = len(seq)
        if any(tuple(ops[i : i + n]) == seq for i in range(len(ops) - n + 1)):
            if cmd == "aws" and seq[0] == "ssm" and "--with-decryption" not in texts:
                continue
            return "deny", f"{name} {' '.join(seq)} prints a credential", "builtin:credentials"
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
    ReviewDecided: ("note", "edited_input"),
    ToolCallStarted: (),
    ToolCallCompleted: ("output", "excerpt"),
    ToolCallFailed: ("error",),
    ContextCompacted: ("summary",),
    ContextRepaired: (),  # what the check found: ids and counts, written by fleetlog
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
