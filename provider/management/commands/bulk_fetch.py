"""Fetch from a payer in this process (no worker needed), with a progress bar."""

import sys
from datetime import UTC, datetime, time

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_date, parse_datetime

from provider.models import PayerConnection, SyncJob
from provider.services.sync import member_bundle_build, stored_summary, sync_job_run_inline, sync_job_start, sync_job_unchanged_counts


class Command(BaseCommand):
    help = "Run a Bulk Data fetch from a payer connection now, in this process, and store what comes back."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--connection", required=True, help="The payer connection's name.")
        scope = parser.add_mutually_exclusive_group(required=True)
        scope.add_argument("--group", help="Export this Group (Group/[id]/$export).")
        scope.add_argument("--patient", nargs="+", help="Export these Patient ids (Patient/$export, POST patient=).")
        scope.add_argument("--member-id", help="The payer's member id: found in the attribution Group.")
        scope.add_argument("--system", action="store_true", help="System-level export ([base]/$export).")
        parser.add_argument("--type", nargs="+", default=None, help="Resource types (_type).")
        parser.add_argument("--type-filter", nargs="+", default=None,
                            help="_typeFilter values, e.g. 'Encounter?date=ge2024-01-01' (no _include/_sort).")
        parser.add_argument("--since", help="Only changes after this instant (_since); default: since the last fetch.")
        parser.add_argument("--parallel", type=int, default=4, help="Files downloaded at once.")
        match = parser.add_argument_group(
            "PDex 2.2 $provider-member-match (with --member-id; used when the payer declares the operation)"
        )
        match.add_argument("--family", help="The patient's family name.")
        match.add_argument("--given", help="The patient's given name.")
        match.add_argument("--birth-date", help="The patient's birth date (YYYY-MM-DD).")
        match.add_argument("--gender", choices=["male", "female", "other", "unknown"], help="The patient's sex.")
        match.add_argument("--payer-name", help="The payer on the coverage card; default: the connection's display name.")
        match.add_argument("--attest-npi", help="NPI of the practitioner attesting the treatment relationship.")
        match.add_argument("--attest-name", default="", help="That practitioner's name.")
        match.add_argument("--organization-npi", help="The organization's NPI; default: the connection's.")
        match.add_argument("--organization-name", default="", help="The organization's name.")

    def handle(self, *args, **options) -> None:
        connection = PayerConnection.objects.filter(name=options["connection"]).first()
        if connection is None:
            raise CommandError(f"No payer connection named {options['connection']!r}.")
        since = self._since(options["since"]) if options["since"] else None
        level = "system" if options["system"] else "patient" if options["patient"] else "group"
        member_bundle = self._member_bundle(options, connection)
        try:
            job = sync_job_start(
                connection=connection, member_id=options["member_id"], group_id=options["group"],
                patient_ids=options["patient"], level=level, types=options["type"], since=since,
                type_filters=options["type_filter"], enqueue=False, member_bundle=member_bundle,
            )
        except (ValueError, ValidationError) as error:  # e.g. a _typeFilter with _sort (Bulk Data req 114)
            raise CommandError(str(error)) from None
        self.stdout.write(f"Sync job {job.pk}: {level} fetch from {connection.display_name}"
                          + (f", changes since {job.since.isoformat()}" if job.since else ""))
        job = sync_job_run_inline(job=job, on_progress=self._bar, parallel=options["parallel"])
        self.stdout.write("")
        self._summary(job)

    def _member_bundle(self, options: dict, connection: PayerConnection) -> dict | None:
        """Return the MemberBundle when demographics are given; all of them, and the attestation, are then needed."""
        fields = ("family", "given", "birth_date", "gender", "attest_npi")
        given = [name for name in fields if options.get(name)]
        if not given:
            return None
        if not options["member_id"]:
            raise CommandError("Demographics and an attestation go with --member-id.")
        missing = [f"--{name.replace('_', '-')}" for name in fields if not options.get(name)]
        if missing:
            raise CommandError(f"A member match needs {', '.join(missing)} as well.")
        if not parse_date(options["birth_date"] or ""):
            raise CommandError(f"--birth-date {options['birth_date']!r} is not a date (YYYY-MM-DD).")
        now = datetime.now(UTC)
        return member_bundle_build(
            submitted_id=f"cli-{now.strftime('%Y%m%d%H%M%S')}", family=options["family"], given=options["given"],
            birth_date=options["birth_date"], gender=options["gender"], member_id=options["member_id"],
            payer_name=options["payer_name"] or connection.display_name, practitioner_npi=options["attest_npi"],
            practitioner_name=options["attest_name"], organization_npi=options["organization_npi"] or connection.organization_npi,
            organization_name=options["organization_name"], attested_at=now, period_start=now.date().isoformat(),
        )

    def _since(self, value: str) -> datetime:
        """Return ``--since`` as an aware instant: a FHIR instant, or a date (midnight UTC)."""
        try:
            # parse_* return None for another format, and raise ValueError for a
            # well-formed but impossible value such as 2026-13-01.
            if day := parse_date(value):
                since = datetime.combine(day, time(), tzinfo=UTC)
            else:
                since = parse_datetime(value)
        except ValueError:
            since = None
        if since is None:
            raise CommandError(f"--since {value!r} is not a date (YYYY-MM-DD) or an instant (YYYY-MM-DDThh:mm:ssZ).")
        if since.tzinfo is None:
            # Bulk Data _since is a FHIR instant, which carries a time zone.
            raise CommandError(f"--since {value!r} needs a time zone, e.g. {value}Z.")
        return since

    def _bar(self, progress: dict) -> None:
        """Draw one progress line: files done of total, or the payer's X-Progress while it works."""
        total, done = progress["files_total"], progress["files_ingested"]
        width = 30
        filled = int(width * done / total) if total else 0
        resources = stored_summary(stored=progress["resources_ingested"], unchanged=progress["resources_unchanged"],
                                   deleted=progress["resources_deleted"])
        label = progress["progress"] if not total else f"{done}/{total} files, {resources}"
        line = f"\r[{'#' * filled}{'.' * (width - filled)}] {progress['step']}: {label}"[:150]
        self.stdout.write(line.ljust(150), ending="")
        self.stdout.flush() if hasattr(self.stdout, "flush") else sys.stdout.flush()

    def _summary(self, job: SyncJob) -> None:
        style = self.style.SUCCESS if job.status == SyncJob.Status.COMPLETED else self.style.WARNING
        self.stdout.write(style(f"{job.get_status_display()}: {job.progress}"))
        stored, unchanged = job.counts or {}, sync_job_unchanged_counts(job=job)
        if stored or unchanged:
            self.stdout.write(f"  {'':<28} {'stored':>8} {'unchanged':>10}")
        for resource_type in sorted(set(stored) | set(unchanged)):
            self.stdout.write(f"  {resource_type:<28} {stored.get(resource_type, 0):>8} {unchanged.get(resource_type, 0):>10}")
        if job.deleted_count:
            # Bulk Data `deleted` files (a _since fetch): resources the payer removed.
            self.stdout.write(f"  Deleted: {job.deleted_count} resource(s) removed as the payer's deleted files listed.")
        issues = sum(job.files.values_list("error_count", flat=True))
        if issues:
            self.stdout.write(self.style.WARNING(f"  {issues} line(s) not stored; see the sync job's ingest issues."))
        if job.error:
            self.stdout.write(self.style.WARNING(job.error))
        if job.member_match.get("outcome"):
            self.stdout.write(f"  Member match: {job.member_match['outcome']}"
                              + (f", Group/{job.member_match['group_id']}" if job.member_match.get("group_id") else ""))
        if job.status in (SyncJob.Status.FAILED,):
            raise CommandError(f"Sync job {job.pk} failed.")
