"""The console's pages in a real headless browser (Debian's chromium, driven by Selenium).

A real fleet makes the home (``fleetlog run --demo 30``: sessions that complete, fail,
and wait for review). The browser logs in with the token and approves a call from
the review queue while no fleet runs (the decision goes to the log); ``fleetlog up``
starts a fleet, which resumes that session, and the session's page follows it to
``completed`` without a reload. A second call is edited in the page, then approved
with the fleet up ("Edit & approve"): the decision goes to the fleet, which finishes
that session at once, its email sent to the edited address. Screenshots go to the
test's directory, and to ``docs/img/`` when ``FLEETLOG_SCREENSHOTS=1``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import Server, chromium_paths, fold_session, serving

from fleetlog.events.schema import ReviewDecided, SessionCompleted, ToolCallCompleted

TOKEN = "browser-test-token-7c2a"
DEMO = "30"  # the smallest demo with two calls for review (email tasks)
REPO = Path(__file__).resolve().parents[1]
#: Where the second review's email goes instead, edited in the page before it is approved.
EDITED_TO = "grace.reviewer@example.org"
#: Fleet-wide budgets, wide enough that no demo session runs into them.
CONFIG = """\
[budgets.acme]
max_cost_usd = 1.0

[budgets.globex]
max_cost_usd = 1.0
max_tokens = 200000

[budgets.initech]
max_cost_usd = 5.0
"""


def _fleetlog(root: Path, *args: str) -> subprocess.Popen[str]:
    """``fleetlog ARGS --home ROOT/home --config ROOT/fleetlog.toml``, run from ``root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "FLEETLOG_"))}
    env["RAY_AUTH_MODE"] = "disabled"  # a loopback test cluster (see tests/conftest.py)
    where = ["--home", str(root / "home"), "--config", str(root / "fleetlog.toml")]
    return subprocess.Popen(
        [sys.executable, "-m", "fleetlog.cli", *args, *where],
        cwd=root,  # no ./fleetlog.toml of the repository's
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(
    proc: subprocess.Popen[str], timeout: float = 150, codes: tuple[int, ...] = (0,)
) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{proc.args} did not finish in {timeout:.0f}s:\n{out[-3000:]}")
    assert proc.returncode in codes, out[-3000:]
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("demo")
    (root / "fleetlog.toml").write_text(CONFIG)
    # Exit 1 is "some sessions failed", which the demo's limit breaches always make.
    _finish(_fleetlog(root, "run", "--demo", DEMO, "--no-progress"), codes=(0, 1))
    with pytest.MonkeyPatch.context() as mp:
        # The console asks a running fleet through a child process, which inherits this:
        # the same (loopback, test-only) Ray settings as the fleet that `up` starts.
        mp.setenv("RAY_AUTH_MODE", "disabled")
        with serving(root / "home", token=TOKEN, config=root / "fleetlog.toml") as server:
            yield server, root


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root, in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--force-device-scale-factor=1",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(predicate: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # the page is redrawing: try again
            last = e
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what or predicate} ({last})")


def _shot(driver: Any, tmp_path: Path, name: str) -> Path:
    """Save a screenshot as a test artifact (and into docs/img/ when asked to)."""
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)), name
    if os.environ.get("FLEETLOG_SCREENSHOTS") == "1":
        target = REPO / "docs" / "img" / f"{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return path


