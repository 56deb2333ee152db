"""A real browser: headless Chromium, started once per session, a fresh context per test."""

import os
from pathlib import Path

import pytest

from tests.support.people import PASSWORD

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}
TIMEOUT_MS = 15_000


@pytest.fixture(scope="session")
def chromium():
    """The session's Chromium, started by the first test that opens a page.

    A missing Chromium fails that test itself. Playwright's sync API keeps an event loop on
    this thread from then on, while tests make plain synchronous ORM calls; the ordering
    plugin runs the browser tests after all others, so only they run with Django's
    async-safety check relaxed."""
    started = {}

    def launch():
        if "browser" not in started:
            if not CHROMIUM.exists():
                pytest.fail("Chromium is not installed at /usr/bin/chromium; install the Debian package chromium "
                            "(make test does this).", pytrace=False)
            from playwright.sync_api import sync_playwright

            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
            started["playwright"] = sync_playwright().start()
            started["browser"] = started["playwright"].chromium.launch(executable_path=str(CHROMIUM),
                                                                       args=CHROMIUM_ARGS)
        return started["browser"]

    yield launch
    if "browser" in started:
        started["browser"].close()
    if "playwright" in started:
        started["playwright"].stop()


@pytest.fixture
def open_page(chromium):
    """open_page() -> a Playwright page at 1280x900, in a context of its own (no cookies or
    storage shared with another test)."""
    contexts = []

    def open_page():
        context = chromium().new_context(viewport=VIEWPORT)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


def sign_in_with_password(page, base_url, username):
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("button:has-text('Continue')")
