from django.apps import AppConfig


class EmrConfig(AppConfig):
    name = "emr"
    verbose_name = "Hospital: EMR patients and access log"
