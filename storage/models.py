"""Files produced by exports, served by the output file server."""

from django.db import models


class ExportFile(models.Model):
    """One NDJSON file (stored gzip-compressed) listed in an export manifest."""

    class Kind(models.TextChoices):
        OUTPUT = "output", "Output"
        ERROR = "error", "Error (OperationOutcome)"
        DELETED = "deleted", "Deleted (transaction Bundles)"

    # Opaque id in the download URL.
    file_id = models.CharField(max_length=64, unique=True)
    job = models.ForeignKey("payer.ExportJob", on_delete=models.CASCADE, related_name="files")
    unit = models.ForeignKey("payer.ExportWorkUnit", on_delete=models.CASCADE, null=True, blank=True, related_name="files")
    resource_type = models.CharField(max_length=40)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.OUTPUT)
    # Name in the "exports" storage; deterministic, so a unit run twice overwrites it.
    name = models.CharField(max_length=300, unique=True)
    count = models.PositiveIntegerField()
    # Bytes of the NDJSON before compression, and stored (gzip) bytes.
    size = models.PositiveBigIntegerField()
    stored_size = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # When a download of this file last started (the purge spares files being downloaded).
    last_download_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "kind", "resource_type", "name"]

    def __str__(self) -> str:
        return self.name
