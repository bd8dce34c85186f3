"""Settings read from the environment: roles, and the secret key rule. Each case runs in a
fresh interpreter, since settings are read once per process."""

import json
import os
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
PROBE = """
import json, django
django.setup()
from django.conf import settings
from django.urls import Resolver404, resolve

def routed(path):
    try:
        resolve(path)
        return True
    except Resolver404:
        return False

print(json.dumps({
    "apps": settings.INSTALLED_APPS,
    "payer": routed("/payer/fhir/metadata"),
    "provider": routed("/provider/fhir/metadata"),
    "emr": routed("/emr/"),
    "beat": sorted(settings.CELERY_BEAT_SCHEDULE),
}))
"""


def _run(tmp_path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG", "PA_ROLES"}}
    environ |= {"DJANGO_SETTINGS_MODULE": "config.settings", "PA_VAR_DIR": str(tmp_path), **env}
    return subprocess.run([sys.executable, "-c", PROBE], cwd=BASE_DIR, env=environ, capture_output=True, text=True)


def test_a_hospital_deployment_serves_provider_and_emr_without_the_payer(tmp_path):
    result = _run(tmp_path, PA_ROLES="provider,emr", SECRET_KEY="k" * 50)

    probe = json.loads(result.stdout)
    assert "payer" not in probe["apps"] and "storage" not in probe["apps"]
    assert {"provider", "emr"} <= set(probe["apps"])
    assert (probe["payer"], probe["provider"], probe["emr"]) == (False, True, True)
    assert sorted(probe["beat"]) == ["panel-syncs-run", "sync-jobs-resume"]


def test_a_health_plan_deployment_serves_only_the_payer(tmp_path):
    result = _run(tmp_path, PA_ROLES="payer", SECRET_KEY="k" * 50)

    probe = json.loads(result.stdout)
    assert {"payer", "storage"} <= set(probe["apps"]) and "provider" not in probe["apps"]
    assert (probe["payer"], probe["provider"], probe["emr"]) == (True, False, False)
    assert "sync-jobs-resume" not in probe["beat"] and "panel-syncs-run" not in probe["beat"]
    assert "export-reconcile" in probe["beat"]


def test_secret_key_is_required_when_debug_is_off(tmp_path):
    result = _run(tmp_path)

    assert result.returncode != 0 and "SECRET_KEY must be set when DEBUG is off" in result.stderr
    assert not (tmp_path / "secret_key").exists()


def test_demo_generates_and_keeps_a_secret_key_under_var(tmp_path):
    first = _run(tmp_path, DEBUG="1")
    key = (tmp_path / "secret_key").read_text()
    second = _run(tmp_path, DEBUG="1")

    assert first.returncode == second.returncode == 0
    assert len(key) >= 50 and (tmp_path / "secret_key").read_text() == key
    assert oct((tmp_path / "secret_key").stat().st_mode & 0o777) == "0o600"


def test_unknown_role_is_refused(tmp_path):
    result = _run(tmp_path, PA_ROLES="payer,pharmacy", SECRET_KEY="k" * 50)

    assert result.returncode != 0 and "Unknown PA_ROLES: pharmacy" in result.stderr


def test_make_demos_env_file_turns_debug_on_and_a_variable_set_wins(tmp_path):
    (tmp_path / "demo.env").write_text("# Written by `make demo`\nDEBUG=1\n")
    demo = _run(tmp_path)
    (tmp_path / "secret_key").unlink()
    production = _run(tmp_path, DEBUG="0")

    assert demo.returncode == 0, demo.stderr  # no SECRET_KEY needed: the file says DEBUG=1
    assert "notices-send" in json.loads(demo.stdout)["beat"]
    assert production.returncode != 0 and "SECRET_KEY must be set when DEBUG is off" in production.stderr


def test_a_mistyped_history_setting_refuses_to_start_rather_than_show_what_was_meant_hidden(tmp_path):
    for value, ok in (("hide", True), (" Hide ", True), ("mark", True), ("hidden", False), ("no", False)):
        result = _run(tmp_path, SECRET_KEY="k", EMR_HISTORY_AFTER_SHARING_ENDS=value)
        assert (result.returncode == 0) is ok, (value, result.stderr[-500:])
        if not ok:
            assert "EMR_HISTORY_AFTER_SHARING_ENDS must be 'mark' or 'hide'" in result.stderr
