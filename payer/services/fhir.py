"""Read and search of member data and of the attribution Group, as the payer's FHIR API serves them.

Every function takes the caller's organization and filters through ``payer.services.access``:
a resource of a member the organization may not see is treated as absent.
"""

import dataclasses
import datetime
import uuid
from collections.abc import Mapping
from typing import Any

from django.db.models import Q, QuerySet, Value
from django.utils import timezone

from fhirkit.bundles import (
    count_parse,
    date_param_q,
    id_list_parse,
    offset_page_links,
    offset_parse,
    reference_ids,
    search_error,
    searchset_bundle,
    token_parse,
    search_bounds_check,
    unknown_params_check,
)
from payer.mapping import (
    UNITEDCARE_NAME,
    UNITEDCARE_ORGANIZATION_ID,
    claim_to_eob,
    eob_id_parse,
    prior_auth_to_eob,
    provider_directory_load,
)
from payer.models import (
    AttributionGroup,
    AttributionMember,
    Claim,
    ClinicalResource,
    Member,
    PriorAuthorization,
    ProviderOrganization,
)
from payer.services.access import organization_in_network, visible_members, visible_patient_ids
from payer.services.export_params import SERVICE_DATE_FLOOR

# Member data: each resource belongs to one Patient (ClinicalResource.patient_id).
MEMBER_TYPES = (
    "Patient",
    "Coverage",
    "Encounter",
    "Condition",
    "Procedure",
    "Observation",
    "MedicationRequest",
    "AllergyIntolerance",
    "Immunization",
    "DiagnosticReport",
)
EOB = "ExplanationOfBenefit"
# Provider directory data: readable by any in-network client.
SHARED_TYPES = ("Practitioner", "PractitionerRole", "Organization", "Location")
READABLE_TYPES = (*MEMBER_TYPES, EOB, *SHARED_TYPES)

DEFAULT_COUNT = 50
MAX_COUNT = 1000
PAGE_PARAM = "_offset"

_COMMON_PARAMS = ("_id", "_lastUpdated", "_count", PAGE_PARAM)
_EXTRA_PARAMS = {"Patient": ("identifier",), "Encounter": ("patient", "date")}
# Directory references a Bulk Data client follows (US Core PractitionerRole SHALL
# practitioner and specialty... the reference parameters here; issue 11: smart-fetch stops
# on PractitionerRole?practitioner=).
_SHARED_EXTRA_PARAMS = {"PractitionerRole": ("practitioner", "organization"), "Location": ("organization",)}
_REFERENCE_FIELDS = {("PractitionerRole", "practitioner"): ("practitioner", "Practitioner"),
                     ("PractitionerRole", "organization"): ("organization", "Organization"),
                     ("Location", "organization"): ("managingOrganization", "Organization")}
GROUP_SEARCH_PARAMS = ("_id", "identifier", "name", "characteristic")
# R4 search.html: the type of each search parameter this server supports (for the
# CapabilityStatement). ``_count`` and ``_offset`` are result and paging parameters.
SEARCH_PARAM_TYPES = {
    "_id": "token", "_lastUpdated": "date", "patient": "reference", "identifier": "token",
    "date": "date", "name": "string", "characteristic": "token", "practitioner": "reference",
    "organization": "reference",
}

PDEX_PROVIDER_GROUP = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-provider-group"
PDEX_ATTRIBUTION_CS = "http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMemberAttributionCS"
PDEX_OPTED_OUT_EXT = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-members-opted-out"
PDEX_LAST_TRANSMISSION_EXT = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-last-transmission"
ATR_LIST_STATUS_EXT = "http://hl7.org/fhir/us/davinci-atr/StructureDefinition/ext-attributionListStatus"
ATR_CHANGE_TYPE_EXT = "http://hl7.org/fhir/us/davinci-atr/StructureDefinition/ext-changeType"
ATR_COVERAGE_EXT = "http://hl7.org/fhir/us/davinci-atr/StructureDefinition/ext-coverageReference"
ATR_PROVIDER_EXT = "http://hl7.org/fhir/us/davinci-atr/StructureDefinition/ext-attributedProvider"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
GROUP_ID_SYSTEM = "urn:ietf:rfc:3986"


