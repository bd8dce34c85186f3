"""Factories shared by the tests: plain functions that create saved model rows."""


# --- payer: provider directory, contracts, members, claims, clinical data (h3access) ---------
import datetime as _dt  # noqa: E402
import itertools as _itertools  # noqa: E402
from decimal import Decimal as _Decimal  # noqa: E402

from django.utils import timezone as _timezone  # noqa: E402

from payer import models as _payer  # noqa: E402

_seq = _itertools.count(1)


def _npi() -> str:
    """Return a fresh 10-digit NPI-shaped number (not Luhn-checked; nothing here checks it)."""
    return f"{1_900_000_000 + next(_seq):010d}"


def organization_create(*, name: str = "", npi: str = "", fhir_id: str = "") -> "_payer.ProviderOrganization":
    npi = npi or _npi()
    return _payer.ProviderOrganization.objects.create(
        npi=npi, name=name or f"Organization {npi}", fhir_id=fhir_id or f"org-{npi}"
    )


def practitioner_create(*, organization, npi: str = "", family: str = "Smith", given: str = "James"):
    npi = npi or _npi()
    return _payer.ProviderPractitioner.objects.create(
        npi=npi,
        family=family,
        given=given,
        taxonomy_code="207R00000X",
        taxonomy_display="Internal Medicine",
        organization=organization,
        fhir_id=f"prac-{npi}",
    )


def contract_create(*, organization, start: _dt.date | None = None, end: _dt.date | None = None):
    """Create a network contract; by default in force from a year ago, open-ended."""
    return _payer.NetworkContract.objects.create(
        organization=organization,
        contract_number=f"NC-{next(_seq):06d}",
        start=start or _timezone.localdate() - _dt.timedelta(days=365),
        end=end,
    )


def member_create(*, family: str = "Shaw", given: str = "Jack", opted_out: bool = False, member_id: str = ""):
    n = next(_seq)
    return _payer.Member.objects.create(
        member_id=member_id or f"UC{n:08d}",
        patient_id=f"pat-{n}",
        family=family,
        given=given,
        birth_date=_dt.date(1970, 1, 1),
        gender="male",
        opted_out=opted_out,
    )


def opt_out_create(*, member, opted_out: bool = True, channel: str = "web"):
    """Record an opt-out change as the opt-out page does: the flag and its history row."""
    member.opted_out = opted_out
    member.save(update_fields=["opted_out"])
    return _payer.OptOutEvent.objects.create(member=member, opted_out=opted_out, channel=channel, changed_by="member")


def attribution_create(*, organization, member, start: _dt.date | None = None, end: _dt.date | None = None,
                       source: str = "manual"):
    from payer.services.attribution import attribution_group_ensure

    group = attribution_group_ensure(organization=organization)
    return _payer.AttributionMember.objects.create(
        group=group, member=member, start=start or _timezone.localdate() - _dt.timedelta(days=30), end=end,
        source=source, reason="test", changed_by="test",
    )


def claim_create(*, member, billing_npi: str = "", rendering_npi: str = "", service_end: _dt.date | None = None,
                 service_start: _dt.date | None = None, updated_at=None, claim_number: str = ""):
    service_end = service_end or _timezone.localdate() - _dt.timedelta(days=10)
    return _payer.Claim.objects.create(
        claim_number=claim_number or f"CLM-{next(_seq):08d}",
        member=member,
        claim_type=_payer.Claim.ClaimType.PROFESSIONAL,
        status=_payer.Claim.Status.PAID,
        billing_npi=billing_npi or _npi(),
        rendering_npi=rendering_npi,
        service_start=service_start or service_end,
        service_end=service_end,
        received_date=service_end,
        processed_date=service_end,
        total_charged=_Decimal("100.00"),
        total_paid=_Decimal("80.00"),
        updated_at=updated_at or _timezone.now(),
    )


def clinical_resource_create(*, resource_type: str, patient_id: str = "", resource_id: str = "", last_updated=None,
                             date=None, resource: dict | None = None):
    """Store a minimal valid R4 resource of ``resource_type`` in the clinical repository."""
    resource_id = resource_id or f"{resource_type.lower()}-{next(_seq)}"
    last_updated = last_updated or _timezone.now()
    body = resource or _minimal_resource(resource_type, resource_id, patient_id, date)
    body = {**body, "resourceType": resource_type, "id": resource_id}
    return _payer.ClinicalResource.objects.create(
        resource_type=resource_type,
        resource_id=resource_id,
        last_updated=last_updated,
        patient_id=resource_id if resource_type == "Patient" else patient_id,
        date=date,
        resource=body,
    )


def _minimal_resource(resource_type: str, resource_id: str, patient_id: str, date) -> dict:
    subject = {"reference": f"Patient/{patient_id}"}
    when = (date or _timezone.now()).isoformat()
    return {
        "Patient": {"name": [{"family": "Shaw", "given": ["Jack"]}], "gender": "male"},
        "Encounter": {"status": "finished", "class": {"code": "AMB"}, "subject": subject,
                      "period": {"start": when}},
        "Condition": {"subject": subject, "code": {"text": "Hypertension"}},
        "Observation": {"status": "final", "code": {"text": "Heart rate"}, "subject": subject},
        "Coverage": {"status": "active", "beneficiary": subject, "payor": [{"display": "UnitedCare Health"}]},
        "Practitioner": {"name": [{"family": "Smith", "given": ["James"]}]},
        "Organization": {"name": "Grace Hospital"},
    }.get(resource_type, {"subject": subject})


# --- EMR ----------------------------------------------------------------------------------


def clinician_create(*, username: str = "", organization_name: str = "Grace Hospital", organization_npi: str = "1234567893",
                     display_name: str = "Dr. James Smith", password: str = "pw-test-123"):
    import uuid as _uuid

    from django.contrib.auth import get_user_model

    from emr.models import Clinician

    user = get_user_model().objects.create_user(username=username or f"user{_uuid.uuid4().hex[:8]}", password=password)
    return Clinician.objects.create(user=user, display_name=display_name, organization_name=organization_name,
                                    organization_npi=organization_npi)


def hospital_patient_create(*, organization_npi: str = "1234567893", family: str = "Shaw", given: str = "Jack",
                            birth_date: _dt.date = _dt.date(1961, 2, 17), insurer=None, member_id: str = "",
                            payer_patient_id: str = "", mrn: str = ""):
    import uuid as _uuid

    from django.utils import timezone as _tz

    from emr.models import HospitalPatient, PatientSync
    from provider.models import SyncJob

    patient = HospitalPatient.objects.create(organization_npi=organization_npi, mrn=mrn or f"MRN-{_uuid.uuid4().hex[:8]}",
                                             family=family, given=given, birth_date=birth_date, gender="male",
                                             insurer=insurer, member_id=member_id, payer_patient_id=payer_patient_id)
    if payer_patient_id:
        # The EMR shows a payer Patient's history only through a completed fetch of the
        # patient by their own organization (emr.selectors.linked_payer_patient_id).
        job = SyncJob.objects.create(connection=insurer, level="group", scope_key=f"test|{member_id}", member_id=member_id,
                                     patient_ids=[payer_patient_id], status=SyncJob.Status.COMPLETED, finished_at=_tz.now())
        PatientSync.objects.create(patient=patient, job=job)
    return patient
