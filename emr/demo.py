"""The EMR side of the demo: Grace Hospital's clinicians and registered patients.

The hospital knows its patients by its own MRN and by the member id on their insurance
card; it learns the payer's FHIR ids only from a fetch. The member ids below are the ones
the demo payer issues (Jack Shaw's is ``payer.services.demo.JACK_SHAW_MEMBER_ID``; a test
keeps the two equal, since a hospital's code never imports the payer's).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import transaction

from emr.models import Clinician, HospitalPatient
from provider.models import PayerConnection

GRACE_NAME = "Grace Hospital"
GRACE_NPI = "1345678902"
OAKVIEW_NAME = "Oakview Family Practice"
OAKVIEW_NPI = "1244668806"
JACK_SHAW_MEMBER_ID = "UCH100000001"
DR_SMITH_NPI = "1987654328"
DEMO_PASSWORD = "grace-demo"

# (username, display name, organization name, organization NPI, password, individual NPI)
# Dr. Smith's NPI is the one the demo payer's provider directory lists at Grace Hospital,
# so his treatment attestations are accepted; Dr. Patel is not in it and cannot attest.
CLINICIANS = [
    ("jsmith", "Dr. James Smith", GRACE_NAME, GRACE_NPI, DEMO_PASSWORD, DR_SMITH_NPI),
    ("apatel", "Dr. Anika Patel", GRACE_NAME, GRACE_NPI, DEMO_PASSWORD, ""),
    ("rlee", "Dr. Robert Lee", OAKVIEW_NAME, OAKVIEW_NPI, "oakview-demo", ""),
]


def born(*, age: int, month: int, day: int) -> dt.date:
    """Return a birth date as the demo payer makes it: ``age`` years before the current year.

    The payer's synthetic members (``payer.services.synthetic.member_identity``) have a
    fixed age, month and day and a birth year counted back from the demo's "today", so a
    hospital record that copies them must count back the same way.
    """
    return dt.date(dt.date.today().year - age, month, day)


# The new patient of the demo: a UnitedCare member with a history elsewhere and no claim at
# Grace Hospital, so on no Grace attribution list until a clinician attests a treatment
# relationship. He is not seeded here: the demo registers him (README, "A new patient").
NEW_PATIENT = {"given": "Daniel", "family": "Okafor", "birth_date": dt.date(1978, 9, 23), "gender": "male",
               "member_id": "UCH100000070"}

# (organization NPI, MRN, given, family, birth date, gender, member id or "" for self-pay)
# Each patient with a member id has the demographics the demo payer holds for that member
# (tests/emr/test_seed.py checks the two seeds agree), so every link checks out.
PATIENTS = [
    (GRACE_NPI, "GH-100231", "Jack", "Shaw", dt.date(1961, 3, 14), "male", JACK_SHAW_MEMBER_ID),
    # Members UnitedCare attributes to Grace Hospital (claims with Grace clinicians).
    (GRACE_NPI, "GH-100232", "Nancy", "Garcia", born(age=82, month=9, day=2), "female", "UCH100000003"),
    (GRACE_NPI, "GH-100233", "Jessica", "Harris", born(age=54, month=8, day=12), "female", "UCH100000006"),
    (GRACE_NPI, "GH-100234", "Richard", "Taylor", born(age=60, month=10, day=16), "male", "UCH100000009"),
    (GRACE_NPI, "GH-100235", "Ryan", "Perez", born(age=41, month=5, day=5), "male", "UCH100000012"),
    (GRACE_NPI, "GH-100236", "James", "Wright", born(age=63, month=9, day=3), "male", "UCH100000015"),
    (GRACE_NPI, "GH-100237", "Amy", "Taylor", born(age=71, month=2, day=24), "female", "UCH100000021"),
    (GRACE_NPI, "GH-100238", "Michelle", "Robinson", born(age=57, month=8, day=8), "female", "UCH100000024"),
    # Members UnitedCare does not attribute to Grace Hospital: without an attestation the
    # fetch says "no data"; with one, $provider-member-match finds them.
    (GRACE_NPI, "GH-100239", "Kathleen", "Hernandez", born(age=56, month=12, day=1), "female", "UCH100000002"),
    (GRACE_NPI, "GH-100240", "Richard", "Jones", born(age=83, month=9, day=14), "male", "UCH100000004"),
    (GRACE_NPI, "GH-100241", "Kevin", "O'Brien", dt.date(1988, 10, 3), "male", ""),
    (OAKVIEW_NPI, "OFP-5001", "George", "Martin", born(age=61, month=6, day=26), "male", "UCH100000005"),
]


@dataclass
class EmrDemoSummary:
    clinicians: int
    patients: int
    connection: str | None


@transaction.atomic
def emr_demo_seed(*, connection_name: str = "unitedcare") -> EmrDemoSummary:
    """Create or update the demo clinicians and patients (idempotent); patients with a
    member id get the named payer connection as their insurer when it exists.

    The connection is Grace Hospital's SMART client at UnitedCare (``make seed`` registers
    it with ``--organization-npi``); one not yet bound to an organization is bound to
    Grace here. Oakview has no client of its own at UnitedCare, so its clinicians cannot
    fetch through Grace's.
    """
    connection = PayerConnection.objects.filter(name=connection_name).first()
    if connection is not None and not connection.organization_npi:
        connection.organization_npi = GRACE_NPI
        connection.save(update_fields=["organization_npi"])
    User = get_user_model()
    for username, display_name, org_name, npi, password, clinician_npi in CLINICIANS:
        user, created = User.objects.get_or_create(username=username)
        if created or not user.has_usable_password():
            user.set_password(password)
            user.save()
        Clinician.objects.update_or_create(
            user=user,
            defaults={"display_name": display_name, "organization_name": org_name, "organization_npi": npi,
                      "npi": clinician_npi},
        )
    for npi, mrn, given, family, birth_date, gender, member_id in PATIENTS:
        HospitalPatient.objects.update_or_create(
            organization_npi=npi,
            mrn=mrn,
            defaults={
                "given": given, "family": family, "birth_date": birth_date, "gender": gender,
                "member_id": member_id, "insurer": connection if member_id else None,
            },
        )
    return EmrDemoSummary(
        clinicians=len(CLINICIANS), patients=len(PATIENTS), connection=connection.display_name if connection else None
    )
