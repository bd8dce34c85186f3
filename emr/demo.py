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
DEMO_PASSWORD = "grace-demo"

# (username, display name, organization name, NPI, password)
CLINICIANS = [
    ("jsmith", "Dr. James Smith", GRACE_NAME, GRACE_NPI, DEMO_PASSWORD),
    ("apatel", "Dr. Anika Patel", GRACE_NAME, GRACE_NPI, DEMO_PASSWORD),
    ("rlee", "Dr. Robert Lee", OAKVIEW_NAME, OAKVIEW_NPI, "oakview-demo"),
]
# (organization NPI, MRN, given, family, birth date, gender, member id or "" for self-pay)
PATIENTS = [
    (GRACE_NPI, "GH-100231", "Jack", "Shaw", dt.date(1961, 3, 14), "male", JACK_SHAW_MEMBER_ID),
    (GRACE_NPI, "GH-100232", "Maria", "Gonzalez", dt.date(1974, 8, 2), "female", "UCH100000003"),
    (GRACE_NPI, "GH-100233", "David", "Nguyen", dt.date(1958, 11, 23), "male", "UCH100000006"),
    (GRACE_NPI, "GH-100234", "Linda", "Okafor", dt.date(1983, 1, 9), "female", "UCH100000009"),
    (GRACE_NPI, "GH-100235", "Thomas", "Becker", dt.date(1949, 6, 30), "male", "UCH100000012"),
    (GRACE_NPI, "GH-100236", "Sarah", "Kim", dt.date(1992, 4, 17), "female", "UCH100000015"),
    (GRACE_NPI, "GH-100237", "Ahmed", "Hassan", dt.date(1967, 12, 5), "male", "UCH100000018"),
    (GRACE_NPI, "GH-100238", "Emily", "Carter", dt.date(2001, 9, 12), "female", "UCH100000021"),
    # A member UnitedCare does not attribute to Grace Hospital: the fetch says "no data".
    (GRACE_NPI, "GH-100239", "Robert", "Walsh", dt.date(1955, 2, 28), "male", "UCH100000002"),
    (GRACE_NPI, "GH-100240", "Patricia", "Moreno", dt.date(1979, 7, 21), "female", "UCH100000004"),
    (GRACE_NPI, "GH-100241", "Kevin", "O'Brien", dt.date(1988, 10, 3), "male", ""),
    (OAKVIEW_NPI, "OFP-5001", "Helen", "Shaw", dt.date(1963, 5, 1), "female", "UCH100000005"),
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
    for username, display_name, org_name, npi, password in CLINICIANS:
        user, created = User.objects.get_or_create(username=username)
        if created or not user.has_usable_password():
            user.set_password(password)
            user.save()
        Clinician.objects.update_or_create(
            user=user, defaults={"display_name": display_name, "organization_name": org_name, "organization_npi": npi}
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