@dataclasses.dataclass
class SearchResult:
    """A searchset Bundle and what the audit trail needs to know about it."""

    bundle: dict[str, Any]
    patient_ids: set[str]
    # Patients named in ``patient=`` that the caller may not see (answered as no match).
    denied_patient_ids: set[str]


def allowed_search_params(resource_type: str) -> tuple[str, ...]:
    """Return the search parameters this server supports on ``resource_type``."""
    if resource_type in SHARED_TYPES:
        return (*_COMMON_PARAMS, *_SHARED_EXTRA_PARAMS.get(resource_type, ()))
    return (*_COMMON_PARAMS, *_EXTRA_PARAMS.get(resource_type, ("patient",)))


def _with_meta(row: ClinicalResource) -> dict[str, Any]:
    """Return the stored resource with ``meta.versionId``/``lastUpdated`` from the repository columns."""
    resource = dict(row.resource)
    meta = dict(resource.get("meta") or {})
    meta.setdefault("versionId", str(row.version_id))
    meta.setdefault("lastUpdated", row.last_updated.isoformat().replace("+00:00", "Z"))
    resource["meta"] = meta
    resource.setdefault("id", row.resource_id)
    return resource


def _service_date_floor_q() -> Q:
    # CMS-0057-F, 42 CFR 422.121(a): data with a date of service on or after 2016-01-01;
    # the same floor as the export (payer/services/export.py), for read and search.
    return Q(date__isnull=True) | Q(date__gte=SERVICE_DATE_FLOOR)


def _member_scope(resource_type: str, patient_ids) -> Q:
    # A Patient resource is its own patient; everything else carries patient_id.
    return Q(resource_id__in=patient_ids) if resource_type == "Patient" else Q(patient_id__in=patient_ids)


# --- read --------------------------------------------------------------------------------------


@dataclasses.dataclass
class ReadResult:
    resource: dict[str, Any] | None
    patient_id: str = ""
    # True when the resource exists but belongs to a member the caller may not see.
    hidden: bool = False


def resource_read(*, organization: ProviderOrganization, resource_type: str, resource_id: str) -> ReadResult:
    """Return ``resource_type/resource_id`` if the organization may see it."""
    if resource_type == EOB:
        return _eob_read(organization=organization, resource_id=resource_id)
    rows = ClinicalResource.objects.filter(resource_type=resource_type, resource_id=resource_id)
    if resource_type not in SHARED_TYPES and resource_type != "Patient":
        rows = rows.filter(_service_date_floor_q())
    row = rows.first()
    if row is None:
        return ReadResult(resource=None)
    if resource_type in SHARED_TYPES:
        return ReadResult(resource=_with_meta(row))
    patient_id = row.resource_id if resource_type == "Patient" else row.patient_id
    if not visible_patient_ids(organization=organization, patient_ids=[patient_id]):
        return ReadResult(resource=None, patient_id=patient_id, hidden=True)
    return ReadResult(resource=_with_meta(row), patient_id=patient_id)


def _eob_read(*, organization: ProviderOrganization, resource_id: str) -> ReadResult:
    kind, number = _eob_id(resource_id)
    if kind == "claim":
        # payer.mapping: EOB ids are lowercased claim numbers, so compare case-insensitively.
        source = _claims().filter(claim_number__iexact=number).first()
        to_eob = claim_to_eob
    elif kind == "pa":
        source = PriorAuthorization.objects.select_related("member").filter(auth_number__iexact=number).first()
        to_eob = prior_auth_to_eob
    else:
        source = None
    if source is None or _eob_service_date(source) < SERVICE_DATE_FLOOR.date():
        return ReadResult(resource=None)
    patient_id = source.member.patient_id
    if not visible_patient_ids(organization=organization, patient_ids=[patient_id]):
        return ReadResult(resource=None, patient_id=patient_id, hidden=True)
    return ReadResult(resource=to_eob(source), patient_id=patient_id)


