"""Benchmark NDJSON ingest into the provider's local FHIR store on Postgres.

    .venv/bin/python bench/ingest.py --resources 1000000 [--workers 1,2] [--skip-full] [--database-url postgres://...]

Generates realistic Bulk Data output (one NDJSON file per type, as an export manifest
lists them), then, file by file, times:
  - validation only: parse + fhir.resources R4B validation, nothing stored (the ceiling);
  - ingest with ``full`` validation (parse, validate, extract, upsert);
and then ingest of everything at the ``structure`` level (trusted payers). Prints
resources/s and peak RSS. ``--workers 1,2`` also ingests (full) with 1 and then 2
processes, each taking chunks from ``ndjson_chunk_plan``, to show how ingest scales with
workers. Rows carry real provenance (a PayerConnection and a SyncJob), so Postgres checks
their foreign keys as in a real sync. The load average is printed: on a shared machine,
quote figures taken when it is low.
"""

import argparse
import json
import multiprocessing
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/pa_bench_ingest"

# Share of each type in a patient's history (per 50 resources), roughly a claims-plus-
# clinical export of an adult with chronic conditions.
MIX = (
    ("Patient", 1), ("Encounter", 12), ("Condition", 5), ("Observation", 15), ("Procedure", 4),
    ("MedicationRequest", 5), ("ExplanationOfBenefit", 8),
)
PER_PATIENT = sum(n for _, n in MIX)
PRACTITIONERS, LOCATIONS = 200, 20


def _setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


