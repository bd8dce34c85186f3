"""Plain-language pages the payer publishes: member opt-out and provider resources.

CMS-0057-F asks payers to explain Provider Access to members (what is shared, with whom,
why, and how to opt out or back in at any time) and to providers (how to request data and
how attribution works), in plain language. These are plain Django views; the logic is in
``payer.services.opt_out``.
"""

import hashlib
import time
from datetime import date

from django import forms
from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_http_methods

from payer.models import Member, OptOutEvent
from payer.services.access_history import member_shared_with
from payer.services.audit import audit_record
from payer.services.opt_out import member_identify, opt_out_record

# Where members and providers get help. A deployment would put its own numbers here.
MEMBER_SERVICES_PHONE = "1-800-555-0134"
PROVIDER_RELATIONS_EMAIL = "provider-access@unitedcare.example"
PROVIDER_RELATIONS_PHONE = "1-800-555-0199"

SESSION_MEMBER = "payer_opt_out_member"
SESSION_IDENTIFIED_AT = "payer_opt_out_identified_at"
SESSION_CONFIRMATION = "payer_opt_out_confirmation"
# A member who walks away from a shared computer is forgotten after this long.
IDENTIFIED_FOR_SECONDS = 15 * 60

# Failed identifications allowed per browser session, and per member id typed from one
# client address, in the window before the form refuses all attempts for them (right or
# wrong) until the window passes. Per member AND address, so that one address (a library,
# a family's router, an attacker) cannot lock every other member out.
MAX_FAILURES_PER_SESSION = 5
MAX_FAILURES_PER_ADDRESS = 20
FAILURE_WINDOW_SECONDS = 15 * 60

# One message for every identification failure, so the page never tells whether a
# member id exists.
NO_MATCH_MESSAGE = (
    "We could not find a member with that information. Check your member ID, date of birth "
    "and last name as they appear on your member ID card, and try again."
)
LOCKED_MESSAGE = (
    "There have been too many tries. For your safety, please wait 15 minutes and try again, "
    f"or call Member Services at {MEMBER_SERVICES_PHONE}."
)

MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]


