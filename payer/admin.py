"""Payer staff's view of the systems of record, attribution, opt-outs, clients and audit.

Admin classes are thin: actions and save_model call services.
"""

import json

from django import forms
from django.contrib import admin
from django.contrib.admin import helpers as admin_helpers
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone as _tz
from django.utils.html import format_html, format_html_join

from payer.models import (
    AttributionGroup,
    AttributionMember,
    AuditEvent,
    AuditPurge,
    Claim,
    ClaimDiagnosis,
    ClaimLine,
    ClinicalResource,
    Member,
    MemberMatchDecision,
    NetworkContract,
    Notice,
    OptOutEvent,
    PriorAuthorization,
    ProviderOrganization,
    ProviderPractitioner,
    SmartClient,
    TreatmentRelationship,
)
from payer.services.attribution import (
    attribution_group_ensure,
    attribution_member_add,
    attribution_member_end,
    attribution_refresh,
)
from payer.services.audit import audit_record
from payer.services.auth import client_register, jwks_url_allowed, jwks_validate, scope_parse
from payer.services.member_match import treatment_relationship_revoke
from payer.services.access_history import member_shared_with
from payer.services.opt_out import opt_out_record


class ReadOnlyAdmin(admin.ModelAdmin):
    """A record staff may read but never add, change or delete (audit trail, histories)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyInline(admin.TabularInline):
    """Rows shown with their parent that change only through services (histories, lists)."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# --- SMART clients and the audit trail (SMART Backend Services; CMS-0057-F audit) ---------


class BlankJSONField(forms.JSONField):
    """A JSON box that shows empty, not ``null``, when there is no value (so it saves on the first try)."""

    def prepare_value(self, value):
        return "" if value is None else super().prepare_value(value)


class SmartClientForm(forms.ModelForm):
    jwks_url = forms.URLField(label="JWKS URL", required=False, assume_scheme="https",
                              help_text="Where the provider system serves its public keys (https). Or paste the keys below.")
    jwks = BlankJSONField(label="Public keys (JWKS)", required=False, widget=forms.Textarea(attrs={"rows": 6}),
                          help_text='The JWKS itself, e.g. {"keys": [{"kty": "RSA", "kid": "...", "n": "...", "e": "AQAB"}]}.')
    scopes = forms.CharField(initial="system/*.read", max_length=1000,
                             help_text="Space-separated; the default, system/*.read, is what register_client gives.")

    class Meta:
        model = SmartClient
        fields = ["name", "organization", "jwks_url", "jwks", "scopes", "active", "max_concurrent_exports"]

    def clean_jwks(self):
        jwks = self.cleaned_data.get("jwks")
        if jwks:
            jwks_validate(jwks=jwks)
        return jwks or None

    def clean_jwks_url(self):
        url = self.cleaned_data.get("jwks_url", "")
        if url and not jwks_url_allowed(url=url):
            raise ValidationError("The JWKS URL must be an https:// URL (SMART: TLS).")
        return url

    def clean_scopes(self):
        scopes = self.cleaned_data.get("scopes", "").split()
        bad = [s for s in scopes if scope_parse(s) is None]
        if bad or not scopes:
            raise ValidationError(f"Give system/ scopes such as system/*.read; not valid: {' '.join(bad) or '(none)'}")
        return " ".join(scopes)

    def clean(self):
        cleaned = super().clean()
        if bool(cleaned.get("jwks")) == bool(cleaned.get("jwks_url")):
            raise ValidationError("Give exactly one of a JWKS (public keys) or a JWKS URL.")
        return cleaned


@admin.register(SmartClient)
class SmartClientAdmin(admin.ModelAdmin):
    form = SmartClientForm
    list_display = ["name", "client_id", "organization", "scopes", "active", "created_at"]
    list_filter = ["active", "organization"]
    search_fields = ["name", "client_id", "organization__name", "organization__npi"]
    readonly_fields = ["client_id", "created_at"]

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        # New clients go through the service, which generates the client_id.
        client = client_register(
            organization=obj.organization, jwks=obj.jwks, jwks_url=obj.jwks_url, scopes=obj.scopes, name=obj.name
        )
        if not obj.active or obj.max_concurrent_exports != client.max_concurrent_exports:
            SmartClient.objects.filter(pk=client.pk).update(
                active=obj.active, max_concurrent_exports=obj.max_concurrent_exports
            )
        obj.pk, obj.client_id, obj.created_at = client.pk, client.client_id, client.created_at


