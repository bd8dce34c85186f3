"""PDex 2.2 ``Group/$provider-member-match``: match a provider's patients to members.

Design. The kick-off validates the request (OperationDefinition ProviderMemberMatch) and
records an ``ExportJob`` (operation ``provider-member-match``) with one work unit of type
``Group``; the export machinery leases and runs it (payer/services/export.py), and its
file is the Group NDJSON of the manifest (§pdex-288a). So status polling, 202/manifest,
file downloads, expiry and the killed-worker recovery are the export's own.

Matching is deterministic; each MemberBundle is decided by the first rule that applies:

1. ``coverage-other-payer``: no ``CoverageToMatch.payor`` names this payer (reference
   ``Organization/unitedcare-health`` or the display "UnitedCare Health", normalized).
2. ``no-member-identifier``: neither ``Coverage.identifier``, ``Coverage.subscriberId``
   nor a ``Patient.identifier`` of type ``MB`` carries an id. Demographics alone never match.
3. Candidates are the members whose member id or subscriber id equals one of those ids
   (case-insensitive). Each must agree on: birth date (exact), family name and first given
   name after normalization (case, accents, hyphens/apostrophes/periods, suffixes such as
   Jr, Sr, II, III, IV; a family name also matches with its spaces removed) and sex (when
   the request gives male or female). ``no-candidate``, ``birth-date-conflict`` (a candidate
   had every id but another birth date: never matched, even if another field agrees),
   ``name-mismatch``, ``sex-mismatch``: no match.
4. ``ambiguous``: two or more candidates agree: no match.
5. ``coverage-ended``: the one candidate's coverage has ended (or not started).
6. The attestation (Provider Treatment Attestation Consent) is checked
   (``attestation_check``): a failure is no match (§pdex-261, NonMatchedMembers).
7. ``opted-out``: matched but opted out of Provider Access: ConsentConstrainedMembers when
   ``PA_MEMBER_MATCH_DISCLOSE_OPT_OUT``, else NonMatchedMembers (§pdex-261a default).
8. ``matched``: a TreatmentRelationship is recorded (or renewed) and the member is put on
   the organization's attribution list at once, so the next export sends the data.

Every decision is stored (``MemberMatchDecision``: a keyed digest of the inputs, the
candidates' member ids, the rule); logs never hold the demographics.
"""

import datetime
import hashlib
import hmac
import json
import re
import secrets
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from fhirkit.outcome import FHIRError
from fhirkit.validation import resource_validate
from payer.mapping import UNITEDCARE_NAME, UNITEDCARE_ORGANIZATION_ID
from payer.models import (
    AttributionMember,
    ExportJob,
    ExportWorkUnit,
    Member,
    MemberMatchDecision,
    MemberMatchGroup,
    ProviderPractitioner,
    SmartClient,
    TreatmentRelationship,
)
from payer.services.access import organization_in_network
from payer.services.attribution import attribution_group_ensure
from payer.services.audit import audit_record

OPERATION = "provider-member-match"
OPERATION_DEFINITION = "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/ProviderMemberMatch"
PDEX = "http://hl7.org/fhir/us/davinci-pdex"
MATCH_GROUP_PROFILE = f"{PDEX}/StructureDefinition/pdex-provider-member-match"
NO_MATCH_GROUP_PROFILE = f"{PDEX}/StructureDefinition/pdex-provider-member-no-match"
OPT_OUT_GROUP_PROFILE = f"{PDEX}/StructureDefinition/pdex-member-opt-out"
MATCH_PARAMETERS_EXT = f"{PDEX}/StructureDefinition/base-ext-match-parameters"
MATCH_COVERAGE_EXT = f"{PDEX}/StructureDefinition/base-ext-match-coverage"
MATCH_RESULT_CS = f"{PDEX}/CodeSystem/PdexMultiMemberMatchResultCS"
OPT_OUT_SCOPE_CS = f"{PDEX}/CodeSystem/opt-out-scope"
RELATIONSHIP_TYPE_CS = f"{PDEX}/CodeSystem/treatment-relationship-type"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
CONSENT_SCOPE_CS = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT_REASON_CS = "http://terminology.hl7.org/CodeSystem/v3-ActReason"

