"""Write generated member records, and stream a large synthetic population for benchmarks.

``population_generate`` builds members one at a time (payer/services/synthetic.py) and
writes them in ``bulk_create`` batches, so memory stays flat however many members are
asked for. Member ids ``UCG<seed:04d>-<n:08d>`` never collide with the demo's ``UCH1...``
nor with another seed's.
"""

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from django.db import reset_queries, transaction

from payer.models import (
    Claim,
    ClaimDiagnosis,
    ClaimLine,
    ClinicalResource,
    Member,
    PriorAuthorization,
    ProviderPractitioner,
)
from payer.services.synthetic import PROCEDURES, Org, Prac, ProviderPool, RecordBuilder, member_history, member_identity

BATCH_SIZE = 2000


def records_save(*, builders: Iterable[RecordBuilder], upsert: bool = False) -> dict[str, int]:
    """Save members' records; with ``upsert`` replace what an earlier run wrote for them.

    Upserts go on the natural keys (member id, resource type + id, claim number, auth
    number); rows of these members that the new build no longer has are deleted, so a
    rerun leaves exactly the rows of the new build.
    """
    builders = list(builders)
    members = [
        Member(
            member_id=b.member_id, patient_id=b.patient_id, family=_patient(b)["name"][0]["family"],
            given=_patient(b)["name"][0]["given"][0], birth_date=date.fromisoformat(_patient(b)["birthDate"]),
            gender=_patient(b)["gender"],
        )
        for b in builders
    ]
    conflict = (
        {"update_conflicts": True, "unique_fields": ["member_id"], "update_fields": ["patient_id", "family", "given", "birth_date", "gender"]}
        if upsert else {}
    )
    Member.objects.bulk_create(members, batch_size=BATCH_SIZE, **conflict)
    if upsert:
        # Some backends do not return ids of updated rows; read them back.
        ids = dict(Member.objects.filter(member_id__in=[m.member_id for m in members]).values_list("member_id", "id"))
        for m in members:
            m.pk = ids[m.member_id]
    by_member = {m.member_id: m for m in members}

    resources = [
        ClinicalResource(
            resource_type=r.resource["resourceType"], resource_id=r.resource["id"], last_updated=r.last_updated,
            patient_id=r.patient_id, date=r.date, status=r.status, resource=r.resource,
        )
        for b in builders for r in b.rows
    ]
    conflict = (
        {"update_conflicts": True, "unique_fields": ["resource_type", "resource_id"],
         "update_fields": ["last_updated", "patient_id", "date", "status", "resource", "version_id"]}
        if upsert else {}
    )
    ClinicalResource.objects.bulk_create(resources, batch_size=BATCH_SIZE, **conflict)

    claims, specs = [], []
    pas = []
    for b in builders:
        member = by_member[b.member_id]
        for spec in b.claims:
            charged = sum((a[0] for a in spec.line_amounts), start=0)
            paid = sum((a[2] for a in spec.line_amounts), start=0)
            copay = sum((a[3] for a in spec.line_amounts), start=0)
            drug = spec.drug
            claims.append(Claim(
                claim_number=spec.claim_number, member=member, claim_type=spec.claim_type, status=spec.status,
                billing_npi=spec.billing_npi, rendering_npi=spec.rendering_npi,
                facility_npi=spec.facility_npi, type_of_bill=spec.type_of_bill, service_start=spec.service_start,
                service_end=spec.service_end, received_date=spec.received_date, processed_date=spec.processed_date,
                encounter_id=spec.encounter_id, ndc_code=drug.ndc if drug else "", rxnorm_code=drug.rxnorm if drug else "",
                drug_name=drug.display if drug else "", days_supply=drug.days if drug else None,
                total_charged=charged, total_paid=paid, member_liability=copay, updated_at=spec.updated_at,
            ))
            specs.append(spec)
        for pa in b.pas:
            system, display, _ = PROCEDURES[pa.service_code]
            pas.append(PriorAuthorization(
                auth_number=pa.auth_number, member=member, requesting_npi=pa.requesting_npi,
                servicing_npi=pa.servicing_npi, service_code=pa.service_code, service_system=system,
                service_display=display, diagnosis_code=pa.diagnosis_code, quantity=pa.quantity,
                requested_date=pa.requested_date, decision=pa.decision, decision_date=pa.decision_date,
                decision_reason=pa.decision_reason, valid_start=pa.valid_start, valid_end=pa.valid_end,
                updated_at=pa.updated_at,
            ))
    claim_fields = [f.name for f in Claim._meta.concrete_fields if f.name not in ("id", "claim_number")]
    conflict = {"update_conflicts": True, "unique_fields": ["claim_number"], "update_fields": claim_fields} if upsert else {}
    Claim.objects.bulk_create(claims, batch_size=BATCH_SIZE, **conflict)
    if upsert:
        ids = dict(Claim.objects.filter(claim_number__in=[c.claim_number for c in claims]).values_list("claim_number", "id"))
        for c in claims:
            c.pk = ids[c.claim_number]
        ClaimLine.objects.filter(claim_id__in=ids.values()).delete()
        ClaimDiagnosis.objects.filter(claim_id__in=ids.values()).delete()
    lines, diagnoses = [], []
    for claim, spec in zip(claims, specs):
        for seq, (line, (charged, allowed, paid, copay)) in enumerate(zip(spec.lines, spec.line_amounts), start=1):
            system = PROCEDURES[line.code][0] if line.code else ""
            lines.append(ClaimLine(
                claim_id=claim.pk, sequence=seq, procedure_code=line.code, procedure_system=system,
                procedure_display=PROCEDURES[line.code][1] if line.code else "", revenue_code=line.revenue,
                place_of_service=line.pos, service_date=line.service_date or spec.service_start, quantity=line.quantity,
                charged_amount=charged, allowed_amount=allowed, paid_amount=paid, copay_amount=copay,
            ))
        for seq, (code, display, kind) in enumerate(spec.diagnoses, start=1):
            diagnoses.append(ClaimDiagnosis(claim_id=claim.pk, sequence=seq, icd10_code=code, display=display, kind=kind))
    ClaimLine.objects.bulk_create(lines, batch_size=BATCH_SIZE)
    ClaimDiagnosis.objects.bulk_create(diagnoses, batch_size=BATCH_SIZE)
    pa_fields = [f.name for f in PriorAuthorization._meta.concrete_fields if f.name not in ("id", "auth_number")]
    conflict = {"update_conflicts": True, "unique_fields": ["auth_number"], "update_fields": pa_fields} if upsert else {}
    PriorAuthorization.objects.bulk_create(pas, batch_size=BATCH_SIZE, **conflict)

    if upsert:
        member_pks = [m.pk for m in members]
        patient_ids = [m.patient_id for m in members]
        keep_resources = {(r.resource_type, r.resource_id) for r in resources}
        stale = [
            pk for pk, rtype, rid in ClinicalResource.objects.filter(patient_id__in=patient_ids).values_list("pk", "resource_type", "resource_id")
            if (rtype, rid) not in keep_resources
        ]
        ClinicalResource.objects.filter(pk__in=stale).delete()
        Claim.objects.filter(member_id__in=member_pks).exclude(claim_number__in=[c.claim_number for c in claims]).delete()
        PriorAuthorization.objects.filter(member_id__in=member_pks).exclude(auth_number__in=[p.auth_number for p in pas]).delete()
    return {
        "members": len(members), "clinical_resources": len(resources), "claims": len(claims),
        "claim_lines": len(lines), "prior_authorizations": len(pas),
    }


