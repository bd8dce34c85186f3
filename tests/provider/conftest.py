"""Fixtures for the provider's Bulk Data client tests: a running test payer and its data."""

from collections.abc import Iterator

import pytest

from provider.models import PayerConnection
from provider.services.connections import payer_connection_create
from tests.provider.bulk_data import CLIENT_ID, dataset
from tests.provider.fake_payer import FakePayer, key_pair


@pytest.fixture(scope="session")
def rsa_keys() -> tuple[bytes, bytes]:
    return key_pair("RS384")


@pytest.fixture
def fake_payer(rsa_keys) -> Iterator[FakePayer]:
    resources, groups = dataset()
    payer = FakePayer(client_id=CLIENT_ID, public_key=rsa_keys[1], resources=resources, groups=groups).start()
    yield payer
    payer.stop()


@pytest.fixture
def key_file(tmp_path, rsa_keys):
    path = tmp_path / "grace.pem"
    path.write_bytes(rsa_keys[0])
    return path


@pytest.fixture(autouse=True)
def fast_sync(settings, tmp_path):
    """Poll the test payers often, and keep downloads in the test's own folder."""
    settings.PA_SYNC_POLL_CAP_SECONDS = 1
    settings.PA_SYNC_DIR = str(tmp_path / "sync")


@pytest.fixture
def connection(fake_payer, key_file) -> PayerConnection:
    """Grace Hospital's connection to the test payer."""
    return payer_connection_create(
        name="unitedcare", display_name="UnitedCare Health", fhir_base_url=fake_payer.base_url,
        client_id=CLIENT_ID, private_key_path=str(key_file), key_id=fake_payer.key_id,
    )