_PARTS = {"MemberPatient": "Patient", "CoverageToMatch": "Coverage", "Consent": "Consent"}
_SUFFIXES = frozenset({"jr", "sr", "ii", "iii", "iv", "v", "2nd", "3rd", "md", "phd"})
# Consent.scope: the profile fixes ``treatment``; the IG's own examples send ``patient-privacy``.
_ATTESTATION_SCOPES = frozenset({"treatment", "patient-privacy"})
CLOCK_SKEW = datetime.timedelta(minutes=5)


# --- Parsing the request ----------------------------------------------------------------


@dataclass
class MemberBundle:
    patient: dict[str, Any]
    coverage: dict[str, Any]
    consent: dict[str, Any]


def member_bundles_parse(*, body: Any) -> list[MemberBundle]:
    """Return the request's MemberBundles, or raise ``FHIRError``.

    400 ``invalid``/``structure`` for what breaks the OperationDefinition (not a Parameters,
    an unknown parameter, a part missing or repeated, an invalid resource); 422 ``required``
    for a MemberBundle without its Consent attestation (§pdex-255/257); 422 ``too-costly``
    above ``PA_MEMBER_MATCH_MAX_MEMBERS`` repetitions.
    """
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FHIRError("The body must be a FHIR Parameters resource.", code="structure")
    if "\\u0000" in json.dumps(body):
        # No FHIR string holds a NUL (R4 datatypes.html#string), and Postgres JSON cannot.
        raise FHIRError("The request holds a NUL character.", code="invalid")
    parameters = body.get("parameter")
    if not isinstance(parameters, list) or not parameters:
        raise FHIRError("Parameters.parameter must hold at least one MemberBundle.", code="required",
                        expression=["Parameters.parameter"])
    limit = settings.PA_MEMBER_MATCH_MAX_MEMBERS
    if len(parameters) > limit:
        raise FHIRError(f"At most {limit} MemberBundle repetitions per request; send the rest in another request.",
                        status=422, code="too-costly", expression=["Parameters.parameter"])
    bundles: list[MemberBundle] = []
    for index, parameter in enumerate(parameters):
        where = f"Parameters.parameter[{index}]"
        if not isinstance(parameter, dict) or parameter.get("name") != "MemberBundle":
            name = parameter.get("name") if isinstance(parameter, dict) else None
            raise FHIRError(f"Unknown parameter {name!r}: this operation takes MemberBundle only.",
                            code="not-supported", expression=[where])
        parts = parameter.get("part")
        if not isinstance(parts, list):
            raise FHIRError("A MemberBundle needs its parts MemberPatient, CoverageToMatch and Consent.",
                            code="required", expression=[f"{where}.part"])
        found: dict[str, dict[str, Any]] = {}
        for part_index, part in enumerate(parts):
            part_where = f"{where}.part[{part_index}]"
            name = part.get("name") if isinstance(part, dict) else None
            if name not in _PARTS:
                raise FHIRError(f"Unknown MemberBundle part {name!r}.", code="not-supported", expression=[part_where])
            if name in found:
                raise FHIRError(f"MemberBundle part {name} is repeated (max 1).", code="structure",
                                expression=[part_where])
            resource = part.get("resource")
            if not isinstance(resource, dict) or resource.get("resourceType") != _PARTS[name]:
                raise FHIRError(f"MemberBundle part {name} must hold a {_PARTS[name]} resource.", code="structure",
                                expression=[f"{part_where}.resource"])
            issues = resource_validate(resource)
            if issues:
                for issue in issues:
                    issue["expression"] = [f"{part_where}.resource.{e.removeprefix(_PARTS[name] + '.')}"
                                           for e in issue.get("expression", [])] or [part_where]
                raise FHIRError(issues[0]["diagnostics"], issues=issues)
            found[name] = resource
        for name in ("MemberPatient", "CoverageToMatch"):
            if name not in found:
                raise FHIRError(f"MemberBundle part {name} is required.", code="required", expression=[f"{where}.part"])
        if "Consent" not in found:
            raise FHIRError("MemberBundle part Consent (the Provider Treatment Attestation) is required "
                            "(PDex 2.2 §pdex-255, §pdex-257).", status=422, code="required",
                            expression=[f"{where}.part"])
        bundles.append(MemberBundle(found["MemberPatient"], found["CoverageToMatch"], found["Consent"]))
    return bundles


