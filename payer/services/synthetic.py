"""Build realistic, deterministic patient histories for the demo and the population generator.

A ``RecordBuilder`` accumulates one member's FHIR resources (the clinical repository) and
the claims and prior authorizations the claims platform would hold for the same care, so
the two systems of record tell one coherent story. Nothing here touches the database;
payer/services/demo.py and payer/services/population.py write what it builds.

All codes are real: SNOMED CT, ICD-10-CM, LOINC, RxNorm, CPT/HCPCS, CVX, NUCC taxonomy,
NUBC revenue codes and type of bill, CMS place of service.
"""

import hashlib
import random
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from payer.mapping import (
    NPI_SYSTEM,
    UNITEDCARE_NAME,
    UNITEDCARE_ORGANIZATION_ID,
    coverage_id_for,
    eob_id_for_claim,
    eob_id_for_prior_auth,
    location_id_for,
)

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
CVX = "http://hl7.org/fhir/sid/cvx"
NUCC = "http://nucc.org/provider-taxonomy"
UCUM = "http://unitsofmeasure.org"
MEMBER_ID_SYSTEM = "https://unitedcare.example.org/fhir/sid/member-id"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition"
# One US Core release everywhere (PDex 2.1 allows 3.1.1 or 6.1.0): 6.1.0, with versioned
# canonicals in meta.profile so a receiver knows which rules the resource claims.
US_CORE_VERSION = "6.1.0"
C4BB_COVERAGE = "http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-Coverage|2.1.0"
PDEX_PROVENANCE = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-provenance|2.2.0"
OMB_RACE_ETHNICITY = "urn:oid:2.16.840.1.113883.6.238"
# CDC Source of Payment Typology (PHVS_SourceOfPaymentTypology_CDC), the extensible
# binding of US Core Coverage.type.
PAYMENT_TYPOLOGY = "urn:oid:2.16.840.1.113883.3.221.5"
PROVENANCE_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
US_CORE_PROVENANCE_PARTICIPANT = "http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type"
PDEX_SOURCE_FORMAT_EXT = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/ProvenanceSourceFrom"
PDEX_SOURCE_FORMAT_CS = "http://hl7.org/fhir/us/davinci-pdex/CodeSystem/ProvenancePayerDataSource"

# A fixed instant for the provider directory resources, so reruns produce identical JSON.
DIRECTORY_UPDATED = datetime(2024, 1, 2, 8, 0, tzinfo=timezone.utc)


def npi_with_check_digit(base9: str) -> str:
    """Return the 10-digit NPI for 9 digits: Luhn over the ISO prefix 80840 (CMS NPI check digit)."""
    total = 0
    for i, ch in enumerate(reversed("80840" + base9)):
        digit = int(ch)
        if i % 2 == 0:
            digit *= 2
            digit -= 9 if digit > 9 else 0
        total += digit
    return base9 + str((10 - total % 10) % 10)


# The retail pharmacy that fills members' prescriptions (not in the provider directory: EOBs
# then identify it by NPI only).
PHARMACY_NPI = npi_with_check_digit("109381746")


# --- Code catalogs -------------------------------------------------------------------------

@dataclass(frozen=True)
class Cond:
    snomed: str
    snomed_display: str
    icd10: str
    icd10_display: str


CONDITIONS: dict[str, Cond] = {
    "t2dm": Cond("44054006", "Diabetes mellitus type 2 (disorder)", "E11.9", "Type 2 diabetes mellitus without complications"),
    "t2dm_ckd": Cond("44054006", "Diabetes mellitus type 2 (disorder)", "E11.22", "Type 2 diabetes mellitus with diabetic chronic kidney disease"),
    "hypoglycemia": Cond("302866003", "Hypoglycemia (disorder)", "E11.649", "Type 2 diabetes mellitus with hypoglycemia without coma"),
    "htn": Cond("38341003", "Hypertensive disorder, systemic arterial (disorder)", "I10", "Essential (primary) hypertension"),
    "hld": Cond("55822004", "Hyperlipidemia (disorder)", "E78.5", "Hyperlipidemia, unspecified"),
    "nstemi": Cond("401314000", "Acute non-ST segment elevation myocardial infarction (disorder)", "I21.4", "Non-ST elevation (NSTEMI) myocardial infarction"),
    "cad": Cond("53741008", "Coronary arteriosclerosis (disorder)", "I25.10", "Atherosclerotic heart disease of native coronary artery without angina pectoris"),
    "hfref": Cond("703272007", "Heart failure with reduced ejection fraction (disorder)", "I50.22", "Chronic systolic (congestive) heart failure"),
    "hf_exac": Cond("42343007", "Congestive heart failure (disorder)", "I50.23", "Acute on chronic systolic (congestive) heart failure"),
    "ckd3": Cond("433144002", "Chronic kidney disease stage 3 (disorder)", "N18.30", "Chronic kidney disease, stage 3 unspecified"),
    "ckd3b": Cond("700379002", "Chronic kidney disease stage 3B (disorder)", "N18.32", "Chronic kidney disease, stage 3b"),
    "copd": Cond("13645005", "Chronic obstructive lung disease (disorder)", "J44.9", "Chronic obstructive pulmonary disease, unspecified"),
    "copd_exac": Cond("195951007", "Acute exacerbation of chronic obstructive airways disease (disorder)", "J44.1", "Chronic obstructive pulmonary disease with (acute) exacerbation"),
    "bronchitis": Cond("10509002", "Acute bronchitis (disorder)", "J20.9", "Acute bronchitis, unspecified"),
    "sinusitis": Cond("444814009", "Viral sinusitis (disorder)", "J01.90", "Acute sinusitis, unspecified"),
    "lbp": Cond("279039007", "Low back pain (finding)", "M54.50", "Low back pain, unspecified"),
    "osa": Cond("78275009", "Obstructive sleep apnea syndrome (disorder)", "G47.33", "Obstructive sleep apnea (adult) (pediatric)"),
    "obesity": Cond("414916001", "Obesity (disorder)", "E66.9", "Obesity, unspecified"),
    "asthma": Cond("195967001", "Asthma (disorder)", "J45.909", "Unspecified asthma, uncomplicated"),
    "oa_knee": Cond("239873007", "Osteoarthritis of knee (disorder)", "M17.11", "Unilateral primary osteoarthritis, right knee"),
    "depression": Cond("35489007", "Depressive disorder (disorder)", "F32.A", "Depression, unspecified"),
    "uti": Cond("68566005", "Urinary tract infectious disease (disorder)", "N39.0", "Urinary tract infection, site not specified"),
    "sprain": Cond("44465007", "Sprain of ankle (disorder)", "S93.401A", "Sprain of unspecified ligament of right ankle, initial encounter"),
    "gerd": Cond("235595009", "Gastroesophageal reflux disease (disorder)", "K21.9", "Gastro-esophageal reflux disease without esophagitis"),
    "prediabetes": Cond("714628002", "Prediabetes (finding)", "R73.03", "Prediabetes"),
    "chest_pain": Cond("29857009", "Chest pain (finding)", "R07.9", "Chest pain, unspecified"),
    "checkup": Cond("185349003", "Encounter for check up (procedure)", "Z00.00", "Encounter for general adult medical examination without abnormal findings"),
}

