"""The output file server over real HTTP: gzip, byte ranges, tokens; local disk and S3 (moto).

Requirement numbers refer to /work/shared/spec/bulkdata-2.0-requirements.tsv.
"""

import gzip
import json
import time

import boto3
import pytest
import requests
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome

from payer.models import AuditEvent
from storage.models import ExportFile
from storage.services import NDJSONPartWriter, accepts_gzip, byte_range_parse, RangeNotSatisfiable
from tests.payer.test_export import KICKOFF_HEADERS, _auth, _bulk_observations, _population, _wait_complete

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def _export(live_server, pop, worker) -> dict:
    kick = requests.get(f"{live_server.url}/payer/fhir/Patient/$export", params={"_type": "Observation"},
                        headers=_auth(pop["token"], **KICKOFF_HEADERS), timeout=30)
    assert kick.status_code == 202, kick.text
    done = _wait_complete(kick.headers["Content-Location"], pop["token"], worker=worker)
    assert done.status_code == 200, done.text
    return done.json()


def test_download_gzip_identity_ranges_and_tokens(live_server, celery_worker):
    pop = _population(members=1, encounters=0, observations=0)
    _bulk_observations(pop["members"][0], 500)
    manifest = _export(live_server, pop, celery_worker)
    (item,) = manifest["output"]
    url, token = item["url"], pop["token"]

    # Bulk Data req 204/148: GET on the url of the manifest's output item serves the file.
    # No Accept header at all (req 205), no gzip: decompressed on the fly, 200, NDJSON (req 206-209).
    plain = requests.get(url, headers={**_auth(token), "Accept-Encoding": "identity"}, timeout=30)
    assert plain.status_code == 200
    assert plain.headers["Content-Type"] == "application/fhir+ndjson"
    assert "Content-Encoding" not in plain.headers and plain.headers["Accept-Ranges"] == "bytes"
    lines = plain.content.splitlines()
    assert len(lines) == item["count"] == 500
    for line in lines[:5]:
        Observation.model_validate(json.loads(line))
    assert int(plain.headers["Content-Length"]) == len(plain.content)

    # Accept-Encoding: gzip: the stored gzip bytes as they are.
    raw = requests.get(url, headers={**_auth(token), "Accept-Encoding": "gzip", "Accept": "application/fhir+ndjson"},
                       stream=True, timeout=30)
    assert raw.status_code == 200 and raw.headers["Content-Encoding"] == "gzip"
    compressed = raw.raw.read(decode_content=False)
    assert gzip.decompress(compressed) == plain.content
    assert len(compressed) < len(plain.content) / 3

    # Resuming an interrupted download with Range (identity representation).
    half = len(plain.content) // 2
    tail = requests.get(url, headers={**_auth(token), "Accept-Encoding": "identity", "Range": f"bytes={half}-"}, timeout=30)
    assert tail.status_code == 206
    assert tail.headers["Content-Range"] == f"bytes {half}-{len(plain.content) - 1}/{len(plain.content)}"
    assert plain.content[:half] + tail.content == plain.content
    middle = requests.get(url, headers={**_auth(token), "Accept-Encoding": "identity", "Range": "bytes=100-199"}, timeout=30)
    assert middle.status_code == 206 and middle.content == plain.content[100:200]
    suffix = requests.get(url, headers={**_auth(token), "Accept-Encoding": "identity", "Range": "bytes=-50"}, timeout=30)
    assert suffix.status_code == 206 and suffix.content == plain.content[-50:]
    # ... and of the gzip representation.
    gz_tail = requests.get(url, headers={**_auth(token), "Accept-Encoding": "gzip", "Range": "bytes=10-"}, stream=True, timeout=30)
    assert gz_tail.status_code == 206 and gz_tail.raw.read(decode_content=False) == compressed[10:]
    # Past the end: 416 with Content-Range: bytes */length.
    beyond = requests.get(url, headers={**_auth(token), "Accept-Encoding": "identity", "Range": f"bytes={len(plain.content)}-"}, timeout=30)
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(plain.content)}"

    # Req 201/210: the owner's token is required; others get 4xx with an OperationOutcome.
    assert requests.get(url, timeout=30).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    missing = requests.get(url.rsplit("/", 1)[0] + "/nope", headers=_auth(token), timeout=30)
    assert missing.status_code == 404
    OperationOutcome.model_validate(missing.json())
    # Every download is audited with the patients and type it released.
    event = AuditEvent.objects.filter(action="download", outcome="success").first()
    assert event.patient_ids == [pop["members"][0].patient_id] and event.resource_types == ["Observation"]


