"""Issue 14's fetch panel in real headless Chromium, against tests/provider/fake_payer.py over
real HTTP and real Celery workers: a fetch that takes long says so and what it waits on,
and offers Cancel (the payer is told, Bulk Data req 119) and Retry; a failed one says why
in a sentence, with the technical detail one click away; focus goes to the status, then to
the result, and the status line is read out once per step.

axe-core checks each of those states (tests/emr/test_accessibility.py checks every page on load).
The slow fetch's screenshot goes to docs/screenshots/fetch-slow.png (the README shows it)."""

import pytest

from provider.models import SyncJob
from tests.axe import assert_no_serious_violations
from tests.browser import DOCS_SCREENSHOTS, chromium, login, shot
from tests.conftest import wait_for
from tests.emr.test_fetch_panel import grace, jack, smith  # noqa: F401  (fixtures)
from tests.provider.conftest import fake_payer, key_file, rsa_keys  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e, pytest.mark.browser]

FETCH = "Fetch history from UnitedCare Health"
# Every text the status line (role=status) takes, in order: one entry per change.
RECORD_ANNOUNCEMENTS = """
window.__announced = [];
new MutationObserver(() => window.__announced.push(document.querySelector('.sync-live').textContent))
  .observe(document.querySelector('.sync-live'), {childList: true, characterData: true, subtree: true});
"""


@pytest.fixture
def page(live_server, smith, jack):  # noqa: F811
    """Dr. Smith's browser on Jack Shaw's page."""
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        login(page, live_server.url, username="jsmith", password="pw-test-123")
        page.goto(f"{live_server.url}/emr/patients/{jack.pk}/")
        yield page
        assert errors == []


def focused(page, selector: str) -> bool:
    return page.evaluate("s => !!document.activeElement.closest(s)", selector)


def live_text(page) -> str:
    return page.locator(".sync-live").inner_text()


def test_with_the_worker_stopped_the_fetch_says_so_and_cancel_and_retry_get_the_history(
    page, settings, start_worker, fake_payer, jack,  # noqa: F811
):
    settings.EMR_FETCH_SLOW_SECONDS = 2
    page.get_by_role("button", name=FETCH).click()
    # Focus goes to the status at once, and the button waits.
    assert focused(page, ".sync-live[role=status]")
    assert page.get_by_role("button", name=FETCH).is_disabled()
    slow = page.locator(".sync-slow")
    slow.wait_for(state="visible", timeout=10_000)
    assert live_text(page) == ("This is taking longer than usual. The hospital's background worker has not picked "
                               "this fetch up: it may be stopped or busy. Tell your IT team if this keeps happening.")
    first = SyncJob.objects.get()

    # Retry: the stuck fetch is cancelled and a new one starts (and is stuck too).
    page.get_by_role("button", name="Retry").click()
    wait_for(lambda: SyncJob.objects.count() == 2, message="the retried fetch")
    assert focused(page, ".sync-live")
    slow.wait_for(state="visible", timeout=10_000)
    second = SyncJob.objects.exclude(pk=first.pk).get()
    first.refresh_from_db()
    assert first.status == SyncJob.Status.CANCELLED

    page.get_by_role("button", name="Cancel fetch").click()
    message = page.locator(".sync-result .sync-message")
    message.wait_for(state="visible")
    assert message.inner_text() == "The fetch was cancelled before it reached UnitedCare Health."
    assert focused(page, ".sync-message") and live_text(page) == "The fetch was cancelled."
    second.refresh_from_db()
    assert second.status == SyncJob.Status.CANCELLED
    assert page.get_by_role("button", name=FETCH).is_enabled() and slow.is_hidden()

    # The worker is back. The cancelled jobs' queued tasks do nothing; Try again fetches, and
    # the status line is read out once per step, never again for a count.
    worker = start_worker()
    page.evaluate(RECORD_ANNOUNCEMENTS)
    page.get_by_role("button", name="Try again").click()
    assert focused(page, ".sync-live")
    try:
        page.locator("#sync[data-history-loaded]").wait_for(timeout=60_000)
    except Exception:
        print(list(SyncJob.objects.values("status", "error", "progress")), worker.log()[-3000:])
        raise
    assert page.locator("#encounters-table tbody tr").count() == 7
    assert "7 encounters" in page.locator(".sync-result .counts").inner_text()
    assert focused(page, "#history")  # the history's heading
    announced = [text for text in page.evaluate("window.__announced") if text]
    assert announced[0] == "Starting the fetch…" and announced[-1].startswith("Fetched 9 records from UnitedCare Health")
    assert len(announced) == len(set(announced)), announced
    assert "Contacting UnitedCare Health…" in announced
    assert page.get_by_role("button", name=FETCH).is_enabled()
    # Only the last fetch reached the payer: the cancelled ones never kicked off.
    assert len(fake_payer.requests_to("$export")) == 1
    assert SyncJob.objects.filter(status=SyncJob.Status.CANCELLED, kicked_off_at__isnull=True).count() == 2


