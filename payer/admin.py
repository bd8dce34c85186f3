"""Payer staff's view of the systems of record, attribution, opt-outs, clients and audit.

Admin classes are thin: actions and save_model call services.
"""

from django.contrib import admin  # noqa: F401
