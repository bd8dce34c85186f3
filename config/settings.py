"""Settings for Provider Access, read from the environment with embedded defaults.

With nothing set, the project runs on a SQLite file, local files and kombu's filesystem
broker, all under ``var/``. Set ``DATABASE_URL``, ``CELERY_BROKER_URL`` and the S3
variables to run the same code on Postgres, Redis and S3 with many workers.
"""

import os
import secrets
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("PA_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _env_file_load(path: Path) -> None:
    """Read ``NAME=value`` lines of ``path`` into the environment, never over a variable already set.

    ``make demo`` writes ``var/demo.env`` (``DEBUG=1``), so every ``manage.py`` command the
    README shows finds the demo's settings without extra variables. A production deployment
    has no such file, so it still refuses to start without ``SECRET_KEY``.
    """
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        os.environ.setdefault(name.strip(), value.strip())


_env_file_load(VAR_DIR / "demo.env")


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG")
TESTING = "pytest" in sys.modules


def _secret_key() -> str:
    if key := os.environ.get("SECRET_KEY"):
        return key
    if not (DEBUG or TESTING):
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    # The demo keeps a generated key so sessions survive restarts.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# Which sides of the exchange this deployment serves. A health plan runs "payer" (with
# the output file server), a hospital runs "provider,emr"; the demo runs all of them.
ROLES = set(env_list("PA_ROLES", "payer,provider,emr"))
unknown_roles = ROLES - {"payer", "provider", "emr"}
if unknown_roles:
    raise ImproperlyConfigured(f"Unknown PA_ROLES: {', '.join(sorted(unknown_roles))}")
if "emr" in ROLES:
    ROLES.add("provider")

ROLE_APPS = {"payer": ["payer", "storage"], "provider": ["provider"], "emr": ["emr"]}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "axes",
    "fhirkit",
    *[app for role in ("payer", "provider", "emr") if role in ROLES for app in ROLE_APPS[role]],
]
if "provider" in ROLES:
    # Bearer tokens for the hospital's other systems calling the local FHIR API (provider/views/fhir.py).
    INSTALLED_APPS.append("rest_framework.authtoken")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

# Login limits on every password login: the EMR's and the admin's forms and HTTP Basic on
# the local FHIR API (django-axes). Failures are counted per user name and, apart, per
# address; after PA_LOGIN_FAILURE_LIMIT of either, that user name or address is locked
# for a cool-off that doubles with each further lockout (PA_LOGIN_COOLOFF_MINUTES first).
# Staff unlock in the admin ("Access attempts": delete the row) or with
# `manage.py axes_reset_username NAME` / `axes_reset_ip ADDRESS`.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = int(os.environ.get("PA_LOGIN_FAILURE_LIMIT", "5"))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_COOLOFF_TIME = "config.security.login_cooloff"
PA_LOGIN_COOLOFF_MINUTES = float(os.environ.get("PA_LOGIN_COOLOFF_MINUTES", "15"))
AXES_RESET_ON_SUCCESS = True
# Every failure is kept (user name, address, path, time): the audit of refused logins.
AXES_ENABLE_ACCESS_FAILURE_LOG = True
AXES_LOCKOUT_CALLABLE = "config.security.login_lockout_response"
# The client's address: REMOTE_ADDR, never a header, unless PA_TRUSTED_PROXY_COUNT says how
# many reverse proxies of this deployment stand in front (then X-Forwarded-For, counted
# from the right so that a client cannot prepend addresses of its own choosing).
PA_TRUSTED_PROXY_COUNT = int(os.environ.get("PA_TRUSTED_PROXY_COUNT", "0"))
AXES_IPWARE_META_PRECEDENCE_ORDER = ("HTTP_X_FORWARDED_FOR", "REMOTE_ADDR") if PA_TRUSTED_PROXY_COUNT else ("REMOTE_ADDR",)
AXES_IPWARE_PROXY_COUNT = PA_TRUSTED_PROXY_COUNT or None
AXES_IPWARE_PROXY_ORDER = "right-most"

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=int(os.environ.get("CONN_MAX_AGE", "60")),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not memory, so that a worker process in the tests sees the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
    DATABASES["default"]["CONN_MAX_AGE"] = 0

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# A shared cache (Redis) when several web processes run, so that rate limits hold across
# them; the embedded default is per process.
if cache_url := os.environ.get("CACHE_URL"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": cache_url}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
# The time zone pages show times in (the EMR's clinicians read local times); stored times stay UTC.
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
LOGIN_URL = "/emr/login/"
LOGIN_REDIRECT_URL = "/emr/"

# File storage: local files under var/ by default, S3 (or any S3-compatible server)
# when PA_S3_BUCKET is set.
PA_S3_BUCKET = os.environ.get("PA_S3_BUCKET")
if PA_S3_BUCKET:
    EXPORT_STORAGE = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": PA_S3_BUCKET,
            "endpoint_url": os.environ.get("PA_S3_ENDPOINT_URL") or None,
            "region_name": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            "default_acl": None,
            "querystring_auth": False,
            "file_overwrite": True,
        },
    }