class AuditOrganizationFilter(admin.SimpleListFilter):
    title = "organization"
    parameter_name = "organization_npi"

    def lookups(self, request, model_admin):
        npis = AuditEvent.objects.exclude(organization_npi="").values_list("organization_npi", flat=True).distinct()
        names = dict(ProviderOrganization.objects.filter(npi__in=list(npis)).values_list("npi", "name"))
        return sorted(((npi, f"{names.get(npi, 'Unknown')} ({npi})") for npi in npis), key=lambda c: c[1])

    def queryset(self, request, queryset):
        return queryset.filter(organization_npi=self.value()) if self.value() else queryset


class AuditMemberFilter(admin.SimpleListFilter):
    """Filter by member: the members the trail names (and the one asked for, via a member's page)."""

    title = "member"
    parameter_name = "member"

    def lookups(self, request, model_admin):
        members = list(Member.objects.filter(audit_subjects__isnull=False).distinct().order_by("family", "given")[:200])
        if (self.value() or "").isdigit() and not any(str(m.pk) == self.value() for m in members):
            members += list(Member.objects.filter(pk=self.value()))  # reached from a member's page
        return [(str(m.pk), str(m)) for m in members]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        if not self.value().isdigit():
            return queryset.none()
        return queryset.filter(subjects__member_id=int(self.value()))


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """Read-only: the audit trail is written by the services, never edited by hand."""

    list_display = ["created_at", "action", "outcome", "client_id", "organization_npi", "members_named",
                    "resource_types_text", "status_code"]
    list_filter = [AuditMemberFilter, AuditOrganizationFilter, "client_id", "action", "outcome", "created_at"]
    search_fields = ["=members__member_id", "members__family", "client_id", "organization_npi", "detail"]
    date_hierarchy = "created_at"
    fields = ["created_at", "action", "outcome", "client_id", "organization_npi", "members_named",
              "resource_types_text", "request_path", "status_code", "detail", "remote_addr"]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("members")

    @admin.display(description="members")
    def members_named(self, obj: AuditEvent) -> str:
        names = [f"{m.given} {m.family} ({m.member_id})" for m in obj.members.all()]
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "") if names else "-"

    @admin.display(description="kinds of data")
    def resource_types_text(self, obj: AuditEvent) -> str:
        return ", ".join(obj.resource_types) or "-"


@admin.register(AuditPurge)
class AuditPurgeAdmin(ReadOnlyAdmin):
    """The log of audit retention purges (PA_AUDIT_RETENTION_DAYS), read-only."""

    list_display = ["created_at", "cutoff", "retention_days", "deleted", "run_by"]


@admin.register(Notice)
class NoticeAdmin(ReadOnlyAdmin):
    """Provider Access notices sent (42 CFR 422.121(a)(4)); written by payer/services/notices.py only."""

    list_display = ["sent_at", "member", "kind", "channel", "outcome", "template_version", "detail"]
    list_filter = ["kind", "channel", "outcome", "template_version", "sent_at"]
    search_fields = ["=member__member_id", "member__family"]
    date_hierarchy = "sent_at"
    list_select_related = ["member"]


# --- Members, opt-outs and attribution lists (CMS-0057-F opt-out; PDex / ATR attribution) ----


class OptOutChangeForm(forms.Form):
    channel = forms.ChoiceField(
        choices=[(c.value, c.label) for c in OptOutEvent.Channel if c != OptOutEvent.Channel.WEB],
        initial=OptOutEvent.Channel.ADMIN,
        help_text="How the member told us. Use 'Phone call' or 'Letter' when recording a member's request.",
    )
    note = forms.CharField(max_length=300, required=False, widget=forms.TextInput(attrs={"size": 60}),
                           help_text="Optional: e.g. the call reference.")


