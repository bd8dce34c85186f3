"""The generator's clinical detail: every drug's sig, without a database."""

import datetime as dt
import random
import re

import pytest

from fhirkit.validation import resource_validate
from payer.services.demo import SMITH
from payer.services.synthetic import DRUGS, RecordBuilder

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
