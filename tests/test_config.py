"""``fleetlog.toml`` and tasks files: real files, one-line errors that name the file and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleetlog.config import (
    DEFAULT_TOOLS,
    EXAMPLE_TOML,
    AgentConfig,
    Config,
    LimitOverrides,
    ModelConfig,
    Task,
    derived_task_id,
    load_config,
    load_tasks,
    new_task_id,
    parse_policy_rule,
    parse_task,
    session_id_for,
)
from fleetlog.events.errors import ConfigError, TaskFileError
from fleetlog.events.schema import Limits

# --- configuration ----------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str, name: str = "x.toml") -> str:
    write(tmp_path / name, text)
    with pytest.raises(ConfigError) as info:
        load_config(name, cwd=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"config {name}: ")
    assert info.value.path == name
    return message


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load_config(None, cwd=tmp_path)
    assert config == Config()
    assert config.source is None
    assert config.fleet.hosts == 2
    assert config.fleet.log == "file"
    assert config.fleet.model is None and config.fleet.tools_module is None
    assert config.context.compact_at == 0.8 and config.context.keep_recent_turns == 4
    assert config.limits == Limits()
    assert config.budgets == {} and config.agents == {} and config.models == {}
    assert config.policy is None
    agent = config.agent("anything")
    assert agent == AgentConfig()
    assert agent.tools == list(DEFAULT_TOOLS)
    assert agent.system == "" and agent.model is None
    scripted = config.model_config("scripted")
    assert (scripted.context_window, scripted.input_usd_per_mtok) == (200_000, 3.0)
    assert scripted.output_usd_per_mtok == 15.0


def test_default_file_in_cwd_is_picked_up(tmp_path: Path) -> None:
    write(tmp_path / "fleetlog.toml", "[fleet]\nhosts = 5\n")
    config = load_config(None, cwd=tmp_path)
    assert config.fleet.hosts == 5
    assert config.source == "fleetlog.toml"
    # The default file's errors name it too.
    write(tmp_path / "fleetlog.toml", "[fleet]\nhostss = 5\n")
    with pytest.raises(
        ConfigError, match=r"^config fleetlog\.toml: unknown key `hostss` in \[fleet\]"
    ):
        load_config(None, cwd=tmp_path)


def test_absolute_path_ignores_cwd(tmp_path: Path) -> None:
    path = write(tmp_path / "abs.toml", "[context]\nkeep_recent_turns = 7\n")
    config = load_config(path, cwd=tmp_path / "elsewhere")
    assert config.context.keep_recent_turns == 7
    assert config.source == str(path)


def test_spec_example_round_trip(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "fleetlog.toml", EXAMPLE_TOML))
    assert config.fleet.hosts == 2 and config.fleet.log == "file"
    assert config.fleet.model == "scripted"
    assert config.models == {
        "claude-sonnet-4-5": ModelConfig(
            context_window=200_000, input_usd_per_mtok=3.0, output_usd_per_mtok=15.0
        )
    }
    assert config.context.compact_at == 0.8 and config.context.keep_recent_turns == 4
    assert config.limits == Limits(
        max_steps=25,
        max_tokens=50_000,
        max_cost_usd=1.0,
        step_timeout_s=30.0,
        total_timeout_s=300.0,
        max_identical_calls=3,
    )
    # TOML integers become floats where Limits says float.
    assert isinstance(config.limits.step_timeout_s, float)
    assert config.budgets["acme"].max_cost_usd == 50.0
    assert config.budgets["acme"].max_tokens == 5_000_000
    coder = config.agent("coder")
    assert coder.system == "You are a careful coding agent."
    assert coder.tools == ["read_file", "write_file", "list_dir", "run_shell", "send_email"]
    assert coder.model == "claude-sonnet-4-5"
    assert coder.limits == LimitOverrides(max_steps=40)
    assert config.policy is not None
    assert config.policy.deny == ["run_shell(rm -rf *)", "read_file(**/.env)"]
    assert config.policy.ask == ["send_email", "run_shell(git push *)"]
    assert config.policy.allow == ["read_file", "list_dir", "write_file", "run_shell"]
    assert config.model_for("coder") == "claude-sonnet-4-5"
    assert config.model_for("other") == "scripted"
    assert config.limits_for("coder", None).max_steps == 40


def test_empty_policy_section_is_configured(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "p.toml", "[policy]\n"))
    assert config.policy is not None
    assert (config.policy.deny, config.policy.ask, config.policy.allow) == ([], [], [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[fleet]\nhostss = 3\n", "unknown key `hostss` in [fleet] (did you mean `hosts`?)"),
        ("[fleet]\nhosts = 0\n", "[fleet] hosts must be an integer >= 1, got 0"),
        ("[fleet]\nhosts = true\n", "[fleet] hosts must be an integer >= 1, got true"),
        ("[fleet]\nhosts = 2.5\n", "[fleet] hosts must be an integer >= 1, got 2.5"),
        (
            '[fleet]\nlog = "mysql://db"\n',
            "[fleet] log must be \"file\" or a postgresql:// URL, got 'mysql://db'",
        ),
        (
            '[fleet]\nlog = "postgre://fleet:s3cret@db/x"\n',
            "[fleet] log must be \"file\" or a postgresql:// URL, got 'postgre://***@db/x'",
        ),
        ("[fleet]\nmodel = 3\n", "[fleet] model must be a string, got 3"),
        ('[fleet]\nmodel = ""\n', "[fleet] model must not be empty"),
        (
            '[fleet]\ntools_module = "my-tools"\n',
            "[fleet] tools_module must be a dotted module name, got 'my-tools'",
        ),
        ("fleet = 3\n", "[fleet] must be a table, got 3"),
        ("[fleeet]\n", "unknown section `fleeet` (did you mean `fleet`?)"),
        ("hosts = 2\n", "unknown top-level key `hosts`"),
        (
            '[limits]\nmax_steps = "ten"\n',
            "[limits] max_steps must be an integer >= 1, got 'ten'",
        ),
        ("[limits]\nmax_tokens = 0\n", "[limits] max_tokens must be an integer >= 1, got 0"),
        ("[limits]\nmax_cost_usd = 0\n", "[limits] max_cost_usd must be a number > 0, got 0"),
        ("[limits]\nstep_timeout_s = -1\n", "[limits] step_timeout_s must be a number > 0"),
        ("[limits]\ntotal_timeout_s = 0.0\n", "[limits] total_timeout_s must be a number > 0"),
        ("[limits]\nmax_identical_calls = 0\n", "[limits] max_identical_calls must be"),
        ("[limits]\nmax_stepz = 3\n", "unknown key `max_stepz` in [limits]"),
        ("[context]\ncompact_at = 1.5\n", "[context] compact_at must be a number > 0 and <= 1"),
        ("[context]\ncompact_at = 0\n", "[context] compact_at must be a number > 0 and <= 1"),
        (
            "[context]\nkeep_recent_turns = 0\n",
            "[context] keep_recent_turns must be an integer >= 1, got 0",
        ),
        (
            '[models."claude-x"]\ninput_usd_per_mtok = -1\n',
            "[models.claude-x] input_usd_per_mtok must be a number >= 0, got -1",
        ),
        (
            '[models."claude-3.5"]\noutput_usd_per_mtok = -0.5\n',
            '[models."claude-3.5"] output_usd_per_mtok must be a number >= 0, got -0.5',
        ),
        (
            '[models.m]\ncontext_window = "big"\n',
            "[models.m] context_window must be an integer >= 1, got 'big'",
        ),
        ("[models.m]\nwindow = 1\n", "unknown key `window` in [models.m]"),
        ("[budgets.acme]\nmax_cost_usd = 0\n", "[budgets.acme] max_cost_usd must be a number > 0"),
        ("[budgets.acme]\nmax_tokens = 0\n", "[budgets.acme] max_tokens must be an integer >= 1"),
        ("[budgets.acme]\nmax_usd = 1\n", "unknown key `max_usd` in [budgets.acme]"),
        ("[agents]\ncoder = 3\n", "[agents.coder] must be a table, got 3"),
        ("[agents.coder]\nprompt = 'x'\n", "unknown key `prompt` in [agents.coder]"),
        (
            '[agents.coder]\ntools = "read_file"\n',
            "[agents.coder] tools must be a list of strings, got 'read_file'",
        ),
        ("[agents.coder]\ntools = [1]\n", "[agents.coder] tools[0] must be a string, got 1"),
        (
            '[agents.coder]\ntools = ["read file"]\n',
            "[agents.coder] tools[0] must be a tool name",
        ),
        (
            '[agents.coder]\ntools = ["read_file", "read_file"]\n',
            "[agents.coder] tools lists `read_file` twice",
        ),
        (
            "[agents.coder]\nlimits = { max_stepz = 40 }\n",
            "unknown key `max_stepz` in [agents.coder] limits (did you mean `max_steps`?)",
        ),
        (
            "[agents.coder]\nlimits = { max_steps = 0 }\n",
            "[agents.coder] limits.max_steps must be an integer >= 1, got 0",
        ),
        ("[policy]\nalow = []\n", "unknown key `alow` in [policy] (did you mean `allow`?)"),
        ('[policy]\ndeny = "run_shell"\n', "[policy] deny must be a list of strings"),
        ("[policy]\nask = [3]\n", "[policy] ask[0] must be a string, got 3"),
        (
            '[policy]\ndeny = ["run_shell(rm -rf *"]\n',
            "[policy] deny[0] must be `tool` or `tool(glob)`, got 'run_shell(rm -rf *'",
        ),
        (
            '[policy]\nallow = ["read_file", "run shell"]\n',
            "[policy] allow[1] must be `tool` or `tool(glob)`, got 'run shell'",
        ),
        ('[policy]\nask = ["send_email()"]\n', "[policy] ask[0] must be `tool` or `tool(glob)`"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    message = config_error(tmp_path, text)
    assert expected in message, message


def test_toml_syntax_error_has_line_number(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[fleet]\nhosts = 2\nlog = "file\n')
    assert "invalid TOML" in message
    assert re.search(r"line 3\b", message), message


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config nope\.toml: no such file$"):
        load_config("nope.toml", cwd=tmp_path)


def test_config_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "bin.toml").write_bytes(b"[fleet]\nmodel = '\xff'\n")
    with pytest.raises(ConfigError, match=r"^config bin\.toml: not UTF-8 text"):
        load_config("bin.toml", cwd=tmp_path)


def test_postgres_log_urls_accepted(tmp_path: Path) -> None:
    for url in ("postgresql://u@db/fleet", "postgres://db/fleet"):
        config = load_config(write(tmp_path / "pg.toml", f'[fleet]\nlog = "{url}"\n'))
        assert config.fleet.log == url


# --- limits, agents and models ------------------------------------------------------------

PRECEDENCE_TOML = """\
[limits]
max_steps = 10
max_tokens = 1000
max_cost_usd = 2.0

