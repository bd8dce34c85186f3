from django.contrib import admin

from emr.models import AccessEvent, Clinician, HospitalPatient, LinkDecision, PatientSync, TreatmentAttestation


@admin.register(Clinician)
class ClinicianAdmin(admin.ModelAdmin):
    list_display = ["display_name", "user", "npi", "organization_name", "organization_npi"]
    search_fields = ["display_name", "user__username", "organization_name", "organization_npi"]


@admin.register(HospitalPatient)
class HospitalPatientAdmin(admin.ModelAdmin):
    list_display = ["family", "given", "birth_date", "mrn", "organization_npi", "insurer", "member_id", "payer_patient_id"]
    list_filter = ["organization_npi", "insurer"]
    search_fields = ["family", "given", "mrn", "member_id"]


@admin.register(PatientSync)
class PatientSyncAdmin(admin.ModelAdmin):
    list_display = ["patient", "job", "created_at"]
    raw_id_fields = ["patient", "job"]


@admin.register(AccessEvent)
class AccessEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "user", "organization_npi", "patient", "action", "detail"]
    list_filter = ["action", "organization_npi"]
    readonly_fields = [f.name for f in AccessEvent._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # Append-only, for superusers too (and the database refuses: emr/migrations/0003).
        return False

class _ReadOnlyAdmin(admin.ModelAdmin):
    """Records of what happened: visible to staff, never edited."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(TreatmentAttestation)
class TreatmentAttestationAdmin(_ReadOnlyAdmin):
    list_display = ["attested_at", "patient", "practitioner_name", "practitioner_npi", "organization_npi"]
    list_filter = ["organization_npi"]
    search_fields = ["patient__family", "patient__mrn", "practitioner_npi"]


@admin.register(LinkDecision)
class LinkDecisionAdmin(_ReadOnlyAdmin):
    list_display = ["decided_at", "patient", "connection", "payer_patient_id", "member_id", "verdict",
                    "name_matches", "birth_date_matches", "sex_matches", "decided_by"]
    list_filter = ["verdict", "connection"]
    search_fields = ["patient__family", "patient__mrn", "member_id", "payer_patient_id"]