def _eob_service_date(source: Claim | PriorAuthorization) -> datetime.date:
    # Claims: the first date of service; prior authorizations: the date requested.
    return source.service_start if isinstance(source, Claim) else source.requested_date


def _eob_id(resource_id: str) -> tuple[str | None, str]:
    """Return ("claim" | "pa" | None, number) for an ExplanationOfBenefit id."""
    try:
        return eob_id_parse(resource_id)
    except ValueError:
        return None, ""


def _numbers_q(field: str, numbers: list[str]) -> Q:
    query = Q(pk__in=[])
    for number in numbers:
        query |= Q(**{f"{field}__iexact": number})
    return query


def _claims() -> QuerySet[Claim]:
    return Claim.objects.select_related("member").prefetch_related("lines", "diagnoses")


# --- search ------------------------------------------------------------------------------------


def resource_search(
    *,
    organization: ProviderOrganization,
    resource_type: str,
    params: Mapping[str, list[str]],
    base_url: str,
    prefer: str = "",
) -> SearchResult:
    """Search ``resource_type`` with FHIR search ``params`` (name -> values) as ``organization``.

    Only members the organization may see take part: without ``patient`` the search runs over
    all of them; a ``patient`` the organization may not see matches nothing (no 403, which would
    tell the caller that the patient exists: R4 security.html "servers may choose to return
    not found ... to avoid leaking existence").
    """
    search_bounds_check(params)
    ignored = unknown_params_check(params.keys(), allowed=allowed_search_params(resource_type), prefer=prefer)
    params = {name: values for name, values in params.items() if name not in ignored}
    for name in ("_count", PAGE_PARAM, "patient", "_id", "identifier"):
        if len(params.get(name, [])) > 1:
            raise search_error(name, "may be given only once (use a comma-separated list for OR).")
    count = count_parse((params.get("_count") or [None])[0], default=DEFAULT_COUNT, maximum=MAX_COUNT)
    offset = offset_parse((params.get(PAGE_PARAM) or [None])[0], name=PAGE_PARAM)

    requested: list[str] | None = None
    denied: set[str] = set()
    allowed_patients: set[str] | None = None
    if "patient" in params:
        requested = reference_ids(params["patient"][0], name="patient", resource_type="Patient")
        allowed_patients = visible_patient_ids(organization=organization, patient_ids=requested)
        denied = set(requested) - allowed_patients

    if resource_type == EOB:
        resources, total, patient_ids = _eob_search(
            organization=organization, params=params, allowed_patients=allowed_patients, offset=offset, count=count
        )
    else:
        queryset = _clinical_search(
            organization=organization, resource_type=resource_type, params=params, allowed_patients=allowed_patients
        )
        total = queryset.count()
        rows = list(queryset.order_by("last_updated", "pk")[offset : offset + count]) if count else []
        resources = [_with_meta(row) for row in rows]
        patient_ids = {row.resource_id if resource_type == "Patient" else row.patient_id for row in rows}
        patient_ids.discard("")

    type_url = f"{base_url.rstrip('/')}/{resource_type}"
    self_url, next_url, previous_url = offset_page_links(
        base_url=type_url, params=params, offset=offset, count=count, total=total, name=PAGE_PARAM
    )
    bundle = searchset_bundle(
        resources=resources,
        base_url=base_url,
        self_url=self_url,
        total=total,
        next_url=next_url,
        previous_url=previous_url,
    )
    return SearchResult(bundle=bundle, patient_ids=patient_ids, denied_patient_ids=denied)