class IdentifyForm(forms.Form):
    member_id = forms.CharField(
        label="Member ID",
        max_length=40,
        help_text="It is on the front of your member ID card.",
        error_messages={"required": "Enter your member ID."},
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false", "autocapitalize": "characters"}),
    )
    birth_month = forms.TypedChoiceField(
        label="Month",
        choices=[("", "Month")] + [(str(i), name) for i, name in enumerate(MONTHS, start=1)],
        coerce=int,
        error_messages={"required": "Choose the month you were born."},
    )
    birth_day = forms.IntegerField(
        label="Day",
        min_value=1,
        max_value=31,
        error_messages={
            "required": "Enter the day you were born.",
            "invalid": "Enter the day you were born as a number, like 7.",
            "min_value": "Enter a day from 1 to 31.",
            "max_value": "Enter a day from 1 to 31.",
        },
        widget=forms.TextInput(attrs={"inputmode": "numeric", "pattern": "[0-9]*", "maxlength": "2", "autocomplete": "bday-day"}),
    )
    birth_year = forms.IntegerField(
        label="Year",
        min_value=1900,
        max_value=2100,
        error_messages={
            "required": "Enter the year you were born.",
            "invalid": "Enter the year you were born with 4 numbers, like 1968.",
            "min_value": "Enter the year you were born with 4 numbers, like 1968.",
            "max_value": "Enter the year you were born with 4 numbers, like 1968.",
        },
        widget=forms.TextInput(attrs={"inputmode": "numeric", "pattern": "[0-9]*", "maxlength": "4", "autocomplete": "bday-year"}),
    )
    family = forms.CharField(
        label="Last name",
        max_length=100,
        error_messages={"required": "Enter your last name."},
        widget=forms.TextInput(attrs={"autocomplete": "family-name"}),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["birth_month"].widget.attrs["autocomplete"] = "bday-month"

    def clean(self):
        data = super().clean()
        year, month, day = data.get("birth_year"), data.get("birth_month"), data.get("birth_day")
        if year and month and day:
            try:
                data["birth_date"] = date(year, month, day)
            except ValueError:
                self.add_error("birth_day", "That date does not exist. Check the day and month.")
            else:
                if data["birth_date"] > date.today():
                    self.add_error("birth_year", "Your date of birth must be in the past.")
        return data


class ChoiceForm(forms.Form):
    SHARE, OPT_OUT = "share", "opt_out"
    choice = forms.ChoiceField(
        label="Your choice",
        choices=[
            (SHARE, "Yes, share my health information with my providers"),
            (OPT_OUT, "No, do not share my health information with my providers (opt out)"),
        ],
        widget=forms.RadioSelect,
        error_messages={"required": "Choose one of the two options."},
    )


def _client_address(request: HttpRequest) -> str:
    # REMOTE_ADDR only: X-Forwarded-For is set by the client unless a trusted proxy rewrites it.
    return request.META.get("REMOTE_ADDR") or "unknown"


def _failure_keys(request: HttpRequest, member_id: str) -> list[tuple[str, int]]:
    if not request.session.session_key:
        request.session.save()
    # Hashed: the cache key holds neither the typed member id nor the address in clear.
    typed = hashlib.sha256(f"{member_id.strip().casefold()}|{_client_address(request)}".encode()).hexdigest()
    return [
        (f"payer:opt-out:fail:session:{request.session.session_key}", MAX_FAILURES_PER_SESSION),
        (f"payer:opt-out:fail:member-addr:{typed}", MAX_FAILURES_PER_ADDRESS),
    ]


def _locked_out(request: HttpRequest, member_id: str) -> bool:
    return any((cache.get(key) or 0) >= limit for key, limit in _failure_keys(request, member_id))


def _failure_count(request: HttpRequest, member_id: str) -> None:
    for key, _limit in _failure_keys(request, member_id):
        # add() starts the window; incr() keeps the window's original expiry.
        if not cache.add(key, 1, FAILURE_WINDOW_SECONDS):
            try:
                cache.incr(key)
            except ValueError:  # expired between add() and incr()
                cache.set(key, 1, FAILURE_WINDOW_SECONDS)


def _identified_member(request: HttpRequest) -> Member | None:
    """Return the member this browser session identified, unless that was too long ago."""
    pk = request.session.get(SESSION_MEMBER)
    if pk is None:
        return None
    if time.time() - request.session.get(SESSION_IDENTIFIED_AT, 0) > IDENTIFIED_FOR_SECONDS:
        _forget(request)
        return None
    return Member.objects.filter(pk=pk).first()


def _forget(request: HttpRequest) -> None:
    for key in (SESSION_MEMBER, SESSION_IDENTIFIED_AT):
        request.session.pop(key, None)


def _audit(request: HttpRequest, **fields) -> None:
    audit_record(request=request, **fields)


def _identify(request: HttpRequest, *, page: str) -> tuple[IdentifyForm, str, int]:
    """Run the identity check of a member page's POST; on success remember the member.

    Return the bound form, the error message and the status: 200 with no error means the
    session now holds the member (the caller redirects). Shared by the opt-out and the
    access-history pages, so both have the same check and the same limits against guessing.
    """
    identify_form = IdentifyForm(request.POST)
    typed = request.POST.get("member_id", "")[:40]
    if _locked_out(request, typed):
        _audit(request, action=f"{page}-identify", outcome="denied", detail="rate limited", status_code=429)
        return identify_form, LOCKED_MESSAGE, 429
    if not identify_form.is_valid():
        return identify_form, "", 400
    found = member_identify(
        member_id=identify_form.cleaned_data["member_id"],
        birth_date=identify_form.cleaned_data["birth_date"],
        family=identify_form.cleaned_data["family"],
    )
    if found is None:
        _failure_count(request, typed)
        _audit(request, action=f"{page}-identify", outcome="denied", detail="no matching member", status_code=400)
        return identify_form, NO_MATCH_MESSAGE, 400
    # A new session key on identification, so a planted session id is useless.
    request.session.cycle_key()
    request.session[SESSION_MEMBER] = found.pk
    request.session[SESSION_IDENTIFIED_AT] = time.time()
    return identify_form, "", 200


@never_cache
@csrf_protect
@require_http_methods(["GET", "POST"])
def access_history_page(request: HttpRequest) -> HttpResponse:
    """Show an identified member which provider organizations received their data, when and what.

    Read from the audit trail through ``member_shared_with``, which reads only the rows that
    name this member. Same identity check, session and limits as the opt-out page.
    """
    member = _identified_member(request)
    step = request.POST.get("step") if request.method == "POST" else None
    identify_form, error, status = IdentifyForm(), "", 200
    if step == "forget":
        _forget(request)
        return redirect("payer:access-history")
    if step == "identify":
        identify_form, error, status = _identify(request, page="access-history")
        if not error and status == 200:
            return redirect("payer:access-history")
    shared = member_shared_with(member=member) if member is not None else []
    if member is not None and request.method == "GET":
        _audit(request, action="access-history", outcome="success", patient_ids=[member.patient_id],
               detail="member viewed who received their data")
    context = {
        "member": member,
        "identify_form": identify_form,
        "error": error,
        "shared": shared,
        "last_change": member.opt_out_events.first() if member is not None else None,
        "member_services_phone": MEMBER_SERVICES_PHONE,
    }
    return render(request, "payer/access_history.html", context, status=status)


@never_cache
@csrf_protect
@require_http_methods(["GET", "POST"])
def opt_out_page(request: HttpRequest) -> HttpResponse:
    """Let a member identify themself, see their current choice and change it.

    Step 1 (identify) keeps the member in the server-side session only, never in hidden
    form fields; step 2 (choose) changes the choice for that session's member. Every POST
    redirects on success, so reloading never resubmits.
    """
    member = _identified_member(request)
    step = request.POST.get("step") if request.method == "POST" else None
    status = 200
    identify_form = IdentifyForm()
    choice_form = None
    error = ""

    if step == "forget":
        _forget(request)
        request.session[SESSION_CONFIRMATION] = "done"
        return redirect("payer:opt-out")

    if step == "identify":
        identify_form, error, status = _identify(request, page="opt-out")
        if not error and status == 200:
            return redirect("payer:opt-out")
    elif step == "choose":
        if member is None:
            error, status = "For your privacy, we need to check who you are again. Please fill in the form.", 400
        else:
            choice_form = ChoiceForm(request.POST)
            if choice_form.is_valid():
                opted_out = choice_form.cleaned_data["choice"] == ChoiceForm.OPT_OUT
                opt_out_record(
                    member=member, opted_out=opted_out, channel=OptOutEvent.Channel.WEB, changed_by="member"
                )
                _audit(
                    request,
                    action="opt-out",
                    outcome="success",
                    patient_ids=[member.patient_id],
                    detail=f"member {'opted out' if opted_out else 'opted in'} on the web page",
                )
                request.session[SESSION_CONFIRMATION] = "opted_out" if opted_out else "opted_in"
                return redirect("payer:opt-out")
            status = 400

    if member is not None and choice_form is None:
        choice_form = ChoiceForm(initial={"choice": ChoiceForm.OPT_OUT if member.opted_out else ChoiceForm.SHARE})
    last_change = member.opt_out_events.first() if member is not None else None
    context = {
        "member": member,
        "identify_form": identify_form,
        "choice_form": choice_form,
        "error": error,
        "confirmation": request.session.pop(SESSION_CONFIRMATION, None) if request.method == "GET" else None,
        "last_change": last_change,
        "member_services_phone": MEMBER_SERVICES_PHONE,
    }
    return render(request, "payer/opt_out.html", context, status=status)


@require_http_methods(["GET"])
def providers_page(request: HttpRequest) -> HttpResponse:
    """Explain to providers how to connect, what they can ask for and how attribution works."""
    base = settings.PA_BASE_URL or request.build_absolute_uri("/").rstrip("/")
    fhir = f"{base}/payer/fhir"
    context = {
        "base": base,
        "fhir": fhir,
        "token_url": f"{base}/payer/auth/token",
        # Paths relative to the FHIR base URL, as the FHIR specification writes them ([base]/...).
        "endpoints": [
            ("GET", ".well-known/smart-configuration", "Discovery: the token URL and the signing algorithms we accept."),
            ("GET", "metadata", "Our CapabilityStatement: every resource type, search parameter and operation we support."),
            ("GET", "Group", "Your organization's attribution list (the members attributed to you)."),
            ("POST", "Group/$provider-member-match", "PDex 2.2: find new patients among our members with a treatment "
             "attestation; the result names a Group to export (see step 4)."),
            ("POST", "Group/{id}/$davinci-data-export", "Da Vinci PDex bulk export of your attributed members' data, "
             "or of the MatchedMembers Group of your member match (POST only)."),
            ("GET or POST", "Group/{id}/$export", "FHIR Bulk Data export of your attributed members' data."),
            ("GET or POST", "Patient/$export", "Bulk export for all members attributed to you."),
            ("GET", "[type]/{id}", "Read one record (Patient, Encounter, Condition, ExplanationOfBenefit, ...)."),
            ("GET", "[type]?patient={id}", "Search one member's records, with _lastUpdated and _count."),
        ],
        "provider_email": PROVIDER_RELATIONS_EMAIL,
        "provider_phone": PROVIDER_RELATIONS_PHONE,
        "match_max_members": settings.PA_MEMBER_MATCH_MAX_MEMBERS,
        "match_group_days": settings.PA_MEMBER_MATCH_GROUP_DAYS,
        "relationship_days": settings.PA_TREATMENT_RELATIONSHIP_DAYS,
        "attestation_max_age_days": settings.PA_ATTESTATION_MAX_AGE_DAYS,
        "attestation_max_future_days": settings.PA_ATTESTATION_MAX_FUTURE_DAYS,
        "disclose_opt_out": settings.PA_MEMBER_MATCH_DISCLOSE_OPT_OUT,
        "expiry_hours": f"{settings.PA_EXPORT_EXPIRY_HOURS:g}",
    }
    return render(request, "payer/providers.html", context)