[agents.coder]
limits = { max_steps = 20, max_tokens = 2000 }
"""


def test_limits_precedence_defaults_agent_task(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "l.toml", PRECEDENCE_TOML))
    # [limits] over the seed defaults; unset fields keep the seed values.
    assert config.limits == Limits(max_steps=10, max_tokens=1000, max_cost_usd=2.0)
    assert config.limits_for("reviewer", None) == config.limits
    # the agent's overrides over [limits]
    coder = config.limits_for("coder", None)
    assert (coder.max_steps, coder.max_tokens, coder.max_cost_usd) == (20, 2000, 2.0)
    # the task's over the agent's
    task = parse_task({"prompt": "p", "agent": "coder", "limits": {"max_steps": 3}})
    limits = config.limits_for(task.agent, task.limits)
    assert (limits.max_steps, limits.max_tokens, limits.max_cost_usd) == (3, 2000, 2.0)
    assert limits.step_timeout_s == Limits().step_timeout_s
    # an integer for a float limit is fine and becomes a float
    limits = config.limits_for("coder", {"max_cost_usd": 5})
    assert limits.max_cost_usd == 5.0 and isinstance(limits.max_cost_usd, float)


def test_limits_for_rejects_unknown_task_limit() -> None:
    with pytest.raises(TaskFileError, match=r"unknown limit `max_stepz` in `limits`"):
        Config().limits_for("default", {"max_stepz": 3})
    with pytest.raises(TaskFileError, match=r"`limits.max_steps` must be an integer >= 1, got 0"):
        Config().limits_for("default", {"max_steps": 0})


def test_unknown_agent_gets_default_agent(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "a.toml", '[agents.default]\nsystem = "base"\n'))
    assert config.agent("nobody").system == "base"
    assert Config().agent("nobody") == AgentConfig()


def test_a_task_may_name_only_an_agent_the_config_defines(tmp_path: Path) -> None:
    path = write(tmp_path / "a.toml", '[agents.coder]\ntools = ["read_file"]\n[agents.writer]\n')
    config = load_config(path)
    tasks = write(
        tmp_path / "tasks.jsonl",
        '{"prompt": "a", "agent": "coder"}\n{"prompt": "b"}\n{"prompt": "c", "agent": "codre"}\n',
    )
    with pytest.raises(TaskFileError) as info:
        load_tasks(tasks, config)
    assert str(info.value) == (
        f"{tasks}:3: agent `codre` is not defined in {path} (did you mean `coder`?); "
        "it defines coder, writer"
    )
    # Without a config, or one that defines no agents, any name goes (it groups metrics).
    assert [t.agent for t in load_tasks(tasks)] == ["coder", "default", "codre"]
    assert len(load_tasks(tasks, Config())) == 3
    # `default` (a task naming none) is always allowed.
    assert parse_task({"prompt": "x"}, config=config).agent == "default"


def test_absolute_workspaces_only_under_the_roots(tmp_path: Path) -> None:
    roots = tmp_path / "repos"
    (roots / "app").mkdir(parents=True)
    (roots / "out").symlink_to(tmp_path / "elsewhere")
    (roots / "in").symlink_to(roots / "app")
    config = load_config(write(tmp_path / "c.toml", f'[fleet]\nworkspace_roots = ["{roots}"]\n'))
    assert config.fleet.workspace_roots == [str(roots)]

    def workspace(value: str) -> str | None:
        return parse_task({"prompt": "x", "workspace": value}, config=config).workspace

    # Resolved, so the session works in the directory that was checked.
    assert workspace(str(roots / "app")) == str(roots / "app")
    assert workspace(str(roots / "in" / "src")) == str(roots / "app" / "src")
    assert workspace(f"{roots}/app/../app") == str(roots / "app")
    assert workspace("rel/dir") == "rel/dir"  # relative: under the fleet's workspaces
    for escape in (
        str(tmp_path / "elsewhere"),
        f"{roots}/../elsewhere",
        str(roots / "out"),
        str(roots / "out" / "deeper"),
        str(tmp_path / "repos-sibling"),
        "/",
    ):
        with pytest.raises(TaskFileError, match=r"is not under \[fleet\] workspace_roots"):
            workspace(escape)
    with pytest.raises(TaskFileError, match=r"is absolute: allowed only under \[fleet\]"):
        parse_task({"prompt": "x", "workspace": str(roots / "app")}, config=Config())
    message = config_error(tmp_path, '[fleet]\nworkspace_roots = ["srv/repos"]\n')
    assert message.endswith("[fleet] workspace_roots[0] must be an absolute path, got 'srv/repos'")


def test_with_model_puts_every_agent_on_one_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    config = load_config(write(tmp_path / "m.toml", '[agents.coder]\nmodel = "claude-opus-4-1"\n'))
    assert config.model_for("coder") == "claude-opus-4-1"
    assert config.model_for("other") == "claude-sonnet-4-5"
    scripted = config.with_model("scripted")
    assert scripted.model_for("coder") == scripted.model_for("other") == "scripted"
    assert scripted.agent("coder").tools == config.agent("coder").tools


def test_model_for_with_and_without_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert Config().model_for("any") == "scripted"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "")
    assert Config().model_for("any") == "scripted"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    assert Config().model_for("any") == "claude-sonnet-4-5"

    text = '[fleet]\nmodel = "claude-haiku-4-5"\n[agents.coder]\nmodel = "claude-opus-4-1"\n'
    config = load_config(write(tmp_path / "m.toml", text))
    assert config.model_for("coder") == "claude-opus-4-1"
    assert config.model_for("writer") == "claude-haiku-4-5"
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    # a configured model wins even without a key (the fleet reports the missing key itself)
    assert config.model_for("writer") == "claude-haiku-4-5"


def test_model_config_lookup(tmp_path: Path) -> None:
    text = '[models."claude-opus-4-1"]\ninput_usd_per_mtok = 15\noutput_usd_per_mtok = 75\n'
    config = load_config(write(tmp_path / "m.toml", text))
    opus = config.model_config("claude-opus-4-1")
    assert (opus.context_window, opus.input_usd_per_mtok, opus.output_usd_per_mtok) == (
        200_000,
        15.0,
        75.0,
    )
    assert config.model_config("scripted") == ModelConfig()


def test_parse_policy_rule() -> None:
    assert parse_policy_rule("send_email") == ("send_email", None)
    assert parse_policy_rule("run_shell(git push *)") == ("run_shell", "git push *")
    assert parse_policy_rule("run_shell(echo (a))") == ("run_shell", "echo (a)")
    for bad in ("", "run shell", "x()", "x(y", "(y)"):
        with pytest.raises(ValueError, match="must be `tool` or `tool\\(glob\\)`"):
            parse_policy_rule(bad)


# --- tasks files -----------------------------------------------------------------------------

GOOD_TASKS = """\
# a comment, then a blank line

