from django.contrib import admin

from storage.models import ExportFile


@admin.register(ExportFile)
class ExportFileAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "resource_type", "count", "size", "stored_size", "expires_at")
    list_filter = ("kind", "resource_type")
    search_fields = ("name", "job__job_id")
    readonly_fields = [f.name for f in ExportFile._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


# Export jobs live in payer.models but are administered with their files here.
from payer.models import ExportJob  # noqa: E402


class ExportFileInline(admin.TabularInline):
    model = ExportFile
    fields = ("name", "kind", "resource_type", "count", "size", "expires_at")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(ExportJob)
class ExportJobAdmin(admin.ModelAdmin):
    list_display = ("job_id", "client", "level", "operation", "status", "transaction_time", "expires_at")
    list_filter = ("status", "level", "operation")
    search_fields = ("job_id", "client__client_id")
    readonly_fields = [f.name for f in ExportJob._meta.fields]
    inlines = [ExportFileInline]

    def has_add_permission(self, request) -> bool:
        return False