def _member_lookup(member_id: str) -> Member:
    member = Member.objects.filter(member_id__iexact=(member_id or "").strip()).first()
    if member is None:
        raise ValidationError("No member has that member ID.")
    return member


class AttributionAddForm(forms.Form):
    member_id = forms.CharField(label="Member ID", max_length=40)
    start = forms.DateField(initial=_tz.localdate, help_text="YYYY-MM-DD")
    reason = forms.CharField(max_length=300, widget=forms.TextInput(attrs={"size": 60}),
                             help_text="Required: why this member has a treatment relationship.")

    def clean_member_id(self):
        return _member_lookup(self.cleaned_data["member_id"])


class AttributionEndForm(forms.Form):
    member_id = forms.CharField(label="Member ID", max_length=40)
    end = forms.DateField(initial=_tz.localdate, help_text="Last day on the list (YYYY-MM-DD).")
    reason = forms.CharField(max_length=300, widget=forms.TextInput(attrs={"size": 60}),
                             help_text="Required: why the treatment relationship ended.")

    def clean_member_id(self):
        return _member_lookup(self.cleaned_data["member_id"])


def _action_form(modeladmin, request, queryset, *, form_class, action, title, explanation, submit_label):
    """Return (bound valid form, None) once staff confirmed, else (None, the intermediate page)."""
    if "apply" in request.POST:
        form = form_class(request.POST)
        if form.is_valid():
            return form, None
    else:
        form = form_class()
    page = TemplateResponse(
        request,
        "admin/payer/action_form.html",
        {
            **modeladmin.admin_site.each_context(request),
            "opts": modeladmin.model._meta,
            "title": title,
            "explanation": explanation,
            "submit_label": submit_label,
            "objects": list(queryset),
            "form": form,
            "action": action,
            "action_checkbox_name": admin_helpers.ACTION_CHECKBOX_NAME,
        },
    )
    return None, page


class OptOutEventInline(ReadOnlyInline):
    """The member's opt-out history: append-only, so nothing here can be edited."""

    model = OptOutEvent
    fields = ["created_at", "opted_out", "channel", "changed_by", "note"]
    readonly_fields = fields
    ordering = ["-created_at", "-id"]


@admin.register(Member)
class MemberAdmin(admin.ModelAdmin):
    list_display = ["member_id", "family", "given", "birth_date", "coverage_start", "coverage_end", "opted_out"]
    list_filter = ["opted_out"]
    search_fields = ["member_id", "family", "given", "patient_id"]
    # Staff change the opt-out only through the actions, so every change is an OptOutEvent.
    readonly_fields = ["opted_out", "shared_with", "notices_sent"]
    inlines = [OptOutEventInline]
    actions = ["opt_out_action", "opt_in_action"]

    def has_delete_permission(self, request, obj=None):
        # A member's records (claims, audit, opt-out history, notices) must outlive them.
        return False

    @admin.display(description="Provider Access notices")
    def notices_sent(self, obj: Member) -> str:
        notices = list(obj.notices.all()[:20])
        if not notices:
            return "None sent yet: their data is withheld from exports until one is (PA_EXPORT_ALLOW_UNNOTIFIED)."
        body = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((f"{n.sent_at:%Y-%m-%d %H:%M}", n.get_kind_display(), n.get_channel_display(), n.get_outcome_display(),
              n.template_version) for n in notices),
        )
        return format_html('<table><thead><tr><th>Sent</th><th>Occasion</th><th>Channel</th><th>Outcome</th>'
                           '<th>Version</th></tr></thead><tbody>{}</tbody></table>', body)

    @admin.display(description="Shared with")
    def shared_with(self, obj: Member) -> str:
        rows = member_shared_with(member=obj)
        audit_url = f"../../../auditevent/?member={obj.pk}"
        if not rows:
            return format_html('Never shared with a provider organization. <a href="{}">All audit events</a>', audit_url)
        body = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((r.organization, f"{r.first:%Y-%m-%d %H:%M}", f"{r.last:%Y-%m-%d %H:%M}", ", ".join(r.kinds)) for r in rows),
        )
        return format_html(
            '<table class="shared-with"><thead><tr><th>Provider organization</th><th>First</th><th>Last</th>'
            '<th>Kinds of data</th></tr></thead><tbody>{}</tbody></table><p><a href="{}">All audit events of this member</a></p>',
            body, audit_url,
        )

    def _opt_out_change(self, request, queryset, *, opted_out: bool, action: str, title: str):
        form, page = _action_form(
            self, request, queryset, form_class=OptOutChangeForm, action=action, title=title,
            explanation=(
                "This is recorded in each member's opt-out history with your user name. "
                "It applies at once to every request and to exports still running."
            ),
            submit_label=title,
        )
        if page is not None:
            return page
        members = list(queryset)
        for member in members:
            opt_out_record(
                member=member,
                opted_out=opted_out,
                channel=form.cleaned_data["channel"],
                changed_by=request.user.get_username(),
                note=form.cleaned_data["note"],
            )
        audit_record(
            action="opt-out",
            outcome="success",
            request=request,
            patient_ids=[m.patient_id for m in members],
            detail=f"staff {request.user.get_username()} ({form.cleaned_data['channel']}): "
            f"{'opted out' if opted_out else 'opted in'}",
        )
        self.message_user(request, f"{title}: recorded for {len(members)} member(s).")
        return None

    @admin.action(permissions=["change"], description="Opt out of provider data sharing")
    def opt_out_action(self, request, queryset):
        return self._opt_out_change(request, queryset, opted_out=True, action="opt_out_action",
                                    title="Opt out of provider data sharing")

    @admin.action(permissions=["change"], description="Opt back in to provider data sharing")
    def opt_in_action(self, request, queryset):
        return self._opt_out_change(request, queryset, opted_out=False, action="opt_in_action",
                                    title="Opt back in to provider data sharing")


