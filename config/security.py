"""Login limits (django-axes), wired in from settings: the cool-off and the locked-out answer.

Settings name these by dotted path (``AXES_COOLOFF_TIME``, ``AXES_LOCKOUT_CALLABLE``), so
they live beside the settings rather than in an app.
"""

from __future__ import annotations

import datetime as dt
import logging
import math

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

logger = logging.getLogger("security.login")

# Each further lockout of the same address within a day doubles the cool-off, up to a day.
MAX_COOLOFF = dt.timedelta(hours=24)


def login_cooloff(request: HttpRequest | None) -> dt.timedelta:
    """Return how long a user name or address stays locked: the base cool-off, doubled for
    each earlier lockout of this address in the last day (axes' failure log)."""
    base = dt.timedelta(minutes=settings.PA_LOGIN_COOLOFF_MINUTES)
    address = getattr(request, "axes_ip_address", None)
    if not address:
        return base
    from axes.models import AccessFailureLog

    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    failures = AccessFailureLog.objects.filter(ip_address=address, attempt_time__gte=since).count()
    earlier_lockouts = max(0, failures // max(settings.AXES_FAILURE_LIMIT, 1) - 1)
    return min(base * (2 ** min(earlier_lockouts, 16)), MAX_COOLOFF)


def login_lockout_response(request: HttpRequest, original_response=None, credentials=None) -> HttpResponse:
    """Answer a locked-out login: 429 with Retry-After, an OperationOutcome on FHIR paths,
    a plain page elsewhere. The lockout is logged (never the password)."""
    cooloff = login_cooloff(request)
    retry_after = str(math.ceil(cooloff.total_seconds()))
    username = (credentials or {}).get("username") or request.POST.get("username", "")
    logger.warning("login-locked path=%s address=%s user=%s", request.path[:200],
                   getattr(request, "axes_ip_address", ""), str(username)[:150])
    message = "Too many failed sign-in attempts. Try again later, or ask an administrator to unlock the account."
    if "/fhir" in request.path:
        outcome = {"resourceType": "OperationOutcome",
                   "issue": [{"severity": "error", "code": "throttled", "diagnostics": message}]}
        response: HttpResponse = JsonResponse(outcome, status=429, content_type="application/fhir+json")
    else:
        response = render(request, "login_locked.html", {"message": message, "minutes": math.ceil(cooloff.total_seconds() / 60)},
                          status=429)
    response["Retry-After"] = retry_after
    return response
