"""import_claims: the example extract (docs/examples/claims-extract/) with its planted bad rows."""

import csv
import datetime
import json
import re
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.practitionerrole import PractitionerRole

from payer.mapping import eob_id_for_claim, eob_id_for_prior_auth
from payer.models import (
    AttributionMember,
    Claim,
    ClaimDiagnosis,
    ClaimLine,
    ClinicalResource,
    Member,
    NetworkContract,
    PriorAuthorization,
    ProviderOrganization,
    ProviderPractitioner,
)
from payer.services.attribution import attribution_group_ensure
from payer.services.imports.claims import claims_import
from payer.services.imports.layout import LAYOUT, CellError, icd10cm, ndc, npi, procedure_code
from payer.tasks import claims_import_task
from tests.factories import member_create
from tests.payer.test_export import _kick_off, _resources, _wait_complete

pytestmark = pytest.mark.django_db

EXAMPLE = Path(settings.BASE_DIR) / "docs" / "examples" / "claims-extract"
TODAY = datetime.date(2026, 12, 1)

PLANTED_ERRORS = {
    ("organizations.csv", 4, "npi"), ("practitioners.csv", 4, "organization_npi"), ("contracts.csv", 4, "end"),
    ("members.csv", 5, "birth_date"), ("coverage_periods.csv", 6, "member_id"), ("claims.csv", 6, "ndc_code"),
    ("claims.csv", 7, "service_end"), ("claims.csv", 8, "member_id"), ("claim_lines.csv", 6, "procedure_code"),
    ("claim_lines.csv", 7, "claim_number"), ("claim_diagnoses.csv", 6, "icd10_code"),
    ("prior_authorizations.csv", 4, "service_system"),
}


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "extract"
    shutil.copytree(EXAMPLE, folder)
    return folder


