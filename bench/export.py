"""Benchmark the Bulk Data export engine on Postgres against a raw COPY of the same rows.

The whole Provider Access payload: every stored type of the patient compartment
(clinical data and Provenance) plus ExplanationOfBenefit (claims and prior
authorizations) from the EOB projection. Also the projection's refresh rate: a full
rebuild, an incremental refresh with nothing changed, and one with 1% of claims changed.

    .venv/bin/python bench/export.py [--members 10000] [--small 1000] [--seed 1] [--repeat 3]

DATABASE_URL (default postgres://postgres@127.0.0.1:5432/pa_bench) is created and
migrated when missing and filled with ``generate_population`` data when it holds fewer
members than asked. Groups of ``--members`` and ``--small`` members are exported through
the real service code (``export_job_create`` then ``export_unit_run`` for every unit)
in a separate worker-like process whose peak RSS is measured. Then ``COPY (SELECT
resource::text ...) TO STDOUT`` of the same rows gives the machine's limit. Each group
runs ``--repeat`` times, export and COPY alternating; the "best" line pairs the fastest
export with the fastest COPY (the machine is shared, so single runs are noisy).
"""

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pa_bench")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# Units are run by hand below: queued messages go nowhere.
os.environ["CELERY_BROKER_URL"] = "memory://"
os.environ.setdefault("PA_FILES_DIR", tempfile.mkdtemp(prefix="pa-bench-files-"))


