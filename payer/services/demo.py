"""The demo scenario: UnitedCare Health, Grace Hospital, Dr. James Smith and Jack Shaw.

``seed_demo()`` is idempotent and deterministic: fixed random seeds, and one "today" for
the whole run (the first day of the current month), so reruns within a month write the
very same rows; a rerun in a later month updates the same rows in place (upserts on the
natural keys) and never duplicates anything.
"""

import random
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from payer.models import ClinicalResource, Member, NetworkContract, ProviderOrganization, ProviderPractitioner, SmartClient
from payer.services.attribution import attribution_refresh
from payer.services.demo_keys import demo_client_ensure
from payer.services.population import records_save
from payer.services.synthetic import (
    Org,
    Prac,
    ProviderPool,
    RecordBuilder,
    directory_rows,
    member_history,
    member_identity,
)

DEMO_SEED = 20160310

UNITEDCARE_NAME = "UnitedCare Health"

GRACE_HOSPITAL_NPI = "1345678902"
GRACE_HOSPITAL_NAME = "Grace Hospital"
GRACE_HOSPITAL_FHIR_ID = "org-grace-hospital"
DR_SMITH_NPI = "1987654328"
DR_SMITH_FHIR_ID = "prac-james-smith"
JACK_SHAW_MEMBER_ID = "UCH100000001"
JACK_SHAW_PATIENT_ID = "pat-uch100000001"
# A new patient for PDex 2.2 $provider-member-match: a UnitedCare member with coverage and
# a history elsewhere, but no claim at Grace Hospital, so he is on no Grace list until
# Grace attests a treatment relationship.
NEW_PATIENT_MEMBER_ID = "UCH100000070"
NEW_PATIENT_GIVEN = "Daniel"
NEW_PATIENT_FAMILY = "Okafor"
NEW_PATIENT_BIRTH_DATE = date(1978, 9, 23)
NEW_PATIENT_GENDER = "male"
NEW_PATIENT_COVERAGE_START = date(2019, 1, 1)
OAKVIEW_NPI = "1244668806"  # provider organization without a contract
LAKEVIEW_PULMONARY_NPI = "1577991130"  # contract ended 2023-12-31
OTHER_MEMBER_COUNT = 60
GRACE_CLIENT_ID = "grace-hospital-ehr"
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"


def patient_id_for(member_id: str) -> str:
    """Return the FHIR Patient id of a member."""
    return f"pat-{member_id.lower()}"


def demo_today() -> date:
    """Return the demo's "today": the first day of the current month (stable across reruns)."""
    return date.today().replace(day=1)


# --- Provider directory ----------------------------------------------------------------

GRACE = Org(GRACE_HOSPITAL_NPI, GRACE_HOSPITAL_NAME, GRACE_HOSPITAL_FHIR_ID, "Springfield", "IL", "hospital")
ST_MARYS = Org("1789012345", "St. Mary's Medical Center", "org-st-marys-medical-center", "Decatur", "IL", "hospital")
LAKESIDE = Org("1455667786", "Lakeside Cardiology Associates", "org-lakeside-cardiology", "Springfield", "IL", "clinic")
RIVERSIDE = Org("1788990012", "Riverside Imaging Center", "org-riverside-imaging", "Springfield", "IL", "imaging")
NORTHSIDE = Org("1900112230", "Northside Urgent Care", "org-northside-urgent-care", "Springfield", "IL", "urgent")
OAKVIEW = Org(OAKVIEW_NPI, "Oakview Family Practice", "org-oakview-family-practice", "Chatham", "IL", "clinic")
LAKEVIEW = Org(LAKEVIEW_PULMONARY_NPI, "Lakeview Pulmonary Clinic", "org-lakeview-pulmonary", "Springfield", "IL", "clinic")
ORGS = [GRACE, ST_MARYS, LAKESIDE, RIVERSIDE, NORTHSIDE, OAKVIEW, LAKEVIEW]

