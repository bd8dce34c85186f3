"""The history in a clinician's words (issue 14): the summary, the new tabs, plain statuses
and decisions, paged and filtered lists, the print view, and a page that never breaks on
whatever a payer sent."""

import datetime as dt
import re

import pytest
from django.test import Client, override_settings
from hypothesis import given
from hypothesis import strategies as st

from emr import history as history_reads
from emr import terms
from emr.models import AccessEvent
from emr.summary import summary_build
from provider.models import LocalResource
from tests.emr.history_data import ENCOUNTERS

pytestmark = pytest.mark.django_db

# The history's newest item is from Oct 2024; "recent" is counted from here.
NOW = dt.datetime(2024, 10, 15, tzinfo=dt.UTC)


def _client(clinician) -> Client:
    client = Client()
    client.force_login(clinician.user)
    return client


def _text(html: bytes) -> str:
    """Return a page's visible words, tags stripped and spaces collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html.decode()))


def test_summary_has_what_a_physician_needs_first_each_with_source_and_date(jack):
    history = history_reads.patient_history(patient=jack)
    summary = summary_build(history=history, now=NOW)

    # Allergies: the active one, with reaction and criticality; the ruled-out one is not there.
    assert [a.title for a in summary.allergies] == ["Penicillin"]
    penicillin = summary.allergies[0]
    assert penicillin.fields["reactions"] == ["Hives and facial swelling"] and penicillin.fields["severity"] == "Severe"
    assert penicillin.fields["criticality"].label == "High risk"
    assert {a.title for a in history.allergies} == {"Penicillin", "Latex"}

    # Active medications only, each once; dose and sig written from a structured Dosage.
    meds = {line.item.title: line.item for line in summary.medications}
    assert set(meds) == {"Atorvastatin 40 mg tablet", "metformin 500 MG Extended Release Oral Tablet"}
    metformin = meds["metformin 500 MG Extended Release Oral Tablet"]
    assert metformin.fields["dose"] == "1 tablet" and metformin.fields["sig"] == "1 tablet by mouth twice a day"
    assert meds["Atorvastatin 40 mg tablet"].fields["sig"] == "1 tablet by mouth nightly"
    # Each with its last fill on a pharmacy claim (same RxNorm code): an "active" status may be old.
    fills = {line.item.title: line.last_fill for line in summary.medications}
    assert fills["metformin 500 MG Extended Release Oral Tablet"].date.date() == dt.date(2024, 9, 20)
    assert fills["metformin 500 MG Extended Release Oral Tablet"].fields["days_supply"] == "90"
    assert fills["Atorvastatin 40 mg tablet"] is None
    # Filled in the last 6 months with no prescription in the data; the 2020 fill is not recent.
    assert [(f.name, f.fills) for f in summary.recent_fills] == [("amoxicillin 500 MG Oral Capsule", 1)]
    assert [m.title for m in history.past_medications] == ["Clopidogrel 75 mg tablet"]
    assert history.past_medications[0].status.label == "Stopped"

    # Labs with units, reference ranges, a flag against the range, and a trend when repeated.
    labs = {s.name: s for s in summary.labs}
    a1c = labs["Hemoglobin A1c"]
    assert a1c.latest.fields["value"] == "6.9 %" and a1c.latest.fields["range"] == "4.0–5.6 %"
    assert a1c.latest.fields["flag"].label == "High" and len(a1c.items) == 3
    assert a1c.trend and len(a1c.trend.lines) == 1 and len(a1c.trend.lines[0].split()) == 3
    assert "from 8.4 % on Jan 20, 2020 to 6.9 % on Sep 9, 2024" in a1c.trend.label
    egfr = labs["eGFR"]
    assert egfr.latest.fields["value"] == "52 mL/min/1.73 m²" and egfr.latest.fields["range"] == "≥ 60 mL/min/1.73 m²"
    assert egfr.latest.fields["flag"].label == "Low"
    # The order the issue names: A1c and eGFR first; blood pressure and weight first of the vitals.
    assert [s.name for s in summary.labs][:2] == ["Hemoglobin A1c", "eGFR"]
    vitals = {s.name: s for s in summary.vitals}
    assert [s.name for s in summary.vitals][:2] == ["Blood pressure", "Weight"]
    assert vitals["Blood pressure"].latest.fields["value"] == "134/82 mmHg"
    assert len(vitals["Blood pressure"].trend.lines) == 2  # systolic and diastolic
    assert vitals["Weight"].latest.fields["value"] == "101.4 kg" and vitals["Weight"].latest.fields["range"] == ""

    # Immunizations: the latest of each vaccine with its number of doses.
    vaccines = {v.latest.title: v for v in summary.immunizations}
    assert vaccines["Influenza, injectable, quadrivalent, preservative free"].doses == 2
    assert vaccines["Influenza, injectable, quadrivalent, preservative free"].latest.date.year == 2024
    assert vaccines["Tdap"].doses == 1

    # Open or recent prior authorizations: pending and recent decisions; not the 2020 denial.
    pas = {pa.title: pa for pa in summary.prior_auths}
    assert set(pas) == {"Polysomnography", "Cardiac rehabilitation", "MRI lumbar spine without contrast"}
    assert pas["Polysomnography"].status.label == "Pending" and pas["Polysomnography"].fields["open"]
    assert pas["Cardiac rehabilitation"].status.label == "Partly approved"

    # The last encounters, newest first; active problems only.
    assert [e.id for e in summary.encounters] == ["enc-7", "enc-6", "enc-5", "enc-4", "enc-3"]
    assert summary.problems and all(p.status.label == "Active" for p in summary.problems)
    # Every entry names its source and date.
    entries = [*summary.allergies, *(line.item for line in summary.medications), *summary.problems, *summary.encounters, *summary.prior_auths,
               *(s.latest for s in summary.labs + summary.vitals), *(v.latest for v in summary.immunizations)]
    assert all(e.source.payer == "UnitedCare Health" and e.source.export_time and e.date for e in entries)


def test_prior_authorizations_read_in_words_with_their_service_period(jack):
    pas = {pa.title: pa for pa in history_reads.patient_history(patient=jack).prior_auths}
    # PDex reviewAction (X12 306): A4 pending, A2 partly approved, A3 denied; outcome is not the decision.
    assert {t: pa.status.label for t, pa in pas.items()} == {
        "Polysomnography": "Pending", "Cardiac rehabilitation": "Partly approved", "CT coronary angiography": "Denied",
        "MRI lumbar spine without contrast": "Decided",
    }
    rehab = pas["Cardiac rehabilitation"]
    assert (rehab.fields["period_start"].date(), rehab.fields["period_end"].date()) == (dt.date(2024, 9, 20), dt.date(2024, 12, 20))
    assert rehab.fields["decided"].date() == dt.date(2024, 9, 15)
    assert (rehab.fields["units_approved"], rehab.fields["units_requested"]) == ("18", "36")
    # Pending: no "0 units approved"; denied: no period invented.
    assert pas["Polysomnography"].fields["units_approved"] == "" and pas["CT coronary angiography"].fields["period_start"] is None
    # An older PA that carries its period as billablePeriod still shows it.
    assert pas["MRI lumbar spine without contrast"].fields["period_start"].date() == dt.date(2024, 8, 5)


@pytest.mark.parametrize(("table", "code", "words"), [
    (terms.ENCOUNTER_STATUS, "finished", "Completed"),
    (terms.CONDITION_CLINICAL, "resolved", "Resolved"),
    (terms.MEDICATION_STATUS["MedicationRequest"], "stopped", "Stopped"),
    (terms.MEDICATION_STATUS["MedicationStatement"], "active", "Taking"),
    (terms.IMMUNIZATION_STATUS, "not-done", "Not given"),
    (terms.CLAIM_OUTCOME, "complete", "Processed"),
    (terms.CLAIM_OUTCOME, "queued", "Being processed"),
    (terms.REVIEW_ACTION, "A1", "Approved"),
    (terms.REVIEW_ACTION, "A3", "Denied"),
    (terms.REVIEW_ACTION, "C", "Cancelled"),
    (terms.INTERPRETATION, "LL", "Critically low"),
    (terms.ENCOUNTER_STATUS, "", "Status not given"),
    (terms.ENCOUNTER_STATUS, "some-new-code", "Some new code"),
])
def test_statuses_read_in_words(table, code, words):
    assert terms.status_word(table, code).label == words


def test_names_come_from_the_codings_without_snomed_tags_and_codes_stay_secondary():
    concept = {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes mellitus type 2 (disorder)"},
                          {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11.9", "display": "Type 2 diabetes mellitus without complications"}]}
    assert terms.concept_name(concept) == "Type 2 diabetes mellitus without complications"
    assert terms.concept_codes(concept) == "SNOMED CT 44054006 · ICD-10-CM E11.9"
    assert terms.concept_name({"coding": [{"system": "http://snomed.info/sct", "display": "Penicillin (substance)"}]}) == "Penicillin"
    assert terms.concept_name({"coding": [{"system": "http://loinc.org", "code": "33914-3", "display": "Glomerular filtration rate/1.73 sq M.predicted"}]}) == "eGFR"
    assert terms.concept_name({"coding": [{"code": "X1"}]}) == ""
    assert terms.frequency_text({"frequency": 1, "period": 8, "periodUnit": "h"}) == "every 8 hours"
    assert terms.frequency_text({"frequency": 3, "period": 1, "periodUnit": "d"}) == "three times a day"
    assert terms.frequency_text({"frequency": "2", "period": 1, "periodUnit": "d"}) == ""


def test_patient_page_opens_on_the_summary_in_plain_words(smith, jack):
    page = _client(smith).get(f"/emr/patients/{jack.pk}/")
    html = page.content.decode()
    text = _text(page.content)
    assert page.context["tab"] == "summary"
    assert 'id="tab-summary" aria-controls="panel-summary" aria-selected="true"' in html
    panel = html.split('id="panel-summary"', 1)[1].split('role="tabpanel"', 1)[0]
    for heading in ("Allergies", "Active problems", "Active medications", "Latest labs", "Latest vital signs",
                    "Last encounters", "Open or recent prior authorizations", "Immunizations"):
        assert re.search(rf'<h3 id="sum-[a-z]+">{heading}( <span|</h3>)', panel), heading
    assert "Penicillin High risk" in text and "Hives and facial swelling (severe)" in text
    assert "1 tablet by mouth twice a day" in text and "1 tablet · 1 tablet" not in text
    assert "Last filled Sep 20, 2024 (90-day supply)" in text
    assert "Filled in the last 6 months" not in text  # the Aug 2024 antibiotic is not recent today
    assert "6.9 % High 4.0–5.6 %" in text and "134/82 mmHg" in text
    assert 'role="img" aria-label="Hemoglobin A1c: 3 results' in html
    # No FHIR type names or raw status codes on screen; codes only on the secondary line.
    for raw in ("MedicationRequest", "ExplanationOfBenefit", "AllergyIntolerance", "problem-list-item",
                ">finished<", ">queued<", ">complete<", "active complete"):
        assert raw not in html, raw
    assert "ICD-10-CM I10" in text  # secondary detail
    # Each tab is there, with its count.
    for tab in ("Summary", "Encounters", "Problems", "Medications", "Allergies", "Immunizations", "Labs and vitals",
                "Prior authorizations", "Claims"):
        assert re.search(rf'role="tab"[^>]*>{tab}(<span|</button)', html), tab
    assert re.search(r'id="tab-allergies"[^>]*>Allergies<span class="count">2</span>', html)
    assert re.search(r'id="tab-results"[^>]*>Labs and vitals<span class="count">12</span>', html)


def test_medications_tab_splits_active_and_past(smith, jack):
    text = _text(_client(smith).get(f"/emr/patients/{jack.pk}/?tab=medications").content)
    active, past = text.split("Past ", 1)[0].split("Active ", 1)[1], text.split("Past ", 1)[1]
    assert "Atorvastatin 40 mg tablet" in active and "Clopidogrel" not in active
    assert "Clopidogrel 75 mg tablet" in past and "Stopped" in past


def test_lists_page_and_filter_by_date_facility_and_type(smith, jack):
    client = _client(smith)
    page = client.get(f"/emr/patients/{jack.pk}/", {"tab": "encounters", "enc-date_from": "2019-07-01",
                                                    "enc-date_to": "2020-12-31"})
    assert page.context["tab"] == "encounters"
    assert [e.id for e in page.context["lists"]["encounters"].get("page").items] == ["enc-4", "enc-3", "enc-2"]
    assert "Encounters 1–3 of 3 matching (of 7 in all)" in _text(page.content)
    page = client.get(f"/emr/patients/{jack.pk}/", {"enc-facility": "Lakeview Cardiology Clinic", "enc-type": "Outpatient"})
    assert [e.id for e in page.context["lists"]["encounters"]["page"].items] == ["enc-6", "enc-4"]
    page = client.get(f"/emr/patients/{jack.pk}/", {"enc-type": "Emergency"})
    assert [e.id for e in page.context["lists"]["encounters"]["page"].items] == ["enc-2"]

    items = history_reads.patient_history(patient=jack).claims
    first = history_reads.list_page(items=items, per_page=3)
    assert (first.page, first.pages, first.first, first.last, len(first.items)) == (1, 4, 1, 3, 3)
    # A page past the end is the last page; the pager's links keep the other filters.
    last = history_reads.list_page(items=items, per_page=3, page=99)
    assert (last.page, len(last.items)) == (4, 2)
    html = client.get(f"/emr/patients/{jack.pk}/", {"tab": "claims", "clm-type": "Hospital or facility",
                                                    "enc-type": "Emergency"}).content.decode()
    assert "Claims 1–7 of 7" in _text(html.encode())
    # The pager's links keep the other filters and change only the page.
    page = client.get(f"/emr/patients/{jack.pk}/", {"tab": "encounters", "enc-type": "Outpatient", "clm-type": "Pharmacy"})
    assert page.context["lists"]["encounters"]["query"] == "enc-type=Outpatient&clm-type=Pharmacy&"
    assert "?enc-type=Outpatient&amp;clm-type=Pharmacy&amp;enc-page=" not in page.content.decode()  # one page only
    many = client.get(f"/emr/patients/{jack.pk}/", {"tab": "results", "res-type": "Laboratory", "enc-type": "Outpatient"})
    assert many.context["lists"]["results"]["page"].matched == 5


def test_bad_filter_values_are_ignored_and_said_never_an_error(smith, jack):
    client = _client(smith)
    for query in ({"enc-date_from": "not-a-date"}, {"enc-page": "-4"}, {"enc-page": "x" * 500},
                  {"clm-date_to": "2024-02-30", "tab": "claims"}, {"tab": "<script>"}, {"enc-facility": "\x00"}):
        page = client.get(f"/emr/patients/{jack.pk}/", query)
        assert page.status_code == 200, query
        assert "<script>" not in page.content.decode().split("<main", 1)[1]
    page = client.get(f"/emr/patients/{jack.pk}/", {"enc-date_from": "not-a-date", "tab": "encounters"})
    assert "were not understood and are not applied" in page.content.decode()
    assert len(page.context["lists"]["encounters"]["page"].items) == len(ENCOUNTERS)


def test_print_view_shows_one_section_whole_and_is_recorded(smith, jack, settings):
    client = _client(smith)
    page = client.get(f"/emr/patients/{jack.pk}/print/summary/")
    text = _text(page.content)
    assert page.status_code == 200 and "Jack Shaw — Summary" in text and "Printed" in text
    assert "Active medications" in text and 'role="tablist"' not in page.content.decode()
    assert "Every result" not in text and "Claims 1–" not in text  # one section, not everything
    claims = client.get(f"/emr/patients/{jack.pk}/print/claims/", {"clm-date_from": "2019-07-01", "clm-date_to": "2019-12-31"})
    assert [c.fields["identifier"] for c in claims.context["lists"]["claims"]["page"].items] == ["CLM-ENC-3", "CLM-ENC-2"]
    assert "Older ›" not in claims.content.decode()  # whole, not paged
    assert client.get(f"/emr/patients/{jack.pk}/print/everything/").status_code == 404
    assert list(AccessEvent.objects.filter(patient=jack, action="print").order_by("pk").values_list("detail", flat=True)) == [
        "Summary", "Claims"]


def test_print_view_of_another_organizations_patient_is_404(jack):
    from tests import factories
    other = factories.clinician_create(username="mercy", organization_npi="9999999991")
    assert _client(other).get(f"/emr/patients/{jack.pk}/print/summary/").status_code == 404
    assert not AccessEvent.objects.filter(patient=jack, action="print").exists()


# --- Whatever a payer sends, the page shows what it can and never fails ---------------------

KEYS = ["status", "clinicalStatus", "verificationStatus", "code", "coding", "system", "display", "text", "category",
        "reaction", "manifestation", "severity", "criticality", "type", "vaccineCode", "occurrenceDateTime",
        "valueQuantity", "value", "unit", "component", "referenceRange", "low", "high", "interpretation",
        "medicationCodeableConcept", "dosageInstruction", "doseAndRate", "doseQuantity", "timing", "repeat",
        "frequency", "period", "periodUnit", "route", "item", "productOrService", "adjudication", "extension", "url",
        "valueCodeableConcept", "servicedPeriod", "quantity", "insurance", "preAuthRef", "preAuthRefPeriod",
        "billablePeriod", "start", "end", "provider", "facility", "outcome", "use", "identifier", "created",
        "class", "location", "participant", "individual", "diagnosis", "condition", "diagnosisCodeableConcept",
        "reasonCode", "reasonReference", "serviceProvider", "encounter", "reference", "requester", "performer",
        "actor", "recorder", "onsetDateTime", "abatementDateTime", "recordedDate", "effectiveDateTime", "authoredOn",
        "subType", "dispenseRequest", "expectedSupplyDuration", "asNeededBoolean", "valueString", "valueBoolean"]
DATES = st.sampled_from(["2024-01-02", "0001-01-01", "9999-12-31", "9999-12-31T23:59:59-12:00", "2024-02-30",
                          "2024", "2024-13", "1900-01-01T00:00:00+14:00", "0001-01-01T00:00:00Z"])
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=False, allow_infinity=False), DATES,
                      # No NUL: a JSON column on Postgres cannot hold it (ingest refuses it first).
                      st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12),
                      st.sampled_from(["active", "A1", "2024-01-02", "final", "Encounter/enc-1",
                                                             "http://loinc.org", "4548-4", "preauthorization"]))
JSON = st.recursive(JSON_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)), max_leaves=12)


@given(types=st.lists(st.sampled_from(history_reads.HISTORY_TYPES), min_size=1, max_size=6),
       bodies=st.lists(st.dictionaries(st.sampled_from(KEYS), JSON, max_size=8), min_size=6, max_size=6),
       dates=st.lists(st.one_of(st.none(), st.sampled_from([dt.datetime(1, 1, 1, tzinfo=dt.UTC), dt.datetime(9999, 12, 31, 23, tzinfo=dt.UTC),
                                                            dt.datetime(2024, 1, 2, tzinfo=dt.UTC)])), min_size=6, max_size=6))
def test_any_shape_of_stored_resource_renders_every_tab(smith, jack, types, bodies, dates):
    # UTC+14: the zone furthest from UTC, where conversions overflow first. (One override per
    # example, undone after it: the settings fixture would stack one per example.)
    with override_settings(TIME_ZONE="Pacific/Kiritimati"):
        _render_every_tab(smith, jack, types, bodies, dates)


def _render_every_tab(smith, jack, types, bodies, dates) -> None:
    LocalResource.objects.filter(resource_id__startswith="odd-").delete()
    rows = [LocalResource(resource_type=kind, resource_id=f"odd-{n}", patient_id="pat-jack", connection=jack.insurer,
                          resource={**body, "resourceType": kind, "id": f"odd-{n}"}, date=date,
                          ingested_at=dt.datetime(2025, 6, 13, tzinfo=dt.UTC))
            for n, (kind, body, date) in enumerate(zip(types, bodies, dates))]
    LocalResource.objects.bulk_create(rows)
    client = _client(smith)
    for tab in ("summary", "encounters"):
        assert client.get(f"/emr/patients/{jack.pk}/", {"tab": tab, "enc-date_from": "2020-01-01"}).status_code == 200
    for section in ("claims", "results", "prior-auths"):
        assert client.get(f"/emr/patients/{jack.pk}/print/{section}/").status_code == 200
    for row in rows:
        if row.resource_type == "Encounter":
            assert client.get(f"/emr/patients/{jack.pk}/encounters/{row.resource_id}/").status_code == 200


# --- What must not mislead a physician ----------------------------------------------------

def _store(jack, *resources: dict) -> None:
    LocalResource.objects.bulk_create([
        LocalResource(resource_type=r["resourceType"], resource_id=r["id"], patient_id="pat-jack", connection=jack.insurer,
                      resource=r, ingested_at=dt.datetime(2025, 6, 13, tzinfo=dt.UTC), export_time=dt.datetime(2025, 6, 13, tzinfo=dt.UTC))
        for r in resources])


def _lab(oid: str, value: dict, when: str, *, status: str = "final", code: str = "10839-9", ranges=None) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": status, "subject": {"reference": "Patient/pat-jack"},
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "effectiveDateTime": when,
            "category": [{"coding": [{"code": "laboratory"}]}], "valueQuantity": value, **({"referenceRange": ranges} if ranges else {})}


def test_a_bound_an_error_and_another_unit_never_make_a_latest_value_or_a_trend(jack):
    _store(
        jack,
        _lab("trop-1", {"value": 0.5, "unit": "ng/mL"}, "2024-10-01T10:00:00Z", ranges=[{"high": {"value": 0.04, "unit": "ng/mL"}}]),
        _lab("trop-2", {"value": 0.01, "comparator": "<", "unit": "ng/mL"}, "2024-10-02T10:00:00Z",
             ranges=[{"high": {"value": 0.04, "unit": "ng/mL"}}]),
        _lab("trop-3", {"value": 12.5, "unit": "ng/mL"}, "2024-10-03T10:00:00Z", status="entered-in-error"),
        # The same test in other units: its own row; a range in another unit flags nothing.
        _lab("wt-lb", {"value": 230, "unit": "[lb_av]"}, "2024-10-04T10:00:00Z", code="29463-7",
             ranges=[{"low": {"value": 50, "unit": "kg"}, "high": {"value": 100, "unit": "kg"}}]),
    )
    summary = summary_build(history=history_reads.patient_history(patient=jack), now=NOW)
    troponin = next(s for s in summary.labs if s.name == "Troponin I" and s.code == "10839-9")
    assert troponin.latest.id == "trop-2" and troponin.latest.fields["value"] == "<0.01 ng/mL"
    assert troponin.latest.fields["flag"] is None  # "<0.01" is a bound: not flagged against the range
    assert "trop-3" not in [i.id for i in troponin.items]
    assert troponin.trend is None  # one exact value only: 0.5
    weights = [s for s in summary.vitals + summary.labs if s.code == "29463-7"]
    assert len(weights) == 2 and {s.latest.fields["unit"] for s in weights} == {"kg", "lb"}
    pounds = next(s for s in weights if s.latest.fields["unit"] == "lb")
    assert pounds.latest.fields["flag"] is None and pounds.trend is None
    kilograms = next(s for s in weights if s.latest.fields["unit"] == "kg")
    assert "lb" not in kilograms.trend.label
    # The Labs tab still lists the result entered in error, with its status.
    errors = [o for o in history_reads.patient_history(patient=jack).observations if o.id == "trop-3"]
    assert errors[0].status.label == "Entered in error" and not errors[0].fields["valid"]


def test_a_problem_resolved_since_is_not_active_and_cancelled_visits_are_not_last_encounters(jack):
    active = {"coding": [{"code": "active"}]}
    resolved = {"coding": [{"code": "resolved"}]}
    asthma = {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "J45.909", "display": "Asthma"}]}
    _store(
        jack,
        {"resourceType": "Condition", "id": "asthma-old", "clinicalStatus": active, "code": asthma,
         "subject": {"reference": "Patient/pat-jack"}, "onsetDateTime": "2015-01-01"},
        {"resourceType": "Condition", "id": "asthma-new", "clinicalStatus": resolved, "code": asthma,
         "subject": {"reference": "Patient/pat-jack"}, "onsetDateTime": "2023-01-01"},
        {"resourceType": "Encounter", "id": "enc-cancelled", "status": "cancelled", "class": {"code": "AMB"},
         "subject": {"reference": "Patient/pat-jack"}, "period": {"start": "2024-10-10T09:00:00Z"}},
    )
    history = history_reads.patient_history(patient=jack)
    summary = summary_build(history=history, now=NOW)
    assert "Asthma" not in [p.title for p in summary.problems]
    assert "enc-cancelled" not in [e.id for e in summary.encounters]
    assert "enc-cancelled" not in [p["item"].id for p in history.timeline["points"]]
    assert "enc-cancelled" in [e.id for e in history.encounters]  # still listed, as cancelled


def test_a_prior_authorization_decided_line_by_line_reads_mixed_and_a_header_decision_counts(jack):
    pdex = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition"

    def action(code: str) -> dict:
        return {"extension": [{"url": f"{pdex}/extension-reviewAction", "extension": [
            {"url": f"{pdex}/extension-reviewActionCode", "valueCodeableConcept": {"coding": [{"code": code}]}}]}],
                "category": {"coding": [{"code": "allowedunits"}]}}

    _store(
        jack,
        {"resourceType": "ExplanationOfBenefit", "id": "pa-two", "use": "preauthorization", "status": "active",
         "outcome": "complete", "created": "2024-09-01", "patient": {"reference": "Patient/pat-jack"},
         "item": [{"sequence": 1, "productOrService": {"text": "Knee MRI"}, "adjudication": [action("A1")]},
                  {"sequence": 2, "productOrService": {"text": "Knee CT"}, "adjudication": [action("A3")]}]},
        {"resourceType": "ExplanationOfBenefit", "id": "pa-header", "use": "preauthorization", "status": "active",
         "outcome": "complete", "created": "2024-09-02", "patient": {"reference": "Patient/pat-jack"},
         "adjudication": [action("A3")], "item": [{"sequence": 1, "productOrService": {"text": "Sleep study"}}]},
        {"resourceType": "ExplanationOfBenefit", "id": "pa-partial", "use": "preauthorization", "status": "active",
         "outcome": "partial", "created": "2024-09-03", "patient": {"reference": "Patient/pat-jack"},
         "item": [{"sequence": 1, "productOrService": {"text": "Home oxygen"}}]},
    )
    pas = {pa.id: pa for pa in history_reads.patient_history(patient=jack).prior_auths}
    assert pas["pa-two"].status.label == "Mixed: 1 approved, 1 denied"
    assert pas["pa-header"].status.label == "Denied"
    # R4 remittance-outcome "partial" is a review partly done, not a partial approval.
    assert pas["pa-partial"].status.label == "Partly reviewed" and pas["pa-partial"].fields["open"]


def test_a_refused_attestation_does_not_end_sharing(jack):
    from emr import selectors
    from emr.models import PatientSync
    from provider.models import SyncJob

    job = SyncJob.objects.create(connection=jack.insurer, level="group", scope_key="refused", member_id=jack.member_id,
                                 status=SyncJob.Status.NO_DATA, member_match={"outcome": "refused"},
                                 finished_at=dt.datetime.now(dt.UTC))
    PatientSync.objects.create(patient=jack, job=job)
    assert selectors.payer_link(patient=jack).ended_at is None
    SyncJob.objects.filter(pk=job.pk).update(member_match={"outcome": "nonmatched"})
    assert selectors.payer_link(patient=jack).ended_at is not None


def test_dates_show_in_the_configured_zone_and_a_date_without_time_keeps_its_day(smith, jack, settings):
    settings.TIME_ZONE = "America/Chicago"
    _store(jack, {"resourceType": "Encounter", "id": "enc-late", "status": "finished", "class": {"code": "AMB"},
                  "subject": {"reference": "Patient/pat-jack"}, "period": {"start": "2024-10-02T02:30:00Z"}},
           {"resourceType": "Immunization", "id": "imm-day", "status": "completed", "patient": {"reference": "Patient/pat-jack"},
            "vaccineCode": {"text": "Hepatitis B"}, "occurrenceDateTime": "2024-10-05"})
    client = _client(smith)
    # 02:30 UTC on Oct 2 is the evening of Oct 1 in Chicago; the filter uses the day shown.
    page = client.get(f"/emr/patients/{jack.pk}/", {"tab": "encounters", "enc-date_from": "2024-10-01", "enc-date_to": "2024-10-01"})
    assert [e.id for e in page.context["lists"]["encounters"]["page"].items] == ["enc-late"]
    assert "Oct 1, 2024" in _text(page.content)
    text = _text(client.get(f"/emr/patients/{jack.pk}/", {"tab": "immunizations"}).content)
    assert "Hepatitis B Oct 5, 2024" in text


def test_a_date_a_page_cannot_show_reads_as_not_given(smith, jack):
    _store(jack, {"resourceType": "Encounter", "id": "enc-far", "status": "finished", "class": {"code": "AMB"},
                  "subject": {"reference": "Patient/pat-jack"}, "period": {"start": "9999-12-31T23:59:59-12:00"}},
           {"resourceType": "Encounter", "id": "enc-typo", "status": "finished", "class": {"code": "AMB"},
            "subject": {"reference": "Patient/pat-jack"}, "period": {"start": "2202-05-01"}})
    LocalResource.objects.filter(resource_id="enc-far").update(date=dt.datetime(9999, 12, 31, 23, tzinfo=dt.UTC))
    client = _client(smith)
    for tab in ("summary", "encounters"):
        assert client.get(f"/emr/patients/{jack.pk}/", {"tab": tab}).status_code == 200
    history = history_reads.patient_history(patient=jack)
    assert next(e for e in history.encounters if e.id == "enc-far").date is None
    assert "enc-typo" not in [p["item"].id for p in history.timeline["points"]]  # listed, not plotted
    assert client.get(f"/emr/patients/{jack.pk}/encounters/enc-far/").status_code == 200
