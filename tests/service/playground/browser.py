"""Headless Debian chromium driven by Selenium, for the playground's browser tests.

The browser runs with a fresh profile and everything that would reach the network turned off
(this machine's network is closed); `make browser-tools` installs `chromium` and
`chromium-driver` (deploy/tools/install-browser.sh) and records why when it cannot.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
INSTALL_FAILED = ROOT / ".browser-install-failed"
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--window-size=1400,1000",
)


def find_browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or skip quoting why they are missing."""
    browser = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    if INSTALL_FAILED.exists():
        pytest.skip(f"chromium could not be installed: {INSTALL_FAILED.read_text().strip()[-500:]}")
    pytest.skip("chromium and chromium-driver are not installed (run `make browser-tools`)")


def start_chrome():  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_browser()
    profile = tempfile.mkdtemp(prefix="kiln-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    chrome.set_page_load_timeout(30)
    chrome.kiln_profile = profile  # removed by quit_chrome
    return chrome


def quit_chrome(chrome) -> None:  # type: ignore[no-untyped-def]
    chrome.quit()
    shutil.rmtree(chrome.kiln_profile, ignore_errors=True)


def console_errors(chrome) -> list[dict]:  # type: ignore[no-untyped-def]
    return [e for e in chrome.get_log("browser") if e["level"] == "SEVERE"]
