"""Create or update the demo scenario (idempotent)."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from payer.services.demo import (
    JACK_SHAW_MEMBER_ID,
    NEW_PATIENT_BIRTH_DATE,
    NEW_PATIENT_FAMILY,
    NEW_PATIENT_GIVEN,
    NEW_PATIENT_MEMBER_ID,
    demo_access_seed,
    seed_demo,
)
from payer.services.demo_keys import demo_key_kid, demo_key_path
from payer.services.notices import notices_send_due


class Command(BaseCommand):
    help = "Create or update the demo scenario: UnitedCare Health, Grace Hospital, Dr. James Smith, Jack Shaw."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--key-dir", type=Path, default=settings.VAR_DIR / "keys",
            help="Where Grace Hospital's demo private key is kept (created once).",
        )

    def handle(self, *args, key_dir: Path, **options) -> None:
        summary = seed_demo()
        client = demo_access_seed(key_dir=key_dir)
        self.stdout.write(self.style.SUCCESS("Demo data is in place."))
        self.stdout.write("Provider organizations (name, NPI, contract):")
        for name, npi, state in summary.organizations:
            self.stdout.write(f"  {name:<34} NPI {npi}  {state}")
        self.stdout.write(f"Dr. James Smith NPI {summary.dr_smith_npi}; Jack Shaw member id {JACK_SHAW_MEMBER_ID}")
        self.stdout.write(
            f"New patient (no claims at Grace Hospital; found by $provider-member-match): {NEW_PATIENT_GIVEN} "
            f"{NEW_PATIENT_FAMILY}, born {NEW_PATIENT_BIRTH_DATE.isoformat()}, male, member id {NEW_PATIENT_MEMBER_ID}"
        )
        self.stdout.write(
            f"{summary.members} members, {summary.clinical_resources} clinical resources (member records), "
            f"{summary.claims} claims, {summary.prior_authorizations} prior authorizations."
        )
        self.stdout.write(
            f"Grace Hospital's SMART client: {client.client_id}, key "
            f"{demo_key_path(key_dir=key_dir, client_id=client.client_id)} (kid {demo_key_kid(client_id=client.client_id)})"
        )
        # 42 CFR 422.121(a)(4): members hear how sharing works before any of their data leaves.
        sent = notices_send_due(batch_size=summary.members + 1)
        self.stdout.write(f"Provider Access notices: {sent.sent} emailed, {sent.letters} letters to print "
                          f"(under {settings.STORAGES['default']['OPTIONS']['location']}/notices/).")
        if summary.admin_created:
            self.stdout.write("Created payer staff superuser admin / admin.")
