"""Fixtures for the provider's Bulk Data client tests: a running test payer and its data."""

from collections.abc import Iterator

import pytest

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
