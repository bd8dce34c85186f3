"""Benchmark import_claims and import_fhir on Postgres against a raw COPY of the same data.

    .venv/bin/python bench/import.py [--members 10000] [--resources 1000000] [--dir /tmp/pa-bench-import]

DATABASE_URL (default postgres://postgres@127.0.0.1:5432/pa_bench_import, created when
missing) is migrated and EMPTIED of payer data first: give it a database of its own.

A child process writes the input with the synthetic generator (payer/services/synthetic.py):
a claims extract of ``--members`` members in the documented layout (docs/claims-extract.md),
and their clinical records as NDJSON, one file per type, topped up with extra Observations
until there are ``--resources`` resources. Then this process imports the extract and the NDJSON through the real services and
prints rows/s, resources/s and its peak RSS (ru_maxrss; the writer is another process, so
its memory is not counted). The machine's limit is a ``COPY FROM STDIN`` of the same
NDJSON lines (resource type, id and JSON) into an unlogged scratch table: parsing,
validating, linking and upserting can only be slower than that.
"""

import argparse
import csv
import multiprocessing
import os
import random
import resource
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pa_bench_import")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

import orjson  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from payer.services.demo import CONTRACTS, DEMO_POOL, ORGS, PRACS, demo_today  # noqa: E402
from payer.services.imports.claims import claims_import  # noqa: E402
from payer.services.imports.layout import TABLES  # noqa: E402
from payer.services.imports.fhir import fhir_import  # noqa: E402
from payer.services.population import (  # noqa: E402
    CLAIM_COLUMNS,
    DIAGNOSIS_COLUMNS,
    LINE_COLUMNS,
    PA_COLUMNS,
    _claim_values,
    _diagnosis_values,
    _line_values,
    _pa_values,
)
from payer.services.synthetic import RecordBuilder, member_history, member_identity  # noqa: E402

PAYER_TABLES = ("payer_claimline", "payer_claimdiagnosis", "payer_claim", "payer_priorauthorization",
                "payer_attributionmember", "payer_attributiongroup", "payer_clinicalresource", "payer_resourcetombstone",
                "payer_networkcontract", "payer_member", "payer_providerpractitioner", "payer_providerorganization")


def _writers(folder: Path) -> dict:
    handles = {name: (folder / name).open("w", newline="") for name in TABLES}
    writers = {name: csv.DictWriter(h, fieldnames=[c.name for c in TABLES[name].columns]) for name, h in handles.items()}
    for w in writers.values():
        w.writeheader()
    return {"handles": handles, "writers": writers}


def write_input(folder: Path, *, members: int, resources: int, seed: int) -> None:
    """Write the claims extract and the NDJSON (runs in a child process)."""
    claims_dir, fhir_dir = folder / "claims", folder / "fhir"
    claims_dir.mkdir(parents=True, exist_ok=True)
    fhir_dir.mkdir(parents=True, exist_ok=True)
    out = _writers(claims_dir)
    w = out["writers"]
    for org in ORGS:
        w["organizations.csv"].writerow({"npi": org.npi, "name": org.name, "city": org.city, "state": org.state,
                                         "fhir_id": org.fhir_id})
    for p in PRACS:
        w["practitioners.csv"].writerow({"npi": p.npi, "family": p.family, "given": p.given, "taxonomy_code": p.taxonomy_code,
                                         "taxonomy_display": p.taxonomy_display, "organization_npi": p.org.npi,
                                         "fhir_id": p.fhir_id})
    for org, number, start, end in CONTRACTS:
        w["contracts.csv"].writerow({"contract_number": number, "organization_npi": org.npi, "start": start, "end": end or ""})
    ndjson: dict[str, object] = {}
    written = 0
    today = demo_today()

    def emit(res: dict) -> None:
        nonlocal written
        handle = ndjson.get(res["resourceType"])
        if handle is None:
            handle = ndjson[res["resourceType"]] = (fhir_dir / f"{res['resourceType']}.ndjson").open("wb")
        handle.write(orjson.dumps(res) + b"\n")
        written += 1

    patients: list[tuple[str, str]] = []
    for n in range(1, members + 1):
        rng = random.Random(f"{seed}:{n}")
        member_id = f"UCB{seed:04d}-{n:08d}"
        b = RecordBuilder(member_id=member_id, patient_id=f"pat-{member_id.lower()}", today=today, rng=rng)
        member_history(b, DEMO_POOL, identity=member_identity(rng, today), grace_recent=rng.random() < 0.3)
        patient = b.rows[0].resource
        name = patient["name"][0]
        w["members.csv"].writerow({"member_id": member_id, "family": name["family"], "given": name["given"][0],
                                   "birth_date": patient["birthDate"], "gender": patient["gender"], "patient_id": b.patient_id})
        for row in b.rows:
            if row.resource["resourceType"] != "Coverage":  # coverage comes from the extract
                emit(row.resource)
            else:
                w["coverage_periods.csv"].writerow({"coverage_id": row.resource["id"], "member_id": member_id,
                                                    "start": row.resource["period"]["start"], "end": "",
                                                    "group_id": "UC-GRP-4410", "plan_id": "UC-PPO-2000",
                                                    "plan_name": "Choice PPO 2000"})
        patients.append((b.patient_id, member_id))
        for spec in b.claims:
            header = dict(zip(CLAIM_COLUMNS, _claim_values(spec)))
            header.pop("updated_at")
            w["claims.csv"].writerow({**{k: "" if v is None else v for k, v in header.items()}, "member_id": member_id})
            for values in _line_values(spec):
                line = dict(zip(LINE_COLUMNS, values))
                line["procedure_system"] = line["procedure_system"].lower()
                w["claim_lines.csv"].writerow({**line, "claim_number": spec.claim_number})
            for values in _diagnosis_values(spec):
                w["claim_diagnoses.csv"].writerow({**dict(zip(DIAGNOSIS_COLUMNS, values)), "claim_number": spec.claim_number})
        for pa in b.pas:
            values = dict(zip(PA_COLUMNS, _pa_values(pa)))
            values.pop("updated_at")
            values["service_system"] = values["service_system"].lower()
            w["prior_authorizations.csv"].writerow({**{k: "" if v is None else v for k, v in values.items()}, "member_id": member_id})
    # Top up with vital signs so the feed has exactly ``resources`` resources.
    extra = 0
    while written < resources:
        patient_id, _ = patients[extra % len(patients)]
        extra += 1
        emit({"resourceType": "Observation", "id": f"hr-{extra}", "status": "final",
              "meta": {"lastUpdated": "2025-06-01T00:00:00Z"},
              "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
              "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
              "subject": {"reference": f"Patient/{patient_id}"}, "effectiveDateTime": "2025-06-01T08:00:00Z",
              "valueQuantity": {"value": 60 + extra % 40, "unit": "/min", "system": "http://unitedcare.org", "code": "/min"}})
    for h in [*ndjson.values(), *out["handles"].values()]:
        h.close()
    print(f"wrote {written} resources ({extra} extra Observations) and the extract of {members} members", flush=True)


