"""Forms of the EMR pages."""

import datetime as dt

from django import forms

from emr.models import HospitalPatient
from provider.models import PayerConnection


class PatientSearchForm(forms.Form):
    name = forms.CharField(required=False, label="Name or MRN", max_length=100)
    birth_date = forms.DateField(required=False, label="Date of birth", widget=forms.DateInput(attrs={"type": "date"}))
    member_id = forms.CharField(required=False, label="Member id", max_length=64)


class PatientForm(forms.Form):
    given = forms.CharField(label="Given name", max_length=100)
    family = forms.CharField(label="Family name", max_length=100)
    birth_date = forms.DateField(label="Date of birth", widget=forms.DateInput(attrs={"type": "date"}))
    gender = forms.ChoiceField(choices=HospitalPatient.Gender.choices, initial=HospitalPatient.Gender.UNKNOWN)
    mrn = forms.CharField(label="MRN", max_length=40, required=False, help_text="Leave empty to assign the next MRN.")
    insurer = forms.ModelChoiceField(
        queryset=PayerConnection.objects.none(), required=False, empty_label="No insurer / self-pay"
    )
    member_id = forms.CharField(label="Member id", max_length=64, required=False)
    attest = forms.BooleanField(
        required=False, label="I attest a treatment relationship with this patient",
        help_text="Sent to the insurer with the patient's demographics, so that a new patient is found.",
    )

    def __init__(self, *args, organization_npi: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Only the payers this organization has a client at: another organization's
        # connections are not this clinician's to use (or to see).
        self.fields["insurer"].queryset = PayerConnection.objects.filter(organization_npi=organization_npi).order_by(
            "display_name"
        )

    def clean_birth_date(self) -> dt.date:
        value = self.cleaned_data["birth_date"]
        if value > dt.date.today():
            raise forms.ValidationError("The date of birth is in the future.")
        return value

    def clean(self):
        data = super().clean()
        if data.get("member_id") and not data.get("insurer"):
            self.add_error("insurer", "Choose the insurer that issued the member id.")
        return data


class MemberIdForm(forms.Form):
    member_id = forms.CharField(label="Member id on the insurance card", max_length=64)


class HistoryListForm(forms.Form):
    """Filters and the page of a history list (encounters, claims); used with a prefix per list.
    A value that is not valid is ignored (and said so), never an error page."""

    date_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    facility = forms.CharField(required=False, max_length=300, label="Facility or provider")
    type = forms.CharField(required=False, max_length=100, label="Type")
    page = forms.IntegerField(required=False, min_value=1, max_value=100_000)

    def criteria(self) -> dict:
        """Return the valid criteria as keyword arguments of ``emr.history.list_page``."""
        data = self.cleaned_data if self.is_valid() else {
            name: value for name, value in getattr(self, "cleaned_data", {}).items() if name not in self.errors
        }
        return {
            "date_from": data.get("date_from"), "date_to": data.get("date_to"),
            "facility": data.get("facility") or "", "kind": data.get("type") or "", "page": data.get("page") or 1,
        }
