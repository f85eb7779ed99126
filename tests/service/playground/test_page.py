"""The playground in a real browser (headless Debian chromium) against a real `kiln serve`."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.live_server import Server
from tests.service.playground.browser import ROOT, console_errors
from tests.service.playground.conftest import GOOD_KEY

pytestmark = pytest.mark.slow


def wait(chrome, seconds: float = 30):  # type: ignore[no-untyped-def]
    return WebDriverWait(chrome, seconds, poll_frequency=0.05)


def open_page(chrome, server: Server) -> None:  # type: ignore[no-untyped-def]
    chrome.get(server.url + "/")
    wait(chrome).until(lambda c: c.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")


def text_of(chrome, element_id: str) -> str:  # type: ignore[no-untyped-def]
    return chrome.find_element(By.ID, element_id).text


def error_text(chrome) -> str:  # type: ignore[no-untyped-def]
    box = chrome.find_element(By.ID, "error")
    return "" if not box.is_displayed() else box.text


def tab(chrome, view: str) -> None:  # type: ignore[no-untyped-def]
    chrome.find_element(By.CSS_SELECTOR, f'#tabs button[data-view="{view}"]').click()


def test_the_page_loads_lists_the_models_and_logs_no_console_error(chrome, open_server: Server) -> None:
    open_page(chrome, open_server)
    wait(chrome).until(lambda c: c.find_element(By.ID, "server-state").get_attribute("data-loaded") == "true")
    text_models = [o.get_attribute("value") for o in chrome.find_elements(By.CSS_SELECTOR, "#text-model option")]
    image_models = [o.get_attribute("value") for o in chrome.find_elements(By.CSS_SELECTOR, "#image-model option")]
    assert text_models == ["tiny-lm"] and image_models == ["tiny-vit"]
    assert not chrome.find_element(By.ID, "key-box").is_displayed()  # keys are off on this server
    assert error_text(chrome) == ""
    assert console_errors(chrome) == []


def test_a_completion_streams_visible_text_with_its_numbers(chrome, open_server: Server) -> None:
    open_page(chrome, open_server)
    prompt = chrome.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("def fib(n):")
    max_tokens = chrome.find_element(By.ID, "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("24")
    chrome.find_element(By.ID, "seed").send_keys("7")
    chrome.find_element(By.ID, "generate").click()
    out = chrome.find_element(By.ID, "completion-output")
    wait(chrome).until(lambda c: out.get_attribute("data-done") == "true")
    generated = out.text.removeprefix("def fib(n):")
    assert out.text.startswith("def fib(n):") and generated.strip(), out.text
    assert int(out.get_attribute("data-chunks")) > 1  # arrived in pieces, not as one answer
    stats = text_of(chrome, "completion-stats")
    assert "TTFT" in stats and "tok/s" in stats and "completion tokens" in stats, stats
    assert console_errors(chrome) == []


def test_the_chat_view_streams_a_reply(chrome, open_server: Server) -> None:
    open_page(chrome, open_server)
    tab(chrome, "chat")
    max_tokens = chrome.find_element(By.ID, "max-tokens")  # the tiny LM's context is 256 tokens
    max_tokens.clear()
    max_tokens.send_keys("16")
    chrome.find_element(By.ID, "chat-input").send_keys("write a loop")
    chrome.find_element(By.ID, "chat-send").click()
    log = chrome.find_element(By.ID, "chat-log")
    wait(chrome).until(lambda c: log.get_attribute("data-done") == "true")
    reply = chrome.find_element(By.CSS_SELECTOR, "#chat-log .msg.assistant")
    assert reply.text.strip() and reply.get_attribute("data-role") == "assistant"
    assert int(log.get_attribute("data-chunks")) > 1
    assert "TTFT" in text_of(chrome, "chat-stats") and "completion tokens" in text_of(chrome, "chat-stats")
    # The next turn sends the conversation so far.
    chrome.find_element(By.ID, "chat-input").send_keys("and another")
    chrome.find_element(By.ID, "chat-send").click()
    wait(chrome).until(lambda c: len(c.find_elements(By.CSS_SELECTOR, "#chat-log .msg.assistant")) == 2)
    wait(chrome).until(lambda c: log.get_attribute("data-done") == "true")
    assert len(chrome.find_elements(By.CSS_SELECTOR, "#chat-log .msg.user")) == 2
    assert console_errors(chrome) == []


def scene_png(tmp_path: Path) -> Path:
    from export.vision.data import make_scenes

    scene = make_scenes("test", limit=1)[0]
    path = tmp_path / "scene.png"
    Image.fromarray(scene.pixels).save(path)
    return path


def overlay_pixels(chrome) -> int:  # type: ignore[no-untyped-def]
    """Painted (non-transparent) pixels on the overlay canvas."""
    script = (
        "const c = document.getElementById('overlay');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;"
    )
    return int(chrome.execute_script(script))


def test_an_uploaded_image_gets_labels_a_prediction_set_and_its_views_drawn(
    chrome, open_server: Server, tmp_path: Path
) -> None:
    open_page(chrome, open_server)
    tab(chrome, "image")
    assert overlay_pixels(chrome) == 0
    chrome.find_element(By.ID, "image-file").send_keys(str(scene_png(tmp_path)))
    overlay = chrome.find_element(By.ID, "overlay")
    wait(chrome).until(lambda c: overlay.get_attribute("data-boxes") != "0" or error_text(c))
    assert error_text(chrome) == ""
    assert overlay.get_attribute("data-boxes") == "10"  # global + 3×3 tiles; each mirror shares its box
    assert overlay_pixels(chrome) > 1000
    rows = chrome.find_elements(By.CSS_SELECTOR, "#views tbody tr")
    assert len(rows) == 20  # (1 + 9) views × (original, mirror)
    weights = [float(r.find_elements(By.TAG_NAME, "td")[5].text.rstrip("%")) for r in rows]
    assert abs(sum(weights) - 100.0) < 0.5
    assert chrome.find_elements(By.CSS_SELECTOR, "#top-labels li")
    assert chrome.find_elements(By.CSS_SELECTOR, "#prediction-set span")
    assert "calibrated" in text_of(chrome, "calibration")
    assert console_errors(chrome) == []


def test_a_bad_key_shows_the_401_and_a_good_one_streams(chrome, keyed_server: Server) -> None:
    open_page(chrome, keyed_server)
    key = chrome.find_element(By.ID, "api-key")
    assert key.is_displayed() and key.get_attribute("type") == "password"
    key.send_keys("not-the-key-0000\t")  # change event
    chrome.find_element(By.ID, "generate").click()
    wait(chrome).until(lambda c: "401" in error_text(c))
    box = chrome.find_element(By.ID, "error")
    assert box.get_attribute("data-code") == "invalid_api_key" and "invalid_api_key" in box.text, box.text
    assert "not valid" in box.text  # the server's message, not a generic one
    key.clear()
    key.send_keys(GOOD_KEY + "\t")
    wait(chrome).until(lambda c: c.find_element(By.ID, "server-state").get_attribute("data-loaded") == "true")
    chrome.find_element(By.ID, "generate").click()
    out = chrome.find_element(By.ID, "completion-output")
    wait(chrome).until(lambda c: out.get_attribute("data-done") == "true" or error_text(c))
    assert error_text(chrome) == "" and out.text.strip() != "def fib(n):"
    # The key lives in the page only: nothing the browser keeps holds it.
    stored = chrome.execute_script("return JSON.stringify(localStorage) + JSON.stringify(sessionStorage)")
    assert GOOD_KEY not in stored


def test_the_playground_can_be_turned_off(tiny_lm_vision_repo: Path) -> None:
    server = Server(tiny_lm_vision_repo, KILN_PLAYGROUND="false")
    try:
        r = httpx.get(server.url + "/")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert httpx.get(server.url + "/playground/app.js").status_code == 404
    finally:
        server.stop()


def test_screenshots_for_the_readme(chrome, tmp_path: Path) -> None:
    """KILN_SCREENSHOTS=docs KILN_SCREENSHOT_REPO=model_repository: the README's pictures, taken
    of the demo models (a streamed completion, then a classified scene with its views)."""
    folder = os.environ.get("KILN_SCREENSHOTS")
    if not folder:
        pytest.skip("set KILN_SCREENSHOTS=docs (and KILN_SCREENSHOT_REPO) to retake the README's screenshots")
    repo = Path(os.environ.get("KILN_SCREENSHOT_REPO", "model_repository")).resolve()
    target = ROOT / folder
    target.mkdir(parents=True, exist_ok=True)
    server = Server(repo)
    try:
        open_page(chrome, server)
        for field, value in (("max-tokens", "64"), ("seed", "1")):
            chrome.find_element(By.ID, field).clear()
            chrome.find_element(By.ID, field).send_keys(value)
        chrome.find_element(By.ID, "generate").click()
        out = chrome.find_element(By.ID, "completion-output")
        wait(chrome, 60).until(lambda c: out.get_attribute("data-done") == "true")
        chrome.save_screenshot(str(target / "playground-completion.png"))
        tab(chrome, "image")
        chrome.find_element(By.ID, "image-file").send_keys(str(scene_png(tmp_path)))
        overlay = chrome.find_element(By.ID, "overlay")
        wait(chrome, 60).until(lambda c: overlay.get_attribute("data-boxes") != "0")
        chrome.save_screenshot(str(target / "playground-image.png"))
    finally:
        server.stop()