def member_match_job_create(*, client: SmartClient, scopes: str, body: Any, request_url: str) -> ExportJob:
    """Validate a ``$provider-member-match`` kick-off and queue its job; return the job.

    The requesting organization is the token's client's, never one named in the body.
    Raise ``FHIRError`` (400/422 bad input, 403 out of network, 429 too many jobs).
    """
    bundles = member_bundles_parse(body=body)
    if not organization_in_network(organization=client.organization):
        raise FHIRError("The organization has no network contract in force.", status=403, code="forbidden")
    with transaction.atomic():
        locked = SmartClient.objects.select_for_update().get(pk=client.pk)
        running = ExportJob.objects.filter(client=locked, status=ExportJob.Status.IN_PROGRESS).count()
        if running >= locked.max_concurrent_exports:
            raise FHIRError(f"This client already runs {running} jobs (its limit); retry when one completes.",
                            status=429, code="throttled", headers={"Retry-After": "30"})
        job = ExportJob.objects.create(
            job_id=secrets.token_urlsafe(24), client=locked, level=ExportJob.Level.GROUP, operation=OPERATION,
            request_url=request_url, scopes=scopes, transaction_time=timezone.now(),
            params={"member_bundles": [b.__dict__ for b in bundles]},
        )
        unit = ExportWorkUnit.objects.create(
            job=job, resource_type="Group", sequence=0,
            lease_expires_at=timezone.now() + datetime.timedelta(seconds=settings.PA_EXPORT_LEASE_SECONDS),
        )

        def enqueue() -> None:
            from payer.tasks import export_unit_run_task

            export_unit_run_task.delay(unit.pk)

        transaction.on_commit(enqueue)
    return job


# --- Normalizing and matching -----------------------------------------------------------


def name_normalize(value: str) -> str:
    """Return ``value`` folded for comparison: no accents or case, hyphens, apostrophes
    and periods as spaces, generational and degree suffixes dropped, spaces collapsed."""
    decomposed = unicodedata.normalize("NFKD", value or "")
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    plain = re.sub(r"[-\u2010-\u2015'\u2019.,]", " ", plain)
    words = [w for w in plain.split() if w not in _SUFFIXES]
    return " ".join(words)


def _family_equal(a: str, b: str) -> bool:
    na, nb = name_normalize(a), name_normalize(b)
    return bool(na) and (na == nb or na.replace(" ", "") == nb.replace(" ", ""))


def _given_equal(submitted: list[str], member_given: str) -> bool:
    member_first = (name_normalize(member_given).split() or [""])[0]
    first = (name_normalize(" ".join(submitted)).split() or [""])[0]
    return bool(first) and first == member_first


def _official_name(patient: dict[str, Any]) -> dict[str, Any]:
    names = [n for n in patient.get("name") or [] if isinstance(n, dict)]
    return next((n for n in names if n.get("use") == "official"), names[0] if names else {})


def _identifiers(bundle: MemberBundle) -> list[str]:
    ids = [i.get("value") for i in bundle.coverage.get("identifier") or []]
    ids.append(bundle.coverage.get("subscriberId"))
    for identifier in bundle.patient.get("identifier") or []:
        codes = {c.get("code") for c in ((identifier.get("type") or {}).get("coding") or [])
                 if c.get("system") in (V2_0203, None)}
        if "MB" in codes:
            ids.append(identifier.get("value"))
    return list(dict.fromkeys(v.strip() for v in ids if isinstance(v, str) and v.strip() and len(v.strip()) <= 40))