{"id": "t-001", "prompt": "Write hello.txt", "agent": "coder", "tenant": "acme", \
"limits": {"max_steps": 10}, "workspace": "optional/dir"}
   # an indented comment
{"prompt": "List the files"}
\t
{"id": "t-002", "prompt": "Send the report", "limits": {"max_cost_usd": 0.5}}
"""


def test_load_tasks_good_file(tmp_path: Path) -> None:
    tasks = load_tasks(write(tmp_path / "tasks.jsonl", GOOD_TASKS))
    assert tasks == [
        Task(
            prompt="Write hello.txt",
            id="t-001",
            agent="coder",
            tenant="acme",
            limits={"max_steps": 10},
            workspace="optional/dir",
        ),
        Task(prompt="List the files"),
        Task(prompt="Send the report", id="t-002", limits={"max_cost_usd": 0.5}),
    ]
    assert tasks[1].id is None and tasks[1].agent == "default" and tasks[1].tenant == "default"


def test_load_tasks_accepts_str_path_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "win.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\r\n\r\n{"prompt": "b"}\r\n')
    assert [t.prompt for t in load_tasks(str(path))] == ["a", "b"]


def test_empty_tasks_file(tmp_path: Path) -> None:
    assert load_tasks(write(tmp_path / "empty.jsonl", "# nothing yet\n\n")) == []


def task_error(tmp_path: Path, bad_line: str) -> TaskFileError:
    """Write a file whose line 4 is ``bad_line`` and return the error it raises."""
    path = write(
        tmp_path / "tasks.jsonl",
        '# header\n{"id": "ok-1", "prompt": "fine"}\n\n' + bad_line + '\n{"prompt": "after"}\n',
    )
    with pytest.raises(TaskFileError) as info:
        load_tasks(path)
    error = info.value
    assert error.path == str(path)
    assert error.line == 4
    assert str(error).startswith(f"{path}:4: ")
    assert "\n" not in str(error)
    return error


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"promt": "x"}', "unknown key `promt` (did you mean `prompt`?)"),
        ('{"prompt": "x", "priority": 1}', "unknown key `priority`"),
        ('{"id": "t-9"}', "missing required key `prompt`"),
        ('{"prompt": 42}', "`prompt` must be a string, got 42"),
        ('{"prompt": ""}', "`prompt` must not be empty"),
        ('{"prompt": "   "}', "`prompt` must not be empty"),
        ('{"prompt": "x", "agent": 7}', "`agent` must be a string, got 7"),
        ('{"prompt": "x", "tenant": ""}', "`tenant` must not be empty"),
        ('{"prompt": "x", "id": 5}', "`id` must be a string, got 5"),
        ('{"prompt": "x", "id": "has space"}', "`id` must be 1-128 characters from"),
        ('{"prompt": "x", "id": "a/b"}', "`id` must be 1-128 characters from"),
        ('{"prompt": "x", "id": ""}', "`id` must be 1-128 characters from"),
        ('{"prompt": "x", "id": "' + "a" * 129 + '"}', "`id` must be 1-128 characters"),
        ('{"prompt": "x", "limits": 3}', "`limits` must be an object, got 3"),
        (
            '{"prompt": "x", "limits": {"max_stepz": 3}}',
            "unknown limit `max_stepz` in `limits` (did you mean `max_steps`?)",
        ),
        (
            '{"prompt": "x", "limits": {"max_steps": "ten"}}',
            "`limits.max_steps` must be an integer >= 1, got 'ten'",
        ),
        (
            '{"prompt": "x", "limits": {"max_steps": 2.5}}',
            "`limits.max_steps` must be an integer >= 1, got 2.5",
        ),
        (
            '{"prompt": "x", "limits": {"max_cost_usd": 0}}',
            "`limits.max_cost_usd` must be a number > 0, got 0",
        ),
        (
            '{"prompt": "x", "limits": {"max_tokens": true}}',
            "`limits.max_tokens` must be an integer >= 1, got true",
        ),
        ('{"prompt": "x", "workspace": "../up"}', "`workspace` must not contain `..`"),
        ('{"prompt": "x", "workspace": "a/../../b"}', "`workspace` must not contain `..`"),
        (
            '{"prompt": "x", "workspace": "/etc"}',
            "`workspace` '/etc' is absolute: allowed only under [fleet] workspace_roots",
        ),
        ('{"prompt": "x", "workspace": "C:\\\\x"}', "`workspace` must be a relative path"),
        ('{"prompt": "x", "workspace": ""}', "`workspace` must be a non-empty relative path"),
        ('{"prompt": "x",}', "invalid JSON: JSON is malformed"),
        ('{"prompt": "x"', "invalid JSON: Input data was truncated"),
        ('{"prompt": "x"} trailing', "invalid JSON: JSON is malformed: trailing characters"),
        ('["prompt", "x"]', "expected a JSON object, got an array"),
        ('"just a string"', "expected a JSON object, got a string"),
    ],
)
def test_malformed_task_line_names_line_and_key(tmp_path: Path, line: str, expected: str) -> None:
    error = task_error(tmp_path, line)
    assert expected in error.detail, str(error)


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    error = task_error(tmp_path, '{"id": "ok-1", "prompt": "again"}')
    assert error.detail == "duplicate id 'ok-1' (first on line 2)"


def test_first_error_wins(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", '{"prompt": "a"}\n{"promt": "b"}\n{"prompt": 1}\n')
    with pytest.raises(TaskFileError) as info:
        load_tasks(path)
    assert info.value.line == 2 and "unknown key `promt`" in info.value.detail


def test_non_utf8_task_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "\xff"}\n')
    with pytest.raises(TaskFileError, match=r":2: not UTF-8 text"):
        load_tasks(path)


def test_missing_tasks_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(TaskFileError) as info:
        load_tasks(path)
    assert info.value.line == 0
    assert str(info.value) == f"{path}:0: no such file"


def test_parse_task_single() -> None:
    task = parse_task({"prompt": "hi", "id": "job:1.a_b-c"}, source="submit")
    assert task == Task(prompt="hi", id="job:1.a_b-c")
    with pytest.raises(TaskFileError) as info:
        parse_task({"prompt": "hi", "tenat": "acme"}, source="submit")
    assert str(info.value) == "submit:0: unknown key `tenat` (did you mean `tenant`?)"


# --- ids ----------------------------------------------------------------------------------------


def test_session_id_is_deterministic_and_safe() -> None:
    assert session_id_for("t-001") == "s-t-001"
    assert session_id_for("t-001") == session_id_for("t-001")
    odd = session_id_for("has space/and slash")
    assert odd == session_id_for("has space/and slash")
    assert re.fullmatch(r"sx-[0-9a-f]{64}", odd)
    assert session_id_for("a") != session_id_for("b")


def test_new_task_ids_are_unique_ordered_and_safe() -> None:
    ids = [new_task_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    for task_id in ids[:10]:
        assert re.fullmatch(r"t-[0-9a-f]{24}", task_id)
        # a generated id is accepted back as a task id
        assert parse_task({"prompt": "p", "id": task_id}).id == task_id


def test_derived_task_id_is_stable() -> None:
    a = Task(prompt="p", limits={"max_steps": 2, "max_tokens": 9})
    b = Task(prompt="p", limits={"max_tokens": 9, "max_steps": 2})
    assert derived_task_id(a, 0) == derived_task_id(b, 0)
    assert derived_task_id(a, 0) != derived_task_id(a, 1)
    assert derived_task_id(a, 0) != derived_task_id(Task(prompt="q"), 0)
    assert re.fullmatch(r"t-[0-9a-f]{24}", derived_task_id(a, 0))