# code -> (system, display, base charge in USD)
PROCEDURES: dict[str, tuple[str, str, int]] = {
    "99203": ("CPT", "Office or other outpatient visit, new patient, low MDM", 180),
    "99204": ("CPT", "Office or other outpatient visit, new patient, moderate MDM", 280),
    "99213": ("CPT", "Office or other outpatient visit, established patient, low MDM", 140),
    "99214": ("CPT", "Office or other outpatient visit, established patient, moderate MDM", 210),
    "99215": ("CPT", "Office or other outpatient visit, established patient, high MDM", 290),
    "99284": ("CPT", "Emergency department visit, moderate MDM", 650),
    "99285": ("CPT", "Emergency department visit, high MDM", 1100),
    "99223": ("CPT", "Initial hospital inpatient care, high MDM", 420),
    "99232": ("CPT", "Subsequent hospital inpatient care, moderate MDM", 160),
    "99238": ("CPT", "Hospital inpatient discharge day management, 30 minutes or less", 150),
    "99395": ("CPT", "Periodic preventive medicine, established patient, 18-39 years", 230),
    "99396": ("CPT", "Periodic preventive medicine, established patient, 40-64 years", 250),
    "99397": ("CPT", "Periodic preventive medicine, established patient, 65 years and older", 260),
    "93000": ("CPT", "Electrocardiogram, routine, with at least 12 leads; with interpretation and report", 60),
    "93306": ("CPT", "Echocardiography, transthoracic, complete, with spectral and color flow Doppler", 900),
    "93458": ("CPT", "Catheter placement in coronary artery for coronary angiography with left heart catheterization", 3500),
    "92928": ("CPT", "Percutaneous transcatheter placement of intracoronary stent, single major coronary artery", 9800),
    "93798": ("CPT", "Physician services for outpatient cardiac rehabilitation with continuous ECG monitoring", 120),
    "71046": ("CPT", "Radiologic examination, chest; 2 views", 190),
    "71271": ("CPT", "Computed tomography, thorax, low dose for lung cancer screening, without contrast", 450),
    "72148": ("CPT", "Magnetic resonance imaging, spinal canal and contents, lumbar; without contrast", 1400),
    "73721": ("CPT", "Magnetic resonance imaging, any joint of lower extremity; without contrast", 1300),
    "73610": ("CPT", "Radiologic examination, ankle; complete, minimum of 3 views", 160),
    "75561": ("CPT", "Cardiac magnetic resonance imaging for morphology and function without contrast, followed by contrast", 2600),
    "78452": ("CPT", "Myocardial perfusion imaging, tomographic (SPECT), multiple studies", 1900),
    "94060": ("CPT", "Bronchodilation responsiveness, spirometry as in 94010, pre- and post-bronchodilator", 220),
    "95810": ("CPT", "Polysomnography; age 6 years or older, sleep staging with 4 or more additional parameters, attended", 2400),
    "97110": ("CPT", "Therapeutic procedure, 1 or more areas, each 15 minutes; therapeutic exercises", 90),
    "97161": ("CPT", "Physical therapy evaluation: low complexity", 160),
    "83036": ("CPT", "Hemoglobin; glycosylated (A1C)", 45),
    "80053": ("CPT", "Comprehensive metabolic panel", 70),
    "80061": ("CPT", "Lipid panel", 60),
    "83880": ("CPT", "Natriuretic peptide", 110),
    "84484": ("CPT", "Troponin, quantitative", 90),
    "36415": ("CPT", "Collection of venous blood by venipuncture", 15),
    "90686": ("CPT", "Influenza virus vaccine, quadrivalent (IIV4), split virus, preservative free, 0.5 mL, intramuscular", 45),
    "90471": ("CPT", "Immunization administration; 1 vaccine", 30),
    "90732": ("CPT", "Pneumococcal polysaccharide vaccine, 23-valent (PPSV23), subcutaneous or intramuscular", 120),
    "27447": ("CPT", "Arthroplasty, knee, condyle and plateau; medial and lateral compartments (total knee arthroplasty)", 28000),
    "G0439": ("HCPCS", "Annual wellness visit, includes a personalized prevention plan of service (PPS), subsequent visit", 180),
    "E0601": ("HCPCS", "Continuous positive airway pressure (CPAP) device", 1200),
}

# NUBC revenue code -> display (institutional lines).
REVENUE = {
    "0120": "Room & board, semi-private two beds",
    "0250": "Pharmacy, general",
    "0300": "Laboratory, general",
    "0324": "Radiology diagnostic, chest X-ray",
    "0450": "Emergency room, general",
    "0481": "Cardiology, cardiac cath lab",
    "0483": "Cardiology, echocardiology",
    "0730": "EKG/ECG, general",
    "0943": "Other therapeutic services, cardiac rehabilitation",
    "0360": "Operating room services, general",
}


@dataclass(frozen=True)
class Lab:
    loinc: str
    display: str
    unit: str
    category: str = "laboratory"
    # Adult reference range, in ``unit``; vital signs and survey scores have none. R4
    # Observation.referenceRange.low/.high are inclusive and either may be absent, so a
    # one-sided limit (LDL "<100") is a high of 100 (100 is not flagged), and a text says
    # the one-sided range in words.
    low: float | None = None
    high: float | None = None
    range_text: str = ""


LABS: dict[str, Lab] = {
    "a1c": Lab("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", low=4.0, high=5.6),
    "egfr": Lab("33914-3", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum or Plasma by Creatinine-based formula (MDRD)", "mL/min/{1.73_m2}",
                low=60, range_text=">=60 mL/min/1.73 m2"),
    "creatinine": Lab("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", low=0.7, high=1.3),
    "glucose": Lab("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", low=70, high=99),
    "ldl": Lab("13457-7", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation", "mg/dL",
               high=100, range_text="<=100 mg/dL"),
    "bnp": Lab("30934-4", "Natriuretic peptide B [Mass/volume] in Serum or Plasma", "pg/mL", high=100, range_text="<=100 pg/mL"),
    "troponin": Lab("10839-9", "Troponin I.cardiac [Mass/volume] in Serum or Plasma", "ng/mL", high=0.04, range_text="<=0.04 ng/mL"),
    "lvef": Lab("10230-1", "Left ventricular Ejection fraction", "%", "imaging", low=55, high=70),
    "fev1fvc": Lab("19926-5", "FEV1/FVC", "%", "procedure", low=70, range_text=">=70 %"),
    "weight": Lab("29463-7", "Body weight", "kg", "vital-signs"),
    "bmi": Lab("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", "vital-signs"),
    "heart_rate": Lab("8867-4", "Heart rate", "/min", "vital-signs"),
    "phq9": Lab("44261-6", "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]", "{score}", "survey"),
}


V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def _interpretation(lab: Lab, value: float) -> tuple[str, str]:
    """Return the v3 ObservationInterpretation code and display of ``value`` against the lab's range."""
    if lab.high is not None and value > lab.high:
        return "H", "High"
    if lab.low is not None and value < lab.low:
        return "L", "Low"
    return "N", "Normal"


def _reference_range(lab: Lab) -> dict[str, Any]:
    """Return the Observation.referenceRange of a lab: SimpleQuantity bounds in the value's unit."""
    reference: dict[str, Any] = {}
    for name, value in (("low", lab.low), ("high", lab.high)):
        if value is not None:
            reference[name] = {"value": value, "unit": lab.unit, "system": UCUM, "code": lab.unit}
    if lab.range_text:
        reference["text"] = lab.range_text
    return reference


# US Core 6.1.0 profile of an Observation by category: clinical results cover imaging and
# procedure; survey instruments (PHQ-9) are screening assessments.
OBSERVATION_PROFILES = {
    "laboratory": "us-core-observation-lab", "vital-signs": "us-core-vital-signs",
    "imaging": "us-core-observation-clinical-result", "procedure": "us-core-observation-clinical-result",
    "survey": "us-core-observation-screening-assessment",
}

# US Core DiagnosticReport Note category (LOINC, required binding of its us-core slice) for
# the HL7 v2 diagnostic service sections of non-lab reports.
REPORT_NOTE_CATEGORY = {"RAD": ("LP29684-5", "Radiology"), "CG": ("LP29708-2", "Cardiology"),
                        "CTH": ("LP29708-2", "Cardiology")}


# SNOMED CT route of administration (R4 Dosage.route, example binding), and the UCUM
# annotation a dose is counted in, by dose form.
DOSE_FORMS = {
    "tablet": ("{tbl}", "tablet", ("26643006", "Oral route (qualifier value)")),
    "puff": ("{puff}", "puff", ("447694001", "Respiratory tract route (qualifier value)")),
}


@dataclass(frozen=True)
class Sig:
    """One dosage instruction: the prescription's words and their R4 Dosage structure."""

    text: str
    dose: int  # in units of ``form``
    form: str = "tablet"
    # Timing.repeat: ``frequency`` times per ``period`` (to ``period_max``) ``period_unit``s.
    frequency: int = 1
    period: int = 1
    period_max: int | None = None
    period_unit: str = "d"
    course_days: int | None = None  # Timing.repeat.boundsDuration of a short course
    as_needed: bool = False  # PRN


@dataclass(frozen=True)
class Drug:
    rxnorm: str
    display: str
    ndc: str  # NDC 11 (5-4-2) as the pharmacy claim carries it
    qty: int
    days: int
    # The dosage instructions, applied in order (Dosage.sequence); ``qty`` covers ``days`` of them.
    sig: tuple[Sig, ...]


