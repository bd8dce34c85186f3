"""Print where the EMR runs and its demo logins (the hospital's half of ``make demo``'s banner)."""

from django.core.management.base import BaseCommand

from emr.demo import CLINICIANS, GRACE_NAME


class Command(BaseCommand):
    help = "Print the EMR's URL and the demo clinicians' logins."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args, port: int, **options) -> None:
        lines = [
            f"  EMR ({GRACE_NAME})     http://127.0.0.1:{port}/emr/",
            "  EMR logins:",
            *[f"    {name:<17} {org:<24} {user} / {password}" for user, name, org, _, password, _ in CLINICIANS],
            "  Open Jack Shaw in the EMR and press 'Fetch history from UnitedCare Health'.",
            "",
        ]
        self.stdout.write("\n".join(lines))
