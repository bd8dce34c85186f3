"""The audit trail answers "whose data went where", and nobody can change or erase it.

Audit rows, opt-out history, notices and the hospital's access events are read-only in the
admin for every user (superusers included), and the database refuses UPDATE and DELETE too;
audit rows leave only through the logged retention purge.
"""

import datetime as dt

import pytest
from django.db import DatabaseError, transaction
from django.utils import timezone

from emr.models import AccessEvent
from payer.models import AuditEvent, AuditPurge, AuditSubject, Notice, OptOutEvent
from payer.services.access_history import member_shared_with
from payer.services.audit import audit_purge, audit_record
from payer.services.notices import notice_send
from tests.factories import (
    clinician_create,
    hospital_patient_create,
    member_create,
    opt_out_create,
    organization_create,
)

pytestmark = pytest.mark.django_db


class _Client:
    def __init__(self, client_id, organization):
        self.client_id, self.organization = client_id, organization


def _refused(operation) -> bool:
    try:
        with transaction.atomic():
            operation()
    except DatabaseError as error:
        return "append-only" in str(error)
    return False


@pytest.fixture
def jack():
    return member_create(family="Shaw", given="Jack", member_id="UCH100000001")


@pytest.fixture
def jane():
    return member_create(family="Doe", given="Jane", member_id="UCH100000015")


def test_audit_rows_name_their_members_and_the_admin_filters_by_member(admin_client, jack, jane):
    grace = organization_create(name="Grace Hospital")
    oakview = organization_create(name="Oakview Family Practice")
    audit_record(action="export-data", outcome="success", client=_Client("grace-ehr", grace),
                 patient_ids=[jack.patient_id], resource_types=["Encounter", "ExplanationOfBenefit"])
    audit_record(action="search", outcome="success", client=_Client("oak-ehr", oakview),
                 patient_ids=[jane.patient_id], resource_types=["Condition"])
    audit_record(action="export-data", outcome="success", client=_Client("grace-ehr", grace),
                 patient_ids=[jack.patient_id, jane.patient_id], resource_types=["Practitioner", "Patient"])

    assert AuditSubject.objects.filter(member=jack).count() == 2
    response = admin_client.get("/admin/payer/auditevent/", {"member": jack.pk})
    assert response.status_code == 200
    rows = list(response.context["cl"].result_list)
    assert len(rows) == 2 and all(jack in event.members.all() for event in rows)
    assert b"Jack Shaw (UCH100000001)" in response.content
    # By organization, client, action, outcome and date.
    by_org = admin_client.get("/admin/payer/auditevent/", {"organization_npi": oakview.npi})
    assert [e.client_id for e in by_org.context["cl"].result_list] == ["oak-ehr"]
    for query in ({"client_id": "grace-ehr"}, {"action": "search"}, {"outcome__exact": "success"},
                  {"created_at__gte": f"{timezone.localdate().isoformat()} 00:00:00+00:00"}):
        assert admin_client.get("/admin/payer/auditevent/", query).status_code == 200
    assert len(admin_client.get("/admin/payer/auditevent/", {"client_id": "grace-ehr"}).context["cl"].result_list) == 2
    # Searching the member id finds exactly that member's rows, not a patient id that contains it.
    found = admin_client.get("/admin/payer/auditevent/", {"q": "UCH100000001"}).context["cl"].result_list
    assert {e.pk for e in found} == {e.pk for e in rows}
    # Readable names and details, no raw JSON.
    detail = admin_client.get(f"/admin/payer/auditevent/{rows[0].pk}/change/")
    assert detail.status_code == 200 and b"AuditEvent object" not in detail.content
    assert b"Encounter, ExplanationOfBenefit" in detail.content or b"Patient, Practitioner" in detail.content
    assert "export-data by grace-ehr: success" in str(rows[0])

    # The member's page: "shared with", one row per organization, shared directory data left out.
    shared = member_shared_with(member=jack)
    assert [(r.organization, r.times, r.kinds) for r in shared] == [
        ("Grace Hospital", 2, ["claims", "visits", "your name, date of birth and address"])]
    page = admin_client.get(f"/admin/payer/member/{jack.pk}/change/")
    assert b"Shared with" in page.content and b"Grace Hospital" in page.content
    assert b"Oakview" not in page.content


