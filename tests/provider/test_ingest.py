"""Ingest of Bulk Data NDJSON into the local FHIR store (provider.services.ingest)."""

import datetime
import io
import json

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome

from provider.models import IngestIssue, LocalResource, PayerConnection, SyncFile, SyncJob
from provider.services.ingest import deleted_apply, ndjson_chunk_plan, ndjson_ingest, ndjson_ingest_chunk
from tests.provider import fhir_samples as fx

pytestmark = pytest.mark.django_db

EXPORT_TIME = datetime.datetime(2024, 5, 2, 12, 0, tzinfo=datetime.timezone.utc)


@pytest.fixture
def payer() -> PayerConnection:
    return PayerConnection.objects.create(
        name="unitedcare", display_name="UnitedCare Health", fhir_base_url="https://unitedcare.example/fhir",
        client_id="grace", private_key_path="var/keys/grace.pem", key_id="k1",
    )


def ingest(stream, *, connection, expected_type=None, level="full", file_name="out.ndjson", **kwargs):
    return ndjson_ingest(
        stream=stream, file_name=file_name, expected_type=expected_type, connection=connection,
        export_time=EXPORT_TIME, validation_level=level, **kwargs,
    )


def test_ingest_stores_resources_with_indexed_columns_and_provenance(payer):
    stream = fx.ndjson(
        fx.patient(), fx.encounter("e1"), fx.condition("c1"), fx.observation("o1"), fx.procedure("p1"),
        fx.medication_request("m1"), fx.eob("x1"), fx.claim("cl1"), fx.claim_response("cr1"),
    )

    result = ingest(stream, connection=payer)

    assert (result.lines, result.stored, result.unchanged, result.errors) == (9, 9, 0, 0)
    assert result.by_type["Encounter"] == 1 and sum(result.by_type.values()) == 9
    rows = {row.resource_type: row for row in LocalResource.objects.all()}
    utc = datetime.timezone.utc
    expected_dates = {
        "Patient": datetime.datetime(1970, 3, 14, tzinfo=utc),
        "Encounter": datetime.datetime(2024, 3, 1, 9, tzinfo=utc),
        "Condition": datetime.datetime(2023, 11, 2, tzinfo=utc),
        "Observation": datetime.datetime(2024, 3, 1, 9, 30, tzinfo=utc),
        "Procedure": datetime.datetime(2024, 2, 10, tzinfo=utc),
        "MedicationRequest": datetime.datetime(2024, 1, 15, tzinfo=utc),
        "ExplanationOfBenefit": datetime.datetime(2024, 3, 1, tzinfo=utc),
        "Claim": datetime.datetime(2024, 3, 2, tzinfo=utc),
        "ClaimResponse": datetime.datetime(2024, 3, 3, tzinfo=utc),
    }
    for resource_type, date in expected_dates.items():
        row = rows[resource_type]
        assert row.patient_id == "jack", resource_type
        assert row.date == date, resource_type
        assert row.connection == payer and row.export_time == EXPORT_TIME and row.ingested_at is not None
    encounter = rows["Encounter"]
    assert encounter.status == "finished"
    assert encounter.version_id == "1"
    assert encounter.last_updated == datetime.datetime(2024, 5, 1, 10, tzinfo=utc)
    assert encounter.resource == fx.encounter("e1")  # the JSON the payer sent, as it was
    assert " class=AMB " in encounter.search_tokens and " type=http://snomed.info/sct|185349003 " in encounter.search_tokens
    assert " name=shaw " in rows["Patient"].search_tokens
    assert " identifier=https://unitedcare.example/member-id|UC00001234 " in rows["Patient"].search_tokens