# (org, contract number, start, end): Oakview has none; Lakeview's has ended.
CONTRACTS = [
    (GRACE, "UCH-NC-1001", date(2015, 1, 1), None),
    (ST_MARYS, "UCH-NC-1002", date(2016, 1, 1), None),
    (LAKESIDE, "UCH-NC-1003", date(2017, 7, 1), None),
    (RIVERSIDE, "UCH-NC-1004", date(2018, 1, 1), None),
    (NORTHSIDE, "UCH-NC-1005", date(2019, 4, 1), None),
    (LAKEVIEW, "UCH-NC-0907", date(2016, 1, 1), date(2023, 12, 31)),
]

FM = ("207Q00000X", "Family Medicine")
IM = ("207R00000X", "Internal Medicine")
CARD = ("207RC0000X", "Cardiovascular Disease Physician")
ICARD = ("207RI0011X", "Interventional Cardiology Physician")
EM = ("207P00000X", "Emergency Medicine Physician")
HOSP = ("208M00000X", "Hospitalist")
NEPH = ("207RN0300X", "Nephrology Physician")
PULM = ("207RP1001X", "Pulmonary Disease Physician")
RAD = ("2085R0202X", "Diagnostic Radiology Physician")


def _prac(npi: str, given: str, family: str, taxonomy: tuple[str, str], org: Org) -> Prac:
    return Prac(npi, given, family, taxonomy[0], taxonomy[1], org, f"prac-{given.lower()}-{family.lower()}")


SMITH = _prac(DR_SMITH_NPI, "James", "Smith", FM, GRACE)
LOPEZ = _prac("1456789019", "Maria", "Lopez", IM, GRACE)
PARK = _prac("1567890128", "Ethan", "Park", CARD, GRACE)
RAHMAN = _prac("1678901236", "Aisha", "Rahman", EM, GRACE)
CHEN = _prac("1890123452", "Robert", "Chen", ICARD, ST_MARYS)
NOVAK = _prac("1122334455", "Linda", "Novak", HOSP, ST_MARYS)
ORTIZ = _prac("1233445562", "Samuel", "Ortiz", EM, ST_MARYS)
DESAI = _prac("1344556679", "Priya", "Desai", NEPH, ST_MARYS)
MILLER = _prac("1799113356", "Susan", "Miller", FM, ST_MARYS)
BROOKS = _prac("1566778894", "Helen", "Brooks", CARD, LAKESIDE)
GREENE = _prac("1677889903", "Michael", "Greene", CARD, LAKESIDE)
WHITE = _prac("1899001121", "Karen", "White", RAD, RIVERSIDE)
REED = _prac("1011223348", "Thomas", "Reed", FM, NORTHSIDE)
GRANT = _prac("1122446689", "Olivia", "Grant", EM, NORTHSIDE)
HARRIS = _prac("1355779913", "Paul", "Harris", FM, OAKVIEW)
PATEL = _prac("1466880022", "Nina", "Patel", IM, OAKVIEW)
KIM = _prac("1688002249", "Grace", "Kim", PULM, LAKEVIEW)
PRACS = [SMITH, LOPEZ, PARK, RAHMAN, CHEN, NOVAK, ORTIZ, DESAI, MILLER, BROOKS, GREENE, WHITE, REED, GRANT, HARRIS, PATEL, KIM]

DEMO_POOL = ProviderPool(
    primary=[HARRIS, PATEL, MILLER],
    urgent=[REED, GRANT],
    emergency=[ORTIZ, RAHMAN],
    imaging=[WHITE],
    specialists=[BROOKS, GREENE, DESAI, KIM, CHEN, PARK],
    grace_primary=[SMITH, LOPEZ],
)