def _names_this_payer(coverage: dict[str, Any]) -> bool:
    for payor in coverage.get("payor") or []:
        if payor.get("reference") == f"Organization/{UNITEDCARE_ORGANIZATION_ID}":
            return True
        if name_normalize(payor.get("display") or "") == name_normalize(UNITEDCARE_NAME):
            return True
    return False


def inputs_digest(*, bundle: MemberBundle) -> str:
    """Return a keyed digest of the normalized match inputs (HMAC, so it cannot be
    reversed by trying every name and birth date, unlike a plain hash)."""
    name = _official_name(bundle.patient)
    normalized = {
        "family": name_normalize(name.get("family") or ""),
        "given": name_normalize(" ".join(name.get("given") or [])),
        "birthDate": bundle.patient.get("birthDate") or "",
        "gender": bundle.patient.get("gender") or "",
        "ids": sorted(i.upper() for i in _identifiers(bundle)),
        "payor": [name_normalize(p.get("display") or "") + "|" + (p.get("reference") or "")
                  for p in bundle.coverage.get("payor") or []],
    }
    key = hashlib.sha256(f"member-match:{settings.SECRET_KEY}".encode()).digest()
    return hmac.new(key, json.dumps(normalized, sort_keys=True).encode(), hashlib.sha256).hexdigest()


@dataclass
class MatchResult:
    rule: str
    member: Member | None = None
    candidates: list[str] = field(default_factory=list)


def member_find(*, bundle: MemberBundle, today: datetime.date) -> MatchResult:
    """Apply rules 1-5 of the module docstring to one MemberBundle."""
    if not _names_this_payer(bundle.coverage):
        return MatchResult("coverage-other-payer")
    ids = _identifiers(bundle)
    if not ids:
        return MatchResult("no-member-identifier")
    by_id = Q()
    for value in ids:
        by_id |= Q(member_id__iexact=value) | Q(subscriber_id__iexact=value)
    candidates = list(Member.objects.filter(by_id).order_by("member_id"))
    candidate_ids = [m.member_id for m in candidates]
    if not candidates:
        return MatchResult("no-candidate")
    name = _official_name(bundle.patient)
    birth_date = parse_date(bundle.patient.get("birthDate") or "") if len(bundle.patient.get("birthDate") or "") == 10 else None
    gender = bundle.patient.get("gender")
    agreeing, failures = [], []
    for member in candidates:
        if birth_date is None or member.birth_date != birth_date:
            failures.append("birth-date-conflict")
        elif not (_family_equal(name.get("family") or "", member.family)
                  and _given_equal(name.get("given") or [], member.given)):
            failures.append("name-mismatch")
        elif gender in ("male", "female") and member.gender in ("male", "female") and gender != member.gender:
            failures.append("sex-mismatch")
        else:
            agreeing.append(member)
    if len(agreeing) > 1:
        return MatchResult("ambiguous", candidates=candidate_ids)
    if not agreeing:
        # The most telling failure decides: a conflicting birth date is never a typo to forgive.
        for rule in ("birth-date-conflict", "name-mismatch", "sex-mismatch"):
            if rule in failures:
                return MatchResult(rule, candidates=candidate_ids)
    member = agreeing[0]
    if (member.coverage_end and member.coverage_end < today) or (member.coverage_start and member.coverage_start > today):
        return MatchResult("coverage-ended", candidates=candidate_ids)
    return MatchResult("matched", member=member, candidates=candidate_ids)


# --- The attestation ------------------------------------------------------------------


@dataclass
class Attestation:
    practitioner: ProviderPractitioner
    relationship_type: str
    period_start: datetime.date
    period_end: datetime.date | None
    attested_at: datetime.datetime


def _npis(references: list[Any]) -> list[str]:
    out = []
    for reference in references:
        identifier = (reference or {}).get("identifier") or {}
        if identifier.get("system") == NPI_SYSTEM and isinstance(identifier.get("value"), str):
            out.append(identifier["value"].strip())
    return out


