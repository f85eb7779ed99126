"""One real gateway (tiny LM + tiny classifier) per session, one with API keys, and a browser
per module; a failing test leaves a screenshot and the browser console under runs/playground/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live_server import Server
from tests.service.playground.browser import ROOT, find_browser, quit_chrome, start_chrome

SHOTS = ROOT / "runs" / "playground"
GOOD_KEY = "playground-key-0001"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def open_server(tiny_lm_vision_repo: Path) -> Iterator[Server]:
    # 20 ms per engine step: the tiny LM's whole reply is otherwise ready before a loaded browser's
    # first read, and arrives as one chunk where the page is tested for streaming it.
    server = Server(tiny_lm_vision_repo, KILN_FAULT_STEP_DELAY_MS="20")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def keyed_server(tiny_lm_vision_repo: Path) -> Iterator[Server]:
    server = Server(tiny_lm_vision_repo, KILN_API_KEYS=GOOD_KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    find_browser()  # skips, with the reason, before any server is started
    chrome = start_chrome()
    yield chrome
    quit_chrome(chrome)


@pytest.fixture
def chrome(browser, request: pytest.FixtureRequest) -> Iterator[object]:  # type: ignore[no-untyped-def]
    browser.get_log("browser")  # start each test with an empty console
    yield browser
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SHOTS / f"{request.node.name}.png"))
        (SHOTS / f"{request.node.name}.console.json").write_text(json.dumps(browser.get_log("browser"), indent=2))
