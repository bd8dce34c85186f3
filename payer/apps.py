from django.apps import AppConfig


class PayerConfig(AppConfig):
    name = "payer"
    verbose_name = "Payer (UnitedCare FHIR server)"