def _instant(value: str) -> datetime.datetime | None:
    # R4 dateTime: a date alone is the start of that day; a time carries its zone (UTC if not).
    parsed = parse_datetime(value) if "T" in value else None
    if parsed is None:
        day = parse_date(value) if len(value) == 10 else None
        return datetime.datetime.combine(day, datetime.time.min, tzinfo=datetime.UTC) if day else None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def attestation_check(*, consent: dict[str, Any], patient: dict[str, Any], organization, now: datetime.datetime
                      ) -> tuple[Attestation | None, str]:
    """Return the accepted attestation and ``"ok"``, or None and the rule that refused it.

    PDex 2.2 Provider Treatment Attestation (``provider-treatment-relationship-consent``):

    - ``status`` active, ``provision.type`` permit, ``scope`` treatment (or the examples'
      patient-privacy), ``provision.purpose`` includes v3-ActReason ``TREAT``;
    - relationship type: ``provision.code`` from treatment-relationship-type, when given,
      is ``active`` or ``prospective`` (``past`` is refused); absent means active;
    - ``Consent.patient`` names the submitted MemberPatient;
    - ``dateTime`` not in the future and at most ``PA_ATTESTATION_MAX_AGE_DAYS`` old;
      ``provision.period.start`` given, at most ``PA_ATTESTATION_MAX_FUTURE_DAYS`` ahead,
      and ``period.end`` (if any) not before today nor before the start;
    - the practitioner: every NPI among ``performer`` and ``provision.actor`` that is not
      the organization's own must be a practitioner of the requesting organization in the
      payer's provider directory (``ProviderPractitioner.organization``, kept from
      credentialing and network rosters); at least one is required. ``Consent.organization``
      is never trusted: the organization is the access token's.
    """
    if consent.get("status") != "active":
        return None, "attestation-not-active"
    provision = consent.get("provision") or {}
    if provision.get("type", "permit") != "permit":
        return None, "attestation-not-permit"
    scope_codes = {c.get("code") for c in ((consent.get("scope") or {}).get("coding") or [])
                   if c.get("system") == CONSENT_SCOPE_CS}
    if not scope_codes & _ATTESTATION_SCOPES:
        return None, "attestation-wrong-scope"
    purposes = {(p.get("system"), p.get("code")) for p in provision.get("purpose") or []}
    if (ACT_REASON_CS, "TREAT") not in purposes:
        return None, "attestation-not-treatment"
    relationship_codes = [c.get("code") for cc in provision.get("code") or [] for c in cc.get("coding") or []
                          if c.get("system") == RELATIONSHIP_TYPE_CS]
    relationship_type = relationship_codes[0] if relationship_codes else "active"
    if relationship_type not in TreatmentRelationship.RelationshipType.values:
        return None, "attestation-relationship-type"
    patient_reference = (consent.get("patient") or {}).get("reference")
    if patient_reference and patient.get("id") and patient_reference not in (f"Patient/{patient['id']}", f"#{patient['id']}"):
        return None, "attestation-patient-mismatch"
    attested_at = _instant(consent.get("dateTime") or "")
    if attested_at is None:
        return None, "attestation-no-datetime"
    if attested_at > now + CLOCK_SKEW or attested_at < now - datetime.timedelta(days=settings.PA_ATTESTATION_MAX_AGE_DAYS):
        return None, "attestation-datetime-out-of-range"
    period = provision.get("period") or {}
    start = parse_date((period.get("start") or "")[:10])
    end = parse_date((period.get("end") or "")[:10]) if period.get("end") else None
    today = now.date()
    if start is None or start > today + datetime.timedelta(days=settings.PA_ATTESTATION_MAX_FUTURE_DAYS):
        return None, "attestation-period"
    if end is not None and (end < today or end < start):
        return None, "attestation-period"
    if start > today and relationship_type != TreatmentRelationship.RelationshipType.PROSPECTIVE:
        return None, "attestation-period"
    npis = _npis([*(consent.get("performer") or []), *[a.get("reference") for a in provision.get("actor") or []]])
    practitioner_npis = [n for n in dict.fromkeys(npis) if n != organization.npi]
    if not practitioner_npis:
        return None, "attestation-no-practitioner"
    practitioners = list(ProviderPractitioner.objects.filter(npi__in=practitioner_npis, organization=organization))
    if len(practitioners) != len(practitioner_npis):
        return None, "practitioner-not-in-organization"
    practitioner = next(p for p in practitioners if p.npi == practitioner_npis[0])
    return Attestation(practitioner, relationship_type, start, end, attested_at), "ok"


