"""Import a claims extract (docs/claims-extract.md) into the claims system and provider directory."""

import datetime

from django.core.management.base import BaseCommand, CommandError

from payer.services.imports.claims import claims_import
from payer.services.imports.report import ProgressBar


class Command(BaseCommand):
    help = ("Import a folder of CSV files (members, coverage periods, providers, contracts, claims, lines, "
            "diagnoses, prior authorizations; see docs/claims-extract.md); print a summary.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("folder", metavar="DIR")
        parser.add_argument("--report", metavar="PATH", help="Write the machine-readable report (JSON) here.")
        parser.add_argument("--today", type=datetime.date.fromisoformat, help="Attribution as of this day (YYYY-MM-DD).")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, folder: str, report: str | None, today, no_progress: bool, **options) -> None:
        bar = ProgressBar(self.stderr, label="import_claims", enabled=not no_progress)
        try:
            result = claims_import(folder=folder, progress=bar, report_path=report, today=today)
        except FileNotFoundError as error:
            raise CommandError(str(error)) from error
        finally:
            bar.close()
        for line in result.summary_lines():
            self.stdout.write(line)
        self.stdout.write(f"claims changed {result.extra['claims_changed']}, attribution refreshed for "
                          f"{result.extra['attribution_members_refreshed']} members")
        if result.error_count:
            raise CommandError(f"{result.error_count} rows could not be imported (see above).", returncode=2)
