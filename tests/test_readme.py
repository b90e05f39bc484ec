"""The README and docs/ stay true: generated reference, links, commands, examples, length.

Nothing here starts Ray: it reads the files and asks the code (the config schema, the
CLI's argument parser, the projections' DDL) whether what they say exists.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import duckdb
import msgspec
import pytest

from fleetlog import reference
from fleetlog.cli import _parser
from fleetlog.config import parse_config, parse_task
from fleetlog.projections.projector import TABLES_SQL

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
# About 250 (issue 15), of which the generated configuration reference is ~55.
MAX_README_LINES = 270
REGENERATE = "run `.venv/bin/python -m fleetlog.reference --write README.md`"


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _section(text: str, title: str) -> str:
    """The body of the ``## title`` section."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README has no `## {title}` section"
    return m.group(1)


def _blocks(text: str, *langs: str) -> list[str]:
    """The fenced code blocks of the given info strings (all when none are given)."""
    out = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        if not langs or lang in langs:
            out.append(body)
    return out


# --- (a) the configuration reference -------------------------------------------------------


def test_readme_config_reference_is_the_generated_one() -> None:
    found = reference.readme_block(_text(README))
    assert found is not None, (
        f"README.md has no {reference.START} … {reference.END} block; add the two markers "
        f"and {REGENERATE}"
    )
    assert found == reference.render(), (
        f"README.md's configuration reference differs from fleetlog/config.py's schema: "
        f"{REGENERATE}"
    )


def test_every_config_key_is_described() -> None:
    missing = [
        f"{s.name}.{k.name}" for s in reference.sections() for k in s.keys if not k.description
    ]
    assert not missing, (
        f"config keys with no description: {missing}. Write a `#:` comment above the field "
        "in fleetlog/config.py, or an entry in DESCRIPTIONS in fleetlog/reference.py; then "
        + REGENERATE
    )


def test_descriptions_table_has_no_stale_entries() -> None:
    used = {
        f"{s.name}.{k.name}"
        for s in reference.sections()
        for k in s.keys
        if k.described_by == "table"
    }
    stale = sorted(set(reference.DESCRIPTIONS) - used)
    assert not stale, (
        f"DESCRIPTIONS in fleetlog/reference.py names {stale}: no such key, or config.py "
        "documents it with a `#:` comment now (which wins); remove the entries"
    )
    keys = {f"{s.name}.{k.name}" for s in reference.sections() for k in s.keys}
    assert not sorted(set(reference.EXAMPLES) - keys), "EXAMPLES names keys that do not exist"


def test_every_section_has_a_header_and_a_purpose() -> None:
    names = [s.name for s in reference.sections()]
    assert names, "no sections found in fleetlog.config.Config"
    assert sorted(names) == sorted(reference.SECTIONS), (
        "SECTIONS in fleetlog/reference.py must name exactly the sections of Config"
    )
    assert len(reference.render().splitlines()) == 2 + len(names) + sum(
        len(s.keys) for s in reference.sections()
    )


def _example_doc(section: reference.Section, line: str) -> str:
    header = section.header.replace('"<model id>"', '"claude-sonnet-4-5"')
    header = re.sub(r"<\w+>", "example", header)
    return f"{header}\n{line}\n"


def test_every_key_has_an_example_that_parses_and_sets_it() -> None:
    for section in reference.sections():
        for key in section.keys:
            where = f"{section.name}.{key.name}"
            assert key.example, f"{where}: add an example to EXAMPLES in fleetlog/reference.py"
            doc = _example_doc(section, key.example)
            try:
                config = parse_config(doc, source=f"example for {where}")
            except Exception as e:  # the message names the problem
                pytest.fail(f"the example for {where} does not parse: {e}")
            value = tomllib.loads(key.example)
            assert list(value) == [key.name], f"{where}: the example must set `{key.name}`"
            holder = getattr(config, section.name)
            if isinstance(holder, dict):
                holder = next(iter(holder.values()))
            got = getattr(holder, key.name)
            want = value[key.name]
            if isinstance(got, msgspec.Struct):
                got = {k: v for k, v in msgspec.structs.asdict(got).items() if v is not None}
            assert got == want, f"{where}: the example sets {got!r}, expected {want!r}"


