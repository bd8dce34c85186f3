"""The link between a hospital patient and a payer's Patient is checked, never assumed.

A member id typed from an insurance card can be another member's (a typo, a family card),
and showing another person's history is a patient-safety failure. So before any payer data
is shown for a hospital patient, the payer's Patient resource (as the fetch stored it in the
local store, from that same connection) is compared with the hospital's record:

- name: family names equal, and the first given names equal, after normalization (case,
  accents, hyphens/apostrophes/periods as spaces, suffixes such as Jr, Sr, II-IV, MD
  dropped; a family name also equals its spaceless form), against any of the payer's names;
- birth date: exactly equal;
- sex: equal when both sides say male or female (other/unknown are not compared).

Anything but all three agreeing shows nothing from that record, and says what differs.
Each distinct comparison is stored as a ``LinkDecision`` (who, when, what matched); the
decision is taken again whenever either side changes (a corrected record, a new version).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from emr.models import HospitalPatient, LinkDecision
from provider.models import LocalResource, PayerConnection

_SUFFIXES = frozenset({"jr", "sr", "ii", "iii", "iv", "v", "2nd", "3rd", "md", "phd", "do", "rn"})


def name_normalize(value: str) -> str:
    """Return ``value`` folded for comparison: no accents or case, hyphens, apostrophes and
    periods as spaces, generational and degree suffixes dropped, spaces collapsed."""
    decomposed = unicodedata.normalize("NFKD", value or "")
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    plain = re.sub(r"[-\u2010-\u2015'\u2019.,]", " ", plain)
    return " ".join(w for w in plain.split() if w not in _SUFFIXES)


def _family_equal(a: str, b: str) -> bool:
    na, nb = name_normalize(a), name_normalize(b)
    return bool(na) and (na == nb or na.replace(" ", "") == nb.replace(" ", ""))


def _first_given(value: str) -> str:
    return (name_normalize(value).split() or [""])[0]


def _names(resource: dict) -> list[tuple[str, str]]:
    """Return (family, given) of each of a Patient's names, official first."""
    names = [n for n in resource.get("name") or [] if isinstance(n, dict)]
    names.sort(key=lambda n: n.get("use") != "official")
    return [(str(n.get("family") or ""), " ".join(str(g) for g in n.get("given") or [])) for n in names]


@dataclass(frozen=True)
class Comparison:
    name: bool | None
    birth_date: bool | None
    sex: bool | None

    @property
    def verdict(self) -> str:
        if self.name and self.birth_date and self.sex is not False:
            return LinkDecision.Verdict.MATCH
        return LinkDecision.Verdict.MISMATCH


def demographics_compare(*, patient: HospitalPatient, resource: dict) -> Comparison:
    """Compare the hospital's record with a payer Patient resource."""
    names = _names(resource)
    name = (
        any(_family_equal(patient.family, family) and _first_given(patient.given) == _first_given(given)
            and _first_given(given) for family, given in names)
        if names else None
    )
    birth = str(resource.get("birthDate") or "")
    birth_date = (birth == patient.birth_date.isoformat()) if birth else None
    sexes = {"male", "female"}
    theirs = resource.get("gender")
    sex = (theirs == patient.gender) if theirs in sexes and patient.gender in sexes else None
    return Comparison(name=name, birth_date=birth_date, sex=sex)