DAILY = (Sig("Take 1 tablet by mouth once daily", 1),)
DRUGS: dict[str, Drug] = {
    "metformin": Drug("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet", "00093726701", 180, 90,
                      (Sig("Take 2 tablets (1,000 mg) by mouth once daily with the evening meal", 2),)),
    "lisinopril": Drug("314076", "lisinopril 10 MG Oral Tablet", "68180051401", 90, 90, DAILY),
    "simvastatin": Drug("312961", "simvastatin 20 MG Oral Tablet", "16714068302", 90, 90,
                        (Sig("Take 1 tablet by mouth once daily in the evening", 1),)),
    "atorvastatin": Drug("259255", "atorvastatin 80 MG Oral Tablet", "00378212277", 90, 90, DAILY),
    "aspirin": Drug("243670", "aspirin 81 MG Oral Tablet", "00904628960", 90, 90, DAILY),
    "clopidogrel": Drug("309362", "clopidogrel 75 MG Oral Tablet", "60505025303", 90, 90, DAILY),
    "metoprolol": Drug("866412", "24 HR metoprolol succinate 100 MG Extended Release Oral Tablet", "62037083190", 90, 90,
                       (Sig("Take 1 tablet by mouth once daily; swallow whole, do not crush or chew", 1),)),
    "furosemide": Drug("313988", "furosemide 40 MG Oral Tablet", "00054429931", 90, 90,
                       (Sig("Take 1 tablet by mouth once daily in the morning", 1),)),
    "empagliflozin": Drug("1545658", "empagliflozin 10 MG Oral Tablet", "00597015230", 90, 90,
                          (Sig("Take 1 tablet by mouth once daily in the morning", 1),)),
    "albuterol": Drug("745679", "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler", "00173068220", 1, 30,
                      (Sig("Inhale 2 puffs by mouth every 4 to 6 hours as needed for wheezing or shortness of breath", 2,
                           "puff", period=4, period_max=6, period_unit="h", as_needed=True),)),
    "fluticasone_salmeterol": Drug("896209", "60 ACTUAT fluticasone propionate 0.25 MG/ACTUAT / salmeterol 0.05 MG/ACTUAT Dry Powder Inhaler", "00173069600", 1, 30,
                                   (Sig("Inhale 1 puff by mouth twice daily; rinse mouth after each use", 1, "puff", frequency=2),)),
    # The 5-day pack: a loading dose, then four daily doses (two sequential instructions).
    "azithromycin": Drug("308460", "azithromycin 250 MG Oral Tablet", "00093715306", 6, 5,
                         (Sig("Take 2 tablets (500 mg) by mouth on day 1", 2, course_days=1),
                          Sig("Then take 1 tablet (250 mg) by mouth once daily on days 2 to 5", 1, course_days=4))),
    "prednisone": Drug("312617", "predniSONE 20 MG Oral Tablet", "00054476025", 10, 5,
                       (Sig("Take 2 tablets (40 mg) by mouth once daily for 5 days", 2, course_days=5),)),
    "amlodipine": Drug("197361", "amlodipine 5 MG Oral Tablet", "00093716798", 90, 90, DAILY),
    "hctz": Drug("310798", "hydrochlorothiazide 25 MG Oral Tablet", "00172208360", 90, 90,
                 (Sig("Take 1 tablet by mouth once daily in the morning", 1),)),
    "sertraline": Drug("312940", "sertraline 50 MG Oral Tablet", "16729000401", 90, 90, DAILY),
    "ciprofloxacin": Drug("309309", "ciprofloxacin 500 MG Oral Tablet", "55111012701", 14, 7,
                          (Sig("Take 1 tablet by mouth every 12 hours for 7 days", 1, period=12, period_unit="h", course_days=7),)),
    "naproxen": Drug("849574", "naproxen sodium 220 MG Oral Tablet", "00280601001", 30, 15,
                     (Sig("Take 1 tablet by mouth every 8 to 12 hours as needed for pain, with food", 1,
                          period=8, period_max=12, period_unit="h", as_needed=True),)),
    "acetaminophen": Drug("313782", "acetaminophen 325 MG Oral Tablet", "00904198861", 60, 15,
                          (Sig("Take 2 tablets by mouth every 6 hours as needed for pain", 2,
                               period=6, period_unit="h", as_needed=True),)),
}


def dosage_instructions(drug: Drug) -> list[dict[str, Any]]:
    """Return the MedicationRequest.dosageInstruction of a drug (R4 Dosage, US Core 6.1.0 must-support:
    text, timing, doseAndRate.doseQuantity in UCUM)."""
    out = []
    for sequence, sig in enumerate(drug.sig, start=1):
        code, unit, route = DOSE_FORMS[sig.form]
        repeat: dict[str, Any] = {}
        if sig.course_days:
            repeat["boundsDuration"] = {"value": sig.course_days, "unit": "days", "system": UCUM, "code": "d"}
        repeat.update({"frequency": sig.frequency, "period": sig.period})
        if sig.period_max:
            repeat["periodMax"] = sig.period_max
        repeat["periodUnit"] = sig.period_unit
        dosage: dict[str, Any] = {"sequence": sequence, "text": sig.text, "timing": {"repeat": repeat}}
        if sig.as_needed:
            dosage["asNeededBoolean"] = True
        dosage["route"] = {"coding": [{"system": SNOMED, "code": route[0], "display": route[1]}]}
        dosage["doseAndRate"] = [{"doseQuantity": {"value": sig.dose, "unit": unit, "system": UCUM, "code": code}}]
        out.append(dosage)
    return out


# CVX -> display
VACCINES = {
    "150": "Influenza, injectable, quadrivalent, preservative free",
    "33": "pneumococcal polysaccharide vaccine, 23 valent",
    "133": "Pneumococcal conjugate vaccine, 13 valent",
    "208": "SARS-COV-2 (COVID-19) vaccine, mRNA, spike protein, LNP, preservative free, 30 mcg/0.3mL dose",
    "115": "Tdap",
    "187": "zoster vaccine recombinant",
}

# SNOMED substance -> display (AllergyIntolerance.code)
ALLERGENS = {
    "764146007": "Penicillin (substance)",
    "387406002": "Sulfonamide (substance)",
    "256349002": "Peanut - dietary (substance)",
    "111088007": "Latex (substance)",
    "288328004": "Bee venom (substance)",
}

# SNOMED procedures for the clinical record.
SNOMED_PROCEDURES = {
    "pci": ("415070008", "Percutaneous coronary intervention (procedure)"),
    "angiography": ("33367005", "Angiography of coronary artery (procedure)"),
    "echo": ("40701008", "Echocardiography (procedure)"),
    "ecg": ("29303009", "Electrocardiographic procedure (procedure)"),
    "spirometry": ("127783003", "Spirometry (procedure)"),
    "chest_xray": ("399208008", "Plain X-ray of chest (procedure)"),
    "stress_test": ("76746007", "Cardiovascular stress testing (procedure)"),
    "ldct": ("16334891000119106", "Low dose computed tomography of thorax (procedure)"),
    "knee_replacement": ("609588000", "Total knee replacement (procedure)"),
    "ankle_xray": ("19490002", "Plain X-ray of ankle (procedure)"),
    "sleep_study": ("60554003", "Polysomnography (procedure)"),
    "mri_spine": ("241646005", "Magnetic resonance imaging of lumbar spine (procedure)"),
}

# Encounter types (SNOMED) and classes (v3 ActCode).
ENCOUNTER_TYPES = {
    "office": ("185345009", "Encounter for symptom (procedure)", "AMB", "ambulatory"),
    "followup": ("390906007", "Follow-up encounter (procedure)", "AMB", "ambulatory"),
    "checkup": ("185349003", "Encounter for check up (procedure)", "AMB", "ambulatory"),
    "consult": ("11429006", "Consultation (procedure)", "AMB", "ambulatory"),
    "urgent": ("702927004", "Urgent care clinic (environment)", "AMB", "ambulatory"),
    "imaging": ("371883000", "Outpatient procedure (procedure)", "AMB", "ambulatory"),
    "procedure": ("371883000", "Outpatient procedure (procedure)", "AMB", "ambulatory"),
    "ed": ("50849002", "Emergency room admission (procedure)", "EMER", "emergency"),
    "inpatient": ("32485007", "Hospital admission (procedure)", "IMP", "inpatient encounter"),
}

DIAGNOSTIC_REPORTS = {
    "cmp": ("24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma", "LAB"),
    "lipid": ("57698-3", "Lipid panel with direct LDL - Serum or Plasma", "LAB"),
    "a1c": ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "LAB"),
    "cardiac_markers": ("10839-9", "Troponin I.cardiac [Mass/volume] in Serum or Plasma", "LAB"),
    "ecg": ("11524-6", "EKG study", "CG"),
    "cath": ("18745-0", "Cardiac catheterization study", "CTH"),
    "imaging": ("18748-4", "Diagnostic imaging study", "RAD"),
    "chest_xray": ("36643-5", "XR Chest 2 Views", "RAD"),
}


# --- Provider directory ------------------------------------------------------------------

@dataclass(frozen=True)
class Org:
    npi: str
    name: str
    fhir_id: str
    city: str
    state: str
    kind: str  # hospital | clinic | imaging | urgent


@dataclass(frozen=True)
class Prac:
    npi: str
    given: str
    family: str
    taxonomy_code: str
    taxonomy_display: str
    org: Org
    fhir_id: str

    @property
    def display(self) -> str:
        return f"Dr. {self.given} {self.family}"


def _addr(org: Org) -> dict[str, Any]:
    return {"line": [f"{100 + int(org.npi[-3:])} Main Street"], "city": org.city, "state": org.state,
            "postalCode": "62701", "country": "US"}


