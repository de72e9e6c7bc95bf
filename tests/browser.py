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


# -- Label Studio's pages, as a person uses them -------------------------------------------------

LOAD_ERROR = "There was an issue loading URL"  # the editor's text when a picture fails to load
NO_MORE = "No More Tasks Left in Queue"        # the labeling stream's end
# Label Studio's editor state, read (never driven) from the page: which task is on screen.
_TASK_ID = "return (window.Htx && window.Htx.task) ? window.Htx.task.id : null"
# The editor draws each <Image> into an <img> of a blob: URL once it fetched the task's URL.
_PICTURES = """return Array.from(document.querySelectorAll('img')).filter(i => i.src.startsWith('blob:')).map(i => {
  const r = i.getBoundingClientRect();
  return {natural: [i.naturalWidth, i.naturalHeight], shown: [r.width, r.height], left: r.left, top: r.top}; })"""


def body_text(driver) -> str:
    """The page's visible text (read by script: an element handle goes stale when the page moves on)."""
    return driver.execute_script("return document.body ? document.body.innerText : ''") or ""


def log_in(driver, ls_url: str, email: str, password: str) -> None:
    """Label Studio's login form, filled in and sent."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{ls_url}/user/login/")
    driver.find_element(By.NAME, "email").send_keys(email)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    try:
        WebDriverWait(driver, 60).until(lambda d: "/user/login" not in d.current_url)
    except TimeoutException:
        raise AssertionError(f"login of {email} failed:\n{body_text(driver)[:300]}") from None


def sign_up(driver, ls_url: str, invite_token: str, email: str, password: str) -> None:
    """What an invited expert does: open the invite link, fill in the form, land logged in."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{ls_url}/user/signup/?token={invite_token}")
    driver.find_element(By.NAME, "email").send_keys(email)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    WebDriverWait(driver, 120).until(lambda d: "/user/signup" not in d.current_url)


def pictures(driver) -> list[dict]:
    """The editor's pictures in page order: natural and on-screen size, position."""
    return driver.execute_script(_PICTURES)


def task_on_screen(driver, done: list[int]):
    """The next task's id once both pictures are loaded, a load error's task, NO_MORE at the
    stream's end, or None while loading (for WebDriverWait)."""
    body = body_text(driver)
    if NO_MORE in body:
        return NO_MORE
    tid = driver.execute_script(_TASK_ID)
    if not tid or tid in done:
        return None
    pics = pictures(driver)
    if LOAD_ERROR in body or (len(pics) >= 2 and all(p["natural"][0] for p in pics)):
        return tid
    return None


def click_choice(driver, kind: str, value: str) -> None:
    """Click the label of a radio (kind "radio") or checkbox ("checkbox") choice, as a person does."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//input[@type='{kind}' and @name='{value}']/ancestor::label").click()


def submit(driver) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "[data-testid=bottombar-submit-button]").click()