def providers_seed() -> None:
    """Upsert the provider directory, network contracts and their FHIR resources."""
    for org in ORGS:
        ProviderOrganization.objects.update_or_create(
            npi=org.npi, defaults={"name": org.name, "fhir_id": org.fhir_id, "city": org.city, "state": org.state}
        )
    orgs = {o.npi: o for o in ProviderOrganization.objects.filter(npi__in=[o.npi for o in ORGS])}
    for prac in PRACS:
        ProviderPractitioner.objects.update_or_create(
            npi=prac.npi,
            defaults={
                "family": prac.family, "given": prac.given, "taxonomy_code": prac.taxonomy_code,
                "taxonomy_display": prac.taxonomy_display, "organization": orgs[prac.org.npi], "fhir_id": prac.fhir_id,
            },
        )
    for org, number, start, end in CONTRACTS:
        NetworkContract.objects.update_or_create(
            contract_number=number, defaults={"organization": orgs[org.npi], "start": start, "end": end}
        )
    rows = directory_rows(ORGS, PRACS)
    ClinicalResource.objects.bulk_create(
        [
            ClinicalResource(
                resource_type=r.resource["resourceType"], resource_id=r.resource["id"], last_updated=r.last_updated,
                patient_id="", date=None, status=r.status, resource=r.resource,
            )
            for r in rows
        ],
        update_conflicts=True,
        unique_fields=["resource_type", "resource_id"],
        update_fields=["last_updated", "status", "resource", "patient_id", "date"],
    )


# --- Jack Shaw ---------------------------------------------------------------------------

