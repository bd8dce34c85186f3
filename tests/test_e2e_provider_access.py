"""End to end: Grace Hospital fetches Jack Shaw's history from this project's payer.

Over real HTTP (live_server) with a real Celery worker. The test may import payer to set
up the payer's side; the provider code under test talks to it only over HTTP.
"""

import pytest
from django.db import transaction

from payer.models import AttributionMember, ClinicalResource, ProviderOrganization
from payer.services.attribution import attribution_refresh
from payer.services.demo import GRACE_HOSPITAL_NPI, JACK_SHAW_MEMBER_ID, JACK_SHAW_PATIENT_ID, seed_demo
from payer.services.demo_keys import demo_client_ensure, demo_key_kid
from provider.models import LocalResource, SyncJob
from provider.services.connections import payer_connection_create
from provider.services.sync import sync_job_start
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def test_grace_hospital_fetches_jack_shaws_history(live_server, celery_worker, tmp_path):
    seed_demo(create_admin=False)
    attribution_refresh()
    grace = ProviderOrganization.objects.get(npi=GRACE_HOSPITAL_NPI)
    client = demo_client_ensure(organization=grace, key_dir=tmp_path, client_id="grace-hospital-e2e")
    connection = payer_connection_create(
        name="unitedcare", display_name="UnitedCare Health", fhir_base_url=f"{live_server.url}/payer/fhir",
        client_id=client.client_id, private_key_path=str(tmp_path / f"{client.client_id}.pem"),
        key_id=demo_key_kid(client_id=client.client_id), organization_npi=GRACE_HOSPITAL_NPI,
    )
    with transaction.atomic():
        job = sync_job_start(connection=connection, member_id=JACK_SHAW_MEMBER_ID)

    def finished():
        job.refresh_from_db()
        return job.status not in {SyncJob.Status.PENDING, SyncJob.Status.KICKED_OFF, SyncJob.Status.DOWNLOADING,
                                  SyncJob.Status.INGESTING} and job

    wait_for(finished, timeout=180, interval=0.5, message=f"Jack's sync job\n{celery_worker.log()[-3000:]}")
    assert job.status == SyncJob.Status.COMPLETED, f"{job.status}: {job.error}"
    assert job.patient_ids == [JACK_SHAW_PATIENT_ID]
    # The payer declares PDex $davinci-data-export: the first fetch is #provider-download
    # through it, so the payer records the transmission (lastTransmitted) for Jack.
    assert (job.operation, job.export_type) == ("$davinci-data-export", "hl7.fhir.us.davinci-pdex#provider-download")
    sent = AttributionMember.objects.get(group__organization=grace, member__patient_id=JACK_SHAW_PATIENT_ID)
    assert sent.last_transmitted == job.transaction_time
    at_payer = set(ClinicalResource.objects.filter(resource_type="Encounter", patient_id=JACK_SHAW_PATIENT_ID)
                   .values_list("resource_id", flat=True))
    local = set(LocalResource.objects.filter(resource_type="Encounter", patient_id=JACK_SHAW_PATIENT_ID)
                .values_list("resource_id", flat=True))
    assert at_payer and local == at_payer  # every encounter, and only Jack's

    # The second fetch asks only for changes since the first export.
    with transaction.atomic():
        again = sync_job_start(connection=connection, member_id=JACK_SHAW_MEMBER_ID)
    assert again.since == job.transaction_time
    job = again
    wait_for(finished, timeout=120, interval=0.5, message="the incremental sync job")
    assert job.status in {SyncJob.Status.COMPLETED}, job.error
    assert job.export_type == "hl7.fhir.us.davinci-pdex#provider-delta"
    assert sum(job.counts.values()) < len(at_payer)