def treatment_relationship_record(*, member: Member, attestation: Attestation, organization, client_id: str,
                                  job_id: str, now: datetime.datetime) -> TreatmentRelationship:
    """Record (or renew) the live treatment relationship and attribute the member at once."""
    expires_at = now + datetime.timedelta(days=settings.PA_TREATMENT_RELATIONSHIP_DAYS)
    if attestation.period_end:
        end_of_period = datetime.datetime.combine(attestation.period_end + datetime.timedelta(days=1),
                                                  datetime.time.min, tzinfo=datetime.UTC)
        expires_at = min(expires_at, end_of_period)
    with transaction.atomic():
        relationship = (TreatmentRelationship.objects.select_for_update()
                        .filter(member=member, organization=organization, practitioner=attestation.practitioner,
                                revoked_at__isnull=True).first())
        values = {
            "relationship_type": attestation.relationship_type, "period_start": attestation.period_start,
            "period_end": attestation.period_end, "attested_at": attestation.attested_at, "client_id": client_id,
            "match_job_id": job_id, "expires_at": expires_at,
        }
        if relationship is None:
            relationship = TreatmentRelationship.objects.create(
                member=member, organization=organization, practitioner=attestation.practitioner, **values)
        else:
            for name, value in values.items():
                setattr(relationship, name, value)
            relationship.save()
        group = attribution_group_ensure(organization=organization)
        entry = AttributionMember.objects.select_for_update().filter(group=group, member=member).first()
        end = (expires_at - datetime.timedelta(seconds=1)).date()
        if entry is None:
            AttributionMember.objects.create(
                group=group, member=member, start=now.date(), end=end, source=AttributionMember.Source.ATTESTATION,
                reason=f"Treatment attestation by NPI {attestation.practitioner.npi}.", changed_by="provider-member-match")
        else:
            lapsed = entry.end is not None and entry.end < now.date()
            # A claims or staff entry in force stands on its own; a lapsed one restarts here.
            if entry.source == AttributionMember.Source.ATTESTATION or lapsed:
                if lapsed:
                    entry.start = now.date()
                entry.source, entry.end = AttributionMember.Source.ATTESTATION, end
                entry.reason = f"Treatment attestation by NPI {attestation.practitioner.npi}."
                entry.changed_by = "provider-member-match"
                entry.save(update_fields=["source", "start", "end", "reason", "changed_by"])
    return relationship


def treatment_relationship_revoke(*, relationship: TreatmentRelationship, revoked_by: str, reason: str) -> None:
    """Revoke a treatment relationship; it stops granting access at once.

    The attestation entry on the attribution list ends yesterday unless another live
    relationship of the same organization still backs it.
    """
    reason = (reason or "").strip() or "Revoked by payer staff."
    now = timezone.now()
    with transaction.atomic():
        updated = TreatmentRelationship.objects.filter(pk=relationship.pk, revoked_at__isnull=True).update(
            revoked_at=now, revoked_by=revoked_by[:150], revoke_reason=reason[:300])
        if not updated:
            return
        still_live = TreatmentRelationship.objects.filter(
            member=relationship.member, organization=relationship.organization, revoked_at__isnull=True,
            expires_at__gt=now).exists()
        if not still_live:
            yesterday = now.date() - datetime.timedelta(days=1)
            for entry in AttributionMember.objects.select_for_update().filter(
                    group__organization=relationship.organization, member=relationship.member,
                    source=AttributionMember.Source.ATTESTATION):
                entry.end = yesterday
                entry.start = min(entry.start, yesterday)
                entry.reason = f"Treatment relationship revoked: {reason}"[:300]
                entry.changed_by = revoked_by[:150]
                entry.save(update_fields=["start", "end", "reason", "changed_by"])
    relationship.refresh_from_db()