def copy_limit(fhir_dir: Path) -> tuple[int, float]:
    """COPY the NDJSON lines (type, id, json) into an unlogged scratch table; return (rows, seconds)."""
    rows = 0
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_import_limit")
        cursor.execute("CREATE UNLOGGED TABLE bench_import_limit (resource_type text, resource_id text, resource jsonb, "
                       "PRIMARY KEY (resource_type, resource_id))")
        raw = cursor.cursor
        for path in sorted(fhir_dir.glob("*.ndjson")):
            with path.open("rb") as handle, raw.copy("COPY bench_import_limit FROM STDIN") as copy:
                for line in handle:
                    doc = orjson.loads(line)
                    copy.write_row((doc["resourceType"], doc["id"], line.decode().rstrip("\n")))
                    rows += 1
        elapsed = time.perf_counter() - started
        cursor.execute("DROP TABLE bench_import_limit")
    return rows, elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--resources", type=int, default=1_000_000)
    parser.add_argument("--dir", default="/tmp/pa-bench-import")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-validate", action="store_true")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("Set DATABASE_URL to a PostgreSQL database.")
    folder = Path(args.dir)
    from bench.export import _database_ensure

    _database_ensure()
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(PAYER_TABLES)} RESTART IDENTITY CASCADE")
    started = time.perf_counter()
    writer = multiprocessing.get_context("fork").Process(
        target=write_input, args=(folder,), kwargs={"members": args.members, "resources": args.resources, "seed": args.seed})
    writer.start()
    writer.join()
    print(f"input written in {time.perf_counter() - started:.0f} s to {folder}")
    connection.close()  # the forked child shared the connection object; start clean

    load = os.getloadavg()[0]
    started = time.perf_counter()
    claims = claims_import(folder=str(folder / "claims"))
    claims_s = time.perf_counter() - started
    claims_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"import_claims   {claims.read:,} rows in {claims_s:.1f} s: {claims.read / claims_s:,.0f} rows/s; "
          f"stored {claims.stored:,}, errors {claims.error_count}; peak RSS {claims_rss:.0f} MiB", flush=True)

    started = time.perf_counter()
    fhir = fhir_import(paths=[str(folder / "fhir")], validate=not args.no_validate)
    fhir_s = time.perf_counter() - started
    fhir_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"import_fhir     {fhir.read:,} resources in {fhir_s:.1f} s: {fhir.read / fhir_s:,.0f} resources/s; "
          f"stored {fhir.stored:,}, errors {fhir.error_count}, skipped {fhir.skipped_total}; peak RSS {fhir_rss:.0f} MiB"
          f"{' (no validation)' if args.no_validate else ' (validated)'}", flush=True)
    for e in fhir.errors[:5] + claims.errors[:5]:
        print("  error", e.text())

    started = time.perf_counter()
    again = claims_import(folder=str(folder / "claims"))
    again_s = time.perf_counter() - started
    print(f"import_claims   re-run: {again.unchanged:,} unchanged, {again.stored + again.updated} written in {again_s:.1f} s "
          f"({again.read / again_s:,.0f} rows/s)")

    rows, copy_s = copy_limit(folder / "fhir")
    print(f"COPY limit      {rows:,} resources in {copy_s:.1f} s: {rows / copy_s:,.0f} resources/s; "
          f"import_fhir at {fhir.read / fhir_s / (rows / copy_s):.2f} of it")
    print(f"load average    {load:.2f} before, {os.getloadavg()[0]:.2f} after (1 min; {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
