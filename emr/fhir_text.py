"""Reading FHIR JSON for display: references, dates, names, quantities. Every string that
comes out of a resource is plain text here; the templates escape it and no narrative
(``text.div``) is ever read."""

from __future__ import annotations

import datetime as dt

from django.utils.dateparse import parse_date, parse_datetime

from emr import terms


def codeable_text(concept: dict | None) -> str:
    """Return a CodeableConcept's text, else its first coding's display, else its code."""
    if not concept:
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if coding.get("display"):
            return str(coding["display"])
    for coding in concept.get("coding") or []:
        if coding.get("code"):
            return str(coding["code"])
    return ""


def coding_code(concept: dict | None) -> str:
    for coding in (concept or {}).get("coding") or []:
        if coding.get("code"):
            return str(coding["code"])
    return ""


def ref_key(reference: dict | None) -> tuple[str, str] | None:
    """Return (type, id) of a literal reference, relative or absolute (FHIR R4 §2.3.0.3)."""
    value = (reference or {}).get("reference") or ""
    parts = value.rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] and parts[-1]:
        return parts[-2], parts[-1]
    return None


def parse_when(value: str | None) -> dt.datetime | None:
    """Parse a FHIR date or dateTime (partial dates allowed) into an aware datetime."""
    if not value:
        return None
    value = str(value)
    parsed = parse_datetime(value) if "T" in value else None
    if parsed is None:
        padded = value + "-01" * (3 - len(value.split("-"))) if len(value) < 10 else value[:10]
        day = parse_date(padded)
        if day is None:
            return None
        parsed = dt.datetime.combine(day, dt.time())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def human_name(resource: dict) -> str:
    for name in resource.get("name") or []:
        if name.get("text"):
            return str(name["text"])
        parts = [*(name.get("prefix") or []), *(name.get("given") or []), name.get("family") or ""]
        text = " ".join(str(p) for p in parts if p)
        if text:
            return text
    return ""


def quantity_text(q: dict) -> str:
    value = q.get("value")
    unit = terms.unit_text(q.get("unit") or q.get("code"))
    return f"{value} {unit}".strip() if value is not None else ""


def observation_value(obs: dict) -> str:
    if "valueQuantity" in obs:
        return quantity_text(obs["valueQuantity"])
    if "valueCodeableConcept" in obs:
        return codeable_text(obs["valueCodeableConcept"])
    for key in ("valueString", "valueBoolean", "valueInteger", "valueDateTime"):
        if key in obs:
            return str(obs[key])
    parts = []
    for comp in obs.get("component") or []:
        value = quantity_text(comp.get("valueQuantity") or {}) or codeable_text(comp.get("valueCodeableConcept"))
        if value:
            parts.append(f"{codeable_text(comp.get('code'))}: {value}")
    return "; ".join(parts)

