"""Shared fixtures: isolated files, broker and queue per test session, and a real
Celery worker process that runs against the test database."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings

from config.celery_app import app as celery_app
from emr.demo import emr_demo_seed
from payer.models import ProviderOrganization
from payer.services import demo as payer_demo
from payer.services.attribution import attribution_refresh
from payer.services.demo_keys import demo_client_ensure, demo_key_kid, demo_key_path
from provider.services.connections import payer_connection_create

# Property-based tests (Hypothesis): a bounded number of examples in `make test`; a long
# run is `HYPOTHESIS_PROFILE=long make test PYTEST_ARGS="-k properties"`.
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

hypothesis_settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
hypothesis_settings.register_profile(
    "long", max_examples=5000, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

BASE_DIR = Path(__file__).resolve().parent.parent


def _sqlite_flush_opens_append_only_window() -> None:
    """Let the test database's flush (DELETE FROM on SQLite) pass the append-only triggers.

    The triggers of payer/migrations/_append_only.py stand aside while ``<app>_flush_window``
    holds a row; only this wrapper, around the flush between transactional tests, writes one.
    """
    # Through base: importing operations first is a circular import when SQLite is not loaded.
    from django.db.backends.sqlite3.base import DatabaseOperations

    original = DatabaseOperations.sql_flush
    if getattr(original, "opens_window", False):
        return

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        statements = original(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        existing = set(self.connection.introspection.table_names())
        windows = [w for w in ("payer_flush_window", "emr_flush_window") if w in existing]
        return ([f"INSERT INTO {w} DEFAULT VALUES" for w in windows] + statements
                + [f"DELETE FROM {w}" for w in windows])

    sql_flush.opens_window = True
    DatabaseOperations.sql_flush = sql_flush


_sqlite_flush_opens_append_only_window()


@pytest.fixture(scope="session", autouse=True)
def isolated_runtime(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Give this test session its own export files directory, broker folder and queue,
    so that test runs side by side (and the demo) never take each other's tasks."""
    root = tmp_path_factory.mktemp("runtime")
    files_dir, broker_dir = root / "files", root / "broker"
    for folder in (files_dir, broker_dir / "queue", broker_dir / "processed", broker_dir / "control"):
        folder.mkdir(parents=True)
    queue = f"test-{uuid.uuid4().hex[:12]}"
    storages = {**settings.STORAGES}
    if storages["exports"]["BACKEND"].endswith("FileSystemStorage"):
        storages["exports"] = {**storages["exports"], "OPTIONS": {**storages["exports"]["OPTIONS"], "location": str(files_dir)}}
    # The notice gate of exports (default: withhold members not yet sent the notice) is
    # tested in tests/payer/test_notices.py; elsewhere members count as notified.
    overrides = {"STORAGES": storages, "CELERY_TASK_DEFAULT_QUEUE": queue, "PA_EXPORT_ALLOW_UNNOTIFIED": True}
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        overrides["CELERY_BROKER_TRANSPORT_OPTIONS"] = {
            "data_folder_in": str(broker_dir / "queue"),
            "data_folder_out": str(broker_dir / "queue"),
            "processed_folder": str(broker_dir / "processed"),
            "control_folder": str(broker_dir / "control"),
            "store_processed": False,
            "polling_interval": 0.1,
        }
    celery_app.conf.task_default_queue = queue
    celery_app.conf.broker_transport_options = overrides.get(
        "CELERY_BROKER_TRANSPORT_OPTIONS", settings.CELERY_BROKER_TRANSPORT_OPTIONS
    )
    with override_settings(**overrides):
        yield {"PA_FILES_DIR": str(files_dir), "PA_BROKER_DIR": str(broker_dir), "PA_CELERY_QUEUE": queue,
               "PA_EXPORT_ALLOW_UNNOTIFIED": "1"}


def _database_url() -> str:
    """Return a DATABASE_URL naming the test database this session uses."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class WorkerProcess:
    """A ``celery worker`` process consuming this session's queue."""

    def __init__(self, env: dict[str, str], log_path: Path, extra_args: list[str]) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "config", "worker",
                "--pool=solo", "--concurrency=1", "-Q", env["PA_CELERY_QUEUE"],
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel=INFO", f"--hostname=test-{uuid.uuid4().hex[:8]}@%h", *extra_args,
            ],
            cwd=BASE_DIR, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while b" ready." not in log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Celery worker did not start:\n{log_path.read_text()}")
            time.sleep(0.1)

    def kill_if(self, predicate: Callable[[], object]) -> bool:
        """Kill the worker (SIGKILL) only if ``predicate`` holds while it is frozen.

        Frozen with SIGSTOP first, it cannot finish or start a task between the check and
        the kill; if the predicate does not hold, it goes on (SIGCONT) and False is returned.
        """
        if not predicate():
            return False
        self.process.send_signal(signal.SIGSTOP)
        # What the worker sent just before it froze (a COMMIT in the socket) may still land:
        # let it, so that the state checked is the state the kill leaves.
        time.sleep(0.3)
        if predicate():
            self.kill()
            return True
        self.process.send_signal(signal.SIGCONT)
        return False

    def kill(self) -> None:
        """Kill the worker at once (SIGKILL), as a crashed machine would."""
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_worker(transactional_db, isolated_runtime, tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real Celery worker processes on the test database and this session's queue."""
    workers: list[WorkerProcess] = []

    def start(*extra_args: str, **extra_env: str) -> WorkerProcess:
        env = {
            **os.environ,
            **isolated_runtime,
            "DATABASE_URL": _database_url(),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "SECRET_KEY": settings.SECRET_KEY,
            "DEBUG": "0",
            **extra_env,
        }
        worker = WorkerProcess(env, tmp_path / f"worker-{len(workers)}.log", list(extra_args))
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def celery_worker(start_worker) -> WorkerProcess:
    """One real worker process for the test."""
    return start_worker()


def wait_for(predicate: Callable[[], object], *, timeout: float = 30, interval: float = 0.1, message: str = ""):
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(interval)
    pytest.fail(f"Timed out after {timeout}s waiting for {message or predicate}")


@pytest.fixture
def demo_connection(live_server, tmp_path):
    """UnitedCare's demo data on the live server, Grace Hospital's registered key and its connection
    there, and the EMR seed: the demo as `make demo` serves it, for end-to-end tests."""
    payer_demo.seed_demo(create_admin=False)
    attribution_refresh()
    grace = ProviderOrganization.objects.get(npi=payer_demo.GRACE_HOSPITAL_NPI)
    client_id = "grace-hospital-e2e"
    demo_client_ensure(organization=grace, key_dir=tmp_path / "keys", client_id=client_id)
    connection = payer_connection_create(
        name="unitedcare", display_name="UnitedCare Health", fhir_base_url=f"{live_server.url}/payer/fhir",
        client_id=client_id, private_key_path=str(demo_key_path(key_dir=tmp_path / "keys", client_id=client_id)),
        key_id=demo_key_kid(client_id=client_id),
    )
    emr_demo_seed(connection_name=connection.name)
    return connection
