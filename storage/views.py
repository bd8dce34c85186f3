"""The output file server: NDJSON files of completed exports, for their owner only."""

from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone

from fhirkit.outcome import FHIR_NDJSON, FHIRError
from payer.services import export as export_services
from payer.services.audit import audit_record
from payer.views.base import PayerFHIRView
from storage import services
from storage.models import ExportFile


class ExportFileView(PayerFHIRView):
    """``GET /storage/files/<id>``: one output, error or deleted file.

    Bulk Data req 5/201: ``requiresAccessToken`` is true, so the bearer token of the
    client that started the export is required; anyone else gets 404. Req 204-209: 200
    and ``application/fhir+ndjson``. The stored gzip bytes go out as they are with
    ``Content-Encoding: gzip`` when accepted, else decompressed on the fly. Single byte
    ranges (RFC 9110 14) let a client resume an interrupted download.
    """

    audit_action = "download"
    supported_formats = PayerFHIRView.supported_formats | {"application/fhir+ndjson", "application/ndjson", "ndjson"}

    def perform_content_negotiation(self, request, force=False):
        # A missing Accept, or Accept: application/fhir+ndjson (req 205), is fine; errors
        # still render as OperationOutcome JSON.
        return super().perform_content_negotiation(request, force=True)

    def get(self, request, file_id: str):
        client = request.user
        now = timezone.now()
        export_file = (
            ExportFile.objects.select_related("job", "unit")
            .filter(file_id=file_id, job__client=client, job__status="completed")
            .first()
        )
        if export_file is None or (export_file.expires_at and export_file.expires_at <= now):
            audit_record(action="download", outcome="denied", client=client, request=request, status_code=404)
            raise FHIRError("No such file, or it has expired.", status=404, code="not-found")

        if not export_services.export_file_shared_allowed(export_file=export_file, organization=client.organization):
            audit_record(action="download", outcome="denied", client=client, request=request, status_code=403,
                         resource_types=[export_file.resource_type],
                         detail=f"file {export_file.name}: the provider directory, and the contract has ended")
            raise FHIRError("This organization's network contract has ended; directory files are no longer available.",
                            status=403, code="forbidden")
        gzip_ok = services.accepts_gzip(header=request.headers.get("Accept-Encoding", ""))
        hidden = export_services.export_file_hidden_patients(export_file=export_file, organization=client.organization)
        if hidden:
            return self._withheld(request, export_file=export_file, hidden=hidden, gzip_ok=gzip_ok, now=now)
        length = export_file.stored_size if gzip_ok else export_file.size
        try:
            byte_range = services.byte_range_parse(header=request.headers.get("Range", ""), length=length)
        except services.RangeNotSatisfiable:
            response = HttpResponse(status=416, headers={"Content-Range": f"bytes */{length}"})
            response["Content-Type"] = FHIR_NDJSON
            return response
        start, end = byte_range or (0, length - 1)

        ExportFile.objects.filter(pk=export_file.pk).update(last_download_at=now)
        patient_ids = export_file.unit.exported_patient_ids if export_file.unit else []
        audit_record(action="download", outcome="success", client=client, request=request, status_code=206 if byte_range else 200,
                     patient_ids=patient_ids, resource_types=[export_file.resource_type], detail=f"file {export_file.name}")

        handle = services.export_file_open(export_file=export_file)
        if gzip_ok:
            body = services.stored_bytes_iter(handle=handle, start=start, end=end)
        else:
            body = services.decompressed_bytes_iter(handle=handle, start=start, end=end)
        response = StreamingHttpResponse(body, status=206 if byte_range else 200, content_type=FHIR_NDJSON)
        response["Content-Length"] = str(max(0, end - start + 1))
        response["Accept-Ranges"] = "bytes"
        response["Vary"] = "Accept-Encoding"
        response["ETag"] = f'"{export_file.file_id}-{"gz" if gzip_ok else "id"}"'
        if gzip_ok:
            response["Content-Encoding"] = "gzip"
        if byte_range:
            response["Content-Range"] = f"bytes {start}-{end}/{length}"
        return response

    def _withheld(self, request, *, export_file: ExportFile, hidden: set[str], gzip_ok: bool, now) -> StreamingHttpResponse:
        """Serve the file without the lines of patients the client may no longer see.

        Issue 3 (CMS-0057-F): an opt-out, or an ended attribution or contract, applies from
        the moment it is saved, also to files written before it. The filtered body has no
        known length and its byte offsets differ from the stored file's, so Range is ignored
        (RFC 9110 14.2 allows it): 200 with the whole filtered file, and no validators that
        would let a client splice it with an earlier partial download.
        """
        client = request.user
        ExportFile.objects.filter(pk=export_file.pk).update(last_download_at=now)
        audit_record(action="download", outcome="denied", client=client, request=request, status_code=200,
                     patient_ids=hidden, resource_types=[export_file.resource_type],
                     detail=f"file {export_file.name}: lines of patients no longer visible (opt-out, attribution "
                            f"or contract ended) withheld")
        released = sorted(set(export_file.unit.exported_patient_ids) - hidden)
        if released:
            audit_record(action="download", outcome="success", client=client, request=request, status_code=200,
                         patient_ids=released, resource_types=[export_file.resource_type],
                         detail=f"file {export_file.name} (filtered)")
        if released:
            handle = services.export_file_open(export_file=export_file)
            stored = services.decompressed_bytes_iter(handle=handle, start=0, end=max(export_file.size - 1, 0))
            body = export_services.export_lines_withhold(
                lines=services.lines_iter(chunks=stored), export_file=export_file, hidden=hidden)
        else:
            body = iter(())  # nobody left to release (say, the contract ended): the file is not read
        if gzip_ok:
            body = services.gzip_iter(chunks=body)
        response = StreamingHttpResponse(body, status=200, content_type=FHIR_NDJSON)
        response["Accept-Ranges"] = "none"
        response["Vary"] = "Accept-Encoding"
        response["Cache-Control"] = "no-store"
        if gzip_ok:
            response["Content-Encoding"] = "gzip"
        return response