def _clinical_search(
    *,
    organization: ProviderOrganization,
    resource_type: str,
    params: Mapping[str, list[str]],
    allowed_patients: set[str] | None,
) -> QuerySet[ClinicalResource]:
    queryset = ClinicalResource.objects.filter(resource_type=resource_type)
    if resource_type not in SHARED_TYPES:
        # The policy as a subquery: re-read at query time, so an opt-out applies at once.
        queryset = queryset.filter(
            _member_scope(resource_type, visible_members(organization=organization).values("patient_id"))
        )
        if allowed_patients is not None:
            queryset = queryset.filter(_member_scope(resource_type, allowed_patients))
        if resource_type != "Patient":
            queryset = queryset.filter(_service_date_floor_q())
    for name in ("practitioner", "organization"):
        if name in params and (resource_type, name) in _REFERENCE_FIELDS:
            field, target = _REFERENCE_FIELDS[(resource_type, name)]
            ids = reference_ids(params[name][0], name=name, resource_type=target)
            queryset = queryset.filter(**{f"resource__{field}__reference__in": [f"{target}/{i}" for i in ids]})
    if "_id" in params:
        queryset = queryset.filter(resource_id__in=id_list_parse(params["_id"][0]))
    for value in params.get("_lastUpdated", []):
        queryset = queryset.filter(date_param_q("last_updated", value, name="_lastUpdated"))
    for value in params.get("date", []):
        queryset = queryset.filter(date_param_q("date", value, name="date"))
    if "identifier" in params:
        queryset = queryset.filter(resource_id__in=_patients_by_identifier(params["identifier"][0]))
    return queryset


def _patients_by_identifier(value: str) -> list[str]:
    """Return the Patient ids whose identifier matches ``[system]|value`` (the member id)."""
    patient_ids = []
    for item in value.split(","):
        system, code = token_parse(item)
        if not code:
            raise search_error("identifier", "a code is required.")
        for member in Member.objects.filter(member_id=code):
            if system is None:
                patient_ids.append(member.patient_id)
                continue
            # With a system, the stored Patient must carry that exact identifier.
            row = ClinicalResource.objects.filter(resource_type="Patient", resource_id=member.patient_id).first()
            identifiers = (row.resource.get("identifier") or []) if row else []
            if any(i.get("value") == code and (i.get("system") or "") == system for i in identifiers):
                patient_ids.append(member.patient_id)
    return patient_ids


def _eob_search(
    *,
    organization: ProviderOrganization,
    params: Mapping[str, list[str]],
    allowed_patients: set[str] | None,
    offset: int,
    count: int,
) -> tuple[list[dict[str, Any]], int, set[str]]:
    """Search ExplanationOfBenefit, mapped from claims and prior authorizations (PDex STU2)."""
    members = visible_members(organization=organization)
    if allowed_patients is not None:
        members = members.filter(patient_id__in=allowed_patients)
    floor = SERVICE_DATE_FLOOR.date()
    claims = Claim.objects.filter(member__in=members.values("pk"), service_start__gte=floor)
    auths = PriorAuthorization.objects.filter(member__in=members.values("pk"), requested_date__gte=floor)
    if "_id" in params:
        parsed = [_eob_id(item) for item in id_list_parse(params["_id"][0])]
        claims = claims.filter(_numbers_q("claim_number", [n for kind, n in parsed if kind == "claim"]))
        auths = auths.filter(_numbers_q("auth_number", [n for kind, n in parsed if kind == "pa"]))
    for value in params.get("_lastUpdated", []):
        claims = claims.filter(date_param_q("updated_at", value, name="_lastUpdated"))
        auths = auths.filter(date_param_q("updated_at", value, name="_lastUpdated"))
    total = claims.count() + auths.count()
    if not count:
        return [], total, set()
    # One ordering over both sources so that offset paging is stable.
    page = list(
        claims.annotate(kind=Value(0))
        .values_list("updated_at", "kind", "pk")
        .union(auths.annotate(kind=Value(1)).values_list("updated_at", "kind", "pk"), all=True)
        .order_by("updated_at", "kind", "pk")[offset : offset + count]
    )
    claim_rows = _claims().in_bulk([pk for _, kind, pk in page if kind == 0])
    auth_rows = PriorAuthorization.objects.select_related("member").in_bulk([pk for _, kind, pk in page if kind == 1])
    sources = [claim_rows[pk] if kind == 0 else auth_rows[pk] for _, kind, pk in page]
    # One directory lookup for the page, not one per claim.
    directory = provider_directory_load(
        npis={
            npi
            for source in sources
            for npi in (
                (source.billing_npi, source.rendering_npi, source.facility_npi)
                if isinstance(source, Claim)
                else (source.requesting_npi, source.servicing_npi)
            )
        }
    )
    resources, patient_ids = [], set()
    for source in sources:
        to_eob = claim_to_eob if isinstance(source, Claim) else prior_auth_to_eob
        resources.append(to_eob(source, directory=directory))
        patient_ids.add(source.member.patient_id)
    return resources, total, patient_ids