def us_core(profile: str) -> str:
    """Return the versioned canonical of a US Core 6.1.0 profile."""
    return f"{US_CORE}/{profile}|{US_CORE_VERSION}"


def _meta(last_updated: datetime, *profiles: str) -> dict[str, Any]:
    canonicals = [p if "/" in p else us_core(p) for p in profiles]
    return {"lastUpdated": instant(last_updated), **({"profile": canonicals} if canonicals else {})}


# OMB race and ethnicity categories (US Core race/ethnicity extensions, CDC Race & Ethnicity
# code system), with the share of each in the generated population.
RACES = [("2106-3", "White", 60), ("2054-5", "Black or African American", 14), ("2028-9", "Asian", 6),
         ("1002-5", "American Indian or Alaska Native", 1), ("2076-8", "Native Hawaiian or Other Pacific Islander", 1),
         ("2131-1", "Other Race", 18)]
ETHNICITIES = [("2135-2", "Hispanic or Latino", 19), ("2186-5", "Not Hispanic or Latino", 81)]


def _weighted(key: str, salt: str, choices: list[tuple[str, str, int]]) -> tuple[str, str]:
    # Derived from the member id, not the builder's random stream, so adding demographics
    # leaves every other generated value as it was.
    roll = int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:8], 16) % sum(w for *_, w in choices)
    for code, display, weight in choices:
        if roll < weight:
            return code, display
        roll -= weight
    raise AssertionError("unreachable")


def race_ethnicity_extensions(member_id: str) -> list[dict[str, Any]]:
    """Return the US Core race and ethnicity extensions of a member (self-reported at enrollment)."""
    race = _weighted(member_id, "race", RACES)
    ethnicity = _weighted(member_id, "ethnicity", ETHNICITIES)
    return [
        {"url": f"{US_CORE}/us-core-race", "extension": [
            {"url": "ombCategory", "valueCoding": {"system": OMB_RACE_ETHNICITY, "code": race[0], "display": race[1]}},
            {"url": "text", "valueString": race[1]}]},
        {"url": f"{US_CORE}/us-core-ethnicity", "extension": [
            {"url": "ombCategory", "valueCoding": {"system": OMB_RACE_ETHNICITY, "code": ethnicity[0], "display": ethnicity[1]}},
            {"url": "text", "valueString": ethnicity[1]}]},
    ]


def instant(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class Row:
    """One clinical repository row: the resource and its indexed columns."""

    resource: dict[str, Any]
    patient_id: str
    date: datetime | None
    status: str
    last_updated: datetime


def directory_rows(orgs: list[Org], pracs: list[Prac]) -> list[Row]:
    """Return Organization, Location, Practitioner and PractitionerRole rows (and the payer)."""
    t = DIRECTORY_UPDATED
    rows = [
        Row(
            {
                "resourceType": "Organization", "id": UNITEDCARE_ORGANIZATION_ID,
                "meta": _meta(t, "us-core-organization"), "active": True,
                "identifier": [{"system": "urn:oid:2.16.840.1.113883.6.300", "value": "98765"}],
                "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "pay", "display": "Payer"}]}],
                "name": UNITEDCARE_NAME,
                "telecom": [{"system": "phone", "value": "+1-800-555-0142", "use": "work"}],
                "address": [{"line": ["1 UnitedCare Plaza"], "city": "Springfield", "state": "IL", "postalCode": "62701", "country": "US"}],
            },
            "", None, "active", t,
        )
    ]
    for org in orgs:
        rows.append(Row(
            {
                "resourceType": "Organization", "id": org.fhir_id, "meta": _meta(t, "us-core-organization"),
                "active": True, "identifier": [{"system": NPI_SYSTEM, "value": org.npi}],
                "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov", "display": "Healthcare Provider"}]}],
                "name": org.name, "address": [_addr(org)],
                "telecom": [{"system": "phone", "value": f"+1-217-555-{org.npi[-4:]}", "use": "work"}],
            },
            "", None, "active", t,
        ))
        rows.append(Row(
            {
                "resourceType": "Location", "id": location_id_for(org.fhir_id), "meta": _meta(t, "us-core-location"),
                "status": "active", "name": org.name, "address": _addr(org),
                "managingOrganization": {"reference": f"Organization/{org.fhir_id}", "display": org.name},
            },
            "", None, "active", t,
        ))
    for prac in pracs:
        rows.append(Row(
            {
                "resourceType": "Practitioner", "id": prac.fhir_id, "meta": _meta(t, "us-core-practitioner"),
                "active": True, "identifier": [{"system": NPI_SYSTEM, "value": prac.npi}],
                "name": [{"family": prac.family, "given": [prac.given], "prefix": ["Dr."]}],
            },
            "", None, "active", t,
        ))
        specialty = {"coding": [{"system": NUCC, "code": prac.taxonomy_code, "display": prac.taxonomy_display}]}
        rows.append(Row(
            {
                "resourceType": "PractitionerRole", "id": f"role-{prac.fhir_id}", "meta": _meta(t, "us-core-practitionerrole"),
                "active": True,
                "practitioner": {"reference": f"Practitioner/{prac.fhir_id}", "display": prac.display},
                "organization": {"reference": f"Organization/{prac.org.fhir_id}", "display": prac.org.name},
                "code": [specialty], "specialty": [specialty],
                "location": [{"reference": f"Location/{location_id_for(prac.org.fhir_id)}"}],
                # US Core PractitionerRole pd-1: telecom or endpoint (the practice's phone).
                "telecom": [{"system": "phone", "value": f"+1-217-555-{prac.org.npi[-4:]}", "use": "work"}],
            },
            "", None, "active", t,
        ))
    return rows


# --- Patient histories -------------------------------------------------------------------

@dataclass
class LineSpec:
    code: str = ""
    revenue: str = ""
    quantity: int = 1
    service_date: date | None = None
    pos: str = ""


@dataclass
class ClaimSpec:
    claim_number: str
    claim_type: str
    billing_npi: str
    rendering_npi: str
    facility_npi: str
    type_of_bill: str
    service_start: date
    service_end: date
    encounter_id: str
    diagnoses: list[tuple[str, str, str]]  # (icd10, display, kind)
    lines: list[LineSpec]
    drug: Drug | None = None
    status: str = "paid"
    # Pharmacy: NCPDP DAW code, fill number (0 = original) and refills authorized.
    daw_code: str = ""
    refill_number: int | None = None
    refills_authorized: int | None = None
    # Filled by RecordBuilder.finish_claim.
    received_date: date | None = None
    processed_date: date | None = None
    updated_at: datetime | None = None
    line_amounts: list[tuple[Decimal, Decimal, Decimal, Decimal]] = field(default_factory=list)


@dataclass
class PASpec:
    auth_number: str
    requesting_npi: str
    servicing_npi: str
    service_code: str
    diagnosis_code: str
    quantity: int
    requested_date: date
    decision: str
    decision_date: date | None
    decision_reason: str
    valid_start: date | None
    valid_end: date | None
    updated_at: datetime
    units_approved: int | None = None
    units_used: int = 0


@dataclass
class Encounter:
    id: str
    start: datetime
    end: datetime
    prac: Prac
    org: Org


def _at(d: date, hour: int = 9, minute: int = 0) -> datetime:
    return datetime.combine(d, time(hour, minute), tzinfo=timezone.utc)


def _money(value: float) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


