"""The attribution refresh goes through the configured broker to a real Celery worker process."""

import datetime

import pytest
from django.utils import timezone

from payer.models import AttributionMember
from payer.tasks import attribution_refresh_task
from tests.conftest import wait_for
from tests.factories import claim_create, member_create, organization_create, practitioner_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def test_attribution_refresh_task_runs_in_a_real_worker(celery_worker, transactional_db):
    org = organization_create(name="Grace Hospital")
    doctor = practitioner_create(organization=org)
    recent, stale = member_create(), member_create()
    first = timezone.localdate() - datetime.timedelta(days=200)
    claim_create(member=recent, rendering_npi=doctor.npi, service_end=first)
    claim_create(member=recent, rendering_npi=doctor.npi, service_end=timezone.localdate() - datetime.timedelta(days=5))
    claim_create(member=stale, rendering_npi=doctor.npi, service_end=timezone.localdate() - datetime.timedelta(days=800))

    attribution_refresh_task.delay()

    entry = wait_for(
        lambda: AttributionMember.objects.filter(group__organization=org, member=recent).first(),
        timeout=60,
        message=f"the worker to attribute the member (log:\n{celery_worker.log()})",
    )
    assert (entry.source, entry.start, entry.end) == (AttributionMember.Source.CLAIMS, first, None)
    assert not AttributionMember.objects.filter(member=stale).exists()
    assert "attribution_refresh_task" in celery_worker.log() and "succeeded" in celery_worker.log()
