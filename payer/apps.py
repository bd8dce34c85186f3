from django.apps import AppConfig


class PayerConfig(AppConfig):
    name = "payer"
    verbose_name = "Health plan: members, provider systems and audit"
