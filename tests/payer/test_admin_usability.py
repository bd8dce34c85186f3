"""The admin payer staff can use: the client form saves on the first try with the command's
defaults, plain labels, and each side's models in its own section, only for the roles run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from payer.models import SmartClient
from tests.factories import organization_create

pytestmark = pytest.mark.django_db
BASE_DIR = Path(__file__).resolve().parents[2]


def test_client_form_saves_on_the_first_try_with_the_commands_defaults(admin_client):
    organization = organization_create(name="Grace Hospital")
    form = admin_client.get("/admin/payer/smartclient/add/")
    html = form.content.decode()
    assert form.status_code == 200
    assert ">null</textarea>" not in html  # the public keys box starts empty
    assert 'value="system/*.read"' in html  # register_client's default scope
    for label in ("JWKS URL", "Public keys (JWKS)"):
        assert label in html
    assert "Jwks url" not in html

    # What staff fill in: a name, the organization and where its keys are. Nothing else.
    response = admin_client.post("/admin/payer/smartclient/add/", {
        "name": "Grace EHR", "organization": organization.pk, "jwks_url": "https://ehr.grace.example/jwks.json",
        "jwks": "", "scopes": "system/*.read", "active": "on", "max_concurrent_exports": "5",
    })
    assert response.status_code == 302, response.content.decode()[:3000]
    client = SmartClient.objects.get(name="Grace EHR")
    assert (client.scopes, client.jwks, client.jwks_url) == ("system/*.read", None, "https://ehr.grace.example/jwks.json")

    home = admin_client.get("/admin/").content.decode()
    assert "Provider systems" in home and "Smart clients" not in home
    assert home.index("Health plan: members") < home.index("Hospital: payer connections")


PROBE = """
import json, django
django.setup()
from django.contrib import admin
import config.urls
print(json.dumps({"apps": sorted({m._meta.app_label for m in admin.site._registry}), "header": admin.site.site_header}))
"""


@pytest.mark.parametrize(("roles", "present", "absent", "header"), [
    ("payer", {"payer", "storage"}, {"provider", "emr"}, "Health plan administration"),
    ("provider,emr", {"provider", "emr"}, {"payer", "storage"}, "Hospital administration"),
])
def test_a_deployment_shows_only_the_roles_it_runs(tmp_path, roles, present, absent, header):
    environ = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "PA_ROLES"}}
    environ |= {"DJANGO_SETTINGS_MODULE": "config.settings", "PA_VAR_DIR": str(tmp_path), "PA_ROLES": roles,
                "SECRET_KEY": "k" * 50}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=BASE_DIR, env=environ, capture_output=True, text=True)
    probe = json.loads(result.stdout)
    assert present <= set(probe["apps"]) and not (absent & set(probe["apps"]))
    assert probe["header"] == header
