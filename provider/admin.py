"""Admin for payer connections and sync jobs (progress is read-only: the tasks own it)."""

from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from provider.models import PayerConnection, StoreReader, SyncFile, SyncJob
from provider.services.connections import private_key_check
from provider.services.sync import sync_job_cancel, sync_job_start


@admin.register(PayerConnection)
class PayerConnectionAdmin(admin.ModelAdmin):
    list_display = ["name", "display_name", "organization_npi", "fhir_base_url", "client_id", "algorithm", "validation_level"]
    list_filter = ["organization_npi"]
    search_fields = ["name", "display_name", "fhir_base_url", "client_id", "organization_npi"]
    actions = ["fetch_all_groups"]

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
              "bytes_downloaded", "attempts", "error"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(SyncJob)
class SyncJobAdmin(admin.ModelAdmin):
    list_display = ["id", "connection", "level", "member_id", "group_id", "status", "progress", "since", "created_at", "finished_at"]
    list_filter = ["status", "level", "connection"]
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
