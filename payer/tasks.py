"""Celery tasks of the payer: thin wrappers that take ids and call one service."""

import dataclasses

from celery import shared_task

from payer.services.attribution import attribution_refresh


@shared_task(acks_late=True)
def attribution_refresh_task() -> dict:
    # Idempotent (upserts on the unique (group, member)), so acks_late is safe.
    return dataclasses.asdict(attribution_refresh())