@admin.register(OptOutEvent)
class OptOutEventAdmin(ReadOnlyAdmin):
    """Read-only: the history is written by ``opt_out_record`` only."""

    list_display = ["created_at", "member", "opted_out", "channel", "changed_by", "note"]
    list_filter = ["opted_out", "channel"]
    search_fields = ["member__member_id", "member__family", "changed_by", "note"]
    date_hierarchy = "created_at"
    list_select_related = ["member"]


class AttributionMemberInline(ReadOnlyInline):
    """Entries change only through the group's actions (with a reason) and the claims refresh."""

    model = AttributionMember
    fields = ["member", "start", "end", "source", "reason", "changed_by", "last_transmitted"]
    readonly_fields = fields
    ordering = ["member__family", "member__given"]


@admin.register(AttributionGroup)
class AttributionGroupAdmin(admin.ModelAdmin):
    list_display = ["name", "organization", "fhir_id", "updated_at"]
    search_fields = ["name", "organization__name", "organization__npi", "fhir_id"]
    readonly_fields = ["fhir_id", "updated_at"]
    inlines = [AttributionMemberInline]
    actions = ["member_add_action", "member_end_action", "refresh_action"]

    def get_readonly_fields(self, request, obj=None):
        # The organization of an existing list never changes.
        return [*self.readonly_fields, "organization"] if obj is not None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        group = attribution_group_ensure(organization=obj.organization)
        if obj.name and obj.name != group.name:
            AttributionGroup.objects.filter(pk=group.pk).update(name=obj.name)
        obj.pk, obj.fhir_id = group.pk, group.fhir_id

    @admin.action(permissions=["change"], description="Add a member to the list (with a reason)")
    def member_add_action(self, request, queryset):
        form, page = _action_form(
            self, request, queryset, form_class=AttributionAddForm, action="member_add_action",
            title="Add a member", explanation="Staff entries are kept by the claims refresh.",
            submit_label="Add the member",
        )
        if page is not None:
            return page
        for group in queryset:
            attribution_member_add(
                group=group, member=form.cleaned_data["member_id"], start=form.cleaned_data["start"],
                reason=form.cleaned_data["reason"], changed_by=request.user.get_username(),
            )
        self.message_user(request, f"Added {form.cleaned_data['member_id']} to {queryset.count()} list(s).")
        return None

    @admin.action(permissions=["change"], description="End a member on the list (with a reason)")
    def member_end_action(self, request, queryset):
        form, page = _action_form(
            self, request, queryset, form_class=AttributionEndForm, action="member_end_action",
            title="End a member", explanation="The member stays in the history with an end date.",
            submit_label="End the member",
        )
        if page is not None:
            return page
        member = form.cleaned_data["member_id"]
        for group in queryset:
            try:
                attribution_member_end(
                    group=group, member=member, end=form.cleaned_data["end"],
                    reason=form.cleaned_data["reason"], changed_by=request.user.get_username(),
                )
            except ValidationError as error:
                self.message_user(request, "; ".join(error.messages), level="error")
            else:
                self.message_user(request, f"Ended {member} on {group}.")
        return None

    @admin.action(permissions=["change"], description="Refresh from claims (all organizations)")
    def refresh_action(self, request, queryset):
        self._refresh(request)

    def _refresh(self, request) -> None:
        summary = attribution_refresh()
        self.message_user(
            request,
            f"Refreshed {summary.organizations} list(s) from claims: {summary.added} added, "
            f"{summary.reopened} reopened, {summary.ended} ended, {summary.unchanged} unchanged, "
            f"{summary.manual_skipped} staff entries kept.",
        )

    # Admin actions need selected rows, and a fresh system has no lists yet: the change
    # list also has a "Refresh all lists from claims" button posting here.
    change_list_template = "admin/payer/attributiongroup/change_list.html"

    def get_urls(self):
        refresh = path(
            "refresh/", self.admin_site.admin_view(self.refresh_view), name="payer_attributiongroup_refresh"
        )
        return [refresh, *super().get_urls()]

    def refresh_view(self, request):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            raise PermissionDenied
        self._refresh(request)
        return redirect("admin:payer_attributiongroup_changelist")


