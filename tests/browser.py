"""Headless Chromium driven by Selenium, for the tests that look at what a person sees.

The browser and its driver are Debian's `chromium` and `chromium-driver` packages, installed by
scripts/setup-browser (scripts/test runs it); nothing downloads a browser at run time. A missing
browser fails the test loudly, as a missing Label Studio does: a silent skip would hide a broken
CI set-up. CAMLOOP_CHROMIUM and CAMLOOP_CHROMEDRIVER point elsewhere when needed.

Usage from a test module::

    from tests.browser import chromium  # noqa: F401  (the fixture)

    def test_x(chromium):
        chromium.get("http://...")
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CAMLOOP_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CAMLOOP_CHROMEDRIVER", "/usr/bin/chromedriver")
# What a CI machine needs: no GPU, no sandbox (containers run as root), and none of the
# browser's own network chatter (updates, sync, field trials), which would only time out here.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")
WINDOW = (1400, 1000)  # a laptop's browser window: Label Studio lays its editor out by it


def start_chromium(profile: Path, window: tuple[int, int] = WINDOW):
    """A fresh headless Chromium with its own profile folder (no state shared between tests)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for what, path in (("Chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if not Path(path).exists():
            raise RuntimeError(f"{what} not found at {path}; run scripts/setup-browser "
                               "(Debian/Ubuntu packages chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for failure messages
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    return driver


@pytest.fixture
def chromium():
    profile = Path(tempfile.mkdtemp(prefix="camloop-chromium-"))
    driver = start_chromium(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console(driver, limit: int = 30) -> str:
    """The browser console's last lines (errors of image loads and CORS end up there)."""
    try:
        entries = driver.get_log("browser")
    except Exception as e:  # noqa: BLE001 — only for a failure message
        return f"(no console: {e})"
    return "\n".join(f"{e['level']}: {e['message'][:400]}" for e in entries[-limit:])
