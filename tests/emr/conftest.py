"""Fixtures of the EMR tests: Grace Hospital's connection to UnitedCare, Dr. Smith, and Jack
Shaw with his history already in the local store (tests/emr/history_data.py)."""

import pytest

from emr.demo import emr_demo_seed
from emr.models import HospitalPatient
from payer.models import ProviderOrganization
from payer.services import demo as payer_demo
from payer.services.attribution import attribution_refresh
from payer.services.demo_keys import demo_client_ensure, demo_key_kid, demo_key_path
from provider.models import PayerConnection
from provider.services.connections import payer_connection_create
from tests import factories
from tests.emr.history_data import history_store

JACK_MEMBER_ID = "UC-TEST-0001"
GRACE_NPI = "1234567893"  # the factories' default organization


@pytest.fixture
def connection() -> PayerConnection:
    return PayerConnection.objects.create(
        name="unitedcare", display_name="UnitedCare Health", fhir_base_url="http://payer.example/fhir",
        client_id="grace", private_key_path="/nonexistent.pem", key_id="k1", organization_npi=GRACE_NPI,
    )


@pytest.fixture
def smith():
    return factories.clinician_create(username="jsmith")


@pytest.fixture
def jack(connection) -> HospitalPatient:
    history_store(connection=connection, patient_id="pat-jack", member_id=JACK_MEMBER_ID)
    return factories.hospital_patient_create(insurer=connection, member_id=JACK_MEMBER_ID, payer_patient_id="pat-jack")


@pytest.fixture
def scenario(live_server, tmp_path):
    """UnitedCare's demo data, Grace Hospital's registered key and connection, the EMR seed."""
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
