"""Provider Access notices (42 CFR 422.121(a)(4)): before the first release, within 7 days of a
coverage start, yearly; recorded; safe to run twice; and the export's notice gate."""

import datetime as dt

import pytest
from django.core import mail
from django.core.files.storage import default_storage
from django.utils import timezone

from payer.models import Notice
from payer.services.notices import TEMPLATE_VERSION, notice_send, notices_due, notices_send_due
from payer.tasks import notices_send_task
from tests.factories import clinical_resource_create, member_create
from tests.payer.test_export import _kick_off, _population, _resources, _wait_complete

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _letters_in_tmp(settings, tmp_path):
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path / "media")}}}
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def test_every_member_gets_the_notice_before_any_release_by_email_or_letter():
    emailed = member_create(given="Ann")
    emailed.email = "ann@example.org"
    emailed.save(update_fields=["email"])
    lettered = member_create(given="Bob")

    run = notices_send_due(batch_size=10)

    assert (run.sent, run.letters, run.failed) == (1, 1, 0)
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["ann@example.org"]
    assert "opt out at any time" in mail.outbox[0].body and emailed.member_id in mail.outbox[0].body
    email_notice = Notice.objects.get(member=emailed)
    assert (email_notice.kind, email_notice.channel, email_notice.outcome, email_notice.template_version) == (
        "initial", "email", "sent", TEMPLATE_VERSION)
    letter = Notice.objects.get(member=lettered)
    assert (letter.channel, letter.outcome) == ("letter", "queued_for_print")
    html = default_storage.open(letter.letter_path).read().decode()
    assert "<h1>How we share your health information" in html and lettered.member_id in html
    assert str(letter) == f"Before the first release of data notice to {lettered} by printed letter (letter ready to print and mail)"


def test_running_twice_sends_nothing_twice_and_the_constraint_decides():
    member = member_create()
    first = notices_send_task()
    second = notices_send_task()

    assert first["letters"] == 1 and second == {"sent": 0, "letters": 0, "failed": 0, "skipped": 0, "member_ids": []}
    assert Notice.objects.filter(member=member).count() == 1
    # A second run that raced to the same occasion gets nothing to send.
    assert notice_send(member=member, kind=Notice.Kind.INITIAL, period="initial") is None


def test_batches_are_bounded():
    for index in range(5):
        member_create(given=f"M{index}")
    assert notices_send_due(batch_size=2).letters == 2
    assert notices_send_due(batch_size=2).letters == 2
    assert notices_send_due(batch_size=2).letters == 1
    assert notices_send_due(batch_size=2).letters == 0


def test_coverage_start_within_a_week_gets_its_own_notice():
    today = timezone.localdate()
    new = member_create(given="New")
    old = member_create(given="Old")
    notices_send_due(batch_size=10)  # both had their initial notice
    clinical_resource_create(resource_type="Coverage", patient_id=new.patient_id,
                             date=timezone.now() - dt.timedelta(days=3))
    clinical_resource_create(resource_type="Coverage", patient_id=old.patient_id,
                             date=timezone.now() - dt.timedelta(days=10))

    due = notices_due(today=today, limit=10)

    start = (today - dt.timedelta(days=3)).isoformat()
    assert [(m.pk, kind, period) for m, kind, period in due] == [(new.pk, "coverage_start", start)]
    notices_send_due(today=today, batch_size=10)
    notices_send_due(today=today, batch_size=10)
    assert Notice.objects.filter(member=new, kind="coverage_start", period=start).count() == 1
    assert not Notice.objects.filter(member=old, kind="coverage_start").exists()


def test_yearly_notice_when_the_last_is_a_year_old():
    today = timezone.localdate()
    member = member_create()
    Notice.objects.create(member=member, kind="initial", period="initial", channel="letter", template_version="2025.1",
                          sent_at=timezone.now() - dt.timedelta(days=400), outcome="queued_for_print")
    recent = member_create(given="Recent")
    Notice.objects.create(member=recent, kind="initial", period="initial", channel="letter", template_version="2025.1",
                          sent_at=timezone.now() - dt.timedelta(days=100), outcome="queued_for_print")

    assert [(m.pk, kind, period) for m, kind, period in notices_due(today=today, limit=10)] == [
        (member.pk, "annual", str(today.year))]
    notices_send_due(today=today, batch_size=10)
    assert notices_due(today=today, limit=10) == []


def test_a_failed_email_is_recorded_and_tried_again(settings):
    member = member_create()
    member.email = "x@example.org"
    member.save(update_fields=["email"])
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2  # nothing listens

    assert notices_send_due(batch_size=10).failed == 1
    failed = Notice.objects.get(member=member)
    assert failed.outcome == "failed" and failed.detail

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert notices_send_due(batch_size=10).sent == 1
    assert list(Notice.objects.filter(member=member).values_list("outcome", flat=True)) == ["sent", "failed"]


def test_export_withholds_members_not_yet_sent_the_notice_and_says_so(live_server, celery_worker, settings):
    settings.PA_EXPORT_ALLOW_UNNOTIFIED = False  # the default
    pop = _population(members=2)
    notified, unnotified = pop["members"]
    notice_send(member=notified, kind=Notice.Kind.INITIAL, period="initial")

    kick = _kick_off(live_server, pop["token"], f"Group/{pop['group_id']}/$export", params={"_type": "Patient,Encounter"})
    manifest = _wait_complete(kick.headers["Content-Location"], pop["token"], worker=celery_worker).json()
    patients = {r["id"] for r in _resources(manifest, pop["token"])["Patient"]}
    errors = [o for outcomes in _resources(manifest, pop["token"], kind="error").values() for o in outcomes]

    assert patients == {notified.patient_id}
    issues = [issue for outcome in errors for issue in outcome["issue"]]
    assert any(i["code"] == "suppressed" and "1 member(s) withheld" in i["diagnostics"] for i in issues), errors

    # With the setting on, both are exported.
    settings.PA_EXPORT_ALLOW_UNNOTIFIED = True
    kick = _kick_off(live_server, pop["token"], f"Group/{pop['group_id']}/$export", params={"_type": "Patient"})
    manifest = _wait_complete(kick.headers["Content-Location"], pop["token"], worker=celery_worker).json()
    assert {r["id"] for r in _resources(manifest, pop["token"])["Patient"]} == {notified.patient_id, unnotified.patient_id}
    assert manifest["error"] == []