def _edit(path: Path, key: tuple[str, str], **changes: str) -> None:
    """Change cells of the row whose first columns are ``key`` (claim number, sequence, ...)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    fields = list(rows[0])
    hit = [r for r in rows if tuple(r[f] for f in fields[: len(key)]) == key]
    assert len(hit) == 1
    hit[0].update(changes)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _append(path: Path, line: str) -> None:
    with path.open("a") as handle:
        handle.write(line + "\n")


def test_example_extract_exact_counts_and_rows(tmp_path):
    report = claims_import(folder=str(EXAMPLE), today=TODAY, report_path=str(tmp_path / "report.json"))
    assert (report.read, report.stored, report.updated, report.unchanged, report.error_count) == (39, 27, 0, 0, 12)
    assert report.skipped_total == 0
    assert {(e.file, e.line, e.column) for e in report.errors} == PLANTED_ERRORS
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["by_kind"]["claims"] == {"stored": 4, "errors": 3}
    assert data["claims_changed"] == 4 and data["attribution_members_refreshed"] == 3

    assert ProviderOrganization.objects.count() == 2 and ProviderPractitioner.objects.count() == 2
    assert NetworkContract.objects.count() == 2
    assert set(Member.objects.values_list("member_id", "patient_id")) == {
        ("UCX0001", "pat-ucx0001"), ("UCX0002", "pat-ucx0002"), ("UCX0003", "pat-lee-minor")}
    assert set(Claim.objects.values_list("claim_number", flat=True)) == {"C1001", "C1002", "C1003", "C1004"}
    pharmacy = Claim.objects.get(claim_number="C1003")
    assert (pharmacy.ndc_code, pharmacy.days_supply, pharmacy.total_paid) == ("00093714656", 30, Decimal("20.00"))
    assert list(ClaimLine.objects.filter(claim__claim_number="C1002").values_list("sequence", "procedure_code", "revenue_code")) == [
        (1, "", "0110"), (2, "80053", "0300")]
    assert ClaimLine.objects.get(claim__claim_number="C1004").procedure_system == "HCPCS"
    assert ClaimDiagnosis.objects.get(claim__claim_number="C1002", sequence=2).icd10_code == "E11.9"
    assert PriorAuthorization.objects.get(auth_number="PA-2026-0002").service_system == "HCPCS"
    # Coverage periods become FHIR Coverage resources of the member, valid R4.
    coverages = ClinicalResource.objects.filter(resource_type="Coverage").order_by("resource_id")
    assert [(c.resource_id, c.patient_id, c.status) for c in coverages] == [
        ("cov-ucx0001", "pat-ucx0001", "active"), ("cov-ucx0002-2025", "pat-ucx0002", "ended"),
        ("cov-ucx0002-2026", "pat-ucx0002", "active"), ("cov-ucx0003", "pat-lee-minor", "active")]
    for c in coverages:
        Coverage.model_validate(c.resource)
    # The provider directory's FHIR resources (Organization, Location, Practitioner, PractitionerRole).
    directory = ClinicalResource.objects.filter(patient_id="")
    assert sorted(directory.values_list("resource_type", flat=True)) == [
        "Location", "Location", "Organization", "Organization", "Practitioner", "Practitioner",
        "PractitionerRole", "PractitionerRole"]
    Organization.model_validate(directory.get(resource_id="org-grace-hospital").resource)
    PractitionerRole.model_validate(directory.get(resource_type="PractitionerRole", resource_id="role-prac-james-smith").resource)
    # Attribution from the claims: Jack and Mary... Jack at Grace, Mary and Lee at St. Mary's.
    assert set(AttributionMember.objects.values_list("group__organization__npi", "member__member_id")) == {
        ("1345678902", "UCX0001"), ("1789012345", "UCX0002"), ("1789012345", "UCX0003")}


def test_rerun_changes_nothing(tmp_path):
    claims_import(folder=str(EXAMPLE), today=TODAY)
    before = dict(Claim.objects.values_list("claim_number", "updated_at"))
    lines = set(ClaimLine.objects.values_list("pk", "claim_id", "sequence"))
    resources = set(ClinicalResource.objects.values_list("resource_type", "resource_id", "version_id", "last_updated"))
    again = claims_import(folder=str(EXAMPLE), today=TODAY)
    assert (again.read, again.stored, again.updated, again.unchanged, again.error_count) == (39, 0, 0, 27, 12)
    assert again.extra["claims_changed"] == 0 and again.extra["attribution_members_refreshed"] == 0
    assert dict(Claim.objects.values_list("claim_number", "updated_at")) == before
    assert set(ClaimLine.objects.values_list("pk", "claim_id", "sequence")) == lines  # not even rewritten
    assert set(ClinicalResource.objects.values_list("resource_type", "resource_id", "version_id", "last_updated")) == resources


def test_later_extract_updates_changed_rows_and_only_their_members_attribution(tmp_path):
    claims_import(folder=str(EXAMPLE), today=TODAY)
    # A claims-derived entry with no claim behind it: a full refresh would end it; an
    # import whose changed claims are someone else's must leave it alone.
    bystander = member_create(member_id="UCX9999")
    group = attribution_group_ensure(organization=ProviderOrganization.objects.get(npi="1345678902"))
    AttributionMember.objects.create(group=group, member=bystander, start=datetime.date(2026, 1, 1),
                                     source=AttributionMember.Source.CLAIMS, reason="old", changed_by="test")
    before = dict(Claim.objects.values_list("claim_number", "updated_at"))

    folder = _copy(tmp_path)
    _edit(folder / "claims.csv", ("C1001",), status="adjusted", total_paid="110.00")  # header changed
    _edit(folder / "claim_lines.csv", ("C1002", "2"), paid_amount="390.00")  # a line of C1002 changed
    _append(folder / "claims.csv", "C1008,UCX0002,professional,paid,1345678902,1987654328,,,2026-10-01,2026-10-01,"
                                   "2026-10-02,2026-10-05,,,,,,95.00,80.00,15.00")  # Mary now also sees Dr. Smith
    _append(folder / "claim_lines.csv", "C1008,1,99214,CPT,Office visit,,,11,2026-10-01,1,95.00,90.00,80.00,15.00")
    _edit(folder / "prior_authorizations.csv", ("PA-2026-0002",), decision="approved", decision_date="2026-06-07")
    _edit(folder / "members.csv", ("UCX0003",), family="Minor-Grey")

    later = claims_import(folder=str(folder), today=TODAY)
    # C1001 header and PA-2026-0002 updated; C1008 and its line stored; the C1002 line updated; Lee updated.
    assert (later.read, later.stored, later.updated, later.error_count) == (41, 2, 4, 12)
    assert later.unchanged == 41 - 2 - 4 - 12
    assert later.extra["claims_changed"] == 3 and later.extra["prior_authorizations_changed"] == 1
    after = dict(Claim.objects.values_list("claim_number", "updated_at"))
    changed = {n for n in after if after[n] != before.get(n)}
    assert changed == {"C1001", "C1002", "C1008"}
    assert Claim.objects.get(claim_number="C1001").status == "adjusted"
    assert ClaimLine.objects.get(claim__claim_number="C1002", sequence=2).paid_amount == Decimal("390.00")
    assert Member.objects.get(member_id="UCX0003").family == "Minor-Grey"
    # Attribution: only Jack and Mary (members of changed claims) were looked at.
    assert later.extra["attribution_members_refreshed"] == 2
    assert AttributionMember.objects.filter(group=group, member__member_id="UCX0002").exists()
    assert AttributionMember.objects.get(group=group, member=bystander).end is None

    # A claim's lines are exactly those listed: dropping C1002's line 2 deletes it.
    rows = (folder / "claim_lines.csv").read_text().splitlines()
    (folder / "claim_lines.csv").write_text("\n".join(r for r in rows if not r.startswith("C1002,2,")) + "\n")
    dropped = claims_import(folder=str(folder), today=TODAY)
    assert dropped.extra["claims_changed"] == 1
    assert list(ClaimLine.objects.filter(claim__claim_number="C1002").values_list("sequence", flat=True)) == [1]


def test_bad_input_is_reported_not_loaded(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "members.csv").write_text("member_id,family,given,birth_date\nA1,Doe,Jo,2000-01-01\n")
    (folder / "claims.csv").write_text("claim_number,member_id\nC1,A1\n")
    (folder / "claim_lines.csv").write_text(
        "claim_number,sequence,service_date,charged_amount,colour\n"
        "Z1,1,2026-01-01,1.00,blue\nZ2,1,2026-01-01,1.00,blue\nZ1,2,2026-01-01,1.00,blue\n"
        "Z3,1,2026-01-01,1.00\nZ4,1,2026-01-01,-5,blue\n")
    (folder / "notes.csv").write_text("a\n1\n")
    report = claims_import(folder=str(folder), today=TODAY)
    errors = {(e.file, e.line, e.column): e.message for e in report.errors}
    assert errors[("members.csv", 1, "gender")] == "header lacks required columns ['gender']"
    assert errors[("claims.csv", 1, "claim_type,status,billing_npi,service_start,service_end,received_date,"
                   "total_charged,total_paid")].startswith("header lacks")
    assert errors[("claim_lines.csv", 2, "claim_number")] == "no claim Z1"
    assert errors[("claim_lines.csv", 3, "claim_number")] == "no claim Z2"
    assert errors[("claim_lines.csv", 6, "charged_amount")] == "'-5' is not an amount (0 or more, at most 2 decimals)"
    assert errors[("claim_lines.csv", 4, "claim_number")].startswith("rows of claim Z1 are not consecutive")
    assert errors[("claim_lines.csv", 5, "")] == "4 cells, the header has 5"
    assert report.error_count == 7 and report.read == 7
    assert report.skipped["notes.csv: not a file of the extract layout"] == 1
    assert report.skipped["claim_lines.csv: unknown column 'colour' ignored"] == 1
    assert Member.objects.count() == 0 and Claim.objects.count() == 0
    with pytest.raises(FileNotFoundError):
        claims_import(folder=str(tmp_path / "missing"))


@pytest.mark.parametrize(("parse", "good", "bad"), [
    (npi, {"1345678902": "1345678902", "1987654328": "1987654328"}, ["1345678901", "134567890", "abcdefghij"]),
    (icd10cm, {"E119": "E11.9", "j18.9": "J18.9", "I10": "I10", "U07.1": "U07.1", "S72.001A": "S72.001A"},
     ["123.4", "E1", "E11.99999", "E11-9"]),
    (procedure_code, {"99213": "99213", "0001F": "0001F", "0042T": "0042T", "g0439": "G0439"},
     ["9921", "992133", "W1234", "99213-25"]),
    (ndc, {"00093714656": "00093714656", "0093-7146-56": "00093714656", "12345-678-90": "12345067890",
           "12345-6789-1": "12345678901"}, ["12345", "1234-567-89", "0093714656"]),
])
def test_code_shapes(parse, good, bad):
    for value, stored in good.items():
        assert parse(value) == stored
    for value in bad:
        with pytest.raises(CellError):
            parse(value)


def test_layout_is_documented_column_by_column():
    doc = (Path(settings.BASE_DIR) / "docs" / "claims-extract.md").read_text()
    for table in LAYOUT:
        assert f"## {table.file}" in doc
        section = doc.split(f"## {table.file}", 1)[1].split("\n## ", 1)[0]
        documented = re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.M)
        assert documented == [c.name for c in table.columns], table.file
        # The example folder has every column, in the documented order.
        assert (EXAMPLE / table.file).read_text().splitlines()[0].split(",") == documented


def test_command_and_task(tmp_path, capsys):
    with pytest.raises(CommandError, match="12 rows could not be imported"):
        call_command("import_claims", str(EXAMPLE), "--today", "2026-12-01", "--report", str(tmp_path / "r.json"))
    out = capsys.readouterr()
    assert "read 39, stored 27, updated 0, unchanged 0, deleted 0, skipped 0, errors 12" in out.out
    assert "claims.csv:6 [ndc_code]" in out.out and "100%" in out.err
    assert json.loads((tmp_path / "r.json").read_text())["stored"] == 27
    assert claims_import_task(folder=str(EXAMPLE))["unchanged"] == 27
    with pytest.raises(CommandError, match="no such folder"):
        call_command("import_claims", str(tmp_path / "nope"))


@pytest.mark.django_db(transaction=True)
@pytest.mark.e2e
def test_export_after_import_returns_claims_as_eobs(tmp_path, live_server, celery_worker):
    from tests.payer.auth_helpers import bearer_token_for

    claims_import(folder=str(EXAMPLE))  # attribution as of the real today
    grace = ProviderOrganization.objects.get(npi="1345678902")
    token = bearer_token_for(grace)
    kick = _kick_off(live_server, token, f"Group/{grace.attribution_group.fhir_id}/$export",
                     params={"_type": "ExplanationOfBenefit,Coverage"})
    assert kick.status_code == 202, kick.text
    manifest = _wait_complete(kick.headers["Content-Location"], token, worker=celery_worker).json()
    data = _resources(manifest, token)
    # Jack's claims billed by Grace Hospital and his prior authorization; nobody else's.
    assert {e["id"] for e in data["ExplanationOfBenefit"]} == {
        eob_id_for_claim("C1001"), eob_id_for_claim("C1003"), eob_id_for_prior_auth("PA-2026-0001")}
    assert {e["patient"]["reference"] for e in data["ExplanationOfBenefit"]} == {"Patient/pat-ucx0001"}
    assert [c["id"] for c in data["Coverage"]] == ["cov-ucx0001"]

    # A later extract changes C1001: a _since export returns just that EOB.
    since = timezone.now()
    folder = _copy(tmp_path)
    _edit(folder / "claims.csv", ("C1001",), status="adjusted")
    claims_import(folder=str(folder))
    kick = _kick_off(live_server, token, f"Group/{grace.attribution_group.fhir_id}/$export",
                     params={"_type": "ExplanationOfBenefit", "_since": since.isoformat().replace("+00:00", "Z")})
    manifest = _wait_complete(kick.headers["Content-Location"], token, worker=celery_worker).json()
    assert [e["id"] for e in _resources(manifest, token)["ExplanationOfBenefit"]] == [eob_id_for_claim("C1001")]