def _digest(*, patient: HospitalPatient, resource: dict | None) -> str:
    payer = {}
    if resource:
        payer = {"name": _names(resource), "birthDate": resource.get("birthDate"), "gender": resource.get("gender")}
    data = {
        "hospital": [patient.family, patient.given, patient.birth_date.isoformat(), patient.gender, patient.member_id],
        "payer": payer,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def payer_patient_resource(*, connection: PayerConnection, payer_patient_id: str) -> dict | None:
    """Return the payer's Patient resource as the fetch through ``connection`` stored it."""
    row = (
        LocalResource.objects.filter(connection=connection, resource_type="Patient", resource_id=payer_patient_id)
        .only("resource")
        .first()
    )
    return row.resource if row else None


def link_decide(
    *, patient: HospitalPatient, connection: PayerConnection, payer_patient_id: str, user=None
) -> LinkDecision:
    """Compare the patient with the payer's Patient record and return the decision, stored
    once per distinct comparison (the first asker is who decided)."""
    resource = payer_patient_resource(connection=connection, payer_patient_id=payer_patient_id)
    digest = _digest(patient=patient, resource=resource)
    existing = LinkDecision.objects.filter(
        patient=patient, connection=connection, payer_patient_id=payer_patient_id, inputs_digest=digest
    ).first()
    if existing:
        return existing
    if resource is None:
        comparison, verdict = Comparison(None, None, None), LinkDecision.Verdict.UNVERIFIED
    else:
        comparison = demographics_compare(patient=patient, resource=resource)
        verdict = comparison.verdict
    try:
        with transaction.atomic():
            return LinkDecision.objects.create(
                patient=patient, connection=connection, payer_patient_id=payer_patient_id, member_id=patient.member_id,
                verdict=verdict, name_matches=comparison.name, birth_date_matches=comparison.birth_date,
                sex_matches=comparison.sex, inputs_digest=digest,
                decided_by=user if getattr(user, "is_authenticated", False) else None,
            )
    except IntegrityError:  # decided at the same moment by another request
        return LinkDecision.objects.get(
            patient=patient, connection=connection, payer_patient_id=payer_patient_id, inputs_digest=digest
        )


def link_allows(*, patient: HospitalPatient, connection: PayerConnection, payer_patient_id: str) -> bool:
    """Return whether the patient's page may show this payer Patient's data (a ``match``)."""
    return link_decide(patient=patient, connection=connection, payer_patient_id=payer_patient_id).verdict == (
        LinkDecision.Verdict.MATCH
    )


def link_message(*, decision: LinkDecision, payer_name: str) -> str:
    """Say what differs, e.g. "The plan's record for member UCH100000030 has another birth date."."""
    member = f"member {decision.member_id}" if decision.member_id else f"Patient/{decision.payer_patient_id}"
    if decision.verdict == LinkDecision.Verdict.UNVERIFIED:
        return (f"{payer_name} sent no patient record for {member}, so it cannot be checked against this patient; "
                "nothing from it is shown.")
    differs = [label for label, ok in (("name", decision.name_matches), ("birth date", decision.birth_date_matches),
                                        ("sex", decision.sex_matches)) if ok is False]
    missing = [label for label, ok in (("name", decision.name_matches), ("birth date", decision.birth_date_matches))
               if ok is None]
    parts = []
    if differs:
        text = differs[0] if len(differs) == 1 else ", ".join(differs[:-1]) + " and " + differs[-1]
        parts.append(f"has another {text}")
    if missing:
        parts.append(f"has no {' or '.join(missing)}")
    return f"The plan's record for {member} {' and '.join(parts)}."


@dataclass(frozen=True)
class LinkStatus:
    """What the patient page says about the link: the decision and its message."""

    decision: LinkDecision
    message: str

    @property
    def ok(self) -> bool:
        return self.decision.verdict == LinkDecision.Verdict.MATCH


def link_status(*, patient: HospitalPatient, connection: PayerConnection | None, payer_patient_id: str,
                user=None) -> LinkStatus | None:
    """Return the current link decision for the patient's payer record, or None when unlinked."""
    if connection is None or not payer_patient_id:
        return None
    decision = link_decide(patient=patient, connection=connection, payer_patient_id=payer_patient_id, user=user)
    return LinkStatus(decision=decision, message=link_message(decision=decision, payer_name=connection.display_name))


def link_decisions(*, patient: HospitalPatient) -> list[LinkDecision]:
    """Return the patient's link decisions, newest first (the patient's own organization only,
    since a ``HospitalPatient`` belongs to one)."""
    return list(LinkDecision.objects.filter(patient=patient).select_related("decided_by", "connection")[:20])



def patient_link_status(*, patient: HospitalPatient, user=None) -> LinkStatus | None:
    """Return the link status of the patient's payer record (the newest completed fetch of
    the patient by their own organization that named it), or None when there is none."""
    from provider.models import SyncJob

    pid = patient.payer_patient_id
    if not pid:
        return None
    jobs = SyncJob.objects.filter(
        emr_sync__patient=patient, status=SyncJob.Status.COMPLETED, connection__organization_npi=patient.organization_npi
    ).select_related("connection").order_by("-created_at", "-pk")
    job = next((j for j in jobs if pid in [str(p).removeprefix("Patient/") for p in j.patient_ids or []]), None)
    return link_status(patient=patient, connection=job.connection, payer_patient_id=pid, user=user) if job else None
