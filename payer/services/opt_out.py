"""Member opt-out of Provider Access data sharing, and member self-identification.

CMS-0057-F (42 CFR 422.121(a), the Provider Access API, and its parallels) requires payers to let members opt out
of Provider Access data sharing, and to opt back in, at any time. Da Vinci PDex STU 2
("Member Opt-out") leaves the mechanism to the payer. Here the current choice is the
``Member.opted_out`` column (one indexed column for every access check) and the history
is the append-only ``OptOutEvent`` table.
"""

import hmac
import unicodedata
from datetime import date

from django.db import transaction

from payer.models import Member, OptOutEvent


@transaction.atomic
def opt_out_record(
    *,
    member: Member,
    opted_out: bool,
    channel: str,
    changed_by: str,
    note: str = "",
) -> OptOutEvent:
    """Record a member's opt-out choice and make it the current one.

    Lock the member row first so two concurrent changes (the member on the web page and
    a staff member on the phone) are serialized: the last one saved wins, and both are
    in the history. The choice applies from the moment this transaction commits; access
    checks and running exports read ``Member.opted_out`` (CMS-0057-F: an opt-out must
    stop further sharing).

    Recording the state the member is already in is NOT a no-op: it is appended as a
    confirmation event. The member (or staff on their behalf) restated the choice at
    that moment, and the history should show when the choice was last confirmed, not
    only when it last flipped. Nothing is ever updated or deleted in the history.
    """
    if channel not in OptOutEvent.Channel.values:
        raise ValueError(f"Unknown opt-out channel: {channel!r}")
    if not changed_by:
        raise ValueError("changed_by is required")
    locked = Member.objects.select_for_update().get(pk=member.pk)
    event = OptOutEvent.objects.create(
        member=locked,
        opted_out=opted_out,
        channel=channel,
        changed_by=changed_by[:150],
        note=note[:300],
    )
    if locked.opted_out != opted_out:
        Member.objects.filter(pk=locked.pk).update(opted_out=opted_out)
    # Keep the caller's instance current.
    member.opted_out = opted_out
    return event


def _fold(value: str) -> str:
    """Return ``value`` normalized for a case-insensitive, accent-stable comparison."""
    return unicodedata.normalize("NFKC", value).strip().casefold()


# Compared against when no member has the id, so the not-found path does the same work.
_NO_MEMBER = Member(member_id="", family="\x00no-member\x00", birth_date=date(1900, 1, 1))


def member_identify(*, member_id: str, birth_date: date, family: str) -> Member | None:
    """Return the member whose id, date of birth and last name all match, else None.

    The last name compares case-insensitively, the date of birth exactly. Every failure
    (unknown id, wrong date of birth, wrong name) returns the same None after the same
    work: one indexed query and two constant-time comparisons, so neither the answer
    nor its timing tells whether a member id exists.
    """
    member_id = (member_id or "").strip()
    candidate = None
    if member_id and len(member_id) <= 40:
        candidate = Member.objects.filter(member_id__iexact=member_id).first()
    checked = candidate or _NO_MEMBER
    name_ok = hmac.compare_digest(_fold(family or "").encode(), _fold(checked.family).encode())
    dob_ok = hmac.compare_digest(
        (birth_date.isoformat() if birth_date else "").encode(), checked.birth_date.isoformat().encode()
    )
    if candidate is not None and name_ok and dob_ok:
        return candidate
    return None
