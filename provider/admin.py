"""Admin for payer connections and sync jobs (progress is read-only: the tasks own it)."""

from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from provider.models import PayerConnection, StoreReader, SyncFile, SyncJob
from provider.services.connections import private_key_check
from provider.services.sync import panel_sync_start, stored_summary, sync_job_cancel, sync_job_start


@admin.register(PayerConnection)
class PayerConnectionAdmin(admin.ModelAdmin):
    list_display = ["name", "display_name", "organization_npi", "fhir_base_url", "short_client_id", "validation_level",
                    "panel_group_id", "panel_schedule", "panel_last_sync"]
    list_filter = ["organization_npi"]
    search_fields = ["name", "display_name", "fhir_base_url", "client_id", "organization_npi"]
    actions = ["fetch_all_groups", "sync_panel"]
    fieldsets = [
        (None, {"fields": ["name", "display_name", "organization_npi", "fhir_base_url", "token_url", "client_id",
                           "private_key_path", "key_id", "algorithm", "scopes", "validation_level"]}),
        ("Where the client may go", {"fields": ["file_origins", "token_origins"]}),
        ("Limits", {"fields": ["poll_deadline", "max_file_bytes", "max_line_bytes", "max_manifest_files", "max_job_resources"]}),
        ("Panel sync", {"fields": ["panel_group_id", "panel_sync_hours", "panel_sync_hour"]}),
    ]

    @admin.display(description="client id")
    def short_client_id(self, obj) -> str:
        return obj.client_id if len(obj.client_id) <= 40 else obj.client_id[:37] + "..."

    @admin.display(description="panel schedule")
    def panel_schedule(self, obj) -> str:
        if not obj.panel_group_id:
            return "-"
        return "nightly" if obj.panel_sync_hours == 24 else f"every {obj.panel_sync_hours} h"

    @admin.display(description="last panel sync")
    def panel_last_sync(self, obj) -> str:
        job = obj.sync_jobs.filter(panel=True).order_by("-created_at").first()
        if job is None:
            return "-"
        counts = stored_summary(stored=sum((job.counts or {}).values()), unchanged=0, deleted=job.deleted_count)
        return f"{job.created_at:%Y-%m-%d %H:%M} {job.get_status_display()}: {counts}"

    @admin.action(permissions=["change"], description="Sync each connection's panel (attribution Group) now")
    def sync_panel(self, request, queryset) -> None:
        for connection in queryset:
            try:
                job = panel_sync_start(connection=connection, requested_by=request.user)
            except ValueError as error:
                self.message_user(request, str(error), messages.WARNING)
                continue
            self.message_user(request, f"Panel sync job {job.pk} started for {connection}.", messages.SUCCESS)

    def save_model(self, request, obj, form, change) -> None:
        try:
            private_key_check(path=obj.private_key_path, algorithm=obj.algorithm)
        except ValidationError as error:
            # Saved anyway (the file may be mounted later); say why fetches will fail.
            self.message_user(request, "; ".join(error.messages), messages.WARNING)
        super().save_model(request, obj, form, change)

    @admin.action(permissions=["change"], description="Fetch each connection's data (system-level export)")
    def fetch_all_groups(self, request, queryset) -> None:
        for connection in queryset:
            job = sync_job_start(connection=connection, level=SyncJob.Level.SYSTEM, requested_by=request.user)
            self.message_user(request, f"Sync job {job.pk} started for {connection}.", messages.SUCCESS)


class SyncFileInline(admin.TabularInline):
    model = SyncFile
    extra = 0
    can_delete = False
    fields = ["kind", "resource_type", "status", "expected_count", "line_count", "ingested_count", "error_count",
              "bytes_downloaded", "attempts", "parent", "chunk_first_line", "error"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(SyncJob)
class SyncJobAdmin(admin.ModelAdmin):
    list_display = ["id", "connection", "level", "member_id", "group_id", "panel", "status", "progress", "deleted_count",
                    "since", "created_at", "finished_at"]
    list_filter = ["status", "failure", "level", "panel", "connection"]
    search_fields = ["member_id", "group_id", "scope_key"]
    inlines = [SyncFileInline]
    actions = ["cancel"]
    readonly_fields = [field.name for field in SyncJob._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None  # the list and actions, not editing progress

    @admin.action(permissions=["view"], description="Cancel the selected sync jobs")
    def cancel(self, request, queryset) -> None:
        for job in queryset:
            job = sync_job_cancel(job=job)
            self.message_user(request, f"Sync job {job.pk}: {job.get_status_display()}.", messages.INFO)


@admin.register(StoreReader)
class StoreReaderAdmin(admin.ModelAdmin):
    """Accounts of an organization's own systems that read only its sources in the local FHIR API."""

    list_display = ["user", "organization_npi", "created_at"]
    search_fields = ["user__username", "organization_npi"]
    autocomplete_fields = ["user"]