def test_bad_lines_are_recorded_with_line_numbers_and_the_rest_loads(payer):
    bad_encounter = fx.encounter("e-bad")
    bad_encounter["period"] = {"start": "the first of March"}
    stream = fx.ndjson(
        fx.encounter("e1"),                                   # 1
        "{not json",                                          # 2
        "",                                                   # 3 blank: skipped, not an error
        json.dumps({"id": "x", "status": "finished"}),        # 4 no resourceType
        json.dumps({"resourceType": "Spaceship", "id": "x"}),  # 5 unknown type
        fx.patient(),                                         # 6 not the manifest's type
        bad_encounter,                                        # 7 invalid against the R4B model
        {**fx.encounter("e2"), "id": "bad id!"},              # 8 invalid id
        {**fx.encounter("e3"), "subject": {"reference": "Patient with a space"}},  # 9 malformed reference
        "[1, 2]",                                             # 10 not an object
        fx.encounter("e4"),                                   # 11
    )

    result = ingest(stream, connection=payer, expected_type="Encounter", file_name="Encounter.ndjson")

    assert (result.lines, result.stored, result.errors) == (10, 2, 8)
    assert set(LocalResource.objects.values_list("resource_id", flat=True)) == {"e1", "e4"}
    issues = list(IngestIssue.objects.all())
    assert [issue.line_number for issue in issues] == [2, 4, 5, 6, 7, 8, 9, 10]
    assert {issue.file_name for issue in issues} == {"Encounter.ndjson"}
    for issue in issues:
        OperationOutcome.model_validate(issue.outcome)
    by_line = {issue.line_number: issue.outcome["issue"][0] for issue in issues}
    assert by_line[2]["code"] == "structure"
    assert by_line[4]["code"] == "required" and by_line[4]["expression"] == ["resourceType"]
    assert "Spaceship" in by_line[5]["diagnostics"]
    assert "Patient" in by_line[6]["diagnostics"] and "Encounter" in by_line[6]["diagnostics"]
    assert by_line[7]["expression"][0].startswith("Encounter.period")
    assert by_line[8]["expression"] == ["Encounter.id"]
    assert by_line[9]["expression"] == ["Encounter.subject.reference"]


def test_same_file_twice_changes_nothing(payer):
    job = SyncJob.objects.create(connection=payer, level=SyncJob.Level.GROUP, scope_key="group:g1")
    sync_file = SyncFile.objects.create(job=job, kind=SyncFile.Kind.OUTPUT, resource_type="", url="https://x/1")
    content = fx.ndjson(fx.patient(), fx.encounter("e1"), fx.encounter("e2"), "oops").getvalue()
    first = ingest(io.BytesIO(content), connection=payer, sync_job=job, sync_file=sync_file)
    before = {row.pk: (row.resource, row.ingested_at, row.export_time) for row in LocalResource.objects.all()}

    second = ingest(io.BytesIO(content), connection=payer, sync_job=job, sync_file=sync_file)

    assert (first.stored, first.errors) == (3, 1)
    assert (second.stored, second.unchanged, second.errors) == (0, 3, 1)
    after = {row.pk: (row.resource, row.ingested_at, row.export_time) for row in LocalResource.objects.all()}
    assert after == before
    assert LocalResource.objects.filter(sync_job=job).count() == 3
    # A retried task records its bad line once.
    assert list(IngestIssue.objects.values_list("sync_file", "line_number")) == [(sync_file.pk, 4)]


def test_later_version_replaces_earlier_and_earlier_never_replaces_later(payer):
    v1 = fx.encounter("e1", status="in-progress", updated="2024-05-01T10:00:00Z", version="1")
    v2 = fx.encounter("e1", status="finished", updated="2024-05-02T10:00:00Z", version="2")
    ingest(fx.ndjson(v1), connection=payer)

    assert ingest(fx.ndjson(v2), connection=payer).stored == 1
    row = LocalResource.objects.get()
    assert (row.status, row.version_id, row.resource) == ("finished", "2", v2)

    assert ingest(fx.ndjson(v1), connection=payer).stored == 0  # an older export arrives late
    assert LocalResource.objects.get().resource == v2

    # Same lastUpdated: the higher versionId wins ("10" after "9"), a lower one does not.
    v9 = fx.encounter("e1", status="cancelled", updated="2024-05-03T00:00:00Z", version="9")
    v10 = fx.encounter("e1", status="finished", updated="2024-05-03T00:00:00Z", version="10")
    ingest(fx.ndjson(v10), connection=payer)
    assert ingest(fx.ndjson(v9), connection=payer).stored == 0
    assert LocalResource.objects.get().version_id == "10"


def test_two_versions_in_one_batch_keep_the_later(payer):
    v1 = fx.encounter("e1", status="in-progress", updated="2024-05-01T10:00:00Z", version="1")
    v2 = fx.encounter("e1", status="finished", updated="2024-05-02T10:00:00Z", version="2")

    result = ingest(fx.ndjson(v2, v1), connection=payer)

    assert result.errors == 0
    assert LocalResource.objects.get().resource == v2