def test_nobody_can_change_or_delete_audit_opt_out_notice_or_access_rows_in_the_admin(admin_client, jack):
    event = audit_record(action="read", outcome="success", patient_ids=[jack.patient_id])
    opt_out = opt_out_create(member=jack)
    notice = notice_send(member=jack, kind=Notice.Kind.INITIAL, period="initial")
    access = AccessEvent.objects.create(organization_npi="1234567893", patient=hospital_patient_create(),
                                        action="view", user=clinician_create().user)
    for url, obj in (("payer/auditevent", event), ("payer/optoutevent", opt_out), ("payer/notice", notice),
                     ("emr/accessevent", access)):
        assert admin_client.get(f"/admin/{url}/{obj.pk}/change/").status_code == 200  # readable
        assert admin_client.post(f"/admin/{url}/{obj.pk}/delete/", {"post": "yes"}).status_code == 403
        assert admin_client.post(f"/admin/{url}/{obj.pk}/change/", {}).status_code == 403
        assert admin_client.get(f"/admin/{url}/add/").status_code == 403
        listing = admin_client.get(f"/admin/{url}/")
        assert b'value="delete_selected"' not in listing.content
        assert type(obj).objects.filter(pk=obj.pk).exists()
    # Members cannot be deleted either; their records must outlive them.
    assert admin_client.post(f"/admin/payer/member/{jack.pk}/delete/", {"post": "yes"}).status_code == 403
    assert b"delete_selected" not in admin_client.get("/admin/payer/member/").content


def test_the_database_refuses_to_change_or_delete_the_records(jack):
    event = audit_record(action="read", outcome="success", patient_ids=[jack.patient_id])
    opt_out = opt_out_create(member=jack)
    notice = notice_send(member=jack, kind=Notice.Kind.INITIAL, period="initial")
    access = AccessEvent.objects.create(organization_npi="1234567893", patient=hospital_patient_create(), action="view")

    assert _refused(lambda: AuditEvent.objects.filter(pk=event.pk).update(detail="nothing to see"))
    assert _refused(lambda: AuditEvent.objects.filter(pk=event.pk).delete())
    assert _refused(lambda: AuditSubject.objects.filter(event=event).delete())
    assert _refused(lambda: OptOutEvent.objects.filter(pk=opt_out.pk).update(opted_out=False))
    assert _refused(lambda: OptOutEvent.objects.filter(pk=opt_out.pk).delete())
    assert _refused(lambda: Notice.objects.filter(pk=notice.pk).update(outcome=Notice.Outcome.FAILED))
    assert _refused(lambda: Notice.objects.filter(pk=notice.pk).delete())
    assert _refused(lambda: AccessEvent.objects.filter(pk=access.pk).update(detail="edited"))
    assert _refused(lambda: AccessEvent.objects.filter(pk=access.pk).delete())
    # The one change allowed: a removed user's access events keep everything but the user.
    AccessEvent.objects.filter(pk=access.pk).update(user=None)
    assert AuditEvent.objects.get(pk=event.pk).detail == "" and OptOutEvent.objects.get(pk=opt_out.pk).opted_out


def test_old_audit_rows_leave_only_through_the_logged_retention_purge(settings, jack, caplog):
    old = audit_record(action="read", outcome="success", patient_ids=[jack.patient_id])
    recent = audit_record(action="read", outcome="success", patient_ids=[jack.patient_id])
    assert audit_purge(run_by="test") is None  # PA_AUDIT_RETENTION_DAYS=0: keep forever
    assert AuditEvent.objects.count() == 2 and not AuditPurge.objects.exists()

    settings.PA_AUDIT_RETENTION_DAYS = 30
    purge = audit_purge(run_by="test", retention_days=30)
    assert purge.deleted == 0 and AuditEvent.objects.count() == 2  # nothing is 30 days old
    # Rows newer than the latest cutoff are still refused.
    assert _refused(lambda: AuditEvent.objects.filter(pk=recent.pk).delete())
    # The purge runs 31 days later (the clock moved, not the rows: backdating would be an UPDATE).
    # A purge cutoff in the future of these rows: a retention of "0 days ago" deletes both.
    with pytest.MonkeyPatch.context() as patch:
        later = timezone.now() + dt.timedelta(days=31)
        patch.setattr("payer.services.audit.timezone.now", lambda: later)
        purge = audit_purge(run_by="ops@unitedcare", retention_days=30)
    assert purge.deleted == 2 and not AuditEvent.objects.filter(pk__in=[old.pk, recent.pk]).exists()
    assert "Audit retention purge by ops@unitedcare: 2 audit events" in caplog.text
    assert list(AuditPurge.objects.values_list("run_by", flat=True)) == ["ops@unitedcare", "test"]
    assert _refused(lambda: AuditPurge.objects.all().delete())
