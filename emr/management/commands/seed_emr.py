"""Create or update the EMR demo: Grace Hospital's clinicians and patients (idempotent)."""

from django.core.management.base import BaseCommand

from emr.demo import CLINICIANS, emr_demo_seed


class Command(BaseCommand):
    help = "Create Grace Hospital's clinicians (jsmith / grace-demo) and registered patients, Jack Shaw among them."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--connection", default="unitedcare", help="The payer connection of the patients' insurer.")

    def handle(self, *args, connection: str, **options) -> None:
        summary = emr_demo_seed(connection_name=connection)
        self.stdout.write(self.style.SUCCESS(f"EMR demo: {summary.clinicians} clinicians, {summary.patients} patients."))
        for username, display_name, org, _, password, _ in CLINICIANS:
            self.stdout.write(f"  {display_name:<18} {org:<24} login {username} / {password}")
        if summary.connection:
            self.stdout.write(f"Insured patients are linked to the payer connection {summary.connection}.")
        else:
            self.stdout.write(self.style.WARNING(
                f"No payer connection named {connection!r} yet: run seed_emr again after adding it to enable Fetch."
            ))