def jack_shaw_history(b: RecordBuilder) -> None:
    """Jack Shaw, born 1961: diabetes, hypertension, NSTEMI with PCI, heart failure, CKD, COPD."""
    today = b.today
    b.patient(given="Jack", family="Shaw", gender="male", birth_date=date(1961, 3, 14), city="Springfield",
              coverage_start=date(2016, 1, 1))
    b.allergy("764146007", date(2016, 3, 10), HARRIS, reaction="Hives and facial swelling", severity="severe")

    # 2016: Oakview Family Practice (no UnitedCare contract) diagnoses diabetes, hypertension, hyperlipidemia.
    e = b.encounter("consult", date(2016, 3, 10), HARRIS, reasons=["t2dm", "htn", "hld"],
                    cpts=["99204", "36415", "83036", "80061", "80053"], hour=9)
    b.blood_pressure(152, 94, e)
    b.observation("weight", 104.3, e)
    b.observation("bmi", 33.1, e)
    a1c, ldl, egfr = b.observation("a1c", 8.1, e), b.observation("ldl", 162, e), b.observation("egfr", 82, e)
    b.report("cmp", e, [egfr])
    b.report("lipid", e, [ldl])
    b.report("a1c", e, [a1c])
    for key in ("t2dm", "htn", "hld", "obesity"):
        b.condition(key, date(2016, 3, 10), e)
    b.medication("metformin", e, reason="t2dm")
    b.medication("lisinopril", e, reason="htn")
    b.medication("simvastatin", e, reason="hld", stop=date(2020, 2, 6))
    b.immunization("133", date(2016, 3, 10), HARRIS, e)

    e = b.encounter("followup", date(2016, 9, 15), HARRIS, reasons=["t2dm", "htn"], cpts=["99214", "36415", "83036"])
    b.blood_pressure(138, 86, e)
    b.report("a1c", e, [b.observation("a1c", 7.2, e)])
    b.immunization("150", date(2016, 9, 15), HARRIS, e)

    e = b.encounter("checkup", date(2017, 10, 5), HARRIS, reasons=["checkup", "t2dm", "htn"],
                    cpts=["99396", "36415", "83036", "90686", "90471", "90732"])
    b.blood_pressure(134, 84, e)
    b.observation("weight", 102.0, e)
    b.report("a1c", e, [b.observation("a1c", 7.0, e)])
    b.immunization("150", date(2017, 10, 5), HARRIS, e)
    b.immunization("33", date(2017, 10, 5), HARRIS, e)

    # 2018: acute bronchitis at Northside Urgent Care (penicillin allergy: azithromycin).
    e = b.encounter("urgent", date(2018, 2, 20), REED, reasons=["bronchitis", "t2dm"], cpts=["99203", "71046"])
    b.condition("bronchitis", date(2018, 2, 20), e, abated=date(2018, 3, 6), category="encounter-diagnosis")
    b.procedure("chest_xray", e, reason="bronchitis")
    b.report("chest_xray", e, [], conclusion="No focal consolidation. Mild hyperinflation.")
    b.medication("azithromycin", e, reason="bronchitis")
    b.immunization("115", date(2018, 2, 20), REED, e)

    # 2019: COPD diagnosed at Lakeview Pulmonary Clinic (in network until its contract ended).
    e = b.encounter("consult", date(2019, 4, 11), KIM, reasons=["copd"], cpts=["99204", "94060"])
    b.observation("fev1fvc", 62, e)
    b.procedure("spirometry", e, reason="copd")
    b.condition("copd", date(2019, 4, 11), e)
    b.medication("fluticasone_salmeterol", e, reason="copd")
    b.medication("albuterol", e, reason="copd", fills=False)

    e = b.encounter("followup", date(2019, 10, 21), PATEL, reasons=["t2dm", "htn", "hld"], cpts=["99214", "36415", "83036", "80053", "90686", "90471"])
    b.blood_pressure(142, 88, e)
    b.report("a1c", e, [b.observation("a1c", 7.6, e)])
    b.report("cmp", e, [b.observation("egfr", 68, e), b.observation("creatinine", 1.1, e)])
    b.immunization("150", date(2019, 10, 21), PATEL, e)

    # 2020: NSTEMI at St. Mary's: ED, admission, catheterization and a drug-eluting stent.
    ed = b.encounter("ed", date(2020, 2, 3), ORTIZ, reasons=["chest_pain", "nstemi"], cpts=["93000", "84484"], claim=True, hour=6)
    tro = b.observation("troponin", 2.31, ed)
    b.procedure("ecg", ed, reason="chest_pain")
    b.report("cardiac_markers", ed, [tro], conclusion="Elevated troponin I consistent with NSTEMI.")
    adm = b.encounter("inpatient", date(2020, 2, 3), NOVAK, reasons=["nstemi", "cad", "t2dm", "htn"],
                      end_day=date(2020, 2, 6), cpts=["93458", "92928", "93306", "80053"], hour=10)
    b.condition("nstemi", date(2020, 2, 3), adm, abated=date(2020, 3, 3), category="encounter-diagnosis")
    b.condition("cad", date(2020, 2, 4), adm)
    b.condition("hfref", date(2020, 2, 5), adm)
    b.procedure("angiography", adm, prac=CHEN, reason="nstemi", day=date(2020, 2, 4))
    b.procedure("pci", adm, prac=CHEN, reason="nstemi", day=date(2020, 2, 4))
    b.report("cath", adm, [], prac=CHEN, conclusion="90% proximal LAD stenosis treated with one drug-eluting stent; TIMI 3 flow.")
    b.procedure("echo", adm, reason="nstemi", day=date(2020, 2, 5))
    b.report("imaging", adm, [b.observation("lvef", 40, adm)], conclusion="LVEF 40%, anterior hypokinesis.")
    b.professional_claim(adm, CHEN, ["nstemi", "cad"], ["93458", "92928"])
    for key in ("aspirin", "clopidogrel", "metoprolol", "atorvastatin"):
        b.medication(key, adm, reason="cad", stop=date(2021, 2, 10) if key == "clopidogrel" else None)

    e = b.encounter("followup", date(2020, 3, 16), BROOKS, reasons=["cad", "hfref"], cpts=["99214", "93000"])
    b.blood_pressure(128, 78, e)
    b.observation("heart_rate", 64, e)
    b.observation("weight", 98.7, e)
    b.prior_auth(code="93798", requesting=BROOKS, servicing=CHEN, reason="cad", quantity=36,
                 requested=date(2020, 3, 16), decision="approved", decision_days=3, valid_days=120)
    rehab = b.encounter("procedure", date(2020, 4, 6), CHEN, reasons=["cad"], cpts=["93798"], hour=8)
    b.procedure("stress_test", rehab, reason="cad")

    e = b.encounter("followup", date(2020, 9, 22), BROOKS, reasons=["hfref", "cad"], cpts=["99214", "93306", "83880"])
    b.report("imaging", e, [b.observation("lvef", 45, e)], conclusion="LVEF improved to 45%.")
    b.observation("bnp", 180, e)

    b.immunization("208", date(2021, 1, 20), MILLER)
    b.immunization("208", date(2021, 2, 10), MILLER)

    # 2021: kidney function declines; CKD stage 3 and an SGLT2 inhibitor.
    e = b.encounter("followup", date(2021, 6, 8), PATEL, reasons=["t2dm_ckd", "ckd3", "htn"], cpts=["99214", "36415", "83036", "80053"])
    b.blood_pressure(136, 82, e)
    b.report("a1c", e, [b.observation("a1c", 8.4, e)])
    b.report("cmp", e, [b.observation("egfr", 55, e), b.observation("creatinine", 1.4, e)])
    b.condition("ckd3", date(2021, 6, 8), e)
    b.medication("empagliflozin", e, reason="t2dm")

    e = b.encounter("consult", date(2021, 11, 30), DESAI, reasons=["ckd3", "t2dm_ckd"], cpts=["99204", "80053"])
    b.report("cmp", e, [b.observation("egfr", 52, e), b.observation("creatinine", 1.5, e)])

    # 2022: heart failure exacerbation, admitted at St. Mary's.
    ed = b.encounter("ed", date(2022, 1, 18), ORTIZ, reasons=["hf_exac", "ckd3"], cpts=["71046", "83880"], hour=22)
    b.report("chest_xray", ed, [], conclusion="Cardiomegaly with interstitial edema and small bilateral effusions.")
    adm = b.encounter("inpatient", date(2022, 1, 19), NOVAK, reasons=["hf_exac", "cad", "ckd3", "t2dm_ckd"],
                      end_day=date(2022, 1, 22), cpts=["93306", "80053"], hour=1)
    b.observation("weight", 106.8, adm)  # about 6 kg of fluid on admission
    b.observation("bnp", 1450, adm)
    b.condition("hf_exac", date(2022, 1, 18), adm, abated=date(2022, 2, 1), category="encounter-diagnosis")
    b.medication("furosemide", adm, reason="hfref")
    b.professional_claim(adm, DESAI, ["ckd3", "hf_exac"], ["99232"])

    e = b.encounter("followup", date(2022, 3, 2), GREENE, reasons=["hfref", "cad"], cpts=["99215"])
    b.observation("weight", 100.4, e)  # back to his dry weight on furosemide
    b.prior_auth(code="75561", requesting=GREENE, servicing=WHITE, reason="hfref", quantity=1,
                 requested=date(2022, 3, 2), decision="denied", decision_days=7,
                 note="Not medically necessary: recent echocardiogram answers the clinical question.")
    b.prior_auth(code="78452", requesting=GREENE, servicing=WHITE, reason="cad", quantity=1,
                 requested=date(2022, 3, 21), decision="approved", decision_days=4)
    e = b.encounter("imaging", date(2022, 4, 12), WHITE, reasons=["cad"], cpts=["78452"])
    b.procedure("stress_test", e, reason="cad")
    b.report("imaging", e, [], conclusion="Small fixed anterior defect; no reversible ischemia.")

    e = b.encounter("followup", date(2022, 10, 5), KIM, reasons=["copd_exac"], cpts=["99214"])
    b.condition("copd_exac", date(2022, 10, 5), e, abated=date(2022, 10, 19), category="encounter-diagnosis")
    b.medication("prednisone", e, reason="copd_exac")
    b.immunization("187", date(2022, 10, 5), KIM, e)

    # 2023: back pain at urgent care; the MRI is denied, physical therapy partly approved.
    e = b.encounter("urgent", date(2023, 5, 17), GRANT, reasons=["lbp"], cpts=["99203"])
    b.condition("lbp", date(2023, 5, 17), e, abated=date(2023, 9, 1))
    b.medication("acetaminophen", e, reason="lbp")
    b.prior_auth(code="72148", requesting=GRANT, servicing=WHITE, reason="lbp", quantity=1,
                 requested=date(2023, 5, 18), decision="denied", decision_days=5,
                 note="Six weeks of conservative therapy required before lumbar MRI.")
    b.prior_auth(code="97110", requesting=GRANT, servicing=None, reason="lbp", quantity=24,
                 requested=date(2023, 5, 24), decision="partial", decision_days=4, valid_days=90,
                 note="Approved 12 of 24 units; resubmit with progress notes.")
    e = b.encounter("imaging", date(2023, 9, 12), WHITE, reasons=["copd"], cpts=["71271"])
    b.procedure("ldct", e, reason="copd")
    b.report("imaging", e, [], conclusion="Lung-RADS 2: benign appearance. Emphysematous changes.")

    e = b.encounter("followup", date(2024, 2, 27), BROOKS, reasons=["hfref", "cad"], cpts=["99214", "93306"])
    b.report("imaging", e, [b.observation("lvef", 45, e)], conclusion="Stable LVEF 45%.")
    ed = b.encounter("ed", date(2024, 8, 14), ORTIZ, reasons=["hypoglycemia", "ckd3"], cpts=["80053"], hour=7)
    b.observation("glucose", 52, ed)
    b.condition("hypoglycemia", date(2024, 8, 14), ed, abated=date(2024, 8, 14), category="encounter-diagnosis")

    e = b.encounter("followup", date(2025, 3, 5), PATEL, reasons=["t2dm_ckd", "htn", "ckd3"], cpts=["99214", "36415", "83036", "80053"])
    b.blood_pressure(134, 82, e)
    b.observation("weight", 102.1, e)
    b.report("a1c", e, [b.observation("a1c", 7.9, e)])
    b.report("cmp", e, [b.observation("egfr", 48, e)])
    e = b.encounter("followup", date(2025, 11, 10), DESAI, reasons=["ckd3b", "t2dm_ckd"], cpts=["99214", "80053"])
    b.report("cmp", e, [b.observation("egfr", 44, e), b.observation("creatinine", 1.7, e)])
    b.condition("ckd3b", date(2025, 11, 10), e)

    # Recently: Jack becomes Dr. Smith's patient at Grace Hospital.
    first = today - timedelta(days=34)
    e = b.encounter("consult", first, SMITH, reasons=["t2dm_ckd", "htn", "hfref", "osa"], cpts=["99204", "36415", "83036", "80053"], hour=10)
    b.blood_pressure(138, 84, e)
    b.observation("weight", 101.2, e)
    b.report("a1c", e, [b.observation("a1c", 7.7, e)])
    b.report("cmp", e, [b.observation("egfr", 45, e)])
    b.condition("osa", first, e)
    b.prior_auth(code="95810", requesting=SMITH, servicing=SMITH, reason="osa", quantity=1,
                 requested=today - timedelta(days=6), decision="pending")
    e = b.encounter("consult", today - timedelta(days=20), PARK, reasons=["hfref", "cad"], cpts=["99204", "93000"])
    b.procedure("ecg", e, reason="cad")
    b.finish()


