"""Bulk Data kick-off, status and cancel endpoints (one APIView per FHIR operation).

Bulk Data IG 2.0.0 export.html; PDex STU2 ``$davinci-data-export``.
"""

import json

from django.conf import settings
from django.http import HttpResponse
from rest_framework.exceptions import ParseError
from rest_framework.response import Response

from fhirkit.outcome import FHIRError, operation_outcome, outcome_issue
from fhirkit.parsers import BoundedJSONParser, FHIRJSONParser
from payer.models import AttributionGroup, ExportJob
from payer.services import export as export_services
from payer.services.audit import audit_record
from payer.services.auth import scope_grants
from payer.services.member_match import match_group_for_client, member_match_job_create
from payer.services.export_params import raw_params_from_parameters, raw_params_from_query
from payer.views.base import PayerFHIRView


def _absolute(request, path: str) -> str:
    base = settings.PA_BASE_URL
    return f"{base}{path}" if base else request.build_absolute_uri(path)


def _prefer(request) -> tuple[bool, bool]:
    """Return (respond_async, lenient) from the Prefer header(s) (RFC 7240)."""
    tokens = {
        token.strip().lower().replace(" ", "")
        for part in request.headers.get("Prefer", "").split(",")
        for token in part.split(";")
    }
    return "respond-async" in tokens, "handling=lenient" in tokens


class _KickOffView(PayerFHIRView):
    audit_action = "export"
    level = ExportJob.Level.SYSTEM
    operation = "export"
    parser_classes = [FHIRJSONParser, BoundedJSONParser]  # export.html#post-body: a Parameters resource

    def get(self, request, group_id: str | None = None):
        return self._kick_off(request, raw_params_from_query(dict(request.query_params.lists())), group_id)

    def post(self, request, group_id: str | None = None):
        body = request.data
        raw = {} if not body else raw_params_from_parameters(body)
        return self._kick_off(request, raw, group_id)

    def _kick_off(self, request, raw: dict[str, list[str]], group_id: str | None):
        client, token = request.user, request.auth
        respond_async, lenient = _prefer(request)
        group = match_group = None
        try:
            if group_id is not None:
                # Another organization's group answers 404 as if it did not exist; so does
                # another client's MatchedMembers Group (PDex 2.2 §pdex-292: the Group it received).
                group = AttributionGroup.objects.filter(fhir_id=group_id, organization=client.organization).first()
                if group is None:
                    match_group = match_group_for_client(fhir_id=group_id, client=client)
                if group is None and match_group is None:
                    raise FHIRError(f"Group/{group_id} not found.", status=404, code="not-found")
            if not respond_async:
                # Bulk Data 2.0 kick-off (req 45/46): Prefer: respond-async is required of
                # the client; handling=lenient relaxes the parameters, never the header.
                raise FHIRError("The kick-off request needs the header Prefer: respond-async.", code="required")
            request_url = request.build_absolute_uri() if request.method == "GET" else request.build_absolute_uri(request.path)
            if settings.PA_BASE_URL:
                request_url = _absolute(request, request.get_full_path() if request.method == "GET" else request.path)
            job = export_services.export_job_create(
                client=client,
                scopes=token.scopes,
                level=self.level,
                operation=self.operation,
                raw_params=raw,
                lenient=lenient,
                request_url=request_url,
                group=group,
                match_group=match_group,
            )
        except FHIRError as exc:
            audit_record(action="export", outcome="denied" if exc.status in (401, 403, 404) else "error",
                         client=client, request=request, status_code=exc.status, detail=exc.issues[0]["diagnostics"])
            raise
        audit_record(action="export", outcome="success", client=client, request=request, status_code=202,
                     resource_types=job.params["types"], patient_ids=job.params.get("patients") or (),
                     detail=f"job {job.job_id}")
        status_url = _absolute(request, f"/payer/fhir/bulkstatus/{job.job_id}")
        body = operation_outcome([outcome_issue(severity="information", code="informational",
                                                diagnostics=f"Export accepted; poll {status_url}")])
        # Bulk Data req 300/301: 202 Accepted with the absolute status URL.
        return Response(body, status=202, headers={"Content-Location": status_url})


class SystemExportView(_KickOffView):
    level = ExportJob.Level.SYSTEM


class PatientExportView(_KickOffView):
    level = ExportJob.Level.PATIENT


class GroupExportView(_KickOffView):
    level = ExportJob.Level.GROUP


class GroupDavinciExportView(_KickOffView):
    """PDex STU2 ``Group/{id}/$davinci-data-export`` (POST only)."""

    level = ExportJob.Level.GROUP
    operation = "davinci-data-export"
    http_method_names = ["post", "options"]