def _js_errors(driver: Any) -> list[str]:
    """Errors the pages' scripts logged (a refused request's 401 is expected, not an error)."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "401" not in e["message"]
    ]


def _approve(browser: Any, card: Any, note: str) -> str:
    from selenium.webdriver.common.by import By

    card.find_element(By.CSS_SELECTOR, ".note").send_keys(note)
    card.find_element(By.CSS_SELECTOR, "button.approve").click()
    flash = browser.find_element(By.ID, "flash")
    text: str = _wait(lambda: "Approved" in flash.text and flash.text, what="the confirmation")
    return text


def _decided(envelope: Any) -> bool:
    return isinstance(envelope.event, ReviewDecided)


def _edit_and_approve(
    server: Server, browser: Any, card: Any, edited: dict[str, Any], tmp_path: Path
) -> str:
    """ "Edit & approve" on card: JSON that does not parse is refused in the page (no
    request is made); then edited is approved. The confirmation's text."""
    from selenium.webdriver.common.by import By

    queued = len(server.call("GET", "/api/reviews")[1])
    card.find_element(By.CSS_SELECTOR, "button.edit").click()
    area = card.find_element(By.CSS_SELECTOR, ".editor .edit-input")
    assert area.is_displayed()
    call_id = card.get_attribute("data-call-id")
    [review] = [r for r in server.call("GET", "/api/reviews")[1] if r["call_id"] == call_id]
    assert json.loads(area.get_attribute("value")) == json.loads(review["input"])  # prefilled
    area.clear()
    area.send_keys('{"to": ')
    card.find_element(By.CSS_SELECTOR, "button.approve-edited").click()
    error = card.find_element(By.CSS_SELECTOR, ".edit-error")
    _wait(lambda: error.is_displayed() and "Not valid JSON" in error.text, what="the inline error")
    assert len(server.call("GET", "/api/reviews")[1]) == queued  # nothing was sent
    area.clear()
    area.send_keys(json.dumps(edited, indent=2))
    assert not error.is_displayed()  # cleared as the input changed
    _shot(browser, tmp_path, "console-review-edit")
    card.find_element(By.CSS_SELECTOR, "button.approve-edited").click()
    flash = browser.find_element(By.ID, "flash")
    text: str = _wait(
        lambda: "Approved (edited)" in flash.text and flash.text, what="the confirmation"
    )
    return text