def new_patient_history(b: RecordBuilder) -> None:
    """Daniel Okafor, born 1978: asthma and hypertension, seen at Oakview, Northside and
    St. Mary's; never at Grace Hospital."""
    b.patient(given=NEW_PATIENT_GIVEN, family=NEW_PATIENT_FAMILY, gender=NEW_PATIENT_GENDER,
              birth_date=NEW_PATIENT_BIRTH_DATE, city="Springfield", coverage_start=NEW_PATIENT_COVERAGE_START)
    e = b.encounter("checkup", date(2019, 4, 2), HARRIS, reasons=["checkup", "asthma"], cpts=["99396"])
    b.blood_pressure(136, 86, e)
    b.condition("asthma", date(2019, 4, 2), e)
    b.medication("albuterol", e, reason="asthma", fills=False)
    e = b.encounter("followup", date(2021, 10, 12), PATEL, reasons=["htn", "asthma"], cpts=["99214"])
    b.blood_pressure(148, 92, e)
    b.condition("htn", date(2021, 10, 12), e)
    b.medication("lisinopril", e, reason="htn")
    b.immunization("150", date(2021, 10, 12), PATEL, e)
    e = b.encounter("urgent", date(2023, 1, 9), REED, reasons=["bronchitis", "asthma"], cpts=["99203", "71046"])
    b.condition("bronchitis", date(2023, 1, 9), e, abated=date(2023, 1, 23), category="encounter-diagnosis")
    b.medication("azithromycin", e, reason="bronchitis")
    e = b.encounter("followup", b.today - timedelta(days=60), MILLER, reasons=["htn", "asthma"], cpts=["99214"])
    b.blood_pressure(132, 84, e)
    b.finish()


