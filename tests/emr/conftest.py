"""Fixtures of the EMR tests: Grace Hospital's connection to UnitedCare, Dr. Smith, and Jack
Shaw with his history already in the local store (tests/emr/history_data.py)."""

import pytest

from emr.models import HospitalPatient
from provider.models import PayerConnection
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