def _patient(b: RecordBuilder) -> dict:
    return b.rows[0].resource  # RecordBuilder.patient() writes the Patient first


# --- Population --------------------------------------------------------------------------

def population_member_id(*, seed: int, n: int) -> str:
    """Return the member id of the ``n``-th generated member of ``seed``: ``UCG<seed>-<n>``.

    The whole seed is in the id and the dash ends it, so no two seeds share an id or a
    prefix (seed 10003 once wrote the ids of seed 3). At most 40 characters (Member.member_id)
    and, lowercased into ``pat-...``, a valid FHIR id (R4 datatypes.html#id).
    """
    if seed < 0 or len(str(seed)) > 20:
        raise ValueError("The seed must be a non-negative integer of at most 20 digits.")
    return f"{population_prefix(seed=seed)}{n:08d}"


def population_prefix(*, seed: int) -> str:
    """Return the prefix every member id of ``seed`` starts with, and no other seed's."""
    return f"UCG{seed:04d}-"


def provider_pool_load(*, grace_npi: str) -> ProviderPool:
    """Return the clinicians of the provider directory, grouped by what they do."""
    pracs = [
        Prac(p.npi, p.given, p.family, p.taxonomy_code, p.taxonomy_display,
             Org(p.organization.npi, p.organization.name, p.organization.fhir_id, p.organization.city,
                 p.organization.state, "hospital" if "Hospital" in p.organization.name or "Medical Center" in p.organization.name
                 else "urgent" if "Urgent" in p.organization.name else "imaging" if "Imaging" in p.organization.name else "clinic"),
             p.fhir_id)
        for p in ProviderPractitioner.objects.select_related("organization").order_by("npi")
    ]
    if not pracs:
        raise ValueError("The provider directory is empty: run seed_demo first.")
    primary_codes = {"207Q00000X", "207R00000X"}
    grace = [p for p in pracs if p.org.npi == grace_npi and p.taxonomy_code in primary_codes]
    primary = [p for p in pracs if p.taxonomy_code in primary_codes and p.org.npi != grace_npi and p.org.kind != "urgent"]
    urgent = [p for p in pracs if p.org.kind == "urgent"] or primary
    emergency = [p for p in pracs if p.taxonomy_code == "207P00000X" and p.org.kind == "hospital"] or primary
    imaging = [p for p in pracs if p.taxonomy_code.startswith("2085")] or primary
    return ProviderPool(primary=primary or grace, urgent=urgent, emergency=emergency, imaging=imaging,
                        specialists=pracs, grace_primary=grace or primary)