@admin.register(AttributionMember)
class AttributionMemberAdmin(ReadOnlyAdmin):
    """Read-only search across every list; change entries through the group's actions."""

    list_display = ["member", "group", "start", "end", "source", "changed_by", "last_transmitted"]
    list_filter = ["source", "group"]
    search_fields = ["member__member_id", "member__family", "group__name", "group__organization__npi"]
    list_select_related = ["member", "group"]


# --- Systems of record: provider directory, contracts, clinical repository, claims -------


class ProviderPractitionerInline(admin.TabularInline):
    model = ProviderPractitioner
    fields = ["npi", "given", "family", "taxonomy_code", "taxonomy_display", "fhir_id"]
    extra = 0


class NetworkContractInline(admin.TabularInline):
    model = NetworkContract
    fields = ["contract_number", "start", "end"]
    extra = 0


@admin.register(ProviderOrganization)
class ProviderOrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "npi", "city", "state", "fhir_id"]
    search_fields = ["name", "npi", "fhir_id"]
    list_filter = ["state"]
    inlines = [ProviderPractitionerInline, NetworkContractInline]


@admin.register(ProviderPractitioner)
class ProviderPractitionerAdmin(admin.ModelAdmin):
    list_display = ["family", "given", "npi", "taxonomy_display", "organization"]
    search_fields = ["family", "given", "npi", "taxonomy_code", "organization__name"]
    list_filter = ["taxonomy_display", "organization"]
    list_select_related = ["organization"]


@admin.register(NetworkContract)
class NetworkContractAdmin(admin.ModelAdmin):
    list_display = ["contract_number", "organization", "start", "end"]
    search_fields = ["contract_number", "organization__name", "organization__npi"]
    list_filter = ["end"]
    list_select_related = ["organization"]


