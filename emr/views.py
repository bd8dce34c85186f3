"""The clinician's pages. Thin: they check who is asking, call a selector or a service,
and render. A clinician reaches only their own organization's patients (404 otherwise)."""

from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from emr import history as history_reads
from emr import linking, selectors, services
from emr.forms import HistoryListForm, MemberIdForm, PatientForm, PatientSearchForm
from emr.models import AccessEvent, HospitalPatient, PatientSync
from emr.summary import summary_build
from provider.models import PayerConnection, SyncJob


def clinician_required(view):
    """Let in logged-in users with a clinician profile; set ``request.clinician``."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        clinician = selectors.clinician_for_user(user=request.user)
        if clinician is None:
            raise PermissionDenied("This account is not a clinician's.")
        request.clinician = clinician
        return view(request, *args, **kwargs)

    return wrapper


def _patient(request: HttpRequest, pk: int):
    return get_object_or_404(selectors.patient_queryset(clinician=request.clinician), pk=pk)


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _patient_sync(request: HttpRequest, pk: int, job_id: int) -> tuple[HospitalPatient, SyncJob]:
    patient = _patient(request, pk)
    sync = get_object_or_404(PatientSync.objects.select_related("job__connection"), patient=patient, job_id=job_id)
    return patient, sync.job


def _sync_answer(request: HttpRequest, patient: HospitalPatient, job: SyncJob, *, status: int = 200) -> JsonResponse:
    """Answer a fetch() of the panel: the job's progress and where to poll, cancel and retry it."""
    body = selectors.sync_progress(job=job)
    for key, name in (("progress_url", "emr:sync_status"), ("cancel_url", "emr:sync_cancel"), ("retry_url", "emr:sync_retry")):
        body[key] = request.build_absolute_uri(reverse(name, args=[patient.pk, job.pk]))
    return JsonResponse(body, status=status)


def _fetch_answer(request: HttpRequest, patient: HospitalPatient, start: Callable[[], SyncJob]) -> HttpResponse:
    """Start a fetch with ``start`` and answer: 202 and its progress for fetch(), else back to the page."""
    try:
        job = start()
    except services.PatientError as exc:
        if _wants_json(request):
            return JsonResponse({"error": str(exc)}, status=400)
        messages.error(request, str(exc))
        return redirect("emr:patient", pk=patient.pk)
    if _wants_json(request):
        return _sync_answer(request, patient, job, status=202)
    return redirect("emr:patient", pk=patient.pk)


@require_GET
@clinician_required
def patient_list(request: HttpRequest) -> HttpResponse:
    form = PatientSearchForm(request.GET or None)
    criteria = form.cleaned_data if form.is_valid() else {}
    patients = selectors.patient_search(
        clinician=request.clinician,
        name=criteria.get("name") or "",
        birth_date=criteria.get("birth_date"),
        member_id=criteria.get("member_id") or "",
    )
    return render(request, "emr/patient_list.html", {"form": form, "patients": patients, "searched": any(criteria.values()), "nav": "patients"})


@require_http_methods(["GET", "POST"])
@clinician_required
def patient_add(request: HttpRequest) -> HttpResponse:
    form = PatientForm(request.POST or None, organization_npi=request.clinician.organization_npi)
    form.fields["attest"].label = services.attestation_statement(clinician=request.clinician, on=timezone.localdate())
    if request.method == "POST" and form.is_valid():
        try:
            patient = services.hospital_patient_create(clinician=request.clinician, created_by=request.user, **form.cleaned_data)
        except services.PatientError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"{patient.name} is registered with {patient.mrn}.")
            return redirect("emr:patient", pk=patient.pk)
    return render(request, "emr/patient_add.html", {"form": form, "nav": "add"})


@require_GET
@clinician_required
def patient_detail(request: HttpRequest, pk: int) -> HttpResponse:
    patient = _patient(request, pk)
    job = selectors.sync_latest(patient=patient)
    if job:
        patient = services.patient_sync_link(patient=patient, job=job, user=request.user)
    services.access_record(user=request.user, patient=patient, action=AccessEvent.Action.VIEW)
    attestation = services.attestation_current(patient=patient)
    context = {
        "link": linking.patient_link_status(patient=patient, user=request.user),
        "member_id_form": MemberIdForm(initial={"member_id": patient.member_id}),
        "attestation": attestation,
        "attestation_statement": services.attestation_statement(
            patient=patient, clinician=request.clinician, on=timezone.localdate()
        ),
        "patient": patient,
        "job": job,
        "sync": selectors.sync_progress(job=job) if job else None,
        "slow_seconds": settings.EMR_FETCH_SLOW_SECONDS,
        "connections": selectors.connections_for_fetch(patient=patient),
        "sync_steps": [label for _, label in selectors.SYNC_STEPS],
        **_history_context(request, patient),
    }
    return render(request, "emr/patient_detail.html", context)


# The history's sections: the tabs of the patient page, and what can be printed alone.
SECTIONS = {
    "summary": "Summary",
    "encounters": "Encounters",
    "problems": "Problems",
    "medications": "Medications",
    "allergies": "Allergies",
    "immunizations": "Immunizations",
    "results": "Labs and vitals",
    "prior-auths": "Prior authorizations",
    "claims": "Claims",
}
# The history's items each section lists.
SECTION_ITEMS = {"encounters": "encounters", "problems": "conditions", "medications": "medications",
                 "allergies": "allergies", "immunizations": "immunizations", "results": "observations",
                 "prior-auths": "prior_auths", "claims": "claims"}
