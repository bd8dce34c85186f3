"""Print where the demo runs and how to log in."""

from django.core.management.base import BaseCommand

from payer.services.demo import ADMIN_PASSWORD, ADMIN_USERNAME, JACK_SHAW_MEMBER_ID


class Command(BaseCommand):
    help = "Print the demo URLs and logins."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args, port: int, **options) -> None:
        base = f"http://127.0.0.1:{port}"
        lines = [
            "",
            "Provider Access demo",
            f"  Home                     {base}/",
            f"  Payer admin              {base}/admin/   (payer staff: {ADMIN_USERNAME} / {ADMIN_PASSWORD})",
            f"  Member opt-out           {base}/payer/opt-out/   (e.g. member {JACK_SHAW_MEMBER_ID}, Shaw, 1961-03-14)",
            f"  Who received my data     {base}/payer/my-data/   (the same member details)",
            f"  Provider directory       {base}/payer/providers/",
            f"  FHIR CapabilityStatement {base}/payer/fhir/metadata",
        ]
        # The EMR's logins are the hospital's: `manage.py emr_banner` prints them (the payer
        # never imports the hospital's code).
        lines += [
            "  Worker log: var/worker.log. Ctrl-C stops the server and the worker.",
            "",
        ]
        self.stdout.write("\n".join(lines))
