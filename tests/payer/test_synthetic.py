"""The generator's clinical detail: every drug's sig, lab reference ranges and flags, without a database."""

import datetime as dt
import random
import re

import pytest

from fhirkit.validation import resource_validate
from payer.services.demo import SMITH
from payer.services.synthetic import DRUGS, LABS, RecordBuilder

TODAY = dt.date(2026, 6, 1)
UCUM = "http://unitsofmeasure.org"


def _builder() -> RecordBuilder:
    return RecordBuilder(member_id="UCT000000001", patient_id="pat-uct000000001", today=TODAY, rng=random.Random(1))


def _doses_per_day(dosage: dict) -> float:
    repeat = dosage["timing"]["repeat"]
    per_day = {"h": 24, "d": 1}[repeat["periodUnit"]] / repeat["period"]
    return dosage["doseAndRate"][0]["doseQuantity"]["value"] * repeat["frequency"] * per_day


@pytest.mark.parametrize("key", sorted(DRUGS))
def test_every_drug_is_prescribed_with_a_structured_sig_that_matches_its_supply(key):
    b = _builder()
    enc = b.encounter("office", dt.date(2025, 1, 6), SMITH, reasons=["checkup"], claim=False)
    b.medication(key, enc, reason="checkup", fills=False)
    request = b.rows[-1].resource
    assert resource_validate(request) == []
    drug, dosages = DRUGS[key], request["dosageInstruction"]
    assert [d["sequence"] for d in dosages] == list(range(1, len(dosages) + 1))
    for dosage in dosages:
        # US Core 6.1.0 must-support: text, timing, doseAndRate.dose[x] (UCUM, ucum-common).
        assert dosage["text"] and "as directed" not in dosage["text"]
        dose = dosage["doseAndRate"][0]["doseQuantity"]
        assert dose["system"] == UCUM and dose["code"] in ("{tbl}", "{puff}") and dose["value"] > 0
        route = dosage["route"]["coding"][0]
        assert (route["code"], dose["code"]) in (("26643006", "{tbl}"), ("447694001", "{puff}"))
        assert dosage.get("asNeededBoolean", False) == ("as needed" in dosage["text"])
    assert any(d.get("asNeededBoolean") for d in dosages) == (key in ("albuterol", "acetaminophen", "naproxen"))
    # A scheduled sig uses exactly what is dispensed (an inhaler: its actuations).
    if not any(d.get("asNeededBoolean") for d in dosages):
        units = drug.qty * int(m.group(1) if (m := re.match(r"(\d+) ACTUAT", drug.display)) else 1)
        used = sum(_doses_per_day(d) * d["timing"]["repeat"].get("boundsDuration", {}).get("value", drug.days)
                   for d in dosages)
        assert used == units, (key, used, units)


@pytest.mark.parametrize(("key", "value", "flag", "bounds"), [
    ("a1c", 7.7, "H", (4.0, 5.6)), ("a1c", 5.6, "N", (4.0, 5.6)), ("a1c", 3.9, "L", (4.0, 5.6)),
    ("egfr", 45, "L", (60, None)), ("egfr", 60, "N", (60, None)),
    ("creatinine", 1.7, "H", (0.7, 1.3)), ("glucose", 52, "L", (70, 99)),
    ("ldl", 100, "N", (None, 100)), ("ldl", 162, "H", (None, 100)), ("bnp", 1450, "H", (None, 100)),
    ("troponin", 0.03, "N", (None, 0.04)), ("troponin", 2.31, "H", (None, 0.04)),
    ("lvef", 45, "L", (55, 70)), ("fev1fvc", 62, "L", (70, None)),
])
def test_results_carry_their_reference_range_and_a_flag_computed_from_the_value(key, value, flag, bounds):
    b = _builder()
    enc = b.encounter("office", dt.date(2025, 1, 6), SMITH, reasons=["checkup"], claim=False)
    b.observation(key, value, enc)
    observation = b.rows[-1].resource
    assert resource_validate(observation) == []
    assert observation["interpretation"] == [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": flag,
        "display": {"H": "High", "L": "Low", "N": "Normal"}[flag]}]}]
    [reference] = observation["referenceRange"]
    unit = observation["valueQuantity"]["unit"]
    for name, bound in zip(("low", "high"), bounds):
        if bound is None:
            assert name not in reference
        else:
            assert reference[name] == {"value": bound, "unit": unit, "system": UCUM, "code": unit}
    # A one-sided range also says so in words (R4 Observation.referenceRange.text).
    assert ("text" in reference) == (None in bounds)


@pytest.mark.parametrize("key", ["weight", "bmi", "heart_rate", "phq9"])
def test_vital_signs_and_scores_have_no_reference_range(key):
    b = _builder()
    enc = b.encounter("office", dt.date(2025, 1, 6), SMITH, reasons=["checkup"], claim=False)
    b.observation(key, 10, enc)
    assert "referenceRange" not in b.rows[-1].resource and "interpretation" not in b.rows[-1].resource
    assert LABS[key].category in ("vital-signs", "survey")
