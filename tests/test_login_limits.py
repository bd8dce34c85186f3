"""Login limits on every password login, over real HTTP: the EMR's sign-in form, the admin's,
and HTTP Basic on the hospital's local FHIR API (django-axes, config/settings.py).

The review found 60 wrong EMR passwords, 30 wrong admin passwords and 50 wrong HTTP Basic
passwords tried, and the right one still worked at once.
"""

import re

import pytest
import requests
from axes.models import AccessAttempt, AccessFailureLog
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
LIMIT = 5


@pytest.fixture(autouse=True)
def limits(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.PA_LOGIN_COOLOFF_MINUTES = 15


def _form_login(base: str, path: str, username: str, password: str) -> requests.Response:
    session = requests.Session()
    page = session.get(f"{base}{path}")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return session.post(f"{base}{path}", data={"username": username, "password": password, "csrfmiddlewaretoken": token},
                        headers={"Referer": f"{base}{path}"}, allow_redirects=False)


@pytest.mark.parametrize("path", ["/emr/login/", "/admin/login/"])
def test_sign_in_forms_lock_a_user_after_the_limit_even_with_the_right_password(live_server, path):
    get_user_model().objects.create_user("jsmith", password=PASSWORD, is_staff=True)
    for _ in range(LIMIT - 1):
        assert _form_login(live_server.url, path, "jsmith", "wrong").status_code == 200  # the form again
    locked = _form_login(live_server.url, path, "jsmith", "wrong")
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) == 15 * 60
    assert "Too many failed sign-in attempts" in locked.text

    # The right password no longer works while the lock holds.
    assert _form_login(live_server.url, path, "jsmith", PASSWORD).status_code == 429
    # Audited: every failure is on record, never with the password.
    failures = AccessFailureLog.objects.filter(username="jsmith")
    assert failures.count() >= LIMIT and not any(PASSWORD in str(f.__dict__) for f in failures)

    # Staff unlock (the admin's "Access attempts", or the command): the right password works.
    call_command("axes_reset_username", "jsmith")
    call_command("axes_reset_ip", "127.0.0.1")
    assert _form_login(live_server.url, path, "jsmith", PASSWORD).status_code == 302


def test_http_basic_on_the_local_fhir_api_is_limited_too(live_server):
    user = get_user_model().objects.create_user("emr-system", password=PASSWORD)
    user.user_permissions.add(Permission.objects.get(codename="view_localresource", content_type__app_label="provider"))
    url = f"{live_server.url}/provider/fhir/Patient"
    for _ in range(LIMIT - 1):
        assert requests.get(url, auth=("emr-system", "wrong")).status_code == 401
    assert requests.get(url, auth=("emr-system", "wrong")).status_code == 429  # the limit-th failure locks
    locked = requests.get(url, auth=("emr-system", PASSWORD))
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    body = locked.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "throttled"
    assert AccessAttempt.objects.filter(username="emr-system").exists()


def test_the_address_comes_from_remote_addr_not_a_header_by_default(live_server):
    get_user_model().objects.create_user("jsmith", password=PASSWORD)
    # A client that rotates X-Forwarded-For does not escape the limit on its address.
    for n in range(LIMIT):
        session = requests.Session()
        session.headers["X-Forwarded-For"] = f"203.0.113.{n}"
        page = session.get(f"{live_server.url}/emr/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        session.post(f"{live_server.url}/emr/login/", data={"username": f"guess{n}", "password": "x", "csrfmiddlewaretoken": token},
                     headers={"Referer": f"{live_server.url}/emr/login/"})
    assert set(AccessFailureLog.objects.values_list("ip_address", flat=True)) == {"127.0.0.1"}
    # The address is locked for every user name now, the right one included.
    assert _form_login(live_server.url, "/emr/login/", "jsmith", PASSWORD).status_code == 429


def test_each_further_lockout_doubles_the_cool_off(live_server):
    get_user_model().objects.create_user("jsmith", password=PASSWORD)
    waits = []
    for _ in range(3):
        for _ in range(LIMIT):
            response = _form_login(live_server.url, "/emr/login/", "jsmith", "wrong")
        waits.append(int(response.headers["Retry-After"]))
        AccessAttempt.objects.all().delete()  # the cool-off ran out (the failure log stays)
    assert waits == [15 * 60, 30 * 60, 60 * 60]
