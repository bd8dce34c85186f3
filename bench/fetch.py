"""Benchmark a whole-Group fetch from this project's payer, end to end: kick-off to all stored.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pa_x .venv/bin/python bench/fetch.py [--members 1000] [--workers 1,2]

Sets up what ``make demo`` runs in a scratch directory (bench/fetch_latency.py's System: a
fresh ``<name>_fetchbench`` database on the DATABASE_URL server, the demo seed, a real
``runserver`` and real Celery workers on a queue of their own), generates ``--members``
members with ``generate_population`` and attributes them all to Grace Hospital. Then, for
each number of workers, Grace's connection fetches the whole attribution Group
(``sync_job_start(group_id=...)``, the panel sync's fetch) from an empty local store: the
payer's export units and the hospital's downloads and chunked ingest run on the same
workers, as in the demo. Prints resources/s from the SyncJob's creation to its end, the
peak RSS of each process (VmHWM, reset before each run), the load average, and, for
comparison, the ingest-only rate of the same files (``ndjson_ingest`` in this process,
``full`` validation) measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
sys.path.insert(0, str(BASE_DIR / "bench"))

from fetch_latency import System, _django_setup, _manage  # noqa: E402


def _hwm_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _hwm_reset(pid: int) -> None:
    # proc(5): writing 5 to clear_refs resets the peak resident set size (VmHWM).
    with open(f"/proc/{pid}/clear_refs", "w") as handle:
        handle.write("5")


def _worker_start(system: System, index: int) -> subprocess.Popen:
    log = open(system.scratch / f"worker-extra-{index}.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo", "--concurrency=1",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=WARNING",
         "-Q", system.env["PA_CELERY_QUEUE"], f"--hostname=fetchbench-x{index}-{uuid.uuid4().hex[:6]}@%h"],
        cwd=BASE_DIR, env=system.env, stdout=log, stderr=subprocess.STDOUT,
    )
    system.processes.append(process)
    time.sleep(8)  # until it consumes
    return process


def _attribute_all(members: int) -> str:
    import datetime

    from django.utils import timezone

    from payer.models import AttributionMember, Member, ProviderOrganization
    from payer.services.attribution import attribution_group_ensure
    from payer.services.demo import GRACE_HOSPITAL_NPI

    grace = ProviderOrganization.objects.get(npi=GRACE_HOSPITAL_NPI)
    group = attribution_group_ensure(organization=grace)
    pks = list(Member.objects.filter(opted_out=False).order_by("pk").values_list("pk", flat=True)[:members])
    AttributionMember.objects.bulk_create(
        [AttributionMember(group=group, member_id=pk, start=timezone.localdate() - datetime.timedelta(days=30),
                           source="manual", reason="benchmark") for pk in pks],
        ignore_conflicts=True, batch_size=2000)
    return group.fhir_id


def _fetch(group_id: str, pids: dict[str, int]) -> dict:
    from django.db import transaction

    from provider.models import LocalResource, PayerConnection, SyncJob
    from provider.services.sync import TERMINAL, sync_job_start

    LocalResource.objects.all().delete()
    SyncJob.objects.all().delete()
    for pid in pids.values():
        _hwm_reset(pid)
    connection = PayerConnection.objects.get(name="unitedcare")
    load = os.getloadavg()[0]
    with transaction.atomic():
        job = sync_job_start(connection=connection, group_id=group_id)
    while True:
        time.sleep(0.5)
        job.refresh_from_db()
        if job.status in TERMINAL:
            break
    if job.status != SyncJob.Status.COMPLETED:
        raise RuntimeError(f"The fetch ended {job.status}: {job.error[:500]}")
    elapsed = (job.finished_at - job.created_at).total_seconds()
    resources = sum((job.counts or {}).values())
    return {
        "elapsed": elapsed, "resources": resources, "files": job.files.filter(parent__isnull=True).count(),
        "chunks": job.files.filter(parent__isnull=False).count(), "stored": LocalResource.objects.count(),
        "download": (job.finished_at - job.manifest_at).total_seconds(), "export": (job.manifest_at - job.created_at).total_seconds(),
        "hwm": {name: _hwm_mb(pid) for name, pid in pids.items()}, "load": (load, os.getloadavg()[0]),
    }


def _ingest_only(group_id: str) -> tuple[int, float]:
    """Fetch the files once more with the client alone, then time ``ndjson_ingest`` of them into an empty store."""
    from provider.models import LocalResource, PayerConnection, SyncJob
    from provider.services import ingest
    from provider.services.connections import bulk_client_for

    connection = PayerConnection.objects.get(name="unitedcare")
    client = bulk_client_for(connection=connection)
    status_url = client.kick_off(level="group", group_id=group_id)
    while not (result := client.poll(status_url)).done:
        time.sleep(1)
    folder = Path(tempfile.mkdtemp(prefix="fetchbench-files-"))
    files = []
    for index, item in enumerate(result.manifest["output"]):
        path = folder / f"{index}.ndjson"
        client.download(item["url"], path, requires_token=bool(result.manifest.get("requiresAccessToken")))
        files.append((item["type"], path))
    client.cancel(status_url)
    LocalResource.objects.all().delete()
    SyncJob.objects.all().delete()
    total, started = 0, time.perf_counter()
    for resource_type, path in files:
        with open(path, "rb") as stream:
            total += ingest.ndjson_ingest(stream=stream, file_name=str(path), expected_type=resource_type, connection=connection,
                                          export_time=None, validation_level=connection.validation_level).lines
    elapsed = time.perf_counter() - started
    shutil.rmtree(folder, ignore_errors=True)
    return total, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    counts = sorted(int(n) for n in args.workers.split(","))

    scratch = Path(tempfile.mkdtemp(prefix="fetchbench-"))
    system = System(worker="solo", scratch=scratch)
    database = "Postgres" if system.postgres_url else "SQLite"
    print(f"Group fetch: {database}, {args.members} members, workers {counts}, {os.cpu_count()} CPUs", flush=True)
    try:
        system.seed()
        _manage(system.env, "generate_population", "--members", str(args.members), "--seed", "1")
        _django_setup(system.env)
        group_id = _attribute_all(args.members)
        system.start()
        pids = {"web (payer + files)": system.processes[0].pid, "worker 1": system.processes[1].pid}
        for workers in counts:
            while len(pids) - 1 < workers:
                pids[f"worker {len(pids)}"] = _worker_start(system, len(pids)).pid
            result = _fetch(group_id, pids)
            rate = result["resources"] / result["elapsed"]
            print(f"{workers} worker(s): {result['resources']:,} resources ({result['stored']:,} rows) in {result['files']} files"
                  f" ({result['chunks']} chunks) in {result['elapsed']:.1f} s = {rate:,.0f} resources/s "
                  f"(payer export {result['export']:.1f} s, download + ingest {result['download']:.1f} s); "
                  f"load {result['load'][0]:.1f} -> {result['load'][1]:.1f}", flush=True)
            for name, mb in result["hwm"].items():
                print(f"    peak RSS {name:<22} {mb:7.0f} MiB")
        lines, elapsed = _ingest_only(group_id)
        print(f"ingest only (this process, one core, same files): {lines:,} resources in {elapsed:.1f} s = "
              f"{lines / elapsed:,.0f} resources/s", flush=True)
    finally:
        for process in reversed(system.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        system.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
