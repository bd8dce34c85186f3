"""Import FHIR R4 Bundles and NDJSON files into the clinical repository."""

from django.core.management.base import BaseCommand, CommandError

from payer.services.imports.fhir import fhir_import
from payer.services.imports.report import ProgressBar


class Command(BaseCommand):
    help = ("Import FHIR R4 Bundles (collection, transaction, batch, searchset, history) and NDJSON files or "
            "folders of them into the clinical repository; print a summary.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("paths", nargs="+", metavar="PATH")
        parser.add_argument("--report", metavar="PATH", help="Write the machine-readable report (JSON) here.")
        parser.add_argument("--no-validate", action="store_true", help="Skip validation with the R4B models.")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, paths: list[str], report: str | None, no_validate: bool, no_progress: bool, **options) -> None:
        bar = ProgressBar(self.stderr, label="import_fhir", enabled=not no_progress)
        try:
            result = fhir_import(paths=paths, validate=not no_validate, progress=bar, report_path=report)
        except FileNotFoundError as error:
            raise CommandError(str(error)) from error
        finally:
            bar.close()
        for line in result.summary_lines():
            self.stdout.write(line)
        if result.error_count:
            # A scheduler sees the failure in the exit status; the rest was loaded.
            raise CommandError(f"{result.error_count} items could not be imported (see above).", returncode=2)
