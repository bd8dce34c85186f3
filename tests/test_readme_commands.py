"""Every command the README shows runs as printed after ``make demo``.

The test does what a newcomer does in a fresh clone: ``make demo`` into a temporary ``var/``,
then every ``sh`` block of the README in a shell with no DEBUG, SECRET_KEY or DATABASE_URL
set, so the demo's settings must be found in ``var/demo.env`` alone; then Ctrl-C, after
which the server, the worker and its beat must all be gone within 20 s. The changes made to a command are the
demo's port (``make demo PORT=...``) and ``var/`` (``PA_VAR_DIR``), so that the test never
meets a demo already running in this checkout.
A block preceded by ``<!-- readme-test: skip (reason) -->`` is not run; the README says why.
One preceded by ``<!-- readme-test: exit N (reason) -->`` must end with status N (an example
that reports errors on purpose); the README says that too.
"""

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
README = BASE_DIR / "README.md"
BLOCK = re.compile(
    r"(<!-- readme-test: (?:skip \((?P<reason>[^)]+)\)|exit (?P<exit>\d+) \((?P<why>[^)]+)\)) -->\n)?```sh\n(?P<body>.*?)```",
    re.S,
)
# Variables of a configured deployment: a fresh clone has none of them.
CLEARED = {"SECRET_KEY", "DEBUG", "DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL", "PA_S3_BUCKET",
           "PA_FILES_DIR", "PA_BROKER_DIR", "PA_CELERY_QUEUE", "PA_ROLES", "DJANGO_SETTINGS_MODULE"}


def readme_blocks() -> list[tuple[str, str | None]]:
    """Return each ``sh`` block of the README with its skip reason (None: it runs)."""
    return [(m["body"], m["reason"]) for m in BLOCK.finditer(README.read_text())]


def readme_exit_statuses() -> dict[str, int]:
    """Return the expected exit status of each block that declares one (others: 0)."""
    return {m["body"]: int(m["exit"]) for m in BLOCK.finditer(README.read_text()) if m["exit"]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_readme_lists_its_commands_and_skips_only_with_a_reason():
    blocks = readme_blocks()

    assert any("make demo" in body for body, _ in blocks)
    assert any("register_client" in body for body, reason in blocks if reason is None)
    assert any("bulk_fetch" in body for body, reason in blocks if reason is None)
    assert [reason for _, reason in blocks if reason] == [
        "a production deployment: needs Postgres, Redis, S3 and a real SECRET_KEY"
    ]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies (exited, not yet reaped by init) do not count.
    states = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    return any(not state.startswith("Z") for state in states)


def test_every_readme_command_runs_as_printed_after_make_demo_and_ctrl_c_stops_it(tmp_path):
    var = tmp_path / "var"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in CLEARED} | {"PA_VAR_DIR": str(var)}
    log = open(tmp_path / "demo.log", "wb")
    # Its own process group, as a terminal gives it, so Ctrl-C (SIGINT to the group) can be sent.
    demo = subprocess.Popen(["make", "demo", f"PORT={port}"], cwd=BASE_DIR, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/payer/fhir/metadata", timeout=2)
                break
            except OSError:
                assert demo.poll() is None and time.monotonic() < deadline, (tmp_path / "demo.log").read_text()
                time.sleep(0.5)
        assert (var / "demo.env").read_text().splitlines()[-1] == "DEBUG=1"
        banner = (tmp_path / "demo.log").read_text()
        assert banner.count(f"http://127.0.0.1:{port}/emr/") == 1, banner

        expected_exit = readme_exit_statuses()
        for body, reason in readme_blocks():
            if reason or "make demo" in body:
                continue  # the set-up block: it is what started this demo
            script = body.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace(" var/", f" {var}/")
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=BASE_DIR, env=env,
                                    capture_output=True, text=True, timeout=300)
            output = result.stdout + result.stderr
            assert result.returncode == expected_exit.get(body, 0) and "Traceback" not in output, f"{body}\n{output}"
            if "bulk_fetch" in body:
                assert "Completed" in output and "Encounter" in output, output
            if "register_client" in body:
                assert re.fullmatch(r"[A-Za-z0-9_-]{20,}", result.stdout.splitlines()[-1])

        # Ctrl-C: the server, the worker and its beat all stop promptly.
        os.killpg(demo.pid, signal.SIGINT)
        stopped_by = time.monotonic() + 20
        while _group_alive(demo.pid) and time.monotonic() < stopped_by:
            time.sleep(0.2)
        assert not _group_alive(demo.pid), subprocess.run(
            ["ps", "-o", "pid,stat,cmd", "-g", str(demo.pid)], capture_output=True, text=True).stdout
    finally:
        if _group_alive(demo.pid):
            os.killpg(demo.pid, signal.SIGKILL)
        demo.wait(timeout=10)
        log.close()