@admin.register(ClinicalResource)
class ClinicalResourceAdmin(admin.ModelAdmin):
    """Read-only: the clinical repository is fed by the source systems, not edited by hand."""

    list_display = ["resource_type", "resource_id", "patient_id", "date", "status", "last_updated"]
    list_filter = ["resource_type", "status"]
    search_fields = ["resource_id", "patient_id"]
    date_hierarchy = "last_updated"
    fields = ["resource_type", "resource_id", "version_id", "last_updated", "patient_id", "date", "status", "resource_pretty"]
    readonly_fields = fields

    @admin.display(description="Resource")
    def resource_pretty(self, obj: ClinicalResource) -> str:
        return format_html("<pre style='white-space: pre-wrap'>{}</pre>", json.dumps(obj.resource, indent=2))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class ClaimLineInline(admin.TabularInline):
    model = ClaimLine
    fields = ["sequence", "procedure_code", "procedure_system", "procedure_display", "revenue_code", "place_of_service",
              "service_date", "quantity", "charged_amount", "allowed_amount", "paid_amount", "copay_amount"]
    extra = 0


class ClaimDiagnosisInline(admin.TabularInline):
    model = ClaimDiagnosis
    fields = ["sequence", "icd10_code", "display", "kind"]
    extra = 0


@admin.register(Claim)
class ClaimAdmin(admin.ModelAdmin):
    list_display = ["claim_number", "member", "claim_type", "status", "service_start", "billing_npi", "rendering_npi", "updated_at"]
    list_filter = ["claim_type", "status"]
    search_fields = ["claim_number", "member__member_id", "member__family", "billing_npi", "rendering_npi", "encounter_id"]
    date_hierarchy = "service_start"
    list_select_related = ["member"]
    raw_id_fields = ["member"]
    inlines = [ClaimLineInline, ClaimDiagnosisInline]


@admin.register(PriorAuthorization)
class PriorAuthorizationAdmin(admin.ModelAdmin):
    list_display = ["auth_number", "member", "service_code", "service_display", "decision", "decision_date", "valid_start", "valid_end"]
    list_filter = ["decision", "service_system"]
    search_fields = ["auth_number", "member__member_id", "member__family", "service_code", "requesting_npi"]
    date_hierarchy = "requested_date"
    list_select_related = ["member"]
    raw_id_fields = ["member"]


# --- PDex 2.2 $provider-member-match: treatment relationships and match decisions ------------


class RevokeForm(forms.Form):
    reason = forms.CharField(max_length=300, widget=forms.TextInput(attrs={"size": 60}),
                             help_text="Why: e.g. the provider told us the attestation was made in error.")


@admin.register(TreatmentRelationship)
class TreatmentRelationshipAdmin(ReadOnlyAdmin):
    """The Member-Provider Treatment Relationship List; staff can only revoke (an action)."""

    list_display = ["member", "organization", "practitioner", "relationship_type", "period_start", "expires_at",
                    "revoked_at"]
    list_filter = ["relationship_type", "organization", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["member__member_id", "practitioner__npi", "organization__npi"]
    actions = ["revoke_action"]

    def has_change_permission(self, request, obj=None):
        # Listed so the revoke action shows; the change form stays read-only (no fields editable).
        return request.user.has_perm("payer.change_treatmentrelationship")

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    @admin.action(permissions=["change"], description="Revoke the treatment relationship")
    def revoke_action(self, request, queryset):
        form, page = _action_form(
            self, request, queryset, form_class=RevokeForm, action="revoke_action",
            title="Revoke the treatment relationship",
            explanation="The organization loses access to the member's data at once, unless claims or "
                        "staff put the member on its list too. The revocation is kept with your user name.",
            submit_label="Revoke",
        )
        if page is not None:
            return page
        relationships = list(queryset.filter(revoked_at__isnull=True).select_related("member"))
        for relationship in relationships:
            treatment_relationship_revoke(relationship=relationship, revoked_by=request.user.get_username(),
                                          reason=form.cleaned_data["reason"])
        audit_record(action="treatment-revoke", outcome="success", request=request,
                     patient_ids=[r.member.patient_id for r in relationships],
                     detail=f"staff {request.user.get_username()}: {len(relationships)} revoked")
        self.message_user(request, f"Revoked {len(relationships)} treatment relationship(s).")
        return None


@admin.register(MemberMatchDecision)
class MemberMatchDecisionAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "job_ref", "sequence", "organization", "outcome", "reported_as", "rule", "member"]
    list_filter = ["outcome", "rule", "organization"]
    search_fields = ["job_ref", "member__member_id", "inputs_digest"]