# --- Group (PDex PDexProviderGroup / ATR) ------------------------------------------------------


def groups_for(*, organization: ProviderOrganization) -> QuerySet[AttributionGroup]:
    """Return the attribution Groups the organization may see: its own, never another's."""
    return AttributionGroup.objects.filter(organization=organization).select_related("organization")


def group_search(
    *, organization: ProviderOrganization, params: Mapping[str, list[str]], base_url: str, prefer: str = ""
) -> SearchResult:
    """Search the caller's own Groups by ``_id``, ``identifier``, ``name`` or ``characteristic``."""
    search_bounds_check(params)
    ignored = unknown_params_check(params.keys(), allowed=GROUP_SEARCH_PARAMS, prefer=prefer)
    params = {name: values for name, values in params.items() if name not in ignored}
    groups = groups_for(organization=organization)
    for value in params.get("_id", []):
        groups = groups.filter(fhir_id__in=id_list_parse(value))
    for value in params.get("name", []):
        # R4 search.html#string: case-insensitive "starts with".
        groups = groups.filter(name__istartswith=value)
    resources, patient_ids = [], set()
    for group in groups.order_by("pk"):
        resource, members = group_resource(group=group)
        if "identifier" in params and not all(
            _identifier_matches(resource.get("identifier", []), value) for value in params["identifier"]
        ):
            continue
        # R4 Group search parameter characteristic: token on Group.characteristic.code.
        codes = [coding for c in resource.get("characteristic", []) for coding in (c.get("code") or {}).get("coding", [])]
        if "characteristic" in params and not all(_identifier_matches(codes, value) for value in params["characteristic"]):
            continue
        resources.append(resource)
        patient_ids |= members
    type_url = f"{base_url.rstrip('/')}/Group"
    self_url, _, _ = offset_page_links(base_url=type_url, params=params, offset=0, count=0, total=len(resources))
    bundle = searchset_bundle(resources=resources, base_url=base_url, self_url=self_url, total=len(resources))
    return SearchResult(bundle=bundle, patient_ids=patient_ids, denied_patient_ids=set())


def _identifier_matches(identifiers: list[dict[str, Any]], value: str) -> bool:
    for item in value.split(","):
        system, code = token_parse(item)
        if any((i.get("value") or i.get("code")) == code and (system is None or i.get("system", "") == system)
               for i in identifiers):
            return True
    return False


def group_exists(*, group_id: str) -> bool:
    """Return True when some organization has a Group with this id (for the audit trail only)."""
    return AttributionGroup.objects.filter(fhir_id=group_id).exists()


def group_read(*, organization: ProviderOrganization, group_id: str) -> tuple[dict[str, Any] | None, set[str]]:
    """Return the caller's Group ``group_id`` and the listed Patient ids; None if it is not theirs."""
    group = groups_for(organization=organization).filter(fhir_id=group_id).first()
    if group is None:
        return None, set()
    return group_resource(group=group)


