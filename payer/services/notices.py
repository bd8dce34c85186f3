"""The Provider Access notice to members (42 CFR 422.121(a)(4), CMS-0057-F).

The payer must tell each member, in plain language, how their data is shared with providers
and how to opt out: before their data is first released, within one week of a coverage
start, and at least yearly. ``notices_send_due`` (a Celery beat task) finds the members who
are due and sends in bounded batches: email through Django's email framework when the member
has an address, else a printable letter kept under the default storage for the mail room.

Safe to run twice: each occasion is claimed by inserting a ``pending`` Notice first, and the
UniqueConstraint on (member, kind, period) lets only one run claim it; the claimant sends and
records the outcome (the database allows that one change of a pending row). A failed attempt
does not hold the constraint, so a later run tries again.
"""

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.mail import EmailMessage
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.template.loader import render_to_string
from django.utils import timezone

from payer.models import ClinicalResource, Member, Notice

logger = logging.getLogger(__name__)

# Bump when the notice's wording changes; recorded with every notice sent.
TEMPLATE_VERSION = "2026.1"
PAYER_NAME = "UnitedCare Health"
MEMBER_SERVICES_PHONE = "1-800-555-0134"
SUBJECT = "How UnitedCare Health shares your health information with your providers"
# 42 CFR 422.121(a)(4)(ii): "no later than one week after the start of coverage".
COVERAGE_START_WINDOW_DAYS = 7
# ... (iii): "at least annually".
ANNUAL_DAYS = 365
DELIVERED = (Notice.Outcome.SENT, Notice.Outcome.QUEUED_FOR_PRINT)


@dataclass
class NoticeRun:
    sent: int = 0
    letters: int = 0
    failed: int = 0
    skipped: int = 0
    member_ids: list[str] = field(default_factory=list)


def members_notified(*, queryset: QuerySet[Member] | None = None) -> QuerySet[Member]:
    """Return the members (of ``queryset``) who have been sent the notice at least once."""
    delivered = Notice.objects.filter(member=OuterRef("pk"), outcome__in=DELIVERED)
    return (queryset if queryset is not None else Member.objects.all()).filter(Exists(delivered))


def _coverage_starts(*, today: date) -> dict[str, date]:
    """Return patient id -> the latest coverage start within the last week (up to today).

    From the member's coverage period (``Member.coverage_start``) and from Coverage
    resources in the clinical repository (whose ``date`` column is ``Coverage.period.start``;
    ``import_claims`` and ``import_fhir`` bring them), whichever is later.
    """
    window_start = today - timedelta(days=COVERAGE_START_WINDOW_DAYS)
    starts: dict[str, date] = dict(
        Member.objects.filter(coverage_start__gte=window_start, coverage_start__lte=today)
        .values_list("patient_id", "coverage_start")
    )
    since = timezone.make_aware(datetime.combine(window_start, datetime.min.time()))
    until = timezone.make_aware(datetime.combine(today + timedelta(days=1), datetime.min.time()))
    rows = ClinicalResource.objects.filter(resource_type="Coverage", date__gte=since, date__lt=until).exclude(patient_id="")
    for patient_id, start in rows.values_list("patient_id", "date"):
        day = timezone.localdate(start)
        starts[patient_id] = max(starts.get(patient_id, day), day)
    return starts


def notices_due(*, today: date, limit: int) -> list[tuple[Member, str, str]]:
    """Return up to ``limit`` (member, kind, period) occasions that are due, oldest need first.

    In order: a coverage start in the last week without its notice; a member never sent the
    notice (before any release of their data); a member whose last notice is a year old.
    """
    due: list[tuple[Member, str, str]] = []
    claimed = Notice.objects.exclude(outcome=Notice.Outcome.FAILED)
    starts = _coverage_starts(today=today)
    if starts:
        members = Member.objects.filter(patient_id__in=starts).order_by("pk")
        for member in members:
            period = starts[member.patient_id].isoformat()
            if not claimed.filter(member=member, kind=Notice.Kind.COVERAGE_START, period=period).exists():
                due.append((member, Notice.Kind.COVERAGE_START, period))
            if len(due) >= limit:
                return due
    taken = {m.pk for m, _, _ in due}
    never = (Member.objects.exclude(Exists(claimed.filter(member=OuterRef("pk"))))
             .exclude(pk__in=taken).order_by("pk")[: limit - len(due)])
    due += [(m, Notice.Kind.INITIAL, "initial") for m in never]
    if len(due) >= limit:
        return due
    taken |= {m.pk for m, _, _ in due}
    year_ago = timezone.now() - timedelta(days=ANNUAL_DAYS)
    period = str(today.year)
    recent = claimed.filter(member=OuterRef("pk"), sent_at__gt=year_ago)
    this_year = claimed.filter(member=OuterRef("pk"), kind=Notice.Kind.ANNUAL, period=period)
    stale = (Member.objects.filter(Exists(claimed.filter(member=OuterRef("pk"))))
             .exclude(Exists(recent)).exclude(Exists(this_year)).exclude(pk__in=taken).order_by("pk")
             [: limit - len(due)])
    due += [(m, Notice.Kind.ANNUAL, period) for m in stale]
    return due