class RecordBuilder:
    """Accumulate one member's clinical resources, claims and prior authorizations."""

    def __init__(self, *, member_id: str, patient_id: str, today: date, rng: random.Random) -> None:
        self.member_id = member_id
        self.patient_id = patient_id
        self.key = member_id.lower()
        self.today = today
        self.rng = rng
        self.rows: list[Row] = []
        self.claims: list[ClaimSpec] = []
        self.pas: list[PASpec] = []
        self._counters: dict[str, int] = {}
        # The provider organization each clinical record came from (PDex Provenance author).
        self._sources: dict[str, Org] = {}

    # ids ------------------------------------------------------------------------------
    def _next(self, kind: str) -> int:
        self._counters[kind] = self._counters.get(kind, 0) + 1
        return self._counters[kind]

    def _id(self, kind: str) -> str:
        return f"{kind}-{self.key}-{self._next(kind)}"

    def _patient_ref(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.patient_id}"}

    def _add(self, resource: dict[str, Any], *, when: datetime | None, status: str, updated: datetime) -> dict[str, Any]:
        updated = min(updated, _at(self.today, 0))
        resource["meta"]["lastUpdated"] = instant(updated)
        self.rows.append(Row(resource, self.patient_id, when, status, updated))
        return resource

    # demographics ---------------------------------------------------------------------
    def patient(self, *, given: str, family: str, gender: str, birth_date: date, city: str, coverage_start: date) -> None:
        updated = _at(coverage_start, 7)
        self._add({
            "resourceType": "Patient", "id": self.patient_id, "meta": _meta(updated, "us-core-patient"),
            "extension": race_ethnicity_extensions(self.member_id),
            "identifier": [{
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB", "display": "Member Number"}]},
                "system": MEMBER_ID_SYSTEM, "value": self.member_id,
            }],
            "active": True, "name": [{"use": "official", "family": family, "given": [given]}],
            "telecom": [{"system": "phone", "value": f"+1-217-555-{self.member_id[-4:]}", "use": "home"}],
            "gender": gender, "birthDate": birth_date.isoformat(),
            "address": [{"use": "home", "line": [f"{int(self.member_id[-3:]) + 10} Oak Street"], "city": city, "state": "IL",
                         "postalCode": "62704", "country": "US"}],
        }, when=None, status="active", updated=updated)
        self._add({
            "resourceType": "Coverage", "id": coverage_id_for(self.member_id),
            "meta": _meta(updated, "us-core-coverage", C4BB_COVERAGE),
            "identifier": [{
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB", "display": "Member Number"}]},
                "system": MEMBER_ID_SYSTEM, "value": self.member_id,
            }],
            "status": "active",
            # US Core Coverage.type: extensible binding to the Source of Payment Typology.
            "type": {"coding": [{"system": PAYMENT_TYPOLOGY, "code": "512", "display": "Commercial Managed Care - PPO"}]},
            "subscriberId": self.member_id, "beneficiary": self._patient_ref(),
            "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "self"}]},
            "period": {"start": coverage_start.isoformat()},
            "payor": [{"reference": f"Organization/{UNITEDCARE_ORGANIZATION_ID}", "display": UNITEDCARE_NAME}],
            "class": [
                {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "group"}]},
                 "value": "UC-GRP-4410", "name": "UnitedCare Choice PPO"},
                {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "plan"}]},
                 "value": "UC-PPO-2000", "name": "Choice PPO 2000"},
            ],
        }, when=_at(coverage_start, 0), status="active", updated=updated)

    # clinical -------------------------------------------------------------------------
    def encounter(self, kind: str, day: date, prac: Prac, *, org: Org | None = None, reasons: list[str],
                  end_day: date | None = None, cpts: list[str] | None = None, claim: bool = True,
                  hour: int | None = None) -> Encounter:
        """Record an encounter and the claim(s) that bill for it."""
        org = org or prac.org
        hour = hour if hour is not None else self.rng.choice([8, 9, 10, 11, 13, 14, 15, 16])
        start = _at(day, hour, self.rng.choice([0, 15, 30, 45]))
        end = _at(end_day, 11) if end_day else start + timedelta(minutes=30 if kind != "ed" else 240)
        snomed, snomed_display, cls, cls_display = ENCOUNTER_TYPES[kind]
        enc_id = self._id("enc")
        resource = {
            "resourceType": "Encounter", "id": enc_id, "meta": _meta(end, "us-core-encounter"),
            "identifier": [{"system": "https://unitedcare.example.org/fhir/sid/encounter", "value": enc_id}],
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": cls, "display": cls_display},
            "type": [{"coding": [{"system": SNOMED, "code": snomed, "display": snomed_display}], "text": snomed_display}],
            "subject": self._patient_ref(),
            "participant": [{
                "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "ATND" if cls == "IMP" else "PPRF",
                                      "display": "attender" if cls == "IMP" else "primary performer"}]}],
                "period": {"start": instant(start), "end": instant(end)},
                "individual": {"reference": f"Practitioner/{prac.fhir_id}", "display": prac.display},
            }],
            "period": {"start": instant(start), "end": instant(end)},
            "reasonCode": [{"coding": [{"system": SNOMED, "code": CONDITIONS[r].snomed, "display": CONDITIONS[r].snomed_display}]} for r in reasons[:2]],
            "location": [{"location": {"reference": f"Location/{location_id_for(org.fhir_id)}", "display": org.name}}],
            "serviceProvider": {"reference": f"Organization/{org.fhir_id}", "display": org.name},
        }
        if cls == "IMP":
            resource["hospitalization"] = {
                "admitSource": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/admit-source", "code": "emd", "display": "From accident/emergency department"}]},
                "dischargeDisposition": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": "home", "display": "Home"}]},
            }
        self._add(resource, when=start, status="finished", updated=end + timedelta(hours=6))
        self._sources[enc_id] = org
        enc = Encounter(enc_id, start, end, prac, org)
        if claim:
            self._claims_for(enc, kind, reasons, cpts or [])
        return enc

    def _claims_for(self, enc: Encounter, kind: str, reasons: list[str], cpts: list[str]) -> None:
        dx = [(CONDITIONS[r].icd10.replace(".", ""), CONDITIONS[r].icd10_display, "principal" if i == 0 else "other")
              for i, r in enumerate(reasons)]
        start, end = enc.start.date(), enc.end.date()
        if kind in ("ed", "inpatient", "procedure") and enc.org.kind == "hospital":
            inpatient = kind == "inpatient"
            lines: list[LineSpec] = []
            nights = max((end - start).days, 1)
            if inpatient:
                # Room and board (revenue 0120) bills no CPT/HCPCS code, and CARIN BB's
                # institutional item.productOrService is a required binding to CPT/HCPCS/HIPPS
                # (EOB-vision-item-productorservice forbids not-applicable): the stay is in
                # the admission period instead of a revenue-only line.
                dx = [dx[0][:2] + ("admitting",)] + dx if dx else dx
                dx = [(c, d, k) for c, d, k in dx]
            if kind in ("ed", "inpatient"):
                lines.append(LineSpec(code="99285" if inpatient else "99284", revenue="0450", service_date=start))
            for code in cpts:
                revenue = {"93458": "0481", "92928": "0481", "93306": "0483", "93000": "0730", "71046": "0324",
                           "93798": "0943", "27447": "0360"}.get(code, "0300")
                qty = 12 if code == "93798" else 1
                lines.append(LineSpec(code=code, revenue=revenue, service_date=start, quantity=qty))
            self.claims.append(ClaimSpec(
                self._claim_number(), "institutional", enc.org.npi, enc.prac.npi, enc.org.npi,
                "0111" if inpatient else "0131", start, end, enc.id, _dedupe_dx(dx), lines,
            ))
            # The physicians bill separately on professional claims (CMS-1500).
            if inpatient:
                prof = [LineSpec(code="99223", service_date=start, pos="21")]
                prof += [LineSpec(code="99232", service_date=start + timedelta(days=i), pos="21") for i in range(1, nights)]
                prof.append(LineSpec(code="99238", service_date=end, pos="21"))
                self._professional(enc, dx, prof)
            elif kind == "ed":
                self._professional(enc, dx, [LineSpec(code="99285" if len(dx) > 1 else "99284", service_date=start, pos="23")])
            return
        pos = {"urgent": "20", "imaging": "11"}.get(kind, "22" if enc.org.kind == "hospital" else "11")
        self._professional(enc, dx, [LineSpec(code=c, service_date=start, pos=pos) for c in cpts])

    def _professional(self, enc: Encounter, dx: list[tuple[str, str, str]], lines: list[LineSpec], *, rendering: Prac | None = None) -> None:
        rendering = rendering or enc.prac
        dx = [(c, d, "principal" if i == 0 else "other") for i, (c, d, k) in enumerate(_dedupe_dx(dx))]
        self.claims.append(ClaimSpec(
            self._claim_number(), "professional", enc.org.npi, rendering.npi, enc.org.npi, "",
            enc.start.date(), max(ls.service_date or enc.start.date() for ls in lines) if lines else enc.start.date(),
            enc.id, dx, lines,
        ))

    def professional_claim(self, enc: Encounter, prac: Prac, reasons: list[str], cpts: list[str], pos: str = "21") -> None:
        """Bill a consultant's or proceduralist's services during an encounter."""
        dx = [(CONDITIONS[r].icd10.replace(".", ""), CONDITIONS[r].icd10_display, "other") for r in reasons]
        self._professional(enc, dx, [LineSpec(code=c, service_date=enc.start.date(), pos=pos) for c in cpts], rendering=prac)

    def _claim_number(self) -> str:
        return f"CLM-{self.member_id}-{self._next('claim'):04d}"

    def condition(self, key: str, onset: date, enc: Encounter | None, *, abated: date | None = None,
                  category: str = "problem-list-item") -> str:
        c = CONDITIONS[key]
        cid = self._id("cond")
        status = "resolved" if abated else "active"
        recorded = _at(onset, 12)
        resource = {
            "resourceType": "Condition", "id": cid,
            "meta": _meta(recorded, "us-core-condition-encounter-diagnosis" if category == "encounter-diagnosis"
                          else "us-core-condition-problems-health-concerns"),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": status}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": category}]}],
            "code": {"coding": [{"system": SNOMED, "code": c.snomed, "display": c.snomed_display},
                                {"system": ICD10, "code": c.icd10, "display": c.icd10_display}], "text": c.icd10_display},
            "subject": self._patient_ref(),
            "onsetDateTime": onset.isoformat(),
            "recordedDate": instant(recorded),
        }
        if enc:
            resource["encounter"] = {"reference": f"Encounter/{enc.id}"}
            resource["recorder"] = {"reference": f"Practitioner/{enc.prac.fhir_id}", "display": enc.prac.display}
        if abated:
            resource["abatementDateTime"] = abated.isoformat()
        self._add(resource, when=_at(onset, 0), status=status, updated=_at(abated, 12) if abated else recorded)
        return cid

    def observation(self, key: str, value: float, enc: Encounter, *, when: datetime | None = None) -> str:
        lab = LABS[key]
        when = when or enc.start + timedelta(minutes=20)
        oid = self._id("obs")
        issued = when + timedelta(hours=4 if lab.category == "laboratory" else 0)
        resource = {
            "resourceType": "Observation", "id": oid,
            "meta": _meta(issued, OBSERVATION_PROFILES[lab.category]),
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": lab.category}]}],
            "code": {"coding": [{"system": LOINC, "code": lab.loinc, "display": lab.display}], "text": lab.display},
            "subject": self._patient_ref(), "encounter": {"reference": f"Encounter/{enc.id}"},
            "effectiveDateTime": instant(when), "issued": instant(issued),
            "performer": [{"reference": f"Practitioner/{enc.prac.fhir_id}", "display": enc.prac.display}],
            "valueQuantity": {"value": value, "unit": lab.unit, "system": UCUM, "code": lab.unit},
        }
        if lab.low is not None or lab.high is not None:
            code, display = _interpretation(lab, value)
            resource["interpretation"] = [{"coding": [{"system": V3_INTERPRETATION, "code": code, "display": display}]}]
            resource["referenceRange"] = [_reference_range(lab)]
        self._add(resource, when=when, status="final", updated=issued)
        return oid

    def blood_pressure(self, systolic: int, diastolic: int, enc: Encounter) -> str:
        when = enc.start + timedelta(minutes=10)
        oid = self._id("obs")
        comp = lambda code, display, v: {  # noqa: E731
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
            "valueQuantity": {"value": v, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"},
        }
        self._add({
            "resourceType": "Observation", "id": oid, "meta": _meta(when, "us-core-blood-pressure"),
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel with all children optional"}]},
            "subject": self._patient_ref(), "encounter": {"reference": f"Encounter/{enc.id}"},
            "effectiveDateTime": instant(when),
            "component": [comp("8480-6", "Systolic blood pressure", systolic), comp("8462-4", "Diastolic blood pressure", diastolic)],
        }, when=when, status="final", updated=when)
        return oid

    def report(self, key: str, enc: Encounter, results: list[str], *, conclusion: str = "", prac: Prac | None = None) -> str:
        code, display, section = DIAGNOSTIC_REPORTS[key]
        prac = prac or enc.prac
        rid = self._id("dr")
        issued = enc.start + timedelta(hours=6)
        resource = {
            "resourceType": "DiagnosticReport", "id": rid,
            "meta": _meta(issued, "us-core-diagnosticreport-lab" if section == "LAB" else "us-core-diagnosticreport-note"),
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": section}]},
                         *([{"coding": [{"system": LOINC, "code": REPORT_NOTE_CATEGORY[section][0],
                                         "display": REPORT_NOTE_CATEGORY[section][1]}]}]
                           if section in REPORT_NOTE_CATEGORY else [])],
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
            "subject": self._patient_ref(), "encounter": {"reference": f"Encounter/{enc.id}"},
            "effectiveDateTime": instant(enc.start), "issued": instant(issued),
            "performer": [{"reference": f"Practitioner/{prac.fhir_id}", "display": prac.display}],
        }
        if results:
            resource["result"] = [{"reference": f"Observation/{r}"} for r in results]
        if conclusion:
            resource["conclusion"] = conclusion
        self._add(resource, when=enc.start, status="final", updated=issued)
        return rid

    def procedure(self, key: str, enc: Encounter, *, prac: Prac | None = None, reason: str | None = None, day: date | None = None) -> str:
        code, display = SNOMED_PROCEDURES[key]
        prac = prac or enc.prac
        when = _at(day, 10) if day else enc.start + timedelta(minutes=45)
        pid = self._id("proc")
        resource = {
            "resourceType": "Procedure", "id": pid, "meta": _meta(when, "us-core-procedure"),
            "status": "completed",
            "code": {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display},
            "subject": self._patient_ref(), "encounter": {"reference": f"Encounter/{enc.id}"},
            "performedDateTime": instant(when),
            "performer": [{"actor": {"reference": f"Practitioner/{prac.fhir_id}", "display": prac.display}}],
            "location": {"reference": f"Location/{location_id_for(enc.org.fhir_id)}", "display": enc.org.name},
        }
        if reason:
            c = CONDITIONS[reason]
            resource["reasonCode"] = [{"coding": [{"system": SNOMED, "code": c.snomed, "display": c.snomed_display}]}]
        self._add(resource, when=when, status="completed", updated=when + timedelta(hours=2))
        return pid

    def medication(self, key: str, enc: Encounter, *, reason: str, stop: date | None = None, fills: bool = True) -> str:
        """Prescribe a drug at an encounter; pharmacy claims follow every ``days`` until ``stop``."""
        drug = DRUGS[key]
        mid = self._id("med")
        authored = enc.start + timedelta(minutes=40)
        chronic = drug.days >= 90
        ended = stop is not None and stop <= self.today
        status = "active" if chronic and not ended else "completed" if not chronic else "stopped"
        c = CONDITIONS[reason]
        resource = {
            "resourceType": "MedicationRequest", "id": mid, "meta": _meta(authored, "us-core-medicationrequest"),
            "status": status, "intent": "order",
            # US Core 6.1.0 reported[x] (must support): prescribed by the clinician, not a
            # patient report.
            "reportedBoolean": False,
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category", "code": "community" if chronic else "outpatient"}]}],
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": drug.rxnorm, "display": drug.display}], "text": drug.display},
            "subject": self._patient_ref(), "encounter": {"reference": f"Encounter/{enc.id}"},
            "authoredOn": instant(authored),
            "requester": {"reference": f"Practitioner/{enc.prac.fhir_id}", "display": enc.prac.display},
            "reasonCode": [{"coding": [{"system": SNOMED, "code": c.snomed, "display": c.snomed_display}]}],
            "dosageInstruction": dosage_instructions(drug),
            "dispenseRequest": {"numberOfRepeatsAllowed": 3 if chronic else 0,
                                "quantity": {"value": drug.qty}, "expectedSupplyDuration": {"value": drug.days, "unit": "days", "system": UCUM, "code": "d"}},
        }
        updated = _at(stop, 12) if ended else authored
        self._add(resource, when=authored, status=status, updated=updated)
        if fills:
            last = min(stop or self.today, self.today - timedelta(days=3))
            day = enc.start.date() + timedelta(days=self.rng.randint(0, 2))
            refills = 3 if chronic else 0  # dispenseRequest.numberOfRepeatsAllowed above
            fill = 0
            while day <= last:
                self.claims.append(ClaimSpec(
                    self._claim_number(), "pharmacy", PHARMACY_NPI, enc.prac.npi, "", "", day, day, "",
                    [(c.icd10.replace(".", ""), c.icd10_display, "principal")], [LineSpec(quantity=drug.qty, service_date=day)],
                    drug=drug,
                    # NCPDP DAW 0: no product selection indicated. A chronic prescription is
                    # renewed when its refills run out, so the fill number restarts at 0.
                    daw_code="0", refill_number=fill % (refills + 1), refills_authorized=refills,
                ))
                fill += 1
                if not chronic:
                    break
                day += timedelta(days=drug.days + self.rng.randint(0, 6))
        return mid

    def allergy(self, code: str, recorded: date, prac: Prac, *, reaction: str = "Hives", severity: str = "moderate") -> str:
        aid = self._id("alg")
        when = _at(recorded, 10)
        self._add({
            "resourceType": "AllergyIntolerance", "id": aid, "meta": _meta(when, "us-core-allergyintolerance"),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "confirmed"}]},
            "type": "allergy", "category": ["food" if "dietary" in ALLERGENS[code] else "medication" if code in ("764146007", "387406002") else "environment"],
            "criticality": "high" if severity == "severe" else "low",
            "code": {"coding": [{"system": SNOMED, "code": code, "display": ALLERGENS[code]}]},
            "patient": self._patient_ref(), "recordedDate": instant(when),
            "recorder": {"reference": f"Practitioner/{prac.fhir_id}", "display": prac.display},
            "reaction": [{"manifestation": [{"text": reaction}], "severity": severity}],
        }, when=when, status="active", updated=when)
        self._sources[aid] = prac.org
        return aid

    def immunization(self, cvx: str, day: date, prac: Prac, enc: Encounter | None = None) -> str:
        iid = self._id("imm")
        when = _at(day, 11)
        resource = {
            "resourceType": "Immunization", "id": iid, "meta": _meta(when, "us-core-immunization"),
            "status": "completed",
            "vaccineCode": {"coding": [{"system": CVX, "code": cvx, "display": VACCINES[cvx]}], "text": VACCINES[cvx]},
            "patient": self._patient_ref(), "occurrenceDateTime": instant(when), "primarySource": True,
            "location": {"reference": f"Location/{location_id_for(prac.org.fhir_id)}", "display": prac.org.name},
            "performer": [{"actor": {"reference": f"Practitioner/{prac.fhir_id}", "display": prac.display}}],
        }
        if enc:
            resource["encounter"] = {"reference": f"Encounter/{enc.id}"}
        self._add(resource, when=when, status="completed", updated=when + timedelta(hours=1))
        self._sources[iid] = prac.org
        return iid

    def prior_auth(self, *, code: str, requesting: Prac, servicing: Prac | None, reason: str, quantity: int,
                   requested: date, decision: str, decision_days: int = 5, valid_days: int = 60, note: str = "") -> None:
        decided = requested + timedelta(days=decision_days) if decision != "pending" else None
        if decided and decided > self.today:
            decision, decided = "pending", None
        valid = decision in ("approved", "partial")
        self.pas.append(PASpec(
            f"AUTH-{self.member_id}-{self._next('pa'):02d}", requesting.npi, servicing.npi if servicing else "",
            code, CONDITIONS[reason].icd10.replace(".", ""), quantity, requested, decision, decided, note,
            decided if valid else None, decided + timedelta(days=valid_days) if valid and decided else None,
            _at(decided or requested, 15),
            units_approved={"approved": quantity, "partial": quantity // 2, "denied": 0}.get(decision),
        ))

    # claims adjudication ------------------------------------------------------------
    def finish(self) -> None:
        """Give every claim its dates, status and amounts (the claims platform's own data)."""
        for claim in self.claims:
            # Pharmacy claims are adjudicated at the counter (NCPDP real time); medical claims
            # arrive days after the service and take a few weeks.
            pharmacy = claim.claim_type == "pharmacy"
            claim.received_date = claim.service_end + timedelta(days=0 if pharmacy else self.rng.randint(1, 12))
            processed = claim.received_date + timedelta(days=0 if pharmacy else self.rng.randint(3, 21))
            if processed >= self.today:
                claim.status, claim.processed_date = "pended", None
                claim.updated_at = _at(min(claim.received_date, self.today), 6)
            else:
                if claim.status == "paid" and self.rng.random() < 0.03:
                    claim.status = "denied"
                claim.processed_date = processed
                claim.updated_at = _at(processed, 14, self.rng.randint(0, 59))
            claim.line_amounts = []
            for line in claim.lines:
                base = PROCEDURES[line.code][2] if line.code else {"0120": 2100, "0450": 900}.get(line.revenue, 300)
                if claim.drug is not None:
                    base = self.rng.choice([12, 18, 35, 60, 240, 520])
                charged = _money(base * max(line.quantity, 1) * self.rng.uniform(0.9, 1.2))
                allowed = _money(float(charged) * 0.55)
                copay = _money(25 if claim.claim_type == "professional" and line is claim.lines[0] else 0)
                paid = Decimal("0.00") if claim.status in ("denied", "pended") else max(allowed - copay, Decimal("0.00"))
                claim.line_amounts.append((charged, allowed, paid, copay))
        self._prior_auth_utilization()
        self._provenance()

    def _prior_auth_utilization(self) -> None:
        """Count the units of each approved authorization used by claims in its validity."""
        for pa in self.pas:
            if not pa.units_approved or pa.valid_start is None:
                continue
            end = pa.valid_end or self.today
            pa.units_used = min(pa.units_approved, sum(
                line.quantity for claim in self.claims if claim.claim_type != "pharmacy" and claim.status != "denied"
                for line in claim.lines
                if line.code == pa.service_code and pa.valid_start <= (line.service_date or claim.service_start) <= end))

    def _provenance(self) -> None:
        """Record PDex Provenance for what the payer transmits.

        PDex 2.2 pdex-provenance (on US Core Provenance): the author is the organization the
        record came from, the transmitter the payer, and the entity's sourceFormat says what
        non-FHIR form the payer received it in. Clinical records are grouped by encounter
        (the provider's C-CDA of the visit); enrollment data (Patient, Coverage) came on
        X12 834 files and is the payer's own; EOBs are the payer's, mapped from X12 837
        claims, NCPDP pharmacy claims and X12 278 prior authorizations.
        """
        groups: dict[str, list[Row]] = {}
        for row in self.rows:
            resource = row.resource
            if resource["resourceType"] == "Provenance":
                continue
            encounter = (resource.get("encounter") or {}).get("reference", "").partition("/")[2]
            key = resource["id"] if resource["resourceType"] == "Encounter" else encounter or resource["id"]
            groups.setdefault(key, []).append(row)
        for key, rows in groups.items():
            org = self._sources.get(key)
            targets = [f"{r.resource['resourceType']}/{r.resource['id']}" for r in rows]
            if org is not None:
                self._provenance_add(targets=targets, recorded=max(r.last_updated for r in rows),
                                     author=(f"Organization/{org.fhir_id}", org.name), source_format="hl7ccda",
                                     source=f"Clinical record received from {org.name}")
            else:
                self._provenance_add(targets=targets, recorded=max(r.last_updated for r in rows),
                                     author=(f"Organization/{UNITEDCARE_ORGANIZATION_ID}", UNITEDCARE_NAME),
                                     source_format="x12other", source="UnitedCare enrollment (X12 834)")
        claims = [c for c in self.claims if c.updated_at is not None]
        for source_format, label, chosen in (
            ("x12837", "UnitedCare claims system (X12 837)", [c for c in claims if c.claim_type != "pharmacy"]),
            ("ncpdp", "UnitedCare pharmacy claims (NCPDP)", [c for c in claims if c.claim_type == "pharmacy"]),
        ):
            if chosen:
                self._provenance_add(
                    targets=[f"ExplanationOfBenefit/{eob_id_for_claim(c.claim_number)}" for c in chosen],
                    recorded=max(c.updated_at for c in chosen),
                    author=(f"Organization/{UNITEDCARE_ORGANIZATION_ID}", UNITEDCARE_NAME),
                    source_format=source_format, source=label)
        if self.pas:
            self._provenance_add(
                targets=[f"ExplanationOfBenefit/{eob_id_for_prior_auth(pa.auth_number)}" for pa in self.pas],
                recorded=max(pa.updated_at for pa in self.pas),
                author=(f"Organization/{UNITEDCARE_ORGANIZATION_ID}", UNITEDCARE_NAME),
                source_format="x12278", source="UnitedCare utilization management (X12 278)")

    def _provenance_add(self, *, targets: list[str], recorded: datetime, author: tuple[str, str],
                        source_format: str, source: str) -> None:
        recorded = min(recorded, _at(self.today, 0))
        payer = {"reference": f"Organization/{UNITEDCARE_ORGANIZATION_ID}", "display": UNITEDCARE_NAME}
        self._add({
            "resourceType": "Provenance", "id": self._id("prov"), "meta": _meta(recorded, "us-core-provenance", PDEX_PROVENANCE),
            "target": [{"reference": t} for t in targets],
            "recorded": instant(recorded),
            "agent": [
                {"type": {"coding": [{"system": PROVENANCE_PARTICIPANT, "code": "author", "display": "Author"}]},
                 "who": {"reference": author[0], "display": author[1]}},
                {"type": {"coding": [{"system": US_CORE_PROVENANCE_PARTICIPANT, "code": "transmitter", "display": "Transmitter"}]},
                 "who": payer},
            ],
            "entity": [{
                "extension": [{"url": PDEX_SOURCE_FORMAT_EXT, "valueCodeableConcept": {
                    "coding": [{"system": PDEX_SOURCE_FORMAT_CS, "code": source_format}]}}],
                "role": "source", "what": {"display": source},
            }],
        }, when=recorded, status="", updated=recorded)


def _dedupe_dx(dx: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for code, display, kind in dx:
        if (code, kind) not in seen:
            seen.add((code, kind))
            out.append((code, display, kind))
    return out


# --- Generic member histories (the other demo members and the population) ---------------

FIRST_NAMES_F = ["Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah", "Karen",
                 "Nancy", "Lisa", "Betty", "Sandra", "Ashley", "Emily", "Donna", "Michelle", "Carol", "Amanda", "Melissa",
                 "Deborah", "Stephanie", "Rebecca", "Laura", "Sharon", "Cynthia", "Kathleen", "Amy", "Angela"]
FIRST_NAMES_M = ["James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas", "Charles",
                 "Christopher", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven", "Paul", "Andrew", "Joshua",
                 "Kenneth", "Kevin", "Brian", "George", "Timothy", "Ronald", "Edward", "Jason", "Jeffrey", "Ryan"]
LAST_NAMES = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
              "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Taylor", "Moore", "Jackson", "Martin", "Lee",
              "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker",
              "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green"]
CITIES = ["Springfield", "Decatur", "Champaign", "Peoria", "Bloomington", "Jacksonville"]

CHRONIC = {
    # key: (drug, labs to follow, min age)
    "htn": ("lisinopril", [], 30),
    "t2dm": ("metformin", ["a1c"], 35),
    "hld": ("simvastatin", ["ldl"], 35),
    "asthma": ("albuterol", [], 5),
    "copd": ("fluticasone_salmeterol", [], 50),
    "depression": ("sertraline", ["phq9"], 18),
    "oa_knee": ("naproxen", [], 50),
    "prediabetes": (None, ["a1c"], 30),
    "obesity": (None, ["bmi"], 18),
}


@dataclass
class ProviderPool:
    """The clinicians a generated member may see, by role."""

    primary: list[Prac]  # family / internal medicine in offices and hospital clinics
    urgent: list[Prac]
    emergency: list[Prac]  # emergency physicians at hospitals
    imaging: list[Prac]
    specialists: list[Prac]
    grace_primary: list[Prac]  # Grace Hospital's primary care clinicians


def member_identity(rng: random.Random, today: date) -> dict[str, Any]:
    """Return random demographics for a member."""
    gender = rng.choice(["female", "male"])
    given = rng.choice(FIRST_NAMES_F if gender == "female" else FIRST_NAMES_M)
    age = rng.choice([rng.randint(5, 17), rng.randint(18, 44), rng.randint(45, 64), rng.randint(45, 64), rng.randint(65, 84)])
    birth = date(today.year - age, rng.randint(1, 12), rng.randint(1, 28))
    return {"given": given, "family": rng.choice(LAST_NAMES), "gender": gender, "birth_date": birth, "city": rng.choice(CITIES)}


def member_history(b: RecordBuilder, pool: ProviderPool, *, identity: dict[str, Any], grace_recent: bool) -> None:
    """Build a plausible smaller history: a PCP, chronic conditions, acute episodes, PAs.

    ``grace_recent``: the member sees a Grace Hospital clinician within the last 24 months
    (so claims attribute them to Grace); otherwise Grace clinicians are never seen.
    """
    rng, today = b.rng, b.today
    birth = identity["birth_date"]
    age = lambda d: (d - birth).days // 365  # noqa: E731
    start = date(rng.randint(2016, today.year - 2), rng.randint(1, 12), rng.randint(1, 28))
    start = max(start, birth + timedelta(days=365 * 3))
    b.patient(**identity, coverage_start=date(start.year, 1, 1))
    pcp = rng.choice(pool.primary)
    cutoff = today - timedelta(days=730)
    candidates = [k for k, (_, _, min_age) in CHRONIC.items() if age(today) >= min_age]
    chronic = rng.sample(candidates, k=min(len(candidates), rng.choice([0, 1, 1, 2, 2, 3])))
    if rng.random() < 0.3:
        b.allergy(rng.choice(list(ALLERGENS)), start, pcp, reaction=rng.choice(["Hives", "Rash", "Wheezing", "Swelling of lips"]))
    onset = {k: start + timedelta(days=rng.randint(0, 700)) for k in chronic}
    day = start
    diagnosed: set[str] = set()
    while day < today - timedelta(days=14):
        # Grace members move to a Grace clinician for their recent care.
        prac = rng.choice(pool.grace_primary) if grace_recent and day >= cutoff else pcp
        active = [k for k in chronic if onset[k] <= day]
        a = age(day)
        if active:
            cpt = "99214" if len(active) > 1 else "99213"
            reasons = active
            kind = "followup"
        else:
            cpt = "99397" if a >= 65 else "99396" if a >= 40 else "99395" if a >= 18 else "99213"
            reasons = ["checkup"]
            kind = "checkup"
        labs = sorted({lab for k in active for lab in CHRONIC[k][1]})
        cpts = [cpt] + (["36415", "83036"] if "a1c" in labs else []) + (["80061"] if "ldl" in labs else [])
        flu = day.month in (9, 10, 11) and rng.random() < 0.6
        if flu:
            cpts += ["90686", "90471"]
        enc = b.encounter(kind, day, prac, reasons=reasons, cpts=cpts)
        if a >= 18:
            b.blood_pressure(rng.randint(112, 150 if "htn" in active else 132), rng.randint(68, 94 if "htn" in active else 84), enc)
            b.observation("weight", round(rng.uniform(55, 110), 1), enc)
        results = []
        for lab in labs:
            value = {"a1c": round(rng.uniform(6.6, 9.2) if "t2dm" in active else rng.uniform(5.7, 6.4), 1),
                     "ldl": rng.randint(90, 180), "phq9": rng.randint(3, 16), "bmi": round(rng.uniform(30, 38), 1)}[lab]
            results.append(b.observation(lab, value, enc))
        lab_results = [r for r, lab in zip(results, labs) if lab in ("a1c", "ldl")]
        if lab_results:
            b.report("a1c" if "a1c" in labs else "lipid", enc, lab_results)
        for k in chronic:
            if onset[k] <= day and k not in diagnosed:
                diagnosed.add(k)
                b.condition(k, onset[k], enc)
                drug = CHRONIC[k][0]
                if drug:
                    b.medication(drug, enc, reason=k)
        if flu:
            b.immunization("150", day, prac, enc)
        # Acute episodes between visits.
        roll = rng.random()
        episode_day = day + timedelta(days=rng.randint(20, 150))
        if episode_day < today - timedelta(days=10):
            on_grace = grace_recent and episode_day >= cutoff
            if roll < 0.12:
                key = rng.choice(["bronchitis", "sinusitis", "uti"])
                urgent = rng.choice(pool.urgent)
                e = b.encounter("urgent", episode_day, urgent, reasons=[key], cpts=["99203"])
                b.condition(key, episode_day, e, abated=episode_day + timedelta(days=10), category="encounter-diagnosis")
                b.medication({"uti": "ciprofloxacin"}.get(key, "azithromycin"), e, reason=key)
            elif roll < 0.17:
                urgent = rng.choice(pool.urgent)
                e = b.encounter("urgent", episode_day, urgent, reasons=["sprain"], cpts=["99203", "73610"])
                b.condition("sprain", episode_day, e, abated=episode_day + timedelta(days=30), category="encounter-diagnosis")
                b.procedure("ankle_xray", e, reason="sprain")
                b.medication("acetaminophen", e, reason="sprain")
            elif roll < 0.22 and a >= 35:
                ed = rng.choice([p for p in pool.emergency if on_grace or p.org.npi not in {g.org.npi for g in pool.grace_primary}] or pool.emergency)
                e = b.encounter("ed", episode_day, ed, reasons=["chest_pain"], cpts=["93000", "84484"])
                t = b.observation("troponin", round(rng.uniform(0.0, 0.03), 2), e)
                b.procedure("ecg", e, reason="chest_pain")
                b.report("cardiac_markers", e, [t], conclusion="Troponin within normal limits; non-cardiac chest pain.")
            elif roll < 0.27 and a >= 30:
                spec = rng.choice(pool.imaging)
                code, key = rng.choice([("72148", "lbp"), ("73721", "oa_knee")])
                decision = rng.choice(["approved", "approved", "denied"]) if episode_day < today - timedelta(days=60) else "pending"
                b.prior_auth(code=code, requesting=prac, servicing=spec, reason=key, quantity=1, requested=episode_day,
                             decision=decision,
                             note="Conservative therapy for 6 weeks not documented" if decision == "denied" else "")
                if decision == "approved":
                    e = b.encounter("imaging", episode_day + timedelta(days=14), spec, reasons=[key], cpts=[code])
                    if key == "lbp":
                        b.procedure("mri_spine", e, reason=key)
                    b.report("imaging", e, [], conclusion="Degenerative changes without acute findings.")
            elif roll < 0.30 and a >= 18:
                # Physical therapy: many units requested, fewer approved.
                b.prior_auth(code="97110", requesting=prac, servicing=None, reason="lbp", quantity=12, requested=episode_day,
                             decision="partial", note="Approved 6 of 12 visits; reassess after 6.")
        visits_gap = rng.randint(150, 420) if not active else rng.randint(90, 240)
        day += timedelta(days=visits_gap)
    b.finish()
