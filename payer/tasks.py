"""Celery tasks of the payer: thin wrappers that take ids and call one service."""

import dataclasses

from celery import shared_task

from payer.services import export as export_services
from payer.services.attribution import attribution_refresh
from payer.services.audit import audit_purge
from payer.services.auth import access_tokens_purge
from payer.services.imports.claims import claims_import
from payer.services.imports.fhir import fhir_import
from payer.services.notices import notices_send_due


@shared_task(acks_late=True)
def attribution_refresh_task() -> dict:
    # Idempotent (upserts on the unique (group, member)), so acks_late is safe.
    return dataclasses.asdict(attribution_refresh())


# --- Bulk Data exports (payer/services/export.py) ---------------------------------------

@shared_task(acks_late=True, max_retries=5, autoretry_for=(OSError,), retry_backoff=True)
def export_unit_run_task(unit_id: int) -> None:
    # Safe twice: the unit is claimed by an atomic UPDATE and its parts are overwritten.
    export_services.export_unit_run(unit_id=unit_id)


@shared_task(acks_late=True)
def export_reconcile_task() -> dict:
    return export_services.export_reconcile()


@shared_task(acks_late=True)
def export_purge_task() -> int:
    return export_services.export_purge()


@shared_task
def access_tokens_purge_task() -> int:
    return access_tokens_purge()


# --- Imports of the plan's own data (payer/services/imports/) ---------------------------

@shared_task(acks_late=True)
def fhir_import_task(paths: list[str], report_path: str | None = None) -> dict:
    # Safe twice: a resource already stored is unchanged unless the feed's version is newer.
    return fhir_import(paths=paths, report_path=report_path).as_dict()


@shared_task(acks_late=True)
def claims_import_task(folder: str, report_path: str | None = None) -> dict:
    # Safe twice: rows are upserted on natural keys and an unchanged row is not written.
    return claims_import(folder=folder, report_path=report_path).as_dict()
# --- Notices and audit retention (payer/services/notices.py, payer/services/audit.py) ----

@shared_task(acks_late=True)
def notices_send_task() -> dict:
    # Safe twice: each occasion is claimed by a UniqueConstraint before it is sent.
    return dataclasses.asdict(notices_send_due())


@shared_task
def audit_purge_task() -> int | None:
    purge = audit_purge(run_by="celery beat")
    return purge.deleted if purge else None
