"""Search plumbing shared by FHIR servers: parameter parsing, paging links, searchset Bundles.

FHIR R4 search.html and http.html#search. Generic: nothing here knows payer or provider models.
"""

import datetime
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlencode

from django.db.models import Q

from fhirkit.outcome import FHIRError

# R4 datatypes.html#id
FHIR_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

# R4 search.html#prefix: the prefixes this server supports on date parameters. ne, sa, eb
# and ap answer 400 rather than being silently treated as eq.
DATE_PREFIXES = ("eq", "gt", "ge", "lt", "le")

_DATE_RE = re.compile(
    r"^(?P<year>\d{4})(-(?P<month>\d{2})(-(?P<day>\d{2})"
    r"(T(?P<hour>\d{2}):(?P<minute>\d{2})(:(?P<second>\d{2})(?P<fraction>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def search_error(name: str, diagnostics: str) -> FHIRError:
    """Return a 400 ``invalid`` error about the search parameter ``name``."""
    return FHIRError(f"Search parameter {name}: {diagnostics}", status=400, code="invalid", expression=[name])


def count_parse(value: str | None, *, default: int = 50, maximum: int = 1000) -> int:
    """Return the page size from ``_count`` (R4 search.html#count), capped at ``maximum``.

    The spec lets a server return fewer than asked, so a larger ``_count`` is capped, not refused.
    """
    if value is None or value == "":
        return default
    # str.isdigit() accepts "²" and other digits int() refuses: ASCII digits only.
    if not (value.isascii() and value.isdigit()):
        raise search_error("_count", f"{value!r} is not a non-negative integer.")
    # A huge value is capped without int(): Python refuses to parse over 4300 digits.
    return maximum if len(value) > 12 else min(int(value), maximum)


def offset_parse(value: str | None, *, name: str = "_offset") -> int:
    """Return the paging offset carried in the ``next``/``previous`` links."""
    if value is None or value == "":
        return 0
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        raise search_error(name, f"{value!r} is not a valid page offset.")
    return int(value)


def date_range_parse(value: str, *, name: str) -> tuple[datetime.datetime, datetime.datetime]:
    """Return the half-open range [low, high) a FHIR date, dateTime or instant value stands for.

    R4 search.html#date: "the precision of the value determines the range"; 2024-05 is the
    whole of May. A value without a time zone is read as UTC.
    """
    match = _DATE_RE.match(value)
    if not match:
        raise search_error(name, f"{value!r} is not a FHIR date or dateTime.")
    parts = match.groupdict()
    try:
        year = int(parts["year"])
        month = int(parts["month"] or 1)
        day = int(parts["day"] or 1)
        hour = int(parts["hour"] or 0)
        minute = int(parts["minute"] or 0)
        second = int(parts["second"] or 0)
        micro = int(round(float(parts["fraction"]) * 1_000_000)) if parts["fraction"] else 0
        tz = datetime.timezone.utc
        if parts["tz"] and parts["tz"] != "Z":
            sign = 1 if parts["tz"][0] == "+" else -1
            tz_hours, tz_minutes = int(parts["tz"][1:3]), int(parts["tz"][4:6])
            tz = datetime.timezone(sign * datetime.timedelta(hours=tz_hours, minutes=tz_minutes))
        low = datetime.datetime(year, month, day, hour, minute, second, min(micro, 999_999), tzinfo=tz)
    except (ValueError, OverflowError):
        raise search_error(name, f"{value!r} is not a valid date.") from None
    try:
        if parts["month"] is None:
            high = low.replace(year=year + 1)
        elif parts["day"] is None:
            high = low.replace(year=year + 1, month=1) if month == 12 else low.replace(month=month + 1)
        elif parts["hour"] is None:
            high = low + datetime.timedelta(days=1)
        elif parts["second"] is None:
            high = low + datetime.timedelta(minutes=1)
        elif parts["fraction"] is None:
            high = low + datetime.timedelta(seconds=1)
        else:
            high = low + datetime.timedelta(microseconds=1)
    except (ValueError, OverflowError):  # the year 9999
        high = datetime.datetime.max.replace(tzinfo=tz)
    return _utc_clamped(low), _utc_clamped(high)


def _utc_clamped(value: datetime.datetime) -> datetime.datetime:
    # 9999-12-31T23:59:59-12:00 is in the year 10000 in UTC, which no datetime (nor a
    # database column) holds: clamp to the ends of the range, where the comparison
    # still means what the value asked for ("after the year 9999": nothing).
    try:
        return value.astimezone(datetime.timezone.utc)
    except OverflowError:
        end = datetime.datetime.max if value.year > 5000 else datetime.datetime.min
        return end.replace(tzinfo=datetime.timezone.utc)


def date_param_q(field: str, value: str, *, name: str) -> Q:
    """Return a filter for a date search parameter with an optional prefix (eq, gt, ge, lt, le).

    The stored column is an instant, so (R4 search.html#prefix) ``gt`` means after the whole
    range of the value, ``le`` means before its end, and ``eq`` means inside it.
    """
    prefix, rest = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
    if prefix not in DATE_PREFIXES:
        raise search_error(name, f"the prefix {prefix!r} is not supported (use one of {', '.join(DATE_PREFIXES)}).")
    low, high = date_range_parse(rest, name=name)
    return {
        "eq": Q(**{f"{field}__gte": low, f"{field}__lt": high}),
        "gt": Q(**{f"{field}__gte": high}),
        "ge": Q(**{f"{field}__gte": low}),
        "lt": Q(**{f"{field}__lt": low}),
        "le": Q(**{f"{field}__lt": high}),
    }[prefix]


def token_parse(value: str) -> tuple[str | None, str]:
    """Split a token parameter ``[system]|code`` into (system or None, code) (R4 search.html#token)."""
    if "|" in value:
        system, _, code = value.partition("|")
        return system, code
    return None, value


def reference_ids(value: str, *, name: str, resource_type: str) -> list[str]:
    """Return the ids named by a reference parameter: ``123``, ``Patient/123``, or a comma list (OR)."""
    ids = []
    for item in value.split(","):
        item = item.strip()
        if "/" in item:
            kind, _, item = item.rpartition("/")
            if kind.rsplit("/", 1)[-1] != resource_type:
                raise search_error(name, f"expected a reference to {resource_type}.")
        if not FHIR_ID_RE.match(item):
            raise search_error(name, f"{item!r} is not a valid id.")
        ids.append(item)
    return ids


def id_list_parse(value: str, *, name: str = "_id") -> list[str]:
    """Return the ids of an ``_id`` parameter (comma-separated values are ORed)."""
    ids = [item.strip() for item in value.split(",")]
    for item in ids:
        if not FHIR_ID_RE.match(item):
            raise search_error(name, f"{item!r} is not a valid id.")
    return ids


def search_bounds_check(params: Mapping[str, list[str]]) -> None:
    """Refuse a search too large to answer cheaply, with 400 ``too-costly``.

    Bounds (settings, with safe defaults): ``PA_FHIR_MAX_PARAMETERS`` values in all
    (repeats of one name count apiece), ``PA_FHIR_MAX_VALUES`` comma-separated alternatives
    in one value (R4 search.html#combining: a comma ORs), and ``PA_FHIR_MAX_VALUE_LENGTH``
    characters in one value. A search with 30,000 ids is a denial of service, not a query.
    """
    from django.conf import settings

    max_parameters = getattr(settings, "PA_FHIR_MAX_PARAMETERS", 100)
    max_values = getattr(settings, "PA_FHIR_MAX_VALUES", 100)
    max_length = getattr(settings, "PA_FHIR_MAX_VALUE_LENGTH", 4000)
    total = sum(len(values) for values in params.values())
    if total > max_parameters:
        raise FHIRError(f"A search takes at most {max_parameters} parameter values; this one has {total}.",
                        status=400, code="too-costly")
    for name, values in params.items():
        for value in values:
            if len(value) > max_length:
                raise FHIRError(f"A value of {name[:64]!r} is longer than {max_length} characters.",
                                status=400, code="too-costly", expression=[name[:64]])
            if value.count(",") >= max_values:
                raise FHIRError(f"A value of {name[:64]!r} ORs more than {max_values} alternatives.",
                                status=400, code="too-costly", expression=[name[:64]])


def unknown_params_check(
    params: Iterable[str], *, allowed: Iterable[str], prefer: str = "", ignored: Iterable[str] = ("_format", "_pretty")
) -> list[str]:
    """Refuse unknown search parameters unless the client sent ``Prefer: handling=lenient``.

    R4 search.html#errors: a server SHOULD honour ``handling=strict``/``lenient``; this server
    is strict by default so that a misspelt filter never silently widens a result. Returns the
    unknown names that were ignored (lenient) so the self link can leave them out.
    """
    allowed = set(allowed) | set(ignored)
    unknown = sorted({p for p in params if p not in allowed})
    if unknown and "handling=lenient" not in prefer.replace(" ", "").lower():
        raise FHIRError(
            f"Unknown or unsupported search parameter(s): {', '.join(unknown)}.",
            status=400,
            code="not-supported",
            expression=unknown,
        )
    return unknown


def page_url(base_url: str, params: Mapping[str, list[str]], **replace: Any) -> str:
    """Return ``base_url`` with ``params`` (multi-valued) and ``replace`` applied as its query."""
    merged = {k: list(v) for k, v in params.items()}
    for key, value in replace.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = [str(value)]
    query = urlencode([(k, v) for k, values in merged.items() for v in values])
    return f"{base_url}?{query}" if query else base_url


def searchset_bundle(
    *,
    resources: Iterable[dict[str, Any]],
    base_url: str,
    self_url: str,
    total: int | None = None,
    next_url: str | None = None,
    previous_url: str | None = None,
) -> dict[str, Any]:
    """Return a ``searchset`` Bundle of ``resources`` with ``fullUrl``s and paging links.

    R4 bundle.html: each entry of a searchset carries ``search.mode = match``; ``total`` is the
    number of matches across all pages; links ``self``, ``next`` and ``previous``.
    """
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    if previous_url:
        links.append({"relation": "previous", "url": previous_url})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    bundle["entry"] = [
        {
            "fullUrl": f"{base_url.rstrip('/')}/{resource['resourceType']}/{resource['id']}",
            "resource": resource,
            "search": {"mode": "match"},
        }
        for resource in resources
    ]
    return bundle


def offset_page_links(
    *, base_url: str, params: Mapping[str, list[str]], offset: int, count: int, total: int, name: str = "_offset"
) -> tuple[str, str | None, str | None]:
    """Return (self, next, previous) URLs for offset paging over ``total`` matches."""
    self_url = page_url(base_url, params, **{name: offset or None})
    next_url = page_url(base_url, params, **{name: offset + count}) if count and offset + count < total else None
    previous_url = None
    if offset > 0 and count:
        previous_url = page_url(base_url, params, **{name: max(offset - count, 0) or None})
    return self_url, next_url, previous_url