def database_ensure(database_url: str) -> None:
    """Create the benchmark database if missing, and migrate it."""
    import psycopg

    base, _, name = database_url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def resources_generate(total: int, *, seed: int = 7):
    """Yield ``total`` realistic R4 resources, grouped by patient (practitioners first)."""
    rng = random.Random(seed)
    families = ["Shaw", "Smith", "Nguyen", "Garcia", "Okafor", "Kowalski", "Haddad", "Jones", "Lee", "Brown"]
    givens = ["Jack", "Amy", "Omar", "Mei", "Lucia", "Tom", "Priya", "Sam", "Ana", "Ivan"]
    snomed = [("185349003", "Encounter for check up"), ("50849002", "Emergency room admission"),
              ("32485007", "Hospital admission"), ("390906007", "Follow-up encounter")]
    conditions = [("38341003", "Hypertension"), ("44054006", "Diabetes mellitus type 2"),
                  ("195967001", "Asthma"), ("55822004", "Hyperlipidemia")]
    loinc = [("8867-4", "Heart rate", "/min", 72), ("8480-6", "Systolic blood pressure", "mm[Hg]", 128),
             ("2339-0", "Glucose", "mg/dL", 104), ("29463-7", "Body weight", "kg", 81)]
    emitted = 0
    for n in range(min(PRACTITIONERS, total)):
        yield {"resourceType": "Practitioner", "id": f"pr{n}",
               "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": f"{1_000_000_000 + n}"}],
               "name": [{"family": rng.choice(families), "given": [rng.choice(givens)], "prefix": ["Dr."]}]}
        emitted += 1
    for n in range(min(LOCATIONS, total - emitted)):
        yield {"resourceType": "Location", "id": f"loc{n}", "status": "active", "name": f"Grace Hospital unit {n}"}
        emitted += 1
    patient = 0
    while emitted < total:
        pid = f"p{patient}"
        subject = {"reference": f"Patient/{pid}"}
        for resource_type, count in MIX:
            for k in range(count):
                if emitted >= total:
                    return
                rid = f"{pid}-{resource_type[:3].lower()}{k}"
                day = f"20{rng.randint(15, 24)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
                when = f"{day}T{rng.randint(7, 19):02d}:{rng.choice(['00', '15', '30', '45'])}:00Z"
                meta = {"versionId": "1", "lastUpdated": "2024-06-01T00:00:00Z",
                        "profile": [f"http://hl7.org/fhir/us/core/StructureDefinition/us-core-{resource_type.lower()}"]}
                if resource_type == "Patient":
                    resource = {"resourceType": "Patient", "id": pid, "meta": meta,
                                "identifier": [{"system": "https://unitedcare.example/member-id",
                                                "value": f"UC{patient:08d}"}],
                                "name": [{"family": rng.choice(families), "given": [rng.choice(givens)]}],
                                "gender": rng.choice(["male", "female"]),
                                "birthDate": f"19{rng.randint(30, 99)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                                "address": [{"line": [f"{rng.randint(1, 999)} Main St"], "city": "Springfield",
                                             "state": "IL", "postalCode": "62701"}]}
                elif resource_type == "Encounter":
                    code, display = rng.choice(snomed)
                    resource = {"resourceType": "Encounter", "id": rid, "meta": meta, "status": "finished",
                                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                          "code": "EMER" if code == "50849002" else "AMB"},
                                "type": [{"coding": [{"system": "http://snomed.info/sct", "code": code,
                                                      "display": display}]}],
                                "subject": subject,
                                "participant": [{"individual": {"reference": f"Practitioner/pr{rng.randrange(PRACTITIONERS)}"}}],
                                "period": {"start": when, "end": when.replace("T", "T").replace(":00Z", ":59Z")},
                                "location": [{"location": {"reference": f"Location/loc{rng.randrange(LOCATIONS)}"}}]}
                elif resource_type == "Condition":
                    code, display = rng.choice(conditions)
                    resource = {"resourceType": "Condition", "id": rid, "meta": meta,
                                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}],
                                "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]},
                                "subject": subject, "onsetDateTime": day, "recordedDate": day}
                elif resource_type == "Observation":
                    code, display, unit, value = rng.choice(loinc)
                    resource = {"resourceType": "Observation", "id": rid, "meta": meta, "status": "final",
                                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                                "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
                                "subject": subject, "effectiveDateTime": when,
                                "valueQuantity": {"value": value + rng.randint(-10, 10), "unit": unit,
                                                  "system": "http://unitsofmeasure.org", "code": unit}}
                elif resource_type == "Procedure":
                    resource = {"resourceType": "Procedure", "id": rid, "meta": meta, "status": "completed",
                                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "80146002", "display": "Appendectomy"}]},
                                "subject": subject, "performedDateTime": when}
                elif resource_type == "MedicationRequest":
                    resource = {"resourceType": "MedicationRequest", "id": rid, "meta": meta, "status": "active",
                                "intent": "order",
                                "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361", "display": "Amlodipine 5 MG"}]},
                                "subject": subject, "authoredOn": day,
                                "dosageInstruction": [{"text": "1 tablet daily"}]}
                else:
                    resource = {"resourceType": "ExplanationOfBenefit", "id": rid, "meta": meta, "status": "active",
                                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
                                "use": "claim", "patient": subject, "billablePeriod": {"start": day, "end": day},
                                "created": when, "insurer": {"display": "UnitedCare Health"},
                                "provider": {"reference": f"Practitioner/pr{rng.randrange(PRACTITIONERS)}"},
                                "outcome": "complete",
                                "insurance": [{"focal": True, "coverage": {"display": "UnitedCare PPO"}}],
                                "item": [{"sequence": 1, "productOrService": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "99213"}]},
                                          "adjudication": [{"category": {"coding": [{"code": "benefit"}]}, "amount": {"value": 80.0, "currency": "USD"}}]}],
                                "total": [{"category": {"coding": [{"code": "submitted"}]}, "amount": {"value": 120.0, "currency": "USD"}}]}
                yield resource
                emitted += 1
        patient += 1