class ExportStatusView(PayerFHIRView):
    """Bulk Data status request (GET) and cancel (DELETE) on the Content-Location URL."""

    audit_action = "export-status"

    def _denied(self, request, job_id: str, error: FHIRError, *, action: str) -> None:
        # Issue 3: every denial is audited: another client's, expired or cancelled job (404),
        # polling faster than Retry-After asks (429).
        audit_record(action=action, outcome="denied" if error.status in (403, 404, 429) else "error",
                     client=request.user, request=request, status_code=error.status,
                     detail=f"job {job_id}: {error.issues[0]['diagnostics']}")

    def get(self, request, job_id: str):
        try:
            response = self._status(request, job_id)
        except FHIRError as error:
            self._denied(request, job_id, error, action="export-status")
            raise
        # Every call is audited, polls of one's own job included (one INSERT).
        audit_record(action="export-status", outcome="success", client=request.user, request=request,
                     status_code=response.status_code, detail=f"job {job_id}")
        return response

    def _status(self, request, job_id: str):
        job = export_services.export_job_get(job_id=job_id, client=request.user)
        if job.status == ExportJob.Status.IN_PROGRESS:
            retry_after = export_services.export_poll_check(job=job)
            # Req 132/133: 202 with X-Progress; Retry-After (req 125). Bulk Data 2.0
            # export.html#response---in-progress-status gives the 202 no body, so it gets
            # no Content-Type either (Django's default text/html would describe nothing).
            response = HttpResponse(status=202, headers={"Retry-After": str(retry_after),
                                                         "X-Progress": export_services.export_progress(job=job)})
            del response["Content-Type"]
            return response
        if job.status == ExportJob.Status.FAILED:
            # Req 131/136/137: 5xx with an OperationOutcome. ``transient`` when the cause may
            # pass (storage or database out of reach: a new kick-off later may succeed),
            # else ``exception``.
            raise FHIRError(f"The export failed: {job.error or 'unknown error'}", status=500,
                            code="transient" if job.error_transient else "exception")
        manifest = export_services.export_manifest(job=job, file_url_base=_absolute(request, "/storage/files/"))
        # Req 144-147: 200, application/json, Expires.
        return HttpResponse(json.dumps(manifest), status=200, content_type="application/json",
                            headers={"Expires": export_services.export_expires_header(job=job)})

    def delete(self, request, job_id: str):
        try:
            job = export_services.export_job_cancel(job_id=job_id, client=request.user)
        except FHIRError as error:
            self._denied(request, job_id, error, action="export-cancel")
            raise
        audit_record(action="export-cancel", outcome="success", client=request.user, request=request,
                     status_code=202, detail=f"job {job.job_id}")
        # Req 306/307: 202 Accepted, with an OperationOutcome.
        return Response(operation_outcome([outcome_issue(severity="information", code="informational",
                                                         diagnostics="The export was cancelled and its files deleted.")]),
                        status=202)


class MemberMatchView(PayerFHIRView):
    """PDex 2.2 ``POST [base]/Group/$provider-member-match`` (asynchronous kick-off).

    The body is a Parameters of MemberBundle repetitions; the answer is 202 with the
    status URL in ``Content-Location``, which ends in a manifest listing the Group NDJSON
    (provider-access-api-v2.md, "Async response delivery format"). The organization is
    the access token's, never one named in the body. Needs a token that reads Group.
    """

    audit_action = "member-match"
    parser_classes = [FHIRJSONParser, BoundedJSONParser]  # export.html#post-body: a Parameters resource
    http_method_names = ["post", "options"]

    def post(self, request):
        client, token = request.user, request.auth
        respond_async, _ = _prefer(request)
        try:
            if not scope_grants(scopes=token.scopes, resource_type="Group", interaction="read"):
                raise FHIRError("The access token's scopes do not allow reading Group.", status=403, code="forbidden")
            if not respond_async:
                raise FHIRError("$provider-member-match needs the header Prefer: respond-async.", code="required")
            # DRF reads the stream itself, so Django's DATA_UPLOAD_MAX_MEMORY_SIZE does not
            # bound a JSON body: check the declared length before reading any of it.
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if limit is not None and length > limit:
                raise FHIRError(f"The request body is larger than {limit} bytes; send fewer MemberBundles.",
                                status=413, code="too-costly")
            try:
                body = request.data
            except ParseError as exc:
                raise FHIRError(f"The body is not JSON: {exc.detail}", code="structure") from None
            job = member_match_job_create(client=client, scopes=token.scopes, body=body,
                                          request_url=_absolute(request, request.path))
        except FHIRError as exc:
            audit_record(action="member-match", outcome="denied" if exc.status in (401, 403, 404, 429) else "error",
                         client=client, request=request, status_code=exc.status,
                         detail=exc.issues[0]["diagnostics"][:500])
            raise
        count = len(job.params["member_bundles"])
        audit_record(action="member-match", outcome="success", client=client, request=request, status_code=202,
                     resource_types=["Group"], detail=f"job {job.job_id}: {count} MemberBundle(s)")
        status_url = _absolute(request, f"/payer/fhir/bulkstatus/{job.job_id}")
        body = operation_outcome([outcome_issue(severity="information", code="informational",
                                                diagnostics=f"Member match accepted; poll {status_url}")])
        return Response(body, status=202, headers={"Content-Location": status_url})