def test_s3_storage_through_moto_server(live_server, start_worker, settings, monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        for name, value in credentials.items():
            monkeypatch.setenv(name, value)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="exports")
        settings.STORAGES = {**settings.STORAGES, "exports": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {"bucket_name": "exports", "endpoint_url": endpoint, "region_name": "us-east-1",
                        "default_acl": None, "querystring_auth": False, "file_overwrite": True},
        }}
        worker = start_worker(PA_S3_BUCKET="exports", PA_S3_ENDPOINT_URL=endpoint, **credentials)
        pop = _population(members=1, encounters=0, observations=0)
        _bulk_observations(pop["members"][0], 200)
        manifest = _export(live_server, pop, worker)
        (item,) = manifest["output"]
        name = ExportFile.objects.get().name
        stored = s3.get_object(Bucket="exports", Key=name)["Body"].read()
        assert len(gzip.decompress(stored).splitlines()) == 200
        plain = requests.get(item["url"], headers={**_auth(pop["token"]), "Accept-Encoding": "identity"}, timeout=30)
        assert plain.status_code == 200 and plain.content == gzip.decompress(stored)
        part = requests.get(item["url"], headers={**_auth(pop["token"]), "Accept-Encoding": "identity", "Range": "bytes=0-99"}, timeout=30)
        assert part.status_code == 206 and part.content == plain.content[:100]
        # DELETE removes the object from the bucket too.
        status_url = manifest["output"] and ExportFile.objects.get().job.job_id
        deleted = requests.delete(f"{live_server.url}/payer/fhir/bulkstatus/{status_url}", headers=_auth(pop["token"]), timeout=30)
        assert deleted.status_code == 202
        time.sleep(0.2)
        assert "Contents" not in s3.list_objects_v2(Bucket="exports", Prefix=name)
    finally:
        server.stop()


def test_range_and_encoding_parsing():
    assert byte_range_parse(header="bytes=0-9", length=100) == (0, 9)
    assert byte_range_parse(header="bytes=90-", length=100) == (90, 99)
    assert byte_range_parse(header="bytes=-10", length=100) == (90, 99)
    assert byte_range_parse(header="bytes=0-500", length=100) == (0, 99)
    assert byte_range_parse(header="bytes=0-1,5-6", length=100) is None  # multi-range: whole file
    assert byte_range_parse(header="items=0-1", length=100) is None
    with pytest.raises(RangeNotSatisfiable):
        byte_range_parse(header="bytes=100-", length=100)
    assert accepts_gzip(header="gzip, deflate, br")
    assert not accepts_gzip(header="gzip;q=0, identity")
    assert not accepts_gzip(header="")


def test_part_writer_overwrites_deterministic_names(tmp_path):
    from django.core.files.storage import FileSystemStorage

    storage = FileSystemStorage(location=tmp_path)
    for _ in range(2):  # a unit run twice leaves one copy
        writer = NDJSONPartWriter(name_for=lambda n: f"job/Observation.{n}.ndjson.gz", max_bytes=30, storage=storage)
        writer.write_lines(f'{{"n":{i:010d}}}\n'.encode() for i in range(5))
        parts = writer.close()
    assert [p.count for p in parts] == [1, 1, 1, 1, 1]
    assert sorted(p.name for p in tmp_path.joinpath("job").iterdir()) == [
        f"Observation.{n}.ndjson.gz" for n in range(5)]
    assert gzip.decompress(tmp_path.joinpath("job/Observation.0.ndjson.gz").read_bytes()) == b'{"n":0000000000}\n'


def test_part_writer_blocks_split_only_at_line_boundaries(tmp_path):
    # The COPY path hands whole-line blocks of any size; parts stay under max_bytes, split
    # between lines, and a line longer than max_bytes gets a part of its own.
    from django.core.files.storage import FileSystemStorage

    storage = FileSystemStorage(location=tmp_path)
    lines = [f'{{"n":{i},"pad":"{"x" * (i % 7)}"}}\n'.encode() for i in range(200)]
    long_line = b'{"long":"' + b"y" * 300 + b'"}\n'
    blocks = [b"".join(lines[:37]), b"".join(lines[37:38]), long_line, b"".join(lines[38:])]
    writer = NDJSONPartWriter(name_for=lambda n: f"job/Observation.{n}.ndjson.gz", max_bytes=100, storage=storage)
    writer.write_blocks(blocks)
    parts = writer.close()
    contents = [gzip.decompress(storage.open(p.name).read()) for p in parts]
    assert b"".join(contents) == b"".join(blocks)
    for part, content in zip(parts, contents, strict=True):
        assert content.endswith(b"\n") and part.count == content.count(b"\n") and part.size == len(content)
        assert part.size <= 100 or part.count == 1
    assert long_line in contents
    assert sum(p.count for p in parts) == 201
