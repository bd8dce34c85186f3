"""Write generated member records, and stream a large synthetic population for benchmarks.

``population_generate`` builds members one at a time (payer/services/synthetic.py) and
writes them in batches, so memory stays flat however many members are asked for. On
PostgreSQL a batch goes in with ``COPY ... FROM STDIN`` (one statement per table), which
is several times faster than ``bulk_create``'s parameterised INSERTs, on a second thread
while the next batch is built; elsewhere (SQLite) ``bulk_create`` writes it. Both take
their values from the same ``_*_values`` functions, so they store the same rows. Member
ids ``UCG<seed:04d>-<n:08d>`` never collide with the demo's ``UCH1...`` nor with another
seed's.
"""

import gc
import itertools
import random
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import orjson
from django.db import connection, models, reset_queries, transaction
from psycopg import sql as psycopg_sql

from payer.models import (
    Claim,
    ClaimDiagnosis,
    ClaimLine,
    ClinicalResource,
    Member,
    PriorAuthorization,
    ProviderPractitioner,
)
from payer.services.synthetic import (
    PROCEDURES,
    ClaimSpec,
    Org,
    PASpec,
    Prac,
    ProviderPool,
    RecordBuilder,
    member_history,
    member_identity,
)

BATCH_SIZE = 2000

# --- Row values ----------------------------------------------------------------------------
# Column order of the tuples below: the model's attnames, without the surrogate ``id`` and
# the foreign key to the parent row (the writers add those).

MEMBER_COLUMNS = ("member_id", "patient_id", "family", "given", "birth_date", "gender", "opted_out",
                  "subscriber_id", "coverage_start", "coverage_end", "email")
RESOURCE_COLUMNS = ("resource_type", "resource_id", "version_id", "last_updated", "patient_id", "date", "status", "resource")
CLAIM_COLUMNS = (
    "claim_number", "claim_type", "status", "billing_npi", "rendering_npi", "facility_npi", "type_of_bill",
    "service_start", "service_end", "received_date", "processed_date", "encounter_id", "ndc_code", "rxnorm_code",
    "drug_name", "days_supply", "total_charged", "total_paid", "member_liability", "updated_at",
    "daw_code", "refill_number", "refills_authorized",
)
LINE_COLUMNS = (
    "sequence", "procedure_code", "procedure_system", "procedure_display", "revenue_code", "modifier",
    "place_of_service", "service_date", "quantity", "charged_amount", "allowed_amount", "paid_amount", "copay_amount",
)
DIAGNOSIS_COLUMNS = ("sequence", "icd10_code", "display", "kind")
PA_COLUMNS = (
    "auth_number", "requesting_npi", "servicing_npi", "service_code", "service_system", "service_display",
    "diagnosis_code", "quantity", "requested_date", "decision", "decision_date", "decision_reason", "valid_start",
    "valid_end", "updated_at", "units_approved", "units_used",
)


def _member_values(b: RecordBuilder) -> tuple:
    patient = b.rows[0].resource  # RecordBuilder.patient() writes the Patient first
    name = patient["name"][0]
    # The member is the subscriber; coverage open-ended; no email (notices go as letters).
    return (b.member_id, b.patient_id, name["family"], name["given"][0], date.fromisoformat(patient["birthDate"]),
            patient["gender"], False, "", None, None, "")


def _resource_values(b: RecordBuilder, *, serialize: bool) -> Iterator[tuple]:
    """Yield the clinical repository rows; with ``serialize`` the resource is JSON text (serialized once)."""
    for r in b.rows:
        resource = r.resource
        yield (resource["resourceType"], resource["id"], 1, r.last_updated, r.patient_id, r.date, r.status,
               orjson.dumps(resource).decode() if serialize else resource)


