"""The ExplanationOfBenefit projection: mapped once per change of a claim or prior
authorization, with tombstones for deletions (issue 11), and what the export streams."""

import datetime

import pytest
from django.utils import timezone

from payer.mapping import claim_to_eob
from payer.models import Claim, EobProjection
from payer.services.eob_projection import eob_projection_refresh
from tests.factories import claim_create, member_create

pytestmark = pytest.mark.django_db


def test_refresh_maps_only_what_changed_and_tombstones_deletions():
    member = member_create()
    claims = [claim_create(member=member) for _ in range(3)]
    assert eob_projection_refresh().mapped == 3
    assert eob_projection_refresh().mapped == 0  # nothing changed: nothing mapped
    row = EobProjection.objects.get(source_pk=claims[0].pk)
    assert row.resource == claim_to_eob(Claim.objects.get(pk=claims[0].pk))  # the mapping decides the content

    # A change of the source (its updated_at) maps that one again.
    Claim.objects.filter(pk=claims[1].pk).update(status=Claim.Status.DENIED, updated_at=timezone.now())
    assert eob_projection_refresh().mapped == 1
    assert EobProjection.objects.get(source_pk=claims[1].pk).resource == claim_to_eob(Claim.objects.get(pk=claims[1].pk))

    # A claim that leaves the claims system leaves a tombstone, not a stale EOB.
    eob_id = EobProjection.objects.get(source_pk=claims[2].pk).resource_id
    claims[2].delete()
    result = eob_projection_refresh()
    assert (result.mapped, result.deleted) == (0, 1)
    tomb = EobProjection.objects.get(resource_id=eob_id)
    assert tomb.deleted_at is not None and tomb.resource is None
    assert eob_projection_refresh().deleted == 0  # a tombstone is written once

    # A backdated change is still found: staleness is "updated_at differs", not a watermark.
    Claim.objects.filter(pk=claims[0].pk).update(updated_at=timezone.now() - datetime.timedelta(days=900))
    assert eob_projection_refresh().mapped == 1
    # The same number used again after a deletion replaces the tombstone.
    claim_create(member=member, claim_number=claims[2].claim_number)
    assert eob_projection_refresh().mapped == 1
    assert EobProjection.objects.get(resource_id=eob_id).deleted_at is None
    assert eob_projection_refresh(full=True).mapped == 3