# --- Seeding -------------------------------------------------------------------------------

@dataclass
class DemoSummary:
    organizations: list[tuple[str, str, str]]  # (name, NPI, contract state)
    grace_hospital_npi: str
    dr_smith_npi: str
    jack_shaw_member_id: str
    members: int
    clinical_resources: int
    claims: int
    prior_authorizations: int
    admin_created: bool


def demo_builders(*, today: date) -> list[RecordBuilder]:
    """Return Jack Shaw's and the other demo members' records (no database access)."""
    jack = RecordBuilder(member_id=JACK_SHAW_MEMBER_ID, patient_id=JACK_SHAW_PATIENT_ID, today=today,
                         rng=random.Random(DEMO_SEED))
    jack_shaw_history(jack)
    new_patient = RecordBuilder(member_id=NEW_PATIENT_MEMBER_ID, patient_id=patient_id_for(NEW_PATIENT_MEMBER_ID),
                                today=today, rng=random.Random(DEMO_SEED + 70))
    new_patient_history(new_patient)
    builders = [jack, new_patient]
    for n in range(2, OTHER_MEMBER_COUNT + 2):
        member_id = f"UCH1{n:08d}"
        rng = random.Random(DEMO_SEED * 1000 + n)
        b = RecordBuilder(member_id=member_id, patient_id=patient_id_for(member_id), today=today, rng=rng)
        # A third see Grace Hospital clinicians within the last 24 months.
        member_history(b, DEMO_POOL, identity=member_identity(rng, today), grace_recent=n % 3 == 0)
        builders.append(b)
    return builders