def files_write(total: int, folder: Path) -> dict[str, Path]:
    """Write the resources as one NDJSON file per type; return {type: path}."""
    handles: dict[str, object] = {}
    paths: dict[str, Path] = {}
    try:
        for item in resources_generate(total):
            kind = item["resourceType"]
            if kind not in handles:
                paths[kind] = folder / f"{kind}.ndjson"
                handles[kind] = open(paths[kind], "w")
            handles[kind].write(json.dumps(item, separators=(",", ":")) + "\n")
    finally:
        for handle in handles.values():
            handle.close()
    return paths


def validate_only(path: Path) -> int:
    """Parse and validate every line of ``path`` without storing; return the count.

    The ceiling ingest is compared with: the same line reading and parsing as
    ``ndjson_ingest`` (``ndjson_line_parse``, orjson) and the same fhir.resources R4B
    validation (``resource_validate``), and nothing else.
    """
    from fhirkit.validation import resource_validate
    from provider.services.ingest import ndjson_line_parse

    count = 0
    with open(path, "rb") as stream:
        for line in stream:
            stripped = line.strip()
            if not stripped:
                continue
            if resource_validate(ndjson_line_parse(stripped)):
                raise SystemExit(f"generated data is invalid: {line[:200]!r}")
            count += 1
    return count


def _store_clear() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE provider_localresource, provider_ingestissue")


def _provenance() -> tuple:
    """Return the (PayerConnection, SyncJob) the benchmark ingests under, as a sync would.

    Real provenance, not NULLs: Postgres then checks both foreign keys on every row, as it
    does for a real sync.
    """
    from provider.models import PayerConnection, SyncJob

    payer, _ = PayerConnection.objects.get_or_create(
        name="bench", defaults={"display_name": "Bench payer", "fhir_base_url": "https://payer.example/fhir",
                                "client_id": "bench", "private_key_path": "var/keys/bench.pem", "key_id": "bench"},
    )
    job = SyncJob.objects.create(connection=payer, level=SyncJob.Level.SYSTEM, scope_key="bench")
    return payer, job


def _chunk_worker(args: tuple) -> int:
    path, chunk, kind, payer_id, job_id = args
    from django.db import connections

    from provider.models import PayerConnection, SyncJob
    from provider.services.ingest import NDJSONChunk, ndjson_ingest_chunk

    result = ndjson_ingest_chunk(path=path, chunk=NDJSONChunk(*chunk), file_name=Path(path).name, expected_type=kind,
                                 connection=PayerConnection.objects.get(pk=payer_id),
                                 sync_job=SyncJob.objects.get(pk=job_id), export_time=None, validation_level="full")
    assert result.errors == 0, result
    connections.close_all()
    return result.stored


def _pool_init(database_url: str) -> None:
    _setup_django(database_url)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} cores"


