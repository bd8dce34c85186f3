"""Reading FHIR JSON for display: references, dates, names, quantities. Every string that
comes out of a resource is plain text here; the templates escape it and no narrative
(``text.div``) is ever read. Each helper takes whatever the JSON holds (ingest validates,
but a value of the wrong shape must read as nothing, never as an error page)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils.dateparse import parse_date, parse_datetime

from emr import terms


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def dicts(value: Any) -> list[dict]:
    """Return the dicts of a JSON array (nothing for anything else)."""
    return [v for v in as_list(value) if isinstance(v, dict)]


def text(value: Any) -> str:
    """Return a JSON string or number as text ("" for objects, arrays, null)."""
    return str(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else ""


def ref_key(reference: Any) -> tuple[str, str] | None:
    """Return (type, id) of a literal reference, relative or absolute (FHIR R4 §2.3.0.3)."""
    parts = text(as_dict(reference).get("reference")).rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] and parts[-1]:
        return parts[-2], parts[-1]
    return None


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
            parsed = dt.datetime.combine(day, dt.time())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


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