def test_the_reference_names_defaults_the_parser_applies() -> None:
    """A config with nothing in it has every default the reference shows."""
    empty = parse_config("")
    for section in reference.sections():
        holder = getattr(empty, section.name)
        if holder is None or isinstance(holder, dict):
            continue  # [policy] absent, [models.*] / [budgets.*] / [agents.*]: none configured
        for key in section.keys:
            assert getattr(holder, key.name) == key.default, f"{section.name}.{key.name}"


def test_the_reference_command_prints_and_checks(tmp_path: Path) -> None:
    out = subprocess.run(
        [_python(), "-m", "fleetlog.reference"], capture_output=True, text=True, check=True
    )
    assert out.stdout == reference.render()
    stale = tmp_path / "README.md"
    stale.write_text(f"x\n{reference.START}\nold\n{reference.END}\ny\n")
    assert reference.main(["--check", str(stale)]) == 1
    assert reference.main(["--write", str(stale)]) == 0
    assert reference.main(["--check", str(stale)]) == 0
    text = _text(stale)
    assert text.startswith("x\n") and text.endswith(f"{reference.END}\ny\n")


def _python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else shutil.which("python3") or "python3"


# --- (b) links -----------------------------------------------------------------------------

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(text: str) -> set[str]:
    """GitHub's ids for the headings of a Markdown file."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", _strip_fences(text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _strip_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _ignored(path: Path) -> bool:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return False
    done = subprocess.run(
        ["git", "check-ignore", "-q", str(path.relative_to(ROOT))], cwd=ROOT, check=False
    )
    return done.returncode == 0


def _broken_links(md: Path) -> list[str]:
    problems = []
    text = _text(md)
    for m in _LINK.finditer(_prose(text)):
        target = m.group(1) or m.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (md.parent / path_part).resolve() if path_part else md
        shown = f"{md.relative_to(ROOT)}: ({target})"
        if ROOT not in dest.parents and dest != ROOT:
            problems.append(f"{shown} points outside the repository")
            continue
        if not dest.exists():
            problems.append(f"{shown} does not exist")
            continue
        if _ignored(dest):
            problems.append(f"{shown} is ignored by git: a clone does not have it")
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(_text(dest)):
            problems.append(f"{shown}: no heading with the id #{anchor}")
    return problems


def test_relative_links_point_to_files_in_the_repository() -> None:
    assert DOCS, "docs/*.md not found"
    problems = [p for md in [README, *DOCS] for p in _broken_links(md)]
    assert not problems, "broken links:\n" + "\n".join(problems)


# --- (c) length ----------------------------------------------------------------------------


def test_readme_is_short() -> None:
    lines = len(_text(README).splitlines())
    assert lines < MAX_README_LINES, (
        f"README.md has {lines} lines (limit {MAX_README_LINES}): move details to docs/"
    )


# --- (d) the two commands ------------------------------------------------------------------


def _code_lines(path: Path) -> list[str]:
    return [
        line.strip()
        for line in _text(path).splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_the_two_commands_are_what_ci_and_setup_run() -> None:
    blocks = [b.strip() for b in _blocks(_section(_text(README), "The two commands"), "sh")]
    assert len(blocks) == 2, f"`## The two commands` must hold two sh blocks, found {blocks}"
    tests, main_job = blocks

    # The test command is the one CI runs.
    assert tests == "scripts/test"
    ci = _code_lines(ROOT / ".ci" / "run")
    assert any(re.fullmatch(r"(exec\s+)?(bash\s+)?(\./)?scripts/test(\s+.*)?", c) for c in ci), (
        f".ci/run no longer runs scripts/test: update the README's test command ({ci})"
    )
    test_script = _code_lines(ROOT / "scripts" / "test")
    assert any("scripts/setup" in c for c in test_script), "scripts/test must set up .venv"
    for tool in ("ruff check", "ruff format --check", "mypy", "pytest"):
        assert any(tool in c for c in test_script), f"the README says scripts/test runs {tool}"

    # The main job: setup, then a command the CLI accepts.
    setup, _, run = main_job.partition(" && ")
    assert setup == "scripts/setup"
    for script in ("scripts/setup", "scripts/test", ".ci/run"):
        assert (ROOT / script).stat().st_mode & 0o111, f"{script} is not executable"
    assert any(".venv" in c for c in _code_lines(ROOT / "scripts" / "setup"))
    argv = shlex.split(run)
    assert argv[0] == ".venv/bin/fleetlog"
    args = _parser().parse_args(argv[1:])
    assert (args.command, args.demo) == ("run", 200)


# --- (e) every command line and example in the README is accepted --------------------------


def _fleetlog_commands(text: str) -> list[list[str]]:
    """The argv (after ``fleetlog``) of every fleetlog command in sh/console blocks."""
    out = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        if lang not in ("sh", "console"):
            continue
        pending = ""
        for raw in body.splitlines():
            if pending:
                line = pending + "\n" + raw
            elif lang == "sh":
                line = raw
            elif raw.startswith("$ "):
                line = raw[2:]
            else:
                continue  # a console block's output
            try:
                argv = shlex.split(line, comments=True)
            except ValueError:  # an open quote: the command goes on on the next line
                pending = line
                continue
            pending = ""
            for i, word in enumerate(argv):
                if word.endswith("fleetlog") and (i == 0 or argv[i - 1] in ("&&", "--")):
                    rest = argv[i + 1 :]
                    out.append(rest[: rest.index("&&")] if "&&" in rest else rest)
        assert not pending, f"unterminated command: {pending!r}"
    return out


def test_every_fleetlog_command_in_the_readme_and_docs_parses() -> None:
    db = duckdb.connect()
    db.execute(TABLES_SQL)
    for md in [README, *DOCS]:
        commands = _fleetlog_commands(_text(md))
        seen = set()
        for argv in commands:
            shown = f"`fleetlog {shlex.join(argv)}` (in {md.relative_to(ROOT)})"
            try:
                args = _parser().parse_args(argv)
            except SystemExit:
                pytest.fail(f"the CLI refuses {shown}")
            seen.add(args.command)
            if args.command == "sql":  # and its query names tables and columns that exist
                try:
                    db.execute(f"EXPLAIN {args.query}")
                except duckdb.Error as e:
                    pytest.fail(f"{shown}: {e}")
        if md == README:
            tour = {"run", "reviews", "approve", "show", "sql", "metrics"}
            assert tour <= seen, f"the tour lacks {sorted(tour - seen)}"


def test_toml_examples_in_the_readme_are_valid_configs() -> None:
    blocks = _blocks(_text(README), "toml")
    assert blocks
    for block in blocks:
        parse_config(block, source="README.md")


def test_tasks_file_example_is_a_valid_task() -> None:
    blocks = _blocks(_section(_text(README), "Tasks files"), "json")
    assert blocks
    for line in "".join(blocks).splitlines():
        task = parse_task(json.loads(line), source="README.md", line=1)
        assert task.prompt
    documented = re.findall(
        r"^\| `(\w+)`(?: / `(\w+)`)? \|", _section(_text(README), "Tasks files"), re.M
    )
    keys = {k for pair in documented for k in pair if k}
    from fleetlog.config import Task

    assert keys == set(Task.__struct_fields__), "the tasks-file table must list every task key"


def test_documented_tables_and_columns_exist() -> None:
    db = duckdb.connect()
    db.execute(TABLES_SQL)
    section = _section(_text(README), "Tables and columns")
    rows = re.findall(r"^\| `(\w+)` \|[^|]*\| (.+) \|$", section, re.M)
    assert len(rows) >= 7, rows
    for table, cells in rows:
        real = {
            name for (name,) in db.execute(f"SELECT column_name FROM (DESCRIBE {table})").fetchall()
        }
        for column in re.findall(r"`(\w+)`", cells):
            assert column in real, f"README.md: {table}.{column} does not exist"


def test_benchmark_commands_exist() -> None:
    section = _section(_text(README), "Benchmarks")
    modules = re.findall(r"python -m bench\.(\w+)", section)
    assert modules
    for module in modules:
        assert (ROOT / "bench" / f"{module}.py").is_file(), f"bench/{module}.py"