def test_review_queue_approve_and_watch_the_sessions_complete(
    browser: Any, demo: tuple[Server, Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    server, root = demo
    browser.get(server.url + "/reviews")
    # No token yet in this browser: the API refuses, and the page asks for one.
    panel = _wait(
        lambda: (
            browser.find_element(By.ID, "token-panel").is_displayed()
            and browser.find_element(By.ID, "token-panel")
        ),
        what="the token panel",
    )
    assert "token" in panel.text.lower()
    browser.find_element(By.ID, "token-input").send_keys(TOKEN)
    browser.find_element(By.ID, "token-save").click()
    cards = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#reviews .review"), what="cards")
    status, queue = server.call("GET", "/api/reviews")
    assert status == 200 and len(cards) == len(queue) >= 2
    # Oldest first, as the API lists them; each shows the tool, its input and why.
    assert [c.get_attribute("data-call-id") for c in cards] == [r["call_id"] for r in queue]
    first, second = queue[0], queue[1]
    card = cards[0]
    assert first["tool"] in card.text and first["reason"] in card.text
    assert first["call_hash"] in card.text
    assert browser.find_element(By.ID, "review-count").text == str(len(queue))
    _shot(browser, tmp_path, "console-reviews")

    # A decision names its reviewer: without a name nothing is sent.
    card.find_element(By.CSS_SELECTOR, "button.approve").click()
    flash = browser.find_element(By.ID, "flash")
    _wait(lambda: "reviewer" in flash.text, what="the reviewer prompt")
    assert len(server.call("GET", "/api/reviews")[1]) == len(queue)
    browser.find_element(By.ID, "reviewer").send_keys("Ada Operator")
    assert "recorded in the log" in _approve(browser, card, "ok to send")
    _wait(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "#reviews .review")) == len(queue) - 1,
        what="the card to leave the queue",
    )
    sid, call_id = first["session_id"], first["call_id"]
    state, stream = fold_session(server.home, sid)
    decided = [e.event for e in stream if isinstance(e.event, ReviewDecided)]
    assert [(d.call_id, d.approved, d.reviewer, d.note) for d in decided] == [
        (call_id, True, "Ada Operator", "ok to send")
    ]

    # The session's page shows the decision. An approval recorded with no fleet running
    # waits for one: `fleetlog up` starts a fleet, which resumes the session, and the
    # page follows it live to the end, without a reload.
    browser.get(server.url + "/sessions/" + sid)
    decided_row = _wait(
        lambda: browser.find_element(By.CSS_SELECTOR, '#timeline li[data-type="ReviewDecided"]'),
        what="ReviewDecided in the timeline",
    )
    assert "approved by Ada Operator" in decided_row.text
    badge = browser.find_element(By.ID, "session-status")
    assert badge.get_attribute("data-status") in ("running", "pending")
    browser.execute_script("window.sameDocument = 'yes'")
    _finish(_fleetlog(root, "up", "--hosts", "1"), timeout=120)
    try:
        _wait(
            lambda: badge.get_attribute("data-status") == "completed",
            timeout=60,
            what="the session to complete",
        )
        assert browser.execute_script("return window.sameDocument") == "yes"  # no reload
        assert browser.find_elements(By.CSS_SELECTOR, '#timeline li[data-type="SessionCompleted"]')
        state, stream = fold_session(server.home, sid)
        assert state.status == "completed" and isinstance(stream[-1].event, SessionCompleted)
        sent = [e.event for e in stream if isinstance(e.event, ToolCallCompleted)]
        assert any(e.call_id == call_id and not e.is_error for e in sent)
        assert list((server.home / "outbox").iterdir())  # the approved email, delivered
        _shot(browser, tmp_path, "console-session")

        # With the fleet up, a decision goes to the fleet, which runs the call at once.
        browser.get(server.url + "/reviews")
        fleet = browser.find_element(By.ID, "fleet-state")
        _wait(lambda: "running at" in fleet.text, what="the fleet's state")
        card = _wait(
            lambda: browser.find_element(
                By.CSS_SELECTOR, f'.review[data-call-id="{second["call_id"]}"]'
            ),
            what="the second card",
        )
        # Edit, then approve: the email goes to another address than the model chose.
        edited = {**json.loads(second["input"]), "to": EDITED_TO}
        assert "running fleet goes on" in _edit_and_approve(server, browser, card, edited, tmp_path)
        sid2, call2 = second["session_id"], second["call_id"]
        _wait(
            lambda: fold_session(server.home, sid2)[0].status == "completed",
            timeout=60,
            what="the second session to complete",
        )
        [decided2] = [e.event for e in fold_session(server.home, sid2)[1] if _decided(e)]
        assert decided2.reviewer == "Ada Operator" and json.loads(decided2.edited_input) == edited
        [mail] = [
            p
            for p in (server.home / "outbox").glob("*.eml")
            if f"X-Fleetlog-Call: {call2}" in p.read_text()
        ]
        headers = mail.read_text().split("\n\n", 1)[0]
        assert f"To: {EDITED_TO}" in headers.splitlines(), headers
        # Its timeline shows the input that ran.
        browser.get(server.url + "/sessions/" + sid2)
        shown = _wait(
            lambda: browser.find_element(By.CSS_SELECTOR, "#timeline .edited-input"),
            what="the edited input in the timeline",
        )
        assert json.loads(shown.text) == edited

        # The overview, from the fleet's own projector: counts, charts and budgets.
        browser.get(server.url + "/")
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#chart-cost svg rect.bar"))
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#chart-completion svg path.line"))
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#metrics table tbody tr"))
        status, overview = server.call("GET", "/api/overview")
        assert status == 200 and overview["fleet"].startswith("running at")
        assert overview["counts"]["awaiting_review"] == 0
        completed = browser.find_element(By.CSS_SELECTOR, "#stat-completed .value")
        _wait(lambda: completed.text == str(overview["counts"]["completed"]), what="the count")
        assert "of $5.0000" in browser.find_element(By.ID, "tenants").text  # initech's budget
        _shot(browser, tmp_path, "console-overview")
    finally:
        _finish(_fleetlog(root, "down"), timeout=120)
    assert not _js_errors(browser)


def test_sql_box(browser: Any, demo: tuple[Server, Path]) -> None:
    from selenium.webdriver.common.by import By

    server, _ = demo
    browser.get(server.url + "/")
    browser.execute_script(f"localStorage.setItem('fleetlog.token', '{TOKEN}')")
    browser.get(server.url + "/sql")
    box = browser.find_element(By.ID, "sql-query")
    box.clear()
    box.send_keys("SELECT count(*) AS sessions FROM agent_executions")
    browser.find_element(By.ID, "sql-run").click()
    _wait(
        lambda: browser.find_element(By.CSS_SELECTOR, "#sql-result th").text == "sessions",
        what="this query's result",
    )
    assert browser.find_element(By.CSS_SELECTOR, "#sql-result td").text == DEMO
    box.clear()
    box.send_keys("DELETE FROM events")
    browser.find_element(By.ID, "sql-run").click()
    error = browser.find_element(By.ID, "sql-error")
    _wait(lambda: error.is_displayed() and "read-only" in error.text, what="the refusal")
    assert not browser.find_elements(By.CSS_SELECTOR, "#sql-result td")