# The paged lists: their name in templates, the prefix of their query parameters, and the
# history's items they page.
LISTS = {"encounters": ("enc", "encounters"), "claims": ("clm", "claims"), "results": ("res", "observations"),
         "prior_auths": ("pa", "prior_auths")}


def _history_context(request: HttpRequest, patient, *, per_page: int = 25) -> dict:
    """Return the history, its summary and the filtered pages of its lists, as the query asks."""
    history = history_reads.patient_history(patient=patient)
    lists = {}
    for name, (prefix, items) in LISTS.items():
        form = HistoryListForm(request.GET or None, prefix=prefix)
        # The pager's links keep every other filter (of both lists) and change only the page.
        query = request.GET.copy()
        for key in (f"{prefix}-page", "tab"):
            query.pop(key, None)
        lists[name] = {
            "form": form,
            "page": history_reads.list_page(items=getattr(history, items), per_page=per_page, **form.criteria()),
            "query": query.urlencode() + "&" if query else "",
        }
    summary = summary_build(history=history)
    payer = history.sources[0].payer if history.sources else "The payer"
    tab = request.GET.get("tab", "")
    return {
        "history": history,
        "summary": summary,
        "lists": lists,
        "medication_groups": [
            ("Active", history.active_medications, f"{payer} sent no active medications for this patient."),
            ("Past", history.past_medications, f"{payer} sent no past medications for this patient."),
        ],
        "result_series": [*summary.labs, *summary.vitals],
        "sections": SECTIONS,
        # Each tab with how many records it holds (the summary, none).
        "tabs": [(key, label, None if key == "summary" else len(getattr(history, SECTION_ITEMS[key])))
                 for key, label in SECTIONS.items()],
        "tab": tab if tab in SECTIONS else "summary",
    }


@require_GET
@clinician_required
def patient_print(request: HttpRequest, pk: int, section: str) -> HttpResponse:
    """Show one section of the history (whole lists, the same filters) on a page made for paper."""
    patient = _patient(request, pk)
    if section not in SECTIONS:
        raise Http404("No such section.")
    services.access_record(user=request.user, patient=patient, action=AccessEvent.Action.PRINT, detail=SECTIONS[section])
    context = {"patient": patient, "section": section, "section_label": SECTIONS[section], "printing": True,
               "printed_at": timezone.now(), **_history_context(request, patient, per_page=100_000)}
    return render(request, "emr/patient_print.html", context)


@require_POST
@clinician_required
def patient_fetch(request: HttpRequest, pk: int, connection_id: int) -> HttpResponse:
    patient = _patient(request, pk)
    # Another organization's connection is not there for this clinician (not even its name).
    connection = get_object_or_404(PayerConnection, pk=connection_id, organization_npi=patient.organization_npi)
    return _fetch_answer(request, patient, lambda: services.patient_fetch_start(
        patient=patient, connection=connection, user=request.user, clinician=request.clinician,
        attest=request.POST.get("attest") == "on",
    ))


@require_GET
@clinician_required
def sync_status(request: HttpRequest, pk: int, job_id: int) -> JsonResponse:
    patient, job = _patient_sync(request, pk, job_id)
    services.patient_sync_link(patient=patient, job=job, user=request.user)
    return _sync_answer(request, patient, job)


@require_POST
@clinician_required
def sync_cancel(request: HttpRequest, pk: int, job_id: int) -> HttpResponse:
    patient, job = _patient_sync(request, pk, job_id)
    job = services.patient_fetch_cancel(patient=patient, job=job, user=request.user)
    if _wants_json(request):
        return _sync_answer(request, patient, job)
    return redirect("emr:patient", pk=patient.pk)


@require_POST
@clinician_required
def sync_retry(request: HttpRequest, pk: int, job_id: int) -> HttpResponse:
    patient, job = _patient_sync(request, pk, job_id)
    return _fetch_answer(request, patient, lambda: services.patient_fetch_retry(
        patient=patient, job=job, user=request.user, clinician=request.clinician,
        attest=request.POST.get("attest") == "on",
    ))


@require_POST
@clinician_required
def patient_member_id(request: HttpRequest, pk: int) -> HttpResponse:
    patient = _patient(request, pk)
    form = MemberIdForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Enter the member id as printed on the insurance card.")
        return redirect("emr:patient", pk=patient.pk)
    try:
        services.patient_member_id_correct(patient=patient, member_id=form.cleaned_data["member_id"], user=request.user)
    except services.PatientError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"The member id is now {patient.member_id}; fetch the history again to check it.")
    return redirect("emr:patient", pk=patient.pk)


@require_GET
@clinician_required
def encounter_detail(request: HttpRequest, pk: int, encounter_id: str) -> HttpResponse:
    patient = _patient(request, pk)
    detail = history_reads.encounter_detail(patient=patient, encounter_id=encounter_id)
    if detail is None:
        raise Http404("No such encounter for this patient.")
    services.access_record(
        user=request.user, patient=patient, action=AccessEvent.Action.VIEW_ENCOUNTER, detail=f"Encounter/{encounter_id}"
    )
    return render(request, "emr/encounter_detail.html", {"patient": patient, "detail": detail})
