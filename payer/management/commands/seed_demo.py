"""Create or update the demo scenario (idempotent)."""

from django.core.management.base import BaseCommand

from payer.services.demo import JACK_SHAW_MEMBER_ID, seed_demo


class Command(BaseCommand):
    help = "Create or update the demo scenario: UnitedCare Health, Grace Hospital, Dr. James Smith, Jack Shaw."

    def handle(self, *args, **options) -> None:
        summary = seed_demo()
        self.stdout.write(self.style.SUCCESS("Demo data is in place."))
        self.stdout.write("Provider organizations (name, NPI, contract):")
        for name, npi, state in summary.organizations:
            self.stdout.write(f"  {name:<34} NPI {npi}  {state}")
        self.stdout.write(f"Dr. James Smith NPI {summary.dr_smith_npi}; Jack Shaw member id {JACK_SHAW_MEMBER_ID}")
        self.stdout.write(
            f"{summary.members} members, {summary.clinical_resources} clinical resources (member records), "
            f"{summary.claims} claims, {summary.prior_authorizations} prior authorizations."
        )
        if summary.admin_created:
            self.stdout.write("Created payer staff superuser admin / admin.")