def _database_ensure() -> None:
    import dj_database_url
    import psycopg

    config = dj_database_url.parse(os.environ["DATABASE_URL"])
    with psycopg.connect(host=config["HOST"] or "127.0.0.1", port=config["PORT"] or 5432, user=config["USER"],
                         password=config["PASSWORD"] or None, dbname="postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [config["NAME"]]).fetchone():
            conn.execute(f'CREATE DATABASE "{config["NAME"]}"')


def _setup() -> None:
    import django

    django.setup()


def _worker(job_pk: int, results) -> None:
    """A worker-like process: run every unit of the job with the service code."""
    _setup()
    from payer.models import ExportWorkUnit
    from payer.services.export import export_unit_run

    started = time.perf_counter()
    for unit_id in ExportWorkUnit.objects.filter(job_id=job_pk).order_by("pk").values_list("pk", flat=True):
        export_unit_run(unit_id=unit_id)
    elapsed = time.perf_counter() - started
    # VmHWM, not ru_maxrss: the latter survives exec() and would report the parent's peak.
    hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    results.put({"elapsed": elapsed, "peak_rss_mb": hwm_kb / 1024})


def _bench_group(*, label: str, size: int, types: list[str]) -> dict:
    import datetime

    from django.db import connection
    from django.utils import timezone

    from payer.models import (AttributionMember, ExportJob, Member, NetworkContract, ProviderOrganization,
                              SmartClient)
    from payer.services.attribution import attribution_group_ensure
    from payer.services.export import export_job_create

    org, _ = ProviderOrganization.objects.get_or_create(
        npi=f"19990{size:05d}", defaults={"name": f"Bench clinic {size}", "fhir_id": f"bench-org-{size}"})
    NetworkContract.objects.get_or_create(contract_number=f"BENCH-{size}", defaults={
        "organization": org, "start": timezone.localdate() - datetime.timedelta(days=365)})
    group = attribution_group_ensure(organization=org)
    member_pks = list(Member.objects.filter(opted_out=False).order_by("pk").values_list("pk", flat=True)[:size])
    AttributionMember.objects.bulk_create(
        [AttributionMember(group=group, member_id=pk, start=timezone.localdate() - datetime.timedelta(days=30),
                           source="manual", reason="benchmark") for pk in member_pks],
        ignore_conflicts=True, batch_size=2000)
    with connection.cursor() as cursor:
        # As autovacuum would after a bulk load: without statistics on the new rows the
        # planner misjudges the per-unit visibility query.
        cursor.execute("ANALYZE payer_attributionmember, payer_member")
    client, _ = SmartClient.objects.get_or_create(
        client_id=f"bench-{size}", defaults={"name": "bench", "organization": org, "jwks": {"keys": []},
                                             "scopes": "system/*.read", "max_concurrent_exports": 1000})
    ExportJob.objects.filter(client=client).delete()
    job = export_job_create(client=client, scopes="system/*.read", level=ExportJob.Level.GROUP, operation="export",
                            raw_params={"_type": [",".join(types)]}, lenient=False, request_url="bench", group=group)
    results = multiprocessing.get_context("spawn").Queue()
    process = multiprocessing.get_context("spawn").Process(target=_worker, args=(job.pk, results))
    process.start()
    measured = results.get()
    process.join()
    job.refresh_from_db()
    files = list(job.files.values_list("size", "stored_size", "count"))
    raw_bytes = sum(f[0] for f in files)
    stored = sum(f[1] for f in files)
    count = sum(f[2] for f in files)
    patient_ids = list(job.units.values_list("patient_ids", flat=True).distinct())
    members = sorted({p for ids in patient_ids for p in ids})
    member_pks = sorted({pk for pks in job.units.values_list("member_pks", flat=True) for pk in pks})
    return {"label": label, "members": len(members), "status": job.status, "resources": count, "bytes": raw_bytes,
            "stored": stored, **measured, "patient_ids": members, "member_pks": member_pks, "job": job}


def _copy_limit(*, patient_ids: list[str], member_pks: list[int], types: list[str]) -> dict:
    """Time COPY (SELECT resource::text ...) TO STDOUT of the same rows (clinical and EOB)."""
    from django.db import connection

    connection.ensure_connection()
    raw = connection.connection
    started = time.perf_counter()
    total = rows = 0
    with raw.cursor() as cursor:
        query = ("COPY (SELECT resource::text FROM payer_clinicalresource WHERE resource_type = ANY(%s) "
                 "AND (patient_id = ANY(%s) OR (resource_type = 'Patient' AND resource_id = ANY(%s))) "
                 "UNION ALL SELECT resource::text FROM payer_eobprojection WHERE member_id = ANY(%s) "
                 "AND deleted_at IS NULL) TO STDOUT")
        with cursor.copy(query, [types, patient_ids, patient_ids, member_pks]) as copy:
            for block in copy:
                total += len(block)
                rows += bytes(block).count(b"\n")
    return {"elapsed": time.perf_counter() - started, "bytes": total, "rows": rows}


def _report(label: str, result: dict, limit: dict) -> None:
    mb = result["bytes"] / 1e6
    copy_mbs = limit["bytes"] / 1e6 / limit["elapsed"]
    export_mbs = mb / result["elapsed"]
    print(f"{label:>19} {result['resources']:>10} {mb:>10.1f} {result['stored'] / 1e6:>8.1f} "
          f"{result['elapsed']:>8.2f} {result['resources'] / result['elapsed']:>8.0f} {export_mbs:>7.1f} "
          f"{result['peak_rss_mb']:>11.0f} | {limit['elapsed']:>7.2f} {copy_mbs:>9.1f} "
          f"{limit['rows'] / limit['elapsed']:>10.0f} {export_mbs / copy_mbs:>6.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="runs per group; the best of each side is reported")
    args = parser.parse_args()

    _database_ensure()
    _setup()
    from django.core.management import call_command
    from django.db import connection

    from payer.models import ClinicalResource, Member
    from payer.services.export_params import PATIENT_TYPES

    call_command("migrate", verbosity=0)
    if Member.objects.count() < args.members:
        print(f"Generating {args.members} members (seed {args.seed}) ...", flush=True)
        call_command("generate_population", members=args.members, seed=args.seed)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE payer_clinicalresource")
    stored_types = set(ClinicalResource.objects.values_list("resource_type", flat=True).distinct())
    projection_refresh_report()
    types = [t for t in PATIENT_TYPES if t in stored_types]
    export_types = [*types, "ExplanationOfBenefit"]
    print(f"Database {connection.settings_dict['NAME']}: {Member.objects.count()} members, "
          f"{ClinicalResource.objects.count()} clinical resources; exporting types {', '.join(types)}")
    print(f"{'group':>19} {'resources':>10} {'NDJSON MB':>10} {'gzip MB':>8} {'seconds':>8} {'res/s':>8} "
          f"{'MB/s':>7} {'peak RSS MB':>11} | {'COPY s':>7} {'COPY MB/s':>9} {'COPY res/s':>10} {'ratio':>6}")
    for label, size in ((f"{args.members} members", args.members), (f"{args.small} members", args.small)):
        # The machine is shared: each figure is the best of --repeat runs, export and COPY
        # alternating so both see the same background load.
        best: dict | None = None
        best_limit: dict | None = None
        for attempt in range(1, args.repeat + 1):
            result = _bench_group(label=label, size=size, types=export_types)
            limit = _copy_limit(patient_ids=result["patient_ids"], member_pks=result["member_pks"], types=types)
            _report(f"{label} #{attempt}", result, limit)
            if result["status"] != "completed" or result["resources"] != limit["rows"]:
                print(f"  note: job {result['status']}, {result['resources']} exported vs {limit['rows']} rows copied "
                      "(the export also applies the 2016-01-01 date-of-service floor and transactionTime)")
            result["job"].delete()
            result.pop("job")
            if best is None or result["elapsed"] < best["elapsed"]:
                best = result
            if best_limit is None or limit["elapsed"] < best_limit["elapsed"]:
                best_limit = limit
            best["peak_rss_mb"] = max(best["peak_rss_mb"], result["peak_rss_mb"])
        _report(f"{label} best", best, best_limit)


def projection_refresh_report() -> None:
    """Print the EOB projection's refresh rate: full rebuild, nothing changed, 1% changed."""
    import os as _os

    from django.db import connection
    from django.utils import timezone

    from payer.models import Claim, EobProjection, PriorAuthorization
    from payer.services.eob_projection import eob_projection_refresh

    sources = Claim.objects.count() + PriorAuthorization.objects.count()
    load = _os.getloadavg()[0]
    full = eob_projection_refresh(full=True)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE payer_eobprojection")
    print(f"EOB projection, full rebuild: {full.mapped} sources ({sources} claims + prior auths) in {full.seconds:.1f} s "
          f"= {full.mapped / full.seconds:.0f} claims/s (load average {load:.2f})", flush=True)
    unchanged = eob_projection_refresh()
    print(f"EOB projection, nothing changed: {unchanged.mapped} mapped in {unchanged.seconds:.2f} s", flush=True)
    claim_pks = list(Claim.objects.order_by("pk").values_list("pk", flat=True)[::100])
    Claim.objects.filter(pk__in=claim_pks).update(updated_at=timezone.now())
    changed = eob_projection_refresh()
    print(f"EOB projection, 1% of claims changed: {changed.mapped} mapped in {changed.seconds:.2f} s "
          f"= {changed.mapped / changed.seconds:.0f} claims/s ({EobProjection.objects.count()} rows)", flush=True)

if __name__ == "__main__":
    main()
