"""Measure the EMR's "Fetch history" latency: from the click to the history on screen.

    .venv/bin/python bench/fetch_latency.py [--runs 5] [--worker demo|solo] [--verbose]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pa_x CELERY_BROKER_URL=redis://127.0.0.1:6379/11 \\
        .venv/bin/python bench/fetch_latency.py

Issue 6: "From clicking Fetch to the history on screen takes under 3 s on the demo data".
Sets up what ``make demo`` runs, in a scratch directory: a fresh database (SQLite in the
scratch directory, or on the ``DATABASE_URL`` server a database named ``<name>_fetchbench``,
dropped at the end), the demo seed (payer, Grace Hospital's connection, EMR), a real
``runserver`` and a real Celery worker (``--worker demo``: ``--beat --concurrency=2`` as
``make demo``; ``--worker solo``: the test suite's ``--pool=solo`` worker) on a queue of its
own. Then, as the browser does (static/emr/fetch.js), Dr. James Smith's session POSTs the
fetch form for Jack Shaw, polls the progress URL as often as the page does and, once done, loads the
patient page. Each run starts from an empty local store (a first fetch, not an update).

Prints each run broken down by phase, from the provider's SyncJob and the payer's
ExportJob timestamps, and the median of the runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
# static/emr/fetch.js polls the job this often (at first; less often once a fetch runs long).
EMR_POLL_SECONDS = int(re.search(r"POLL_MS = (\d+);", (BASE_DIR / "static/emr/fetch.js").read_text()).group(1)) / 1000

PHASES = (
    ("click → job created", "click", "created"),
    ("worker pick-up → kick-off sent", "created", "export_created"),
    ("payer export", "export_created", "export_completed"),
    ("status poll sees it", "export_completed", "manifest"),
    ("download + ingest", "manifest", "finished"),
    ("EMR notices (poll)", "finished", "noticed"),
    ("history page loaded", "noticed", "shown"),
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_fresh(database_url: str) -> str:
    """Create an empty ``<name>_fetchbench`` database beside the given one; return its URL."""
    import psycopg

    base, _, name = database_url.partition("?")[0].rpartition("/")
    bench_name = f"{name}_fetchbench"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{bench_name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{bench_name}"')
    return f"{base}/{bench_name}"


def _postgres_drop(database_url: str) -> None:
    import psycopg

    base, _, name = database_url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def _wait_for(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"Timed out waiting for {what}")
        time.sleep(0.1)


class System:
    """The demo's processes: a web server and a worker, in a scratch directory."""

    def __init__(self, *, worker: str, scratch: Path) -> None:
        self.scratch = scratch
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        database_url = os.environ.get("DATABASE_URL", "")
        self.postgres_url = _postgres_fresh(database_url) if database_url.startswith("postgres") else None
        self.env = {
            **os.environ,
            "DEBUG": "1",
            "PA_VAR_DIR": str(scratch / "var"),
            "PA_CELERY_QUEUE": f"fetchbench-{uuid.uuid4().hex[:8]}",
            "DATABASE_URL": self.postgres_url or f"sqlite:///{scratch / 'db.sqlite3'}",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        }
        self.worker_kind = worker
        self.processes: list[subprocess.Popen] = []
        self.worker_log = scratch / "worker.log"

    def seed(self) -> None:
        """What ``make seed`` does, against this server's port."""
        keys = self.scratch / "var" / "keys"
        _manage(self.env, "migrate", "--noinput")
        _manage(self.env, "seed_demo", "--key-dir", str(keys))
        _manage(self.env, "add_payer_connection", "--name", "unitedcare", "--display-name", "UnitedCare Health",
                "--fhir-base-url", f"{self.base_url}/payer/fhir", "--client-id", "grace-hospital-ehr",
                "--private-key-path", str(keys / "grace-hospital-ehr.pem"), "--key-id", "grace-hospital-ehr-rs384")
        _manage(self.env, "seed_emr")

    def start(self) -> None:
        server_log = open(self.scratch / "server.log", "wb")
        self.processes.append(subprocess.Popen(
            [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{self.port}"],
            cwd=BASE_DIR, env=self.env, stdout=server_log, stderr=subprocess.STDOUT,
        ))
        if self.worker_kind == "demo":  # as `make demo`
            args = ["--beat", "--concurrency=2"]
        else:  # as tests/conftest.py's WorkerProcess
            args = ["--pool=solo", "--concurrency=1", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        worker_out = open(self.worker_log, "wb")
        self.processes.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", *args, "--loglevel=INFO",
             "-Q", self.env["PA_CELERY_QUEUE"],
             f"--hostname=fetchbench-{uuid.uuid4().hex[:6]}@%h",
             f"--schedule={self.scratch / 'celerybeat-schedule'}"],
            cwd=BASE_DIR, env=self.env, stdout=worker_out, stderr=subprocess.STDOUT,
        ))

        def server_up() -> bool:
            try:
                return requests.get(f"{self.base_url}/emr/login/", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        _wait_for(server_up, timeout=60, what="the web server")
        _wait_for(lambda: self.worker_log.exists() and b" ready." in self.worker_log.read_bytes(),
                  timeout=60, what="the worker")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self.postgres_url:
            from django.db import connections

            connections.close_all()
            _postgres_drop(self.postgres_url)


def _django_setup(env: dict[str, str]) -> None:
    for name in ("DEBUG", "PA_VAR_DIR", "PA_CELERY_QUEUE", "DATABASE_URL", "LOG_LEVEL"):
        os.environ[name] = env[name]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def _login(system: System) -> requests.Session:
    session = requests.Session()
    session.get(f"{system.base_url}/emr/login/")
    response = session.post(
        f"{system.base_url}/emr/login/",
        data={"username": "jsmith", "password": "grace-demo", "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": f"{system.base_url}/emr/login/"},
    )
    response.raise_for_status()
    if "sessionid" not in session.cookies:
        raise RuntimeError("Could not log in as jsmith.")
    return session


def _store_reset() -> None:
    """Forget every earlier fetch, so the next one is a first (full) fetch."""
    from emr.models import HospitalPatient
    from provider.models import LocalResource, SyncJob

    LocalResource.objects.all().delete()
    SyncJob.objects.all().delete()  # cascades to files and the EMR's PatientSync rows
    HospitalPatient.objects.update(payer_patient_id="")


def fetch_once(system: System, session: requests.Session) -> dict[str, float]:
    """Click Fetch for Jack Shaw as the browser does; return the instants (epoch seconds) of each phase."""
    from emr.demo import JACK_SHAW_MEMBER_ID
    from emr.models import HospitalPatient
    from payer.models import ExportJob
    from provider.models import LocalResource, PayerConnection, SyncJob

    _store_reset()
    jack = HospitalPatient.objects.get(member_id=JACK_SHAW_MEMBER_ID)
    connection = PayerConnection.objects.get(name="unitedcare")
    page_url = f"{system.base_url}/emr/patients/{jack.pk}/"
    headers = {"Accept": "application/json", "X-CSRFToken": session.cookies["csrftoken"], "Referer": page_url}

    click = time.time()
    response = session.post(f"{page_url}fetch/{connection.pk}/", headers=headers)
    if response.status_code != 202:
        raise RuntimeError(f"The fetch did not start: {response.status_code} {response.text[:300]}")
    progress_url = response.json()["progress_url"]
    while True:
        progress = session.get(progress_url, headers={"Accept": "application/json"}).json()
        if progress["done"]:
            break
        time.sleep(EMR_POLL_SECONDS)
    noticed = time.time()
    page = session.get(page_url, headers={"Accept": "text/html"})
    shown = time.time()

    job = SyncJob.objects.get(pk=progress["id"])
    if job.status != SyncJob.Status.COMPLETED:
        raise RuntimeError(f"The fetch ended {job.status}: {job.error}")
    encounters = LocalResource.objects.filter(resource_type="Encounter", patient_id=job.patient_ids[0]).count()
    if not encounters or page.text.count("data-encounter=") < encounters:
        raise RuntimeError("The history page does not show the fetched encounters.")
    export = ExportJob.objects.filter(created_at__gte=job.created_at).order_by("created_at").first()
    return {
        "click": click,
        "created": job.created_at.timestamp(),
        "export_created": export.created_at.timestamp(),
        "export_completed": export.completed_at.timestamp(),
        "kicked_off": job.kicked_off_at.timestamp(),
        "manifest": job.manifest_at.timestamp(),
        "finished": job.finished_at.timestamp(),
        "noticed": noticed,
        "shown": shown,
        "resources": sum((job.counts or {}).values()),
        "files": job.files.count(),
        "polls": job.poll_count,
    }


def _worker_log_since(path: Path, since: float) -> list[str]:
    """Return the worker's task log lines (received/succeeded) of the last run."""
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r"\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]?", line)
        if not match or not re.search(r"received|succeeded|failed|retry", line):
            continue
        stamp = time.mktime(time.strptime(match.group(1)[:19], "%Y-%m-%d %H:%M:%S")) + int(match.group(1)[20:]) / 1000
        if stamp >= since:
            lines.append(f"  +{stamp - since:6.3f}s {line[match.end():].strip()[:140]}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--worker", choices=["demo", "solo"], default="demo",
                        help="demo: --beat --concurrency=2 (make demo); solo: --pool=solo (the tests' worker)")
    parser.add_argument("--verbose", action="store_true", help="print the worker's task log of each run")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="fetchbench-"))
    system = System(worker=args.worker, scratch=scratch)
    broker = os.environ.get("CELERY_BROKER_URL", "filesystem://")
    database = "Postgres" if system.postgres_url else "SQLite"
    print(f"Fetch latency: {database}, broker {broker.split('://')[0]}, worker {args.worker}, {args.runs} runs")
    try:
        system.seed()
        _django_setup(system.env)
        system.start()
        session = _login(system)
        results = []
        for run in range(1, args.runs + 1):
            result = fetch_once(system, session)
            results.append(result)
            total = result["shown"] - result["click"]
            parts = ", ".join(f"{name} {result[b] - result[a]:.2f}" for name, a, b in PHASES)
            print(f"run {run}: {total:.2f} s  ({result['resources']} resources in {result['files']} files, "
                  f"{result['polls']} status polls)\n    {parts}")
            if args.verbose:
                print("\n".join(_worker_log_since(system.worker_log, result["click"])))
        print("median by phase (s):")
        for name, a, b in PHASES:
            print(f"  {name:<32} {statistics.median(r[b] - r[a] for r in results):6.2f}")
        median = statistics.median(r["shown"] - r["click"] for r in results)
        print(f"  {'click → history on screen':<32} {median:6.2f}   (min {min(r['shown'] - r['click'] for r in results):.2f}, "
              f"max {max(r['shown'] - r['click'] for r in results):.2f})")
    finally:
        system.stop()
        if args.keep:
            print(f"Logs kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