def _claim_values(spec: ClaimSpec) -> tuple:
    charged = sum((a[0] for a in spec.line_amounts), start=0)
    paid = sum((a[2] for a in spec.line_amounts), start=0)
    copay = sum((a[3] for a in spec.line_amounts), start=0)
    drug = spec.drug
    return (
        spec.claim_number, spec.claim_type, spec.status, spec.billing_npi, spec.rendering_npi, spec.facility_npi,
        spec.type_of_bill, spec.service_start, spec.service_end, spec.received_date, spec.processed_date,
        spec.encounter_id, drug.ndc if drug else "", drug.rxnorm if drug else "", drug.display if drug else "",
        drug.days if drug else None, charged, paid, copay, spec.updated_at,
        spec.daw_code, spec.refill_number, spec.refills_authorized,
    )


def _line_values(spec: ClaimSpec) -> Iterator[tuple]:
    for seq, (line, (charged, allowed, paid, copay)) in enumerate(zip(spec.lines, spec.line_amounts), start=1):
        procedure = PROCEDURES[line.code] if line.code else ("", "", 0)
        yield (seq, line.code, procedure[0], procedure[1], line.revenue, "", line.pos,
               line.service_date or spec.service_start, line.quantity, charged, allowed, paid, copay)


def _diagnosis_values(spec: ClaimSpec) -> Iterator[tuple]:
    for seq, (code, display, kind) in enumerate(spec.diagnoses, start=1):
        yield (seq, code, display, kind)


def _pa_values(pa: PASpec) -> tuple:
    system, display, _ = PROCEDURES[pa.service_code]
    return (
        pa.auth_number, pa.requesting_npi, pa.servicing_npi, pa.service_code, system, display, pa.diagnosis_code,
        pa.quantity, pa.requested_date, pa.decision, pa.decision_date, pa.decision_reason, pa.valid_start,
        pa.valid_end, pa.updated_at, pa.units_approved, pa.units_used,
    )


def _model(model: type[models.Model], columns: tuple[str, ...], values: tuple, **extra: Any) -> models.Model:
    return model(**dict(zip(columns, values)), **extra)


def records_save(*, builders: Iterable[RecordBuilder], upsert: bool = False) -> dict[str, int]:
    """Save members' records; with ``upsert`` replace what an earlier run wrote for them.

    Upserts go on the natural keys (member id, resource type + id, claim number, auth
    number); rows of these members that the new build no longer has are deleted, so a
    rerun leaves exactly the rows of the new build.
    """
    builders = list(builders)
    members = [_model(Member, MEMBER_COLUMNS, _member_values(b)) for b in builders]
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
        _model(ClinicalResource, RESOURCE_COLUMNS, values)
        for b in builders for values in _resource_values(b, serialize=False)
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
            claims.append(_model(Claim, CLAIM_COLUMNS, _claim_values(spec), member=member))
            specs.append(spec)
        pas.extend(_model(PriorAuthorization, PA_COLUMNS, _pa_values(pa), member=member) for pa in b.pas)
    claim_fields = [f.name for f in Claim._meta.concrete_fields if f.name not in ("id", "claim_number")]
    conflict = {"update_conflicts": True, "unique_fields": ["claim_number"], "update_fields": claim_fields} if upsert else {}
    Claim.objects.bulk_create(claims, batch_size=BATCH_SIZE, **conflict)
    if upsert:
        ids = dict(Claim.objects.filter(claim_number__in=[c.claim_number for c in claims]).values_list("claim_number", "id"))
        for c in claims:
            c.pk = ids[c.claim_number]
        ClaimLine.objects.filter(claim_id__in=ids.values()).delete()
        ClaimDiagnosis.objects.filter(claim_id__in=ids.values()).delete()
    lines = [_model(ClaimLine, LINE_COLUMNS, v, claim_id=claim.pk)
             for claim, spec in zip(claims, specs) for v in _line_values(spec)]
    diagnoses = [_model(ClaimDiagnosis, DIAGNOSIS_COLUMNS, v, claim_id=claim.pk)
                 for claim, spec in zip(claims, specs) for v in _diagnosis_values(spec)]
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

    def add(self, counts: dict[str, int]) -> None:
        for key, value in counts.items():
            setattr(self, key, getattr(self, key) + value)


