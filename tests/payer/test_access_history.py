"""The member access-history page over the Django test client: identity check, limits per
member AND address, and only the identified member's rows."""

import pytest
from django.core.cache import cache
from django.test import Client

from payer.models import AuditEvent
from payer.services.audit import audit_record
from payer.views.pages import LOCKED_MESSAGE
from tests.factories import member_create, organization_create

pytestmark = pytest.mark.django_db
URL = "/payer/my-data/"


@pytest.fixture(autouse=True)
def _clear_rate_limits():
    cache.clear()
    yield
    cache.clear()


def _data(member_id: str, family: str) -> dict:
    return {"step": "identify", "member_id": member_id, "birth_month": "1", "birth_day": "1",
            "birth_year": "1970", "family": family}


class _Client:
    def __init__(self, organization):
        self.client_id, self.organization = "ehr", organization


def test_only_the_identified_members_rows_and_an_audit_of_the_view():
    jack = member_create(family="Shaw", member_id="UCH400000001")
    jane = member_create(family="Doe", member_id="UCH400000002")
    grace, oak = organization_create(name="Grace Hospital"), organization_create(name="Oakview Family Practice")
    audit_record(action="search", outcome="success", client=_Client(grace), patient_ids=[jack.patient_id],
                 resource_types=["Encounter"])
    audit_record(action="search", outcome="success", client=_Client(oak), patient_ids=[jane.patient_id],
                 resource_types=["Condition"])
    # A refused request about Jack is not a release.
    audit_record(action="read", outcome="denied", client=_Client(oak), patient_ids=[jack.patient_id])
    client = Client()

    assert client.post(URL, _data("UCH400000001", "Shaw")).status_code == 302
    html = client.get(URL).content.decode()

    assert "Grace Hospital" in html and "visits" in html
    assert "Oakview" not in html and "diagnoses" not in html
    assert AuditEvent.objects.filter(action="access-history", members=jack).count() == 1


def test_limits_are_per_member_and_address_so_one_address_cannot_lock_out_others():
    member_create(family="Shaw", member_id="UCH400000001")
    member_create(family="Doe", member_id="UCH400000002")
    attacker = Client(REMOTE_ADDR="203.0.113.7")
    for _ in range(20):
        attacker.cookies.clear()
        assert attacker.post(URL, _data("UCH400000001", "Wrong")).status_code == 400
    attacker.cookies.clear()
    locked = attacker.post(URL, _data("UCH400000001", "Shaw"))
    assert locked.status_code == 429 and LOCKED_MESSAGE in locked.content.decode()

    # Another member at the same address (a shared library computer) is not locked out,
    assert Client(REMOTE_ADDR="203.0.113.7").post(URL, _data("UCH400000002", "Doe")).status_code == 302
    # nor is the same member from their own address; the opt-out page shares the counters.
    assert Client(REMOTE_ADDR="198.51.100.2").post(URL, _data("UCH400000001", "Shaw")).status_code == 302
    assert Client(REMOTE_ADDR="203.0.113.7").post("/payer/opt-out/", _data("UCH400000001", "Shaw")).status_code == 429
