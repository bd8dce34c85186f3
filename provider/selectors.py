"""Reads of the hospital's local FHIR store: read by id and search (FHIR R4 search.html).

The local FHIR API (provider/views/fhir.py) and the EMR both call these, and every one
takes the sources (payer connections) the caller may see: the store is partitioned by
source, and a read that named none could mix one organization's or payer's data into
another's. ``store_connections`` says which sources a user may read. Errors in the
parameters raise ``fhirkit.outcome.FHIRError`` (400, or 404 for an unknown type), which
FHIR views render as an OperationOutcome.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.db.models import F, Q, QuerySet

from fhirkit.bundles import (
    FHIR_ID_RE,
    count_parse,
    date_param_q,
    id_list_parse,
    offset_parse,
    reference_ids,
    search_bounds_check,
    search_error,
    token_parse,
    unknown_params_check,
)
from fhirkit.outcome import FHIRError
from provider.models import LocalResource, PayerConnection, StoreReader
from provider.services.ingest import token_word_encode, resource_type_known

# Search parameters per type, beyond the common ones. "date" is the type's clinical date
# (the column ingest extracts); the R4 names of the same parameter are accepted too.
_DATE_ALIASES = {
    "Condition": ("onset-date",),
    "MedicationRequest": ("authoredon",),
    "ExplanationOfBenefit": ("created",),
    "Claim": ("created",),
    "ClaimResponse": ("created",),
}
SEARCH_PARAMETERS: dict[str, dict[str, str]] = {
    "Patient": {"_id": "id", "name": "name", "birthdate": "date", "identifier": "token"},
    "Encounter": {
        "_id": "id", "patient": "patient", "subject": "patient", "date": "date", "status": "status",
        "class": "token", "type": "token",
    },
    "Condition": {"_id": "id", "patient": "patient", "subject": "patient", "date": "date", "code": "token"},
    "Observation": {
        "_id": "id", "patient": "patient", "subject": "patient", "date": "date", "status": "status", "code": "token",
    },
    "Procedure": {
        "_id": "id", "patient": "patient", "subject": "patient", "date": "date", "status": "status", "code": "token",
    },
    "MedicationRequest": {
        "_id": "id", "patient": "patient", "subject": "patient", "date": "date", "status": "status", "code": "token",
    },
    "ExplanationOfBenefit": {"_id": "id", "patient": "patient", "date": "date", "status": "status"},
    "Claim": {"_id": "id", "patient": "patient", "date": "date", "status": "status"},
    "ClaimResponse": {"_id": "id", "patient": "patient", "date": "date", "status": "status"},
}
for _type, _aliases in _DATE_ALIASES.items():
    for _alias in _aliases:
        SEARCH_PARAMETERS[_type][_alias] = "date"

RESULT_PARAMETERS = ("_count", "_offset", "_sort", "_include")
SORTS = {
    "date": (F("date").asc(nulls_last=True), "resource_id"),
    "-date": (F("date").desc(nulls_last=True), "resource_id"),
    "_id": ("resource_id",),
    "-_id": ("-resource_id",),
}
# _include values (R4 search.html#include) -> (element path to the references, target types).
INCLUDES: dict[str, dict[str, tuple[tuple[str, str], tuple[str, ...]]]] = {
    "Encounter": {
        "practitioner": (("participant", "individual"), ("Practitioner",)),
        "participant": (("participant", "individual"), ("Practitioner", "PractitionerRole", "RelatedPerson")),
        "location": (("location", "location"), ("Location",)),
        "subject": (("subject", ""), ("Patient",)),
        "patient": (("subject", ""), ("Patient",)),
    },
}


@dataclass(frozen=True)
class Include:
    """One ``_include``: the references of ``element``/``child`` that point at ``targets``."""

    element: str
    child: str
    targets: tuple[str, ...]


def _values(params: Mapping[str, Any]) -> dict[str, list[str]]:
    # Accept a QueryDict, a dict of lists, or a dict of single strings (the EMR's calls).
    if hasattr(params, "getlist"):
        return {key: params.getlist(key) for key in params}
    return {key: list(value) if isinstance(value, (list, tuple)) else [str(value)] for key, value in params.items()}


def resource_type_check(resource_type: str) -> None:
    """Raise 404 unless ``resource_type`` is an R4B resource type (R4 http.html#read)."""
    if not resource_type[:1].isupper() or not resource_type_known(resource_type):
        raise FHIRError(f"Unknown resource type {resource_type[:64]!r}.", status=404, code="not-supported")


def _token_q(name: str, value: str) -> Q:
    q = Q()
    for item in value.split(","):
        system, code = token_parse(item)
        if not code and not system:
            raise search_error(name, "a token needs a code, or system|code.")
        if system and code:
            word = f" {name}={token_word_encode(system)}|{token_word_encode(code)} "
        elif system:  # "system|": any code of that system
            word = f" {name}={token_word_encode(system)}|"
        else:  # "code" or "|code"
            word = f" {name}={token_word_encode(code)} "
        q |= Q(search_tokens__contains=word)
    return q


def _name_q(value: str) -> Q:
    # R4 search.html#string: case-insensitive, matches the start of any name part; a
    # value of several words must match each (all parts of the same patient).
    q = Q()
    words = value.split()
    if not words:
        raise search_error("name", "the value is empty.")
    for word in words:
        q &= Q(search_tokens__icontains=f" name={token_word_encode(word.lower())}")
    return q


def includes_parse(*, resource_type: str, values: Iterable[str]) -> list[Include]:
    """Return the ``_include`` values as Include, or raise 400 for one this server lacks."""
    includes = []
    for value in values:
        parts = value.split(":")
        known = INCLUDES.get(resource_type, {})
        if len(parts) not in (2, 3) or parts[0] != resource_type or parts[1] not in known:
            supported = ", ".join(f"{resource_type}:{name}" for name in known) or "none"
            raise search_error("_include", f"{value!r} is not supported here (supported: {supported}).")
        (element, child), targets = known[parts[1]]
        if len(parts) == 3:
            if parts[2] not in targets:
                raise search_error("_include", f"{parts[2]!r} is not a target of {parts[0]}:{parts[1]}.")
            targets = (parts[2],)
        includes.append(Include(element=element, child=child, targets=targets))
    return includes


def store_connections(*, user) -> list[PayerConnection]:
    """Return the sources ``user`` may read through the local FHIR API.

    A user with a ``StoreReader`` grant reads their organization's connections only; a
    user with the ``provider.view_localresource`` permission and no grant (hospital staff,
    trusted systems) reads every source, merged, each resource naming its own. Anyone
    else reads nothing.
    """
    if not (user and user.is_authenticated and user.is_active):
        return []
    reader = StoreReader.objects.filter(user=user).first()
    if reader is not None:
        return list(PayerConnection.objects.filter(organization_npi=reader.organization_npi).order_by("pk"))
    if user.has_perm("provider.view_localresource"):
        return list(PayerConnection.objects.order_by("pk"))
    return []


def local_search_queryset(
    *, resource_type: str, params: Mapping[str, Any], connection_ids: Collection[int], prefer: str = ""
) -> QuerySet:
    """Return the filtered, sorted (unpaged) queryset for a search within the sources
    ``connection_ids``; raise FHIRError on bad parameters."""
    resource_type_check(resource_type)
    supported = SEARCH_PARAMETERS.get(resource_type)
    if supported is None:
        raise FHIRError(
            f"Search on {resource_type} is not supported; read by id works.", status=404, code="not-supported"
        )
    values = _values(params)
    search_bounds_check(values)
    unknown = unknown_params_check(values, allowed=[*supported, *RESULT_PARAMETERS], prefer=prefer)
    queryset = LocalResource.objects.filter(connection_id__in=list(connection_ids), resource_type=resource_type)
    for name, items in values.items():
        kind = supported.get(name)
        if kind is None or name in unknown:
            continue
        for value in items:
            if value == "":
                raise search_error(name, "the value is empty.")
            if kind == "id":
                queryset = queryset.filter(resource_id__in=id_list_parse(value, name=name))
            elif kind == "patient":
                queryset = queryset.filter(patient_id__in=reference_ids(value, name=name, resource_type="Patient"))
            elif kind == "date":
                queryset = queryset.filter(date_param_q("date", value, name=name))
            elif kind == "status":
                queryset = queryset.filter(status__in=[item.strip() for item in value.split(",")])
            elif kind == "token":
                queryset = queryset.filter(_token_q(name, value))
            elif kind == "name":
                queryset = queryset.filter(_name_q(value))
    sorts = values.get("_sort", [])
    if len(sorts) > 1 or (sorts and sorts[0] not in SORTS):
        raise search_error("_sort", f"supported: {', '.join(SORTS)}.")
    ordering = (*SORTS[sorts[0]], "connection_id") if sorts else ("pk",)
    return queryset.order_by(*ordering)


def local_search(
    *, resource_type: str, params: Mapping[str, Any], connection_ids: Collection[int], prefer: str = "",
    default_count: int = 50,
) -> tuple[list[LocalResource], int]:
    """Return (the page of matching rows, the total number of matches) for a FHIR search.

    ``params`` holds the query (a QueryDict or a dict of lists or strings), including
    ``_count`` (page size), ``_offset`` (the page) and ``_sort`` (``date``, ``-date``).
    """
    values = _values(params)
    queryset = local_search_queryset(
        resource_type=resource_type, params=values, connection_ids=connection_ids, prefer=prefer
    )
    count = count_parse((values.get("_count") or [None])[-1], default=default_count)
    offset = offset_parse((values.get("_offset") or [None])[-1])
    total = queryset.count()
    rows = list(queryset[offset : offset + count]) if count and offset < total else []
    return rows, total


def local_search_includes(*, rows: Iterable[LocalResource], includes: Iterable[Include]) -> list[LocalResource]:
    """Return the stored resources the ``includes`` reference from ``rows`` (each once).

    A reference resolves within its row's own source: Practitioner/7 from one payer is
    not Practitioner/7 from another.
    """
    wanted: set[tuple[int, str, str]] = set()
    for row in rows:
        for include in includes:
            value = row.resource.get(include.element)
            items = value if isinstance(value, list) else [value]
            for item in items:
                if not isinstance(item, dict):
                    continue
                reference = item.get(include.child) if include.child else item
                text = reference.get("reference") if isinstance(reference, dict) else None
                if not isinstance(text, str):
                    continue
                parts = text.split("/_history/")[0].split("/")
                if len(parts) >= 2 and parts[-2] in include.targets:
                    wanted.add((row.connection_id, parts[-2], parts[-1]))
    if not wanted:
        return []
    q = Q()
    for source, kind in {(source, kind) for source, kind, _ in wanted}:
        ids = [rid for s, k, rid in wanted if (s, k) == (source, kind)]
        q |= Q(connection_id=source, resource_type=kind, resource_id__in=ids)
    return list(
        LocalResource.objects.filter(q).select_related("connection").order_by("resource_type", "resource_id", "connection_id")
    )


def local_read(*, resource_type: str, resource_id: str, connection_ids: Collection[int]) -> list[LocalResource]:
    """Return the stored resources ``resource_type/resource_id`` of the sources
    ``connection_ids``: one per source that holds that id (none, one, or several)."""
    resource_type_check(resource_type)
    if not FHIR_ID_RE.match(resource_id):
        return []
    return list(
        LocalResource.objects.filter(
            connection_id__in=list(connection_ids), resource_type=resource_type, resource_id=resource_id
        ).select_related("connection").order_by("connection_id")
    )