def population_generate(*, members: int, seed: int, today: date, grace_npi: str,
                        batch_members: int = 200, grace_share: float = 0.3) -> PopulationResult:
    """Generate ``members`` members with their records, deterministic for (seed, today).

    Refuses to run twice for the same seed (the member ids would collide). Each batch of
    ``batch_members`` members is one transaction: COPY on PostgreSQL, ``bulk_create`` elsewhere.
    """
    population_member_id(seed=seed, n=0)  # refuses a seed that would not fit
    if Member.objects.filter(member_id__startswith=population_prefix(seed=seed)).exists():
        raise ValueError(f"A population with seed {seed} is already in the database; use another seed.")
    pool = provider_pool_load(grace_npi=grace_npi)
    builders = _population_builders(members=members, seed=seed, today=today, pool=pool, grace_share=grace_share)
    if connection.vendor == "postgresql":
        return _population_copy(builders=builders, batch_members=batch_members)
    result = PopulationResult()
    while batch := list(itertools.islice(builders, batch_members)):
        with transaction.atomic():
            result.add(records_save(builders=batch))
        # With DEBUG on, Django keeps every SQL statement in connection.queries; the bulk
        # inserts would make memory grow with the population.
        reset_queries()
    return result


def _population_builders(*, members: int, seed: int, today: date, pool: ProviderPool,
                         grace_share: float) -> Iterator[RecordBuilder]:
    """Yield the members of ``seed`` one by one, each with its own random stream."""
    for n in range(1, members + 1):
        rng = random.Random(f"{seed}:{n}")
        member_id = population_member_id(seed=seed, n=n)
        b = RecordBuilder(member_id=member_id, patient_id=f"pat-{member_id.lower()}", today=today, rng=rng)
        member_history(b, pool, identity=member_identity(rng, today), grace_recent=rng.random() < grace_share)
        yield b


def _population_copy(*, builders: Iterable[RecordBuilder], batch_members: int) -> PopulationResult:
    """Write the members with COPY, one batch on a second thread while this one builds the next.

    The database (parsing JSON, maintaining indexes, checking foreign keys) and the Python
    that builds members take about as long as each other; overlapping them saved a third of
    the time on a 2-core machine. The writer thread uses this thread's database connection
    (the rows must go into the caller's transaction, if any), and only one batch is written
    at a time; this thread does not touch the connection until the writer is done. At most
    two batches are in memory: the one being written and the one being built.
    """
    result = PopulationResult()
    connection.ensure_connection()
    raw = connection.connection
    batch = _CopyBatch()
    with _gc_relaxed(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="population-copy") as executor:
        writing: Future | None = None
        for b in builders:
            batch.add(b)
            if len(batch.members) >= batch_members:
                if writing is not None:
                    result.add(writing.result())
                writing, batch = executor.submit(batch.write, raw), _CopyBatch()
        if writing is not None:
            result.add(writing.result())
    if batch.members:
        result.add(batch.write(raw))
    return result