# --- Running the job -------------------------------------------------------------------


def _contained_patient(patient: dict[str, Any], local_id: str) -> dict[str, Any]:
    # R4 references.html#contained: no meta.versionId/lastUpdated/security, no nested contained.
    copy = {k: v for k, v in patient.items() if k != "contained"}
    meta = {k: v for k, v in (copy.get("meta") or {}).items() if k not in ("versionId", "lastUpdated", "security")}
    if meta:
        copy["meta"] = meta
    else:
        copy.pop("meta", None)
    copy["id"] = local_id
    return copy


def _group(*, kind: str, fhir_id: str, organization, today: str, entries: list[tuple[dict[str, Any], Member | None]]
           ) -> dict[str, Any]:
    """Return one response Group (ProviderMemberMatchGroup, ProviderMemberNoMatchGroup or MemberOptOut)."""
    code = {"matched": "match", "nonmatched": "nomatch", "consentconstrained": "consentconstraint"}[kind]
    display = {"match": "Matched", "nomatch": "Not Matched", "consentconstraint": "Consent Constraint"}[code]
    profile = {"matched": MATCH_GROUP_PROFILE, "nonmatched": NO_MATCH_GROUP_PROFILE,
               "consentconstrained": OPT_OUT_GROUP_PROFILE}[kind]
    coding = {"system": MATCH_RESULT_CS, "code": code, "display": display}
    provider = {"identifier": {"system": NPI_SYSTEM, "value": organization.npi}, "display": organization.name}
    characteristic: dict[str, Any] = {"code": {"coding": [coding]}, "exclude": False, "period": {"start": today}}
    if kind == "matched":
        characteristic["valueReference"] = provider
    elif kind == "consentconstrained":
        characteristic["valueCodeableConcept"] = {"coding": [{"system": OPT_OUT_SCOPE_CS, "code": "global",
                                                               "display": "Global Opt-Out"}]}
    else:
        characteristic["valueBoolean"] = True
    contained, members = [], []
    for index, (patient, member) in enumerate(entries, start=1):
        local_id = f"submitted-{index}"
        contained.append(_contained_patient(patient, local_id))
        extension = {"url": MATCH_PARAMETERS_EXT, "valueReference": {"reference": f"#{local_id}"}}
        if kind == "nonmatched":
            entity = {"reference": f"#{local_id}", "extension": [extension]}
        else:
            entity = {"reference": f"Patient/{member.patient_id}", "extension": [extension]}
        members.append({"entity": entity, "inactive": False})
    group: dict[str, Any] = {
        "resourceType": "Group", "id": fhir_id, "meta": {"profile": [profile]},
        "identifier": [{"system": NPI_SYSTEM, "value": organization.npi, "assigner": {"display": organization.name}}],
        "active": True, "type": "person", "actual": True, "code": {"coding": [coding]},
        "managingEntity": {"reference": f"Organization/{UNITEDCARE_ORGANIZATION_ID}", "display": UNITEDCARE_NAME},
        "characteristic": [characteristic], "quantity": len(members),
    }
    if contained:
        group["contained"] = contained
    if members:
        group["member"] = members
    return group


