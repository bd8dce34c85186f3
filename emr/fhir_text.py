"""Reading FHIR JSON for display: references, dates, names, quantities. Every string that
comes out of a resource is plain text here; the templates escape it and no narrative
(``text.div``) is ever read. Each helper takes whatever the JSON holds (ingest validates,
but a value of the wrong shape must read as nothing, never as an error page)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from emr import terms

# A JSON string or number as text ("" for anything else).
text = terms.scalar_text


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def dicts(value: Any) -> list[dict]:
    """Return the dicts of a JSON array (nothing for anything else)."""
    return [v for v in as_list(value) if isinstance(v, dict)]


def ref_key(reference: Any) -> tuple[str, str] | None:
    """Return (type, id) of a literal reference, relative or absolute (FHIR R4 §2.3.0.3)."""
    parts = text(as_dict(reference).get("reference")).rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] and parts[-1]:
        return parts[-2], parts[-1]
    return None


# Years a page can show in any time zone (years 1 and 9999 overflow when converted); a
# record dated outside them reads as undated.
_SHOWABLE_YEARS = (2, 9998)


def showable(when: dt.date) -> bool:
    """Return whether a page can show the date or time in any time zone."""
    return _SHOWABLE_YEARS[0] <= when.year <= _SHOWABLE_YEARS[1]


def parse_when(value: Any) -> dt.datetime | None:
    """Parse a FHIR date or dateTime (partial dates allowed) into an aware datetime; None
    for anything else (an impossible date such as 2024-02-30 included)."""
    value = text(value)
    if not value:
        return None
    try:
        parsed = parse_datetime(value) if "T" in value else None
        if parsed is None:
            padded = value + "-01" * (3 - len(value.split("-"))) if len(value) < 10 else value[:10]
            day = parse_date(padded)
            if day is None:
                return None
            # A FHIR date has no time zone: it is that calendar day wherever it is read, so
            # it is midnight in the zone pages are shown in, never a UTC midnight that shows
            # as the day before west of Greenwich.
            if not showable(day):
                return None
            return timezone.make_aware(dt.datetime.combine(day, dt.time()))
    except (ValueError, OverflowError):
        return None
    if parsed.tzinfo is None:
        # FHIR R4 dateTime: "If hours and minutes are specified, a time zone SHALL be populated".
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed if showable(parsed) else None


def human_name(resource: dict) -> str:
    for name in dicts(resource.get("name")):
        if text(name.get("text")):
            return text(name["text"])
        parts = [*as_list(name.get("prefix")), *as_list(name.get("given")), name.get("family")]
        words = " ".join(text(p) for p in parts if text(p))
        if words:
            return words
    return ""


def quantity_text(quantity: Any) -> str:
    """Return a Quantity in words: "1 tablet", "2 tablets", "101.4 kg"."""
    quantity = as_dict(quantity)
    value = quantity.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    unit = terms.unit_text(text(quantity.get("unit")) or text(quantity.get("code")), count=value)
    return f"{value} {unit}".strip()