@contextmanager
def _gc_relaxed() -> Iterator[None]:
    """Collect cyclic garbage less often while members are built, as a bulk loader may.

    Building a member allocates tens of thousands of short-lived dicts, each of which
    counts towards the collector's thresholds, and every full collection walked all of
    Django's long-lived objects as well: about a fifth of the time spent building members.
    Freezing what exists and raising the first threshold keeps collection (and so memory)
    bounded at a smaller cost. The previous settings come back afterwards.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


# --- Batch writers -------------------------------------------------------------------------

@dataclass
class _CopyBatch:
    """A batch of members as plain row tuples, written with PostgreSQL ``COPY FROM STDIN``.

    A member's builder is turned into tuples (its resources serialized to JSON once) as
    soon as it is added and then dropped, so a batch holds compact rows, not object graphs.
    Member and claim rows reference their parent by position in the batch until ``write``
    reserves their primary keys from the tables' sequences, in order, as ``bulk_create``
    would have assigned them.
    """

    members: list[tuple] = field(default_factory=list)
    resources: list[tuple] = field(default_factory=list)
    claims: list[tuple[int, tuple]] = field(default_factory=list)  # (member position, values)
    lines: list[tuple[int, tuple]] = field(default_factory=list)  # (claim position, values)
    diagnoses: list[tuple[int, tuple]] = field(default_factory=list)  # (claim position, values)
    pas: list[tuple[int, tuple]] = field(default_factory=list)  # (member position, values)

    def add(self, b: RecordBuilder) -> None:
        m = len(self.members)
        self.members.append(_member_values(b))
        self.resources.extend(_resource_values(b, serialize=True))
        for spec in b.claims:
            c = len(self.claims)
            self.claims.append((m, _claim_values(spec)))
            self.lines.extend((c, v) for v in _line_values(spec))
            self.diagnoses.extend((c, v) for v in _diagnosis_values(spec))
        self.pas.extend((m, _pa_values(pa)) for pa in b.pas)

    def write(self, raw_connection: Any) -> dict[str, int]:
        """Write the batch in one transaction (a savepoint when the caller has one open).

        ``raw_connection`` is the psycopg connection under Django's: it has COPY, and
        bypasses Django's DEBUG query log.
        """
        with raw_connection.transaction(), raw_connection.cursor() as cursor:
            # Asynchronous commit for this transaction only (SET LOCAL ends with it, so
            # nothing leaks into other work on the connection). A benchmark generator may
            # take it: a server crash can lose the batches committed in the last few hundred
            # milliseconds but never corrupts or half-writes one (PostgreSQL docs, "Asynchronous
            # Commit"), a crash without it leaves a partial population just the same, and the
            # data is deterministic per seed, so it can be regenerated.
            cursor.execute("SET LOCAL synchronous_commit = off")
            member_pks = _pks_reserve(cursor, Member, len(self.members))
            claim_pks = _pks_reserve(cursor, Claim, len(self.claims))
            _copy(cursor, Member, ("id", *MEMBER_COLUMNS), ((pk, *v) for pk, v in zip(member_pks, self.members)))
            _copy(cursor, ClinicalResource, RESOURCE_COLUMNS, self.resources)
            _copy(cursor, Claim, ("id", "member_id", *CLAIM_COLUMNS),
                  ((pk, member_pks[m], *v) for pk, (m, v) in zip(claim_pks, self.claims)))
            _copy(cursor, ClaimLine, ("claim_id", *LINE_COLUMNS), ((claim_pks[c], *v) for c, v in self.lines))
            _copy(cursor, ClaimDiagnosis, ("claim_id", *DIAGNOSIS_COLUMNS), ((claim_pks[c], *v) for c, v in self.diagnoses))
            _copy(cursor, PriorAuthorization, ("member_id", *PA_COLUMNS), ((member_pks[m], *v) for m, v in self.pas))
        return {
            "members": len(self.members), "clinical_resources": len(self.resources), "claims": len(self.claims),
            "claim_lines": len(self.lines), "prior_authorizations": len(self.pas),
        }


def _pks_reserve(cursor: Any, model: type[models.Model], count: int) -> list[int]:
    """Take ``count`` ascending primary keys from the sequence of ``model``'s identity column."""
    if not count:
        return []
    cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                   (model._meta.db_table, count))
    return sorted(row[0] for row in cursor.fetchall())


def _copy(cursor: Any, model: type[models.Model], columns: tuple[str, ...], rows: Iterable[tuple]) -> None:
    """COPY ``rows`` into ``model``'s table; every column but an omitted ``id`` must be given."""
    expected = {f.column for f in model._meta.concrete_fields}
    if set(columns) | {"id"} != expected:
        raise RuntimeError(f"COPY into {model._meta.db_table}: columns {sorted(expected - set(columns))} are not written.")
    statement = psycopg_sql.SQL("COPY {} ({}) FROM STDIN").format(
        psycopg_sql.Identifier(model._meta.db_table), psycopg_sql.SQL(", ").join(map(psycopg_sql.Identifier, columns)))
    with cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)
