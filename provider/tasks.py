"""Celery wrappers for sync jobs: each takes ids and calls one service.

Every task is safe to run twice (the services claim jobs and files and guard on status),
so they acknowledge late: a killed worker's task is delivered again.
"""

from celery import shared_task

from provider.services import sync


@shared_task(acks_late=True, ignore_result=True)
def sync_job_advance_task(job_id: int) -> None:
    sync.sync_job_advance(job_id=job_id)


@shared_task(acks_late=True, ignore_result=True)
def sync_file_advance_task(file_id: int) -> None:
    sync.sync_file_advance(file_id=file_id)


@shared_task(ignore_result=True)
def sync_jobs_resume_task() -> None:
    sync.sync_jobs_resume()


@shared_task(ignore_result=True)
def panel_syncs_run_task() -> None:
    sync.panel_syncs_run()