else:
    EXPORT_STORAGE = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {
            "location": os.environ.get("PA_FILES_DIR", str(VAR_DIR / "files")),
            "file_permissions_mode": 0o600,
        },
    }
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(VAR_DIR / "media")},
    },
    "exports": EXPORT_STORAGE,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Celery: kombu's filesystem transport needs no server; Redis (or any broker) when set.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = Path(os.environ.get("PA_BROKER_DIR", VAR_DIR / "broker"))
    for sub in ("queue", "processed", "control"):
        (_broker_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        # The transport polls its folder; the default second would be most of a small
        # export's latency.
        "polling_interval": 0.1,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("PA_CELERY_QUEUE", "celery")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Without a broker event loop (the filesystem transport) a countdown task can start up to
# this late; the default second would be most of a small fetch's latency.
CELERY_WORKER_TIMER_PRECISION = 0.1
CELERY_BEAT_SCHEDULE: dict = {}
if "payer" in ROLES:
    CELERY_BEAT_SCHEDULE |= {
        # Derive attribution lists from the claims system once a day (payer/services/attribution.py).
        "attribution-refresh-daily": {"task": "payer.tasks.attribution_refresh_task", "schedule": 24 * 60 * 60},
        # Bulk Data exports: re-queue work units whose lease expired (killed worker, lost
        # message), and purge expired files and jobs (payer/services/export.py).
        "export-reconcile": {"task": "payer.tasks.export_reconcile_task", "schedule": 60},
        "export-purge": {"task": "payer.tasks.export_purge_task", "schedule": 15 * 60},
        # Expired access tokens are refused anyway; drop their rows (payer/services/auth.py).
        "access-tokens-purge": {"task": "payer.tasks.access_tokens_purge_task", "schedule": 60 * 60},
        # Provider Access notices due (payer/services/notices.py), in bounded batches.
        "notices-send": {"task": "payer.tasks.notices_send_task", "schedule": 60 * 60},
        # Audit retention, when PA_AUDIT_RETENTION_DAYS is set (payer/services/audit.py).
        "audit-purge-daily": {"task": "payer.tasks.audit_purge_task", "schedule": 24 * 60 * 60},
    }
if "provider" in ROLES:
    # Provider sync jobs whose worker died (its lease ran out) or whose task was lost:
    # take them over. Every 15 s, so that with 30 s leases a killed worker's step or file
    # is picked up within a minute.
    CELERY_BEAT_SCHEDULE["sync-jobs-resume"] = {"task": "provider.tasks.sync_jobs_resume_task", "schedule": 15}
    # Panel sync: each connection's attribution Group on its own schedule (nightly by default).
    CELERY_BEAT_SCHEDULE["panel-syncs-run"] = {"task": "provider.tasks.panel_syncs_run_task", "schedule": 5 * 60}

# The hospital's Bulk Data client (provider/services/sync.py): claims last this long
# without a heartbeat; a big output file is ingested in chunks of this many lines, one task
# each; transient payer errors are retried for at most this long in a row.
PA_SYNC_LEASE_SECONDS = int(os.environ.get("PA_SYNC_LEASE_SECONDS", "30"))
PA_SYNC_CHUNK_LINES = int(os.environ.get("PA_SYNC_CHUNK_LINES", "50000"))
PA_SYNC_TRANSIENT_BUDGET_SECONDS = int(os.environ.get("PA_SYNC_TRANSIENT_BUDGET_SECONDS", "3600"))
# The EMR's fetch panel: a fetch not finished after this many seconds is "taking longer
# than usual", and the panel says what it waits on and offers Cancel and Retry.
EMR_FETCH_SLOW_SECONDS = float(os.environ.get("EMR_FETCH_SLOW_SECONDS", "20"))

# Bulk Data exports (payer/services/export.py, storage/).
PA_EXPORT_EXPIRY_HOURS = float(os.environ.get("PA_EXPORT_EXPIRY_HOURS", "24"))
# Expired files stay this long so that a download in progress is not cut off.
PA_EXPORT_PURGE_GRACE_SECONDS = int(os.environ.get("PA_EXPORT_PURGE_GRACE_SECONDS", "3600"))
PA_EXPORT_LEASE_SECONDS = int(os.environ.get("PA_EXPORT_LEASE_SECONDS", "300"))
# Patients per export work unit: each unit re-reads the heap pages its patients' rows
# share with other types, and costs ~20 ms of bookkeeping; 2500 halves both against 1000
# (bench/export.py) while a 10,000-member group still splits into 40 units.
PA_EXPORT_BATCH_PATIENTS = int(os.environ.get("PA_EXPORT_BATCH_PATIENTS", "2500"))
PA_EXPORT_FILE_MAX_BYTES = int(os.environ.get("PA_EXPORT_FILE_MAX_BYTES", str(256 * 1024 * 1024)))
PA_EXPORT_MAX_ATTEMPTS = int(os.environ.get("PA_EXPORT_MAX_ATTEMPTS", "5"))
# PDex 2.2 $provider-member-match (payer/services/member_match.py).
# MemberBundle repetitions accepted in one request; more answer 422 (too-costly).
PA_MEMBER_MATCH_MAX_MEMBERS = int(os.environ.get("PA_MEMBER_MATCH_MAX_MEMBERS", "100"))
# §pdex-261a: opted-out members are reported as NonMatched unless this is on.
PA_MEMBER_MATCH_DISCLOSE_OPT_OUT = os.environ.get("PA_MEMBER_MATCH_DISCLOSE_OPT_OUT", "0") == "1"
# §pdex-264: the result Groups (and so the MatchedMembers export) live this many days.
PA_MEMBER_MATCH_GROUP_DAYS = int(os.environ.get("PA_MEMBER_MATCH_GROUP_DAYS", "30"))
# A treatment relationship from an accepted attestation expires after this many days
# (sooner when the attested provision.period ends); a new attestation renews it.
PA_TREATMENT_RELATIONSHIP_DAYS = int(os.environ.get("PA_TREATMENT_RELATIONSHIP_DAYS", "90"))
# An attestation (Consent.dateTime) older than this is refused; a prospective
# relationship may start at most PA_ATTESTATION_MAX_FUTURE_DAYS ahead.
PA_ATTESTATION_MAX_AGE_DAYS = int(os.environ.get("PA_ATTESTATION_MAX_AGE_DAYS", "30"))
PA_ATTESTATION_MAX_FUTURE_DAYS = int(os.environ.get("PA_ATTESTATION_MAX_FUTURE_DAYS", "90"))
# Audit retention (payer/services/audit.py audit_purge): days audit events are kept; 0 keeps
# them forever. The purge is logged (AuditPurge) and is the only DELETE the database allows.
PA_AUDIT_RETENTION_DAYS = int(os.environ.get("PA_AUDIT_RETENTION_DAYS", "0"))
# Provider Access notices (42 CFR 422.121(a)(4); payer/services/notices.py).
PA_NOTICE_BATCH_SIZE = int(os.environ.get("PA_NOTICE_BATCH_SIZE", "500"))
# Off: an export withholds members not yet sent the notice, and its manifest says so.
PA_EXPORT_ALLOW_UNNOTIFIED = env_bool("PA_EXPORT_ALLOW_UNNOTIFIED")
PA_NOTICE_FROM_EMAIL = os.environ.get("PA_NOTICE_FROM_EMAIL", "provider-access@unitedcare.example")
# Email: files under var/mail by default; SMTP when EMAIL_HOST is set.
if os.environ.get("EMAIL_HOST"):
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST = os.environ["EMAIL_HOST"]
    EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "587"))
    EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