def _context(*, member: Member, sent_at: datetime) -> dict:
    base = settings.PA_BASE_URL or "http://127.0.0.1:8000"
    return {
        "member": member, "payer_name": PAYER_NAME, "phone": MEMBER_SERVICES_PHONE, "sent_at": sent_at,
        "template_version": TEMPLATE_VERSION, "opt_out_url": f"{base}/payer/opt-out/",
        "history_url": f"{base}/payer/my-data/",
    }


def notice_send(*, member: Member, kind: str, period: str, now: datetime | None = None) -> Notice | None:
    """Send one notice occasion to ``member`` and return its record; None if another run has it."""
    now = now or timezone.now()
    channel = Notice.Channel.EMAIL if member.email else Notice.Channel.LETTER
    try:
        with transaction.atomic():
            notice = Notice.objects.create(
                member=member, kind=kind, period=period, channel=channel, template_version=TEMPLATE_VERSION,
                sent_at=now, outcome=Notice.Outcome.PENDING,
            )
    except IntegrityError:
        return None  # The UniqueConstraint: this occasion is another run's.
    context = _context(member=member, sent_at=now)
    body = render_to_string("payer/notices/provider_access.txt", context)
    outcome, detail, letter_path = Notice.Outcome.SENT, "", ""
    try:
        if channel == Notice.Channel.EMAIL:
            EmailMessage(SUBJECT, body, settings.PA_NOTICE_FROM_EMAIL, [member.email]).send()
            detail = f"emailed to {member.email}"
        else:
            html = render_to_string("payer/notices/provider_access_letter.html", {**context, "body": body})
            name = f"notices/{now:%Y-%m-%d}/{member.member_id}-{kind}-{period}.html"
            letter_path = default_storage.save(name, ContentFile(html.encode()))
            outcome, detail = Notice.Outcome.QUEUED_FOR_PRINT, "no email address: letter ready to print and mail"
    except OSError as error:  # SMTP and file errors; the next run tries again
        outcome, detail = Notice.Outcome.FAILED, f"{type(error).__name__}: {error}"[:300]
        logger.warning("Provider Access notice to member %s failed: %s", member.member_id, detail)
    Notice.objects.filter(pk=notice.pk, outcome=Notice.Outcome.PENDING).update(
        outcome=outcome, detail=detail, letter_path=letter_path
    )
    notice.outcome, notice.detail, notice.letter_path = outcome, detail, letter_path
    return notice


def notices_send_due(*, today: date | None = None, batch_size: int | None = None) -> NoticeRun:
    """Send every notice that is due, at most ``batch_size`` (PA_NOTICE_BATCH_SIZE) per run."""
    today = today or timezone.localdate()
    run = NoticeRun()
    for member, kind, period in notices_due(today=today, limit=batch_size or settings.PA_NOTICE_BATCH_SIZE):
        notice = notice_send(member=member, kind=kind, period=period)
        if notice is None:
            run.skipped += 1
            continue
        run.member_ids.append(member.member_id)
        if notice.outcome == Notice.Outcome.SENT:
            run.sent += 1
        elif notice.outcome == Notice.Outcome.QUEUED_FOR_PRINT:
            run.letters += 1
        else:
            run.failed += 1
    return run


def notice_filter_unnotified(*, rows: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], list[str]]:
    """Split export (patient id, member pk) rows into those notified and the patient ids withheld.

    42 CFR 422.121(a)(4)(i): the notice comes before the first release of a member's data.
    With ``PA_EXPORT_ALLOW_UNNOTIFIED`` on, nobody is withheld.
    """
    if settings.PA_EXPORT_ALLOW_UNNOTIFIED or not rows:
        return rows, []
    notified = set(members_notified(queryset=Member.objects.filter(pk__in=[pk for _, pk in rows]))
                   .values_list("pk", flat=True))
    kept = [row for row in rows if row[1] in notified]
    return kept, [patient_id for patient_id, pk in rows if pk not in notified]