def test_structure_level_checks_shape_but_not_the_model(payer):
    not_a_date = fx.encounter("e-date")
    not_a_date["period"] = {"start": "the first of March"}
    lines = (not_a_date, {**fx.encounter("e-ref"), "subject": {"reference": "Patient/"}}, {"resourceType": "Encounter"})

    full = ingest(fx.ndjson(*lines), connection=payer, level="full")
    assert (full.stored, full.errors) == (0, 3)

    structure = ingest(fx.ndjson(*lines), connection=payer, level="structure", file_name="again.ndjson")
    assert (structure.stored, structure.errors) == (1, 2)
    assert LocalResource.objects.get().resource_id == "e-date"
    codes = [issue.outcome["issue"][0]["expression"] for issue in IngestIssue.objects.filter(file_name="again.ndjson")]
    assert codes == [["Encounter.subject.reference"], ["Encounter.id"]]


def test_batches_and_issues_flush_across_batch_boundaries(payer):
    lines = [fx.encounter(f"e{n}") if n % 7 else "not json" for n in range(1, 51)]

    result = ingest(fx.ndjson(*lines), connection=payer, batch_size=5)

    assert (result.lines, result.stored, result.errors) == (50, 43, 7)
    assert LocalResource.objects.count() == 43
    assert list(IngestIssue.objects.values_list("line_number", flat=True)) == [7, 14, 21, 28, 35, 42, 49]


def test_chunks_of_a_file_ingest_the_whole_file_with_true_line_numbers(payer, tmp_path):
    path = tmp_path / "Encounter.ndjson"
    lines = [fx.encounter(f"e{n}") if n != 8 else "broken" for n in range(1, 12)]
    path.write_bytes(fx.ndjson(*lines).getvalue())

    chunks = ndjson_chunk_plan(path=str(path), lines_per_chunk=3)

    assert [chunk.first_line for chunk in chunks] == [1, 4, 7, 10]
    assert chunks[-1].end_byte == path.stat().st_size
    results = [
        ndjson_ingest_chunk(path=str(path), chunk=chunk, file_name="Encounter.ndjson", expected_type="Encounter",
                            connection=payer, export_time=EXPORT_TIME)
        for chunk in reversed(chunks)  # any order: each chunk is independent
    ]
    assert sum(r.lines for r in results) == 11 and sum(r.stored for r in results) == 10
    assert LocalResource.objects.count() == 10
    assert list(IngestIssue.objects.values_list("line_number", flat=True)) == [8]


def test_stream_without_trailing_newline_and_crlf(payer):
    body = (json.dumps(fx.encounter("e1")) + "\r\n" + json.dumps(fx.encounter("e2"))).encode()

    result = ingest(io.BytesIO(body), connection=payer)

    assert (result.lines, result.stored, result.errors) == (2, 2, 0)


def test_deleted_file_removes_the_listed_resources_of_that_payer_only(payer):
    other = PayerConnection.objects.create(
        name="other", display_name="Other Plan", fhir_base_url="https://other.example/fhir",
        client_id="g", private_key_path="k.pem", key_id="k",
    )
    ingest(fx.ndjson(fx.encounter("e1"), fx.encounter("e2"), fx.condition("c1")), connection=payer)
    ingest(fx.ndjson(fx.encounter("e9")), connection=other)
    bundle = {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"request": {"method": "DELETE", "url": "Encounter/e1"}},
            {"request": {"method": "DELETE", "url": "Condition/c1"}},
            {"request": {"method": "DELETE", "url": "Encounter/e9"}},  # another payer's: kept
        ],
    }
    stream = fx.ndjson(bundle, {"resourceType": "Bundle", "entry": [{"request": {"method": "PUT", "url": "X"}}]})

    result = deleted_apply(stream=stream, file_name="deleted.ndjson", connection=payer)

    assert (result.lines, result.stored, result.errors) == (2, 2, 1)
    assert set(LocalResource.objects.values_list("resource_id", flat=True)) == {"e2", "e9"}
    issue = IngestIssue.objects.get(file_name="deleted.ndjson")
    assert issue.line_number == 2
    OperationOutcome.model_validate(issue.outcome)