else:
    EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.filebased.EmailBackend")
    EMAIL_FILE_PATH = str(VAR_DIR / "mail")
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# Imports of the plan's own data (payer/services/imports/): the identifier system whose
# value on a Patient or Coverage is the member id (Member.member_id) that links it.
PA_MEMBER_IDENTIFIER_SYSTEM = os.environ.get("PA_MEMBER_IDENTIFIER_SYSTEM", "https://unitedcare.example.org/fhir/sid/member-id")

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["fhirkit.renderers.FHIRJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "fhirkit.parsers.FHIRJSONParser", "fhirkit.parsers.BoundedJSONParser", "rest_framework.parsers.FormParser",
    ],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "fhirkit.exceptions.fhir_exception_handler",
}

# Bounds on every FHIR search of both APIs (fhirkit.bundles.search_bounds_check) and on
# any query string (Django's own: more fields than this answer 400 too-costly).
PA_FHIR_MAX_PARAMETERS = int(os.environ.get("PA_FHIR_MAX_PARAMETERS", "100"))
PA_FHIR_MAX_VALUES = int(os.environ.get("PA_FHIR_MAX_VALUES", "100"))
PA_FHIR_MAX_VALUE_LENGTH = int(os.environ.get("PA_FHIR_MAX_VALUE_LENGTH", "4000"))
DATA_UPLOAD_MAX_NUMBER_FIELDS = 1000
# Fetching a client's JWKS (payer/services/auth.py): size, connect and read timeouts, and
# an overall deadline a slow host cannot stretch.
PA_JWKS_MAX_BYTES = int(os.environ.get("PA_JWKS_MAX_BYTES", str(64 * 1024)))
PA_JWKS_CONNECT_TIMEOUT = float(os.environ.get("PA_JWKS_CONNECT_TIMEOUT", "3"))
PA_JWKS_READ_TIMEOUT = float(os.environ.get("PA_JWKS_READ_TIMEOUT", "3"))
PA_JWKS_DEADLINE_SECONDS = float(os.environ.get("PA_JWKS_DEADLINE_SECONDS", "5"))
# Kick-off bounds of $export and $davinci-data-export (payer/services/export_params.py).
PA_EXPORT_MAX_TYPE_FILTERS = int(os.environ.get("PA_EXPORT_MAX_TYPE_FILTERS", "50"))
PA_EXPORT_MAX_PATIENTS = int(os.environ.get("PA_EXPORT_MAX_PATIENTS", "1000"))

# The public address of this deployment, for absolute URLs in manifests and
# Content-Location when requests come through a proxy. Empty: taken from the request.
PA_BASE_URL = os.environ.get("PA_BASE_URL", "").rstrip("/")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# The EMR, once a payer stops sharing a patient's data (a later fetch returns none): "mark"
# shows what was received before, marked as received then and no longer shared; "hide"
# shows nothing from that source.
EMR_HISTORY_AFTER_SHARING_ENDS = os.environ.get("EMR_HISTORY_AFTER_SHARING_ENDS", "mark").strip().lower()
if EMR_HISTORY_AFTER_SHARING_ENDS not in ("mark", "hide"):
    # A typo must not quietly show what a hospital chose to hide.
    raise ImproperlyConfigured("EMR_HISTORY_AFTER_SHARING_ENDS must be 'mark' or 'hide'.")

