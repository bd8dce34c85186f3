from django.apps import AppConfig


class ProviderConfig(AppConfig):
    name = "provider"
    verbose_name = "Hospital: payer connections and local store"