@pytest.mark.django_db(transaction=True)
def test_ingest_outside_a_transaction_writes_in_a_helper_process(payer):
    # Outside an atomic block (a Celery task) on Postgres, a file longer than one batch is
    # written by a forked helper process while the caller validates; on SQLite on the
    # caller's connection. Same result, and the caller's connection still works after.
    job = SyncJob.objects.create(connection=payer, level=SyncJob.Level.GROUP, scope_key="group:g1")
    lines = [fx.encounter(f"e{n}") for n in range(1, 26)] + ["bad"]

    result = ingest(fx.ndjson(*lines), connection=payer, sync_job=job, batch_size=4)

    assert (result.stored, result.errors) == (25, 1)
    assert LocalResource.objects.filter(connection=payer, sync_job=job, export_time=EXPORT_TIME).count() == 25
    assert LocalResource.objects.get(resource_id="e25").resource == fx.encounter("e25")
    assert IngestIssue.objects.get().line_number == 26
    again = ingest(fx.ndjson(*lines), connection=payer, batch_size=4)
    assert (again.stored, again.unchanged) == (0, 25)
    # Batches mixing stored and new resources: the new ones are added, the rest left as is.
    mixed = ingest(fx.ndjson(*[fx.encounter(f"e{n}") for n in range(20, 31)]), connection=payer, batch_size=4)
    assert (mixed.stored, mixed.unchanged) == (5, 6)
    assert LocalResource.objects.count() == 30


def test_a_character_jsonb_cannot_hold_fails_its_line_not_the_batch(payer):
    nul = fx.encounter("e-nul")
    nul["type"][0]["text"] = "a\x00b"
    escaped_slash = json.dumps(fx.encounter("e-slash")).replace("Patient/jack", "Patient\\/jack")
    lines = [fx.encounter("e1"), nul, escaped_slash, '{"resourceType": "Encounter", "id": "x\\ud800"}']

    result = ingest(fx.ndjson(*lines), connection=payer, file_name="odd.ndjson")

    assert (result.stored, result.errors) == (2, 2)
    assert set(LocalResource.objects.values_list("resource_id", flat=True)) == {"e1", "e-slash"}
    codes = [issue.outcome["issue"][0]["code"] for issue in IngestIssue.objects.filter(file_name="odd.ndjson")]
    assert codes == ["not-supported", "structure"]


def test_json_with_backslashes_tabs_and_unicode_round_trips(payer):
    patient = fx.patient("p-esc", family="O'Brien\\Ñúñez\t\"Jr\"")
    raw_line = json.dumps(patient).replace('"Patient",', '"Patient",\t', 1)  # insignificant whitespace

    result = ingest(io.BytesIO(raw_line.encode() + b"\n"), connection=payer)

    assert result.stored == 1
    assert LocalResource.objects.get().resource == patient


def test_two_sources_keep_the_same_ids_apart_on_every_write_path(transactional_db, payer):
    # Issue "a local store partitioned by payer and organization": the same (type, id)
    # from two connections is two rows. Batches of 3 in a forked writer (on Postgres)
    # take the COPY path first and the staged upsert after, so both are exercised.
    second = PayerConnection.objects.create(
        name="second", display_name="Second Payer", fhir_base_url="https://second.example/fhir",
        client_id="grace", private_key_path="var/keys/grace.pem", key_id="k1",
    )
    ours = [fx.encounter(f"e{n}", start=f"2023-01-{n + 1:02d}T08:00:00Z") for n in range(10)]
    theirs = [{**fx.encounter(f"e{n}", pid="someone-else"), "meta": {"lastUpdated": "2099-01-01T00:00:00Z"}} for n in range(10)]

    assert ingest(fx.ndjson(*ours), connection=payer, batch_size=3, background_writes=None).stored == 10
    assert ingest(fx.ndjson(*theirs), connection=second, batch_size=3, background_writes=None).stored == 10
    # A newer version from the other source replaced nothing of ours; ours again is unchanged.
    assert ingest(fx.ndjson(*ours), connection=payer, batch_size=3, background_writes=None).unchanged == 10

    assert LocalResource.objects.filter(resource_type="Encounter").count() == 20
    assert set(LocalResource.objects.filter(connection=payer).values_list("patient_id", flat=True)) == {"jack"}
    assert set(LocalResource.objects.filter(connection=second).values_list("patient_id", flat=True)) == {"someone-else"}
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"request": {"method": "DELETE", "url": "Encounter/e1"}}]}
    assert deleted_apply(stream=io.BytesIO(json.dumps(bundle).encode()), file_name="d.ndjson", connection=second).stored == 1
    assert LocalResource.objects.filter(connection=payer, resource_id="e1").exists()


def test_ingest_needs_a_saved_connection():
    with pytest.raises(ValueError, match="payer connection"):
        ingest(fx.ndjson(fx.patient()), connection=None)