def group_resource(*, group: AttributionGroup, on: datetime.date | None = None) -> tuple[dict[str, Any], set[str]]:
    """Return the PDex PDexProviderGroup resource of ``group`` and the Patient ids it lists.

    Only active periods of members its organization may see today are listed: opted-out
    members are left off (PDex STU2 "members who have opted out are not included") and counted
    in the ``base-ext-members-opted-out`` extension; nobody is listed while the organization
    is out of network.
    """
    on = on or timezone.localdate()
    organization = group.organization
    active = AttributionMember.objects.filter(group=group, start__lte=on).filter(Q(end__isnull=True) | Q(end__gte=on))
    entries = list(
        active.filter(member__in=visible_members(organization=organization, on=on).values("pk"))
        .select_related("member")
        .order_by("member__patient_id")
    )
    opted_out = active.filter(member__opted_out=True).count()
    patient_ids = [entry.member.patient_id for entry in entries]
    coverages: dict[str, str] = {}
    for patient_id, resource_id in (
        ClinicalResource.objects.filter(resource_type="Coverage", patient_id__in=patient_ids)
        .order_by("patient_id", "-last_updated")
        .values_list("patient_id", "resource_id")
    ):
        coverages.setdefault(patient_id, resource_id)

    organization_ref = {
        "reference": f"Organization/{organization.fhir_id}",
        "identifier": {"system": NPI_SYSTEM, "value": organization.npi},
        "display": organization.name,
    }
    members = []
    for entry in entries:
        patient_id = entry.member.patient_id
        extensions = [
            {
                "url": ATR_CHANGE_TYPE_EXT,
                # ATR: new = added since the provider last received the list.
                "valueCode": "new" if entry.last_transmitted is None else "nochange",
            },
            {"url": ATR_PROVIDER_EXT, "valueReference": {"reference": f"Organization/{organization.fhir_id}"}},
        ]
        if patient_id in coverages:
            extensions.append(
                {"url": ATR_COVERAGE_EXT, "valueReference": {"reference": f"Coverage/{coverages[patient_id]}"}}
            )
        if entry.last_transmitted:
            extensions.append(
                {
                    "url": PDEX_LAST_TRANSMISSION_EXT,
                    "valueDateTime": entry.last_transmitted.isoformat().replace("+00:00", "Z"),
                }
            )
        period = {"start": entry.start.isoformat()}
        if entry.end:
            period["end"] = entry.end.isoformat()
        members.append(
            {
                "extension": extensions,
                "entity": {"reference": f"Patient/{patient_id}"},
                "period": period,
                "inactive": False,
            }
        )

    resource: dict[str, Any] = {
        "resourceType": "Group",
        "id": group.fhir_id,
        "meta": {
            "lastUpdated": group.updated_at.isoformat().replace("+00:00", "Z"),
            "profile": [PDEX_PROVIDER_GROUP],
        },
        "extension": [
            {"url": ATR_LIST_STATUS_EXT, "valueCode": "final"},
            {"url": PDEX_OPTED_OUT_EXT, "valueQuantity": {"value": opted_out}},
        ],
        "identifier": [
            {"system": GROUP_ID_SYSTEM, "value": f"urn:uuid:{group.fhir_id}"}
            if _is_uuid(group.fhir_id)
            else {"value": group.fhir_id},
            {"system": NPI_SYSTEM, "value": organization.npi},
        ],
        "active": True,
        "type": "person",
        "actual": True,
        "code": {"coding": [{"system": PDEX_ATTRIBUTION_CS, "code": "pdexprovidergroup", "display": "PDex Provider Group"}]},
        "name": group.name,
        "quantity": len(members),
        # PDex: the payer that manages the attribution list.
        "managingEntity": {"reference": f"Organization/{UNITEDCARE_ORGANIZATION_ID}", "display": UNITEDCARE_NAME},
        "characteristic": [
            {
                # PDex STU2 PDexProviderGroup: the characteristic names the provider the
                # members are attributed to.
                "code": {
                    "coding": [
                        {"system": PDEX_ATTRIBUTION_CS, "code": "pdexprovidergroup", "display": "PDex Provider Group"}
                    ],
                    "text": "attributed-to",
                },
                "valueReference": organization_ref,
                "exclude": False,
            }
        ],
    }
    if members:
        resource["member"] = members
    return resource, set(patient_ids)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def shared_types_allowed(*, organization: ProviderOrganization) -> bool:
    """Return True when the organization may read the provider directory (it is in network)."""
    return organization_in_network(organization=organization)

