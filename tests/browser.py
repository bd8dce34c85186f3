"""Headless Chromium for the browser tests (Debian's chromium, driven by Playwright)."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

SCREENSHOTS = Path(__file__).resolve().parents[1] / "var" / "screenshots"
CHROMIUM = os.environ.get("PA_CHROMIUM", "/usr/bin/chromium")


@contextmanager
def chromium() -> Iterator[Browser]:
    # Playwright runs an event loop in this thread; the ORM calls the test makes between
    # page actions are synchronous and safe here.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"],
        )
        try:
            yield browser
        finally:
            browser.close()


DOCS_SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


def shot(page: Page, name: str, *, full_page: bool = True, directory: Path = SCREENSHOTS) -> Path:
    """Save a screenshot of the page under var/screenshots/ (kept by CI as an artifact), or
    under ``directory`` (DOCS_SCREENSHOTS for the ones the README shows)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def login(page: Page, base_url: str, *, username: str, password: str) -> None:
    page.goto(f"{base_url}/emr/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base_url}/emr/")