def _rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--workers", default="", help="also run full ingest with these numbers of worker processes "
                                                       "taking chunks from ndjson_chunk_plan, e.g. 1,2")
    parser.add_argument("--skip-full", action="store_true", help="only the structure level (fills the store fast)")
    parser.add_argument("--skip-structure", action="store_true", help="no structure-level runs")
    parser.add_argument("--keep", action="store_true", help="leave the resources stored (for bench/search.py)")
    args = parser.parse_args()
    _setup_django(args.database_url)
    database_ensure(args.database_url)
    from django.db import connection

    from provider.services.ingest import ndjson_chunk_plan, ndjson_ingest

    payer, job = _provenance()

    def ingest(paths: dict[str, Path], level: str, kinds=None) -> tuple[int, float]:
        stored, elapsed = 0, 0.0
        for kind in kinds or paths:
            with open(paths[kind], "rb") as stream:
                started = time.perf_counter()
                result = ndjson_ingest(stream=stream, file_name=paths[kind].name, expected_type=kind,
                                       connection=payer, sync_job=job, export_time=None, validation_level=level)
                elapsed += time.perf_counter() - started
            assert result.errors == 0, result
            stored += result.stored
        return stored, elapsed

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as folder:
        started = time.perf_counter()
        paths = files_write(args.resources, Path(folder))
        size = sum(p.stat().st_size for p in paths.values())
        print(f"database         {connection.vendor} {connection.settings_dict['NAME']}")
        print(f"resources        {args.resources:,} in {len(paths)} files, {size / 2**20:,.0f} MiB "
              f"(generated in {time.perf_counter() - started:.0f} s)")
        print(f"machine          {_load()} at start")
        rss_start = _rss_mib(resource.RUSAGE_SELF)
        full_rate = 0.0
        if not args.skip_full:
            # Interleave, file by file, validation-only and full ingest so that both see the
            # same load on a shared machine.
            _store_clear()
            validate_seconds = full_seconds = validate_cpu = full_cpu = 0.0
            stored = 0
            for kind in paths:
                started, cpu = time.perf_counter(), time.process_time()
                validate_only(paths[kind])
                validate_seconds += time.perf_counter() - started
                validate_cpu += time.process_time() - cpu
                cpu = time.process_time()
                count, seconds = ingest(paths, "full", [kind])
                full_cpu += time.process_time() - cpu
                stored += count
                full_seconds += seconds
            validation_rate = args.resources / validate_seconds
            full_rate = args.resources / full_seconds
            print(f"validation only  {validation_rate:,.0f} resources/s ({validate_seconds:.0f} s): "
                  f"orjson parse + fhir.resources R4B validation, as ndjson_ingest does them")
            print(f"ingest, full     {full_rate:,.0f} resources/s ({full_seconds:.0f} s, {stored:,} stored) "
                  f"= {100 * full_rate / validation_rate:.0f}% of validation-only, 1 worker")
            # CPU seconds of the worker process (its writer helper and Postgres excluded):
            # what one worker costs when they have cores of their own.
            print(f"worker CPU       validation only {args.resources / validate_cpu:,.0f} resources/CPU-s, "
                  f"ingest full {args.resources / full_cpu:,.0f} resources/CPU-s "
                  f"= {100 * validate_cpu / full_cpu:.0f}%")
            print(f"peak RSS         worker {_rss_mib(resource.RUSAGE_SELF):.0f} MiB (at start {rss_start:.0f} MiB), "
                  f"writer helper {_rss_mib(resource.RUSAGE_CHILDREN):.0f} MiB (mostly pages shared with the worker)")
        for workers in [int(n) for n in args.workers.split(",") if n]:
            _store_clear()
            tasks = [
                (str(path), (c.start_byte, c.end_byte, c.first_line), kind, payer.pk, job.pk)
                for kind, path in paths.items()
                for c in ndjson_chunk_plan(path=str(path), lines_per_chunk=20_000)
            ]
            connection.close()
            context = multiprocessing.get_context("spawn")
            with context.Pool(workers, initializer=_pool_init, initargs=(args.database_url,)) as pool:
                started = time.perf_counter()
                stored = sum(pool.imap_unordered(_chunk_worker, tasks))
                seconds = time.perf_counter() - started
            print(f"ingest, full     {args.resources / seconds:,.0f} resources/s with {workers} worker process(es) "
                  f"({len(tasks)} chunks, {stored:,} stored; {_load()})")
        if not args.skip_structure:
            _store_clear()
            stored, seconds = ingest(paths, "structure")
            print(f"ingest, structure {args.resources / seconds:,.0f} resources/s ({seconds:.0f} s, {stored:,} stored)")
            print(f"peak RSS         worker {_rss_mib(resource.RUSAGE_SELF):.0f} MiB (at start {rss_start:.0f} MiB)")
            count, seconds = ingest(paths, "structure")
            print(f"re-ingest, same  {args.resources / seconds:,.0f} resources/s ({count:,} rows changed)")
        print(f"machine          {_load()} at the end")
        if not args.keep:
            _store_clear()


if __name__ == "__main__":
    main()