def seed_demo(*, create_admin: bool | None = None) -> DemoSummary:
    """Create or update the demo scenario; return what other parts of the demo need to know."""
    today = demo_today()
    with transaction.atomic():
        providers_seed()
        builders = demo_builders(today=today)
        counts = records_save(builders=builders, upsert=True)
        # Enrollment periods (an upsert: the same values on every run).
        Member.objects.filter(member_id=NEW_PATIENT_MEMBER_ID).update(
            coverage_start=NEW_PATIENT_COVERAGE_START, coverage_end=None)
    admin_created = False
    if create_admin if create_admin is not None else settings.DEBUG:
        admin_created = admin_user_ensure()
    contracts = {c.organization.npi: c for c in NetworkContract.objects.select_related("organization")}
    orgs = []
    for org in ORGS:
        contract = contracts.get(org.npi)
        state = "no contract" if contract is None else (
            f"contract {contract.contract_number} ended {contract.end}" if contract.end and contract.end < date.today()
            else f"in network ({contract.contract_number})"
        )
        orgs.append((org.name, org.npi, state))
    return DemoSummary(orgs, GRACE_HOSPITAL_NPI, DR_SMITH_NPI, JACK_SHAW_MEMBER_ID, counts["members"],
                       counts["clinical_resources"], counts["claims"], counts["prior_authorizations"], admin_created)


def demo_access_seed(*, key_dir: Path) -> SmartClient:
    """Derive the attribution lists from the demo claims and register Grace Hospital's
    SMART client with a key pair kept under ``key_dir``; return the client."""
    attribution_refresh(today=demo_today())
    grace = ProviderOrganization.objects.get(npi=GRACE_HOSPITAL_NPI)
    return demo_client_ensure(organization=grace, key_dir=key_dir, client_id=GRACE_CLIENT_ID)


def admin_user_ensure() -> bool:
    """Create the payer staff superuser admin/admin for the demo; return True when created."""
    User = get_user_model()
    if User.objects.filter(username=ADMIN_USERNAME).exists():
        return False
    User.objects.create_superuser(ADMIN_USERNAME, "admin@unitedcare.example.org", ADMIN_PASSWORD)
    return True