@dataclass
class PopulationResult:
    members: int = 0
    clinical_resources: int = 0
    claims: int = 0
    claim_lines: int = 0
    prior_authorizations: int = 0


def population_generate(*, members: int, seed: int, today: date, grace_npi: str,
                        batch_members: int = 200, grace_share: float = 0.3) -> PopulationResult:
    """Generate ``members`` members with their records, deterministic for (seed, today).

    Refuses to run twice for the same seed (the member ids would collide).
    """
    population_member_id(seed=seed, n=0)  # refuses a seed that would not fit
    if Member.objects.filter(member_id__startswith=population_prefix(seed=seed)).exists():
        raise ValueError(f"A population with seed {seed} is already in the database; use another seed.")
    pool = provider_pool_load(grace_npi=grace_npi)
    result = PopulationResult()
    batch: list[RecordBuilder] = []

    def flush() -> None:
        with transaction.atomic():
            counts = records_save(builders=batch)
        # With DEBUG on, Django keeps every SQL statement in connection.queries; the bulk
        # inserts would make memory grow with the population.
        reset_queries()
        for key, value in counts.items():
            setattr(result, key, getattr(result, key) + value)
        batch.clear()

    for n in range(1, members + 1):
        rng = random.Random(f"{seed}:{n}")
        member_id = population_member_id(seed=seed, n=n)
        b = RecordBuilder(member_id=member_id, patient_id=f"pat-{member_id.lower()}", today=today, rng=rng)
        member_history(b, pool, identity=member_identity(rng, today), grace_recent=rng.random() < grace_share)
        batch.append(b)
        if len(batch) >= batch_members:
            flush()
    if batch:
        flush()
    return result