def test_a_payer_that_never_finishes_shows_its_progress_and_cancel_reaches_it(page, settings, celery_worker, fake_payer):  # noqa: F811
    settings.EMR_FETCH_SLOW_SECONDS = 2
    fake_payer.poll_forever, fake_payer.poll_forever_progress = True, "Gathering claims (40%)"
    page.get_by_role("button", name=FETCH).click()
    slow = page.locator(".sync-slow")
    slow.wait_for(state="visible", timeout=15_000)
    page.get_by_text("Gathering claims (40%)").wait_for(timeout=10_000)  # X-Progress (Bulk Data req 135)
    assert live_text(page) == "This is taking longer than usual. UnitedCare Health is still preparing the data."
    assert slow.locator(".sync-payer-says").inner_text() == "UnitedCare Health says: “Gathering claims (40%)”"
    shot(page, "fetch-slow", directory=DOCS_SCREENSHOTS, full_page=False)
    assert_no_serious_violations(page, "the slow fetch's notice")

    page.get_by_role("button", name="Cancel fetch").click()
    message = page.locator(".sync-result .sync-message")
    message.wait_for(state="visible")
    assert message.inner_text() == "The fetch was cancelled, and UnitedCare Health was told to stop."
    shot(page, "fetch-cancelled", full_page=False)
    assert_no_serious_violations(page, "a cancelled fetch")
    job = SyncJob.objects.get()
    assert job.status == SyncJob.Status.CANCELLED
    # Bulk Data req 119: the client cancels the export with DELETE on its status URL.
    deletes = fake_payer.requests_to("/status/", "DELETE")
    assert len(deletes) == 1 and job.status_url.endswith(deletes[0].path)
    polls = len(fake_payer.requests_to("/status/", "GET"))
    page.wait_for_timeout(2500)  # past the payer's Retry-After: a poll would have come
    assert len(fake_payer.requests_to("/status/", "GET")) == polls, celery_worker.log()[-2000:]


def test_a_failed_fetch_says_why_and_the_detail_is_one_click_away(page, celery_worker, grace):  # noqa: F811
    grace.client_id = "not-registered-at-the-payer"
    grace.save(update_fields=["client_id"])
    page.get_by_role("button", name=FETCH).click()
    message = page.locator(".sync-result .sync-message")
    message.wait_for(state="visible", timeout=30_000)
    assert message.inner_text().startswith("UnitedCare Health did not accept this hospital's credentials, so nothing was fetched.")
    assert "alert-error" in message.get_attribute("class")
    assert focused(page, ".sync-message") and live_text(page) == "The fetch failed."
    detail = page.locator(".sync-technical pre")
    assert detail.is_hidden()
    page.get_by_text("Technical detail").click()
    assert detail.is_visible() and "The token request was refused (400)" in detail.inner_text()
    shot(page, "fetch-failed", full_page=False)
    assert_no_serious_violations(page, "a failed fetch, its technical detail open")
    assert page.get_by_role("button", name="Try again").is_visible()
    assert page.get_by_role("button", name=FETCH).is_enabled()

    page.reload()  # the same on page load, from the server
    assert page.locator(".sync-message").inner_text().startswith("UnitedCare Health did not accept this hospital's credentials")
    assert page.locator(".sync-technical pre").is_hidden()
    page.get_by_text("Technical detail").click()
    assert "The token request was refused (400)" in page.locator(".sync-technical pre").inner_text()