def member_match_run(*, job: ExportJob) -> Iterator[bytes]:
    """Decide every MemberBundle of ``job``, store decisions and Groups; return the Group lines.

    Safe to run twice: decisions are upserted on (job, sequence), Groups on (job, kind)
    with their first id, relationships on the live (member, organization, practitioner).
    """
    client, organization = job.client, job.client.organization
    now = timezone.now()
    today = timezone.localdate()
    disclose = settings.PA_MEMBER_MATCH_DISCLOSE_OPT_OUT
    buckets: dict[str, list[tuple[dict[str, Any], Member | None]]] = {"matched": [], "nonmatched": [], "consentconstrained": []}
    matched_members: list[Member] = []
    for sequence, raw in enumerate(job.params.get("member_bundles") or []):
        bundle = MemberBundle(**raw)
        found = member_find(bundle=bundle, today=today)
        rule, outcome, relationship = found.rule, MemberMatchDecision.Outcome.NON_MATCHED, None
        if found.member is not None:
            attestation, verdict = attestation_check(consent=bundle.consent, patient=bundle.patient,
                                                     organization=organization, now=now)
            if attestation is None:
                rule = verdict
            elif found.member.opted_out:
                rule, outcome = "opted-out", MemberMatchDecision.Outcome.CONSENT_CONSTRAINED
            else:
                outcome = MemberMatchDecision.Outcome.MATCHED
                relationship = treatment_relationship_record(
                    member=found.member, attestation=attestation, organization=organization,
                    client_id=client.client_id, job_id=job.job_id, now=now)
        reported = outcome
        if outcome == MemberMatchDecision.Outcome.CONSENT_CONSTRAINED and not disclose:
            reported = MemberMatchDecision.Outcome.NON_MATCHED  # §pdex-261a
        MemberMatchDecision.objects.update_or_create(
            job_ref=job.job_id, sequence=sequence,
            defaults={"job": job, "organization": organization, "client_id": client.client_id,
                      "inputs_digest": inputs_digest(bundle=bundle), "candidates": found.candidates,
                      "member": found.member, "outcome": outcome, "rule": rule, "reported_as": reported,
                      "treatment_relationship": relationship},
        )
        buckets[reported].append((bundle.patient, found.member))
        if reported == MemberMatchDecision.Outcome.MATCHED:
            matched_members.append(found.member)

    expires_at = now + datetime.timedelta(days=settings.PA_MEMBER_MATCH_GROUP_DAYS)
    lines: list[bytes] = []
    # MatchedMembers is always emitted (1..1), even empty; the others only when they hold members.
    for kind in ("matched", "nonmatched", "consentconstrained"):
        if kind != "matched" and not buckets[kind]:
            continue
        row, _ = MemberMatchGroup.objects.get_or_create(
            job=job, kind=kind,
            defaults={"fhir_id": secrets.token_hex(16), "client": client, "organization": organization,
                      "resource": {}, "expires_at": expires_at})
        resource = _group(kind=kind, fhir_id=row.fhir_id, organization=organization, today=today.isoformat(),
                          entries=buckets[kind])
        row.resource = resource
        row.save(update_fields=["resource"])
        if kind == "matched":
            row.members.set(matched_members)
        else:
            row.members.set([m for _, m in buckets[kind] if m is not None])
        lines.append(json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
    counts = {kind: len(entries) for kind, entries in buckets.items()}
    audit_record(action="member-match-result", outcome="success", client=client,
                 patient_ids=[m.patient_id for m in matched_members], resource_types=["Group"],
                 detail=f"job {job.job_id}: matched {counts['matched']}, not matched {counts['nonmatched']}, "
                        f"consent-constrained {counts['consentconstrained']}")
    return iter(lines)


def _live_groups(*, fhir_id: str, client: SmartClient):
    # A Group exists for its client once its job completed (or was purged after completing).
    return MemberMatchGroup.objects.filter(fhir_id=fhir_id, client=client, expires_at__gt=timezone.now()).filter(
        Q(job__isnull=True) | Q(job__status=ExportJob.Status.COMPLETED))


def match_group_for_client(*, fhir_id: str, client: SmartClient) -> MemberMatchGroup | None:
    """Return the client's own live MatchedMembers Group ``fhir_id`` (§pdex-290..292), else None."""
    return _live_groups(fhir_id=fhir_id, client=client).filter(kind=MemberMatchGroup.Kind.MATCHED).first()


def match_group_read(*, fhir_id: str, client: SmartClient) -> MemberMatchGroup | None:
    """Return any of the client's own live result Groups ``fhir_id`` (GET Group/{id}, §pdex-266)."""
    return _live_groups(fhir_id=fhir_id, client=client).first()


def match_groups_purge(*, now: datetime.datetime | None = None) -> int:
    """Delete result Groups past ``PA_MEMBER_MATCH_GROUP_DAYS``; return how many went."""
    deleted, _ = MemberMatchGroup.objects.filter(expires_at__lt=now or timezone.now()).delete()
    return deleted
