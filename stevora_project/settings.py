"""Stevora settings, read from the environment.

With nothing set, Stevora runs embedded: SQLite in WAL mode under ``var/`` and an
in-process Celery worker (``python manage.py runengine``). Production sets
``DATABASE_URL`` (PostgreSQL) and ``CELERY_BROKER_URL`` (Redis).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from . import security
from .env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("STEVORA_VAR_DIR") or (BASE_DIR / "var"))

DEBUG = env_bool("DEBUG", False)
# SECRET_KEY and the HTTPS settings: see "Security" at the end of this file.
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS") or ["localhost", "127.0.0.1", "[::1]", "testserver"]
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "runs",
    "steps",
    "providers",
    "approvals",
    "events",
    "api",
    "webhooks",
    "schedules",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's static files under gunicorn (compose.yaml) without a separate web server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "stevora_project.urls"
WSGI_APPLICATION = "stevora_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# --- Database -----------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL")
PREPARE_ONLY_WHEN_ASKED = 2**31 - 1  # psycopg's prepare_threshold: executions before auto-preparing
DB_PREPARED_STATEMENTS = env_bool("STEVORA_DB_PREPARED_STATEMENTS", True)
CONN_MAX_AGE = env_int("STEVORA_CONN_MAX_AGE", 600, minimum=0)
if DATABASE_URL:
    scheme = urlparse(DATABASE_URL).scheme
    if scheme not in {"postgres", "postgresql", "pgsql", "sqlite"}:
        raise ImproperlyConfigured(
            f"DATABASE_URL must be a postgres:// (or sqlite://) URL, got scheme {scheme!r}"
        )
    try:
        _db = dj_database_url.parse(DATABASE_URL, conn_max_age=CONN_MAX_AGE, conn_health_checks=True)
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from exc
    if _db["ENGINE"].endswith("postgresql"):
        # Django turns psycopg's prepared statements off (for transaction-pooling pgbouncer
        # before 1.21). Stevora prepares only its few hot-path statements, asked for by name
        # (``prepare=True``); a threshold no ORM query reaches leaves everything else as it was.
        # STEVORA_DB_PREPARED_STATEMENTS=false turns them off behind such a pooler.
        _db.setdefault("OPTIONS", {})["prepare_threshold"] = (
            PREPARE_ONLY_WHEN_ASKED if DB_PREPARED_STATEMENTS else None)
    DATABASES = {"default": _db}
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("STEVORA_SQLITE_PATH") or str(VAR_DIR / "stevora.sqlite3"),
            "OPTIONS": {
                # IMMEDIATE takes the write lock at BEGIN, so two writers queue on
                # busy_timeout instead of failing with "database is locked" on upgrade.
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": (
                    "PRAGMA journal_mode=WAL;"
                    "PRAGMA synchronous=NORMAL;"
                    "PRAGMA busy_timeout=30000;"
                    "PRAGMA foreign_keys=ON;"
                ),
            },
            "CONN_MAX_AGE": CONN_MAX_AGE,
            "TEST": {"NAME": env_str("STEVORA_SQLITE_TEST_PATH") or str(VAR_DIR / "test.sqlite3")},
        }
    }
IS_EMBEDDED_DB = DATABASES["default"]["ENGINE"].endswith("sqlite3")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STEVORA_STATIC_ROOT") or (BASE_DIR / "staticfiles"))
# WhiteNoise serves what collectstatic gathered into STATIC_ROOT (the Docker image collects at
# build time). Until that has run (a fresh clone: `manage.py runserver` or gunicorn, DEBUG off)
# it finds the apps' static files itself, so the admin has its styles either way.
WHITENOISE_USE_FINDERS = env_bool("STEVORA_STATIC_FINDERS", not STATIC_ROOT.is_dir())
LOGIN_URL = "/admin/login/"

# --- Celery -------------------------------------------------------------------
# DESIGN §10: the broker is a doorbell. acks_late + reject_on_worker_lost so a killed
# worker's message comes back; prefetch 1 so one slow step does not hold others; no
# results (state lives in our rows); JSON only.

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or "memory://"
IS_EMBEDDED_BROKER = CELERY_BROKER_URL.startswith("memory://")
BROKER_SCHEME = "memory" if IS_EMBEDDED_BROKER else urlparse(CELERY_BROKER_URL).scheme
if BROKER_SCHEME not in {"memory", "redis", "rediss", "amqp", "amqps", "pyamqp"}:
    raise ImproperlyConfigured(
        "CELERY_BROKER_URL must be a redis:// or amqp:// (RabbitMQ) URL, or unset for the embedded default; "
        f"got {CELERY_BROKER_URL!r}"
    )
IS_AMQP_BROKER = BROKER_SCHEME in {"amqp", "amqps", "pyamqp"}

# The longest one step may run (its deadline when it declares no shorter timeout_seconds);
# a handler that ignores it is abandoned after STEVORA_TIMEOUT_GRACE_SECONDS more.
STEVORA_MAX_STEP_SECONDS = env_int("STEVORA_MAX_STEP_SECONDS", 3600, minimum=1)
STEVORA_TIMEOUT_GRACE_SECONDS = env_float("STEVORA_TIMEOUT_GRACE_SECONDS", 1.0, minimum=0.05)
# One task runs a step and the successors its commit hands it while they fit in
# STEVORA_MAX_STEP_SECONDS + grace (executor.task_budget); Celery's hard limit is a backstop
# above that, and the broker's visibility timeout must exceed it.
_TASK_HARD_LIMIT = int(STEVORA_MAX_STEP_SECONDS + 3 * STEVORA_TIMEOUT_GRACE_SECONDS + 60)
# Redis redelivers an unacknowledged message after its visibility timeout (longer than any
# task may run); RabbitMQ redelivers it when the consumer's connection closes.
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", _TASK_HARD_LIMIT + 600, minimum=60),
    # Every Celery priority level its own list (kombu's default is 0, 3, 6, 9): run priorities
    # map to 1..2 above the default 3 and 4..9 below it (runs.engine.dispatch.broker_priority).
    "priority_steps": list(range(10)),
}
if IS_EMBEDDED_BROKER:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"polling_interval": 0.02}
elif IS_AMQP_BROKER:
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_TIME_LIMIT = _TASK_HARD_LIMIT
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_DEFAULT_QUEUE = env_str("STEVORA_QUEUE") or "stevora"
# Doorbells of steps recovered from dead workers go ahead of any backlog (runs.engine.dispatch).
# Redis serves priority 0 first (priority_steps 0..9 above): steps go at 3, those at 0.
# RabbitMQ serves the highest first, from a queue declared with x-max-priority 9: steps go at
# 3, those at 9. (A queue declared earlier without x-max-priority must be deleted first:
# RabbitMQ refuses to redeclare it with other arguments.)
CELERY_TASK_DEFAULT_PRIORITY = 3
STEVORA_URGENT_PRIORITY = 9 if IS_AMQP_BROKER else 0
if IS_AMQP_BROKER:
    CELERY_TASK_QUEUE_MAX_PRIORITY = 9
# Celery's Django fixup closes the DB connection around every task unless told to
# reuse it; a new PostgreSQL connection per step costs about a third of the speed.
# We keep connections (CONN_MAX_AGE + health checks) and close only broken ones.
CELERY_DB_REUSE_MAX = 1_000_000
EVENT_PURGE_SECONDS = env_float("STEVORA_EVENT_PURGE_SECONDS", 3600.0, minimum=0.05)
# Beat publishes nothing: its process hosts the engine's sweeper thread (lease recovery,
# lost doorbells, timers, child runs, webhook deliveries, the event purge), which reaches
# the database directly so that no backlog in the step queue can delay it.
CELERY_BEAT_SCHEDULE: dict[str, Any] = {}

# --- Stevora engine -----------------------------------------------------------

STEVORA: dict[str, Any] = {
    # How long a claimed step is ours without a heartbeat; a killed worker's step is
    # back in play this long after its last heartbeat.
    "LEASE_SECONDS": env_float("STEVORA_LEASE_SECONDS", 30.0, minimum=0.5),
    # How often dead workers are looked for: a worker process that dies drops its liveness
    # lock at once, and its steps run again within about this long (runs.engine.workers).
    "WORKER_CHECK_SECONDS": env_float("STEVORA_WORKER_CHECK_SECONDS", 1.0, minimum=0.05),
    # How often a live worker says so (and takes its lock again after a database restart).
    "WORKER_HEARTBEAT_SECONDS": env_float("STEVORA_WORKER_HEARTBEAT_SECONDS", 5.0, minimum=0.1),
    # How long one task keeps taking its run's next step itself (no broker round trip)
    # before it hands the next one back to the queue, so that no run holds a worker.
    "CHAIN_SECONDS": env_float("STEVORA_CHAIN_SECONDS", 1.0, minimum=0.0),
    # How often the reconciler sweeps (and, embedded, polls for runs started elsewhere).
    "RECONCILE_SECONDS": env_float("STEVORA_RECONCILE_SECONDS", 2.0, minimum=0.05),
    # External events are kept this long (a wait may start after its event arrived);
    # the purge runs every STEVORA_EVENT_PURGE_SECONDS (beat, or runengine embedded).
    "EVENT_RETENTION_SECONDS": env_float("STEVORA_EVENT_RETENTION_SECONDS", 7 * 86400.0, minimum=0),
    "EVENT_PURGE_SECONDS": EVENT_PURGE_SECONDS,
    "WEBHOOK_SWEEP_SECONDS": env_float("STEVORA_WEBHOOK_SWEEP_SECONDS", 5.0, minimum=0.05),
    # How often the beat (or runengine) looks for schedules whose next tick has come.
    "SCHEDULE_SWEEP_SECONDS": env_float("STEVORA_SCHEDULE_SWEEP_SECONDS", 1.0, minimum=0.05),
    "TIMEOUT_GRACE_SECONDS": STEVORA_TIMEOUT_GRACE_SECONDS,
    # An llm call held back by a provider's requests_per_minute / tokens_per_minute waits in
    # its worker when the window opens within this long; a longer wait hands the step back
    # (holding no worker) to be rung when the window opens (providers.limits).
    "LLM_RATE_WAIT_SECONDS": env_float("STEVORA_LLM_RATE_WAIT_SECONDS", 5.0, minimum=0.0),
    # A ready step whose doorbell is older than this is rung again.
    "REDISPATCH_SECONDS": env_float("STEVORA_REDISPATCH_SECONDS", 15.0, minimum=0.1),
    # Lease expiries a step may suffer before it is dead-lettered.
    "MAX_RECOVERIES": env_int("STEVORA_MAX_RECOVERIES", 5, minimum=1),
    "HANDLER_MODULES": env_list("STEVORA_HANDLER_MODULES"),
    "HTTP_ALLOW_PRIVATE": env_bool("STEVORA_HTTP_ALLOW_PRIVATE", False),
    "DEFAULT_MAX_VISITS": env_int("STEVORA_DEFAULT_MAX_VISITS", 10, minimum=1),
    # Fault injection for crash tests (DBOS-style debug trigger); never set in production.
    "FAULT_POINT": env_str("STEVORA_FAULT_POINT") or "",
    # Where approval requests are announced (signed webhook) besides a step's own ``webhook``.
    "APPROVAL_WEBHOOK_URL": env_str("STEVORA_APPROVAL_WEBHOOK_URL") or "",
    # Per-API-key rate limit in DRF notation; a key's own ``rate`` wins. "off": unlimited.
    "API_RATE": env_str("STEVORA_API_RATE") or "600/min",
    # Signs outgoing webhooks that have no secret of their own (the global approval URL).
    "WEBHOOK_SECRET": env_str("STEVORA_WEBHOOK_SECRET") or "",
    # The admin's address in links sent out by webhooks (approval notices).
    "PUBLIC_URL": (env_str("STEVORA_PUBLIC_URL") or "http://localhost:8000").rstrip("/"),
    "WEBHOOK_MAX_ATTEMPTS": env_int("STEVORA_WEBHOOK_MAX_ATTEMPTS", 8, minimum=1),
    # The notice sweep announces history rows this old that have no delivery yet (a process
    # killed between a run's commit and its notice); longer than any transaction that writes one.
    "NOTICE_SETTLE_SECONDS": env_float("STEVORA_NOTICE_SETTLE_SECONDS", 10.0, minimum=0),
    "WEBHOOK_TIMEOUT_SECONDS": env_float("STEVORA_WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1),
    # First retry delay of a failed webhook delivery; doubles each attempt (capped at an hour).
    "WEBHOOK_BACKOFF_SECONDS": env_float("STEVORA_WEBHOOK_BACKOFF_SECONDS", 5.0, minimum=0.01),
    # Retention (runs.services.retention, docs/operations.md): finished runs older than this many
    # days are purged, unless their workspace sets its own retention_days. 0 (default): keep forever.
    "RETENTION_DAYS": env_int("STEVORA_RETENTION_DAYS", 0, minimum=0) or None,
    # How often the retention sweep runs (beat, or runengine embedded), and how many runs one
    # purge transaction deletes (with everything they own).
    "RETENTION_SWEEP_SECONDS": env_float("STEVORA_RETENTION_SWEEP_SECONDS", 3600.0, minimum=0.05),
    "RETENTION_BATCH_SIZE": env_int("STEVORA_RETENTION_BATCH_SIZE", 100, minimum=1),
    # /metrics (runs.metrics): served to loopback clients; with a token, also to a client sending
    # "Authorization: Bearer <token>". The recent_* metrics cover runs created in this window.
    "METRICS_TOKEN": env_str("STEVORA_METRICS_TOKEN") or "",
    "METRICS_WINDOW_SECONDS": env_float("STEVORA_METRICS_WINDOW_SECONDS", 3600.0, minimum=1.0),
    # OpenTelemetry traces (runs.engine.tracing), off unless an OTLP/HTTP endpoint is given.
    "OTLP_TRACES_ENDPOINT": env_str("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
        (env_str("OTEL_EXPORTER_OTLP_ENDPOINT") or "").rstrip("/") + "/v1/traces"
        if env_str("OTEL_EXPORTER_OTLP_ENDPOINT") else ""),
    # Live output (streamed LLM text, steps/live.py): kept this long, at most this many pieces per run.
    "LIVE_TTL_SECONDS": env_int("STEVORA_LIVE_TTL_SECONDS", 3600, minimum=1),
    "LIVE_MAX_PER_RUN": env_int("STEVORA_LIVE_MAX_PER_RUN", 5000, minimum=10),
    # One GET /api/v1/runs/<id>/stream/ answers this long at most, then the client reconnects with
    # Last-Event-ID (below gunicorn's 30 s sync-worker timeout).
    "SSE_MAX_SECONDS": env_float("STEVORA_SSE_MAX_SECONDS", 25.0, minimum=1),
}

if STEVORA["API_RATE"] == "off":
    STEVORA["API_RATE"] = ""
elif not re.fullmatch(r"\d+/(s|sec|second|m|min|minute|h|hour|d|day)", STEVORA["API_RATE"]):
    raise ImproperlyConfigured(
        f"STEVORA_API_RATE must be a rate like 600/min, 10/s or 5000/hour (or off), got {STEVORA['API_RATE']!r}")

# --- REST framework -----------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "api.schema.StevoraAutoSchema",
    # API keys for services; the session for a signed-in browser (the schema pages, the admin's users).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["api.permissions.HasActionPermission"],
    "DEFAULT_THROTTLE_CLASSES": ["api.throttling.ApiKeyRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "api.errors.handle",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Stevora API",
    "DESCRIPTION": ("Durable execution runtime for AI-agent workflows. Authenticate with "
                    "`Authorization: Bearer stv_<prefix>_<secret>`; every error body is "
                    "`{type, detail, errors: [{field, message}]}`. See docs/api.md."),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and ReDoc from static files (drf-spectacular-sidecar), not from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "runs.models.RunStatus",
        "StepStatusEnum": "steps.models.StepStatus",
    },
}

# --- API hardening: hostile input (issue 10) -------------------------------------
# The largest request body the API reads; bigger is a 413 in the JSON error body
# (docs/operations.md). Django's own form parsing uses the same limit.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("STEVORA_API_MAX_BODY_BYTES", 2 * 1024 * 1024, minimum=1024)
# JSON only, size-bounded, NUL/surrogate/depth/64-bit checked before any view (api.parsers).
REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"] = ["api.parsers.JSONParser"]
# OPTIONS answers without a serializer_class (api.metadata).
REST_FRAMEWORK["DEFAULT_METADATA_CLASS"] = "api.metadata.ApiMetadata"
# No ?format= override: one renderer, and an unknown format would be an undocumented 404.
REST_FRAMEWORK["URL_FORMAT_OVERRIDE"] = None  # type: ignore[assignment]
# NUL in a query string or URL path under /api/ is a 400 naming the parameter.
MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.common.CommonMiddleware"), "api.middleware.RefuseUnstorableQuery")

# --- Cache (API rate limits) ---------------------------------------------------
# Redis when CACHE_URL is set, or the broker's Redis otherwise (throttle counters
# carry TTLs, so they never pile up); local memory embedded.
CACHE_URL = env_str("CACHE_URL") or (CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://"))
                                     else None)
if CACHE_URL:
    if urlparse(CACHE_URL).scheme not in {"redis", "rediss"}:
        raise ImproperlyConfigured(f"CACHE_URL must be a redis:// URL, got {CACHE_URL!r}")
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL,
                          "KEY_PREFIX": "stevora-cache"}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "stevora"}}

# STEVORA_LOG_FORMAT=json: one JSON object per line, with run_id, step_key and attempt on the
# lines about a step (steps.logcontext; docs/operations.md, "Logs").
LOG_FORMAT = (env_str("STEVORA_LOG_FORMAT") or "plain").strip().lower()
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"STEVORA_LOG_FORMAT must be plain or json, got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
                   "json": {"()": "steps.logcontext.JsonFormatter"}},
    "filters": {"step": {"()": "steps.logcontext.StepContextFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["step"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL") or "WARNING"},
    "loggers": {
        "stevora": {"level": env_str("STEVORA_LOG_LEVEL") or "INFO", "propagate": True},
    },
}


# --- Security: SECRET_KEY, HTTPS, cookies (stevora_project/security.py) -------------------
# Off by default: the embedded default serves plain http on localhost. A deployment
# behind TLS sets them (docs/operations.md, "Production security settings", has the
# environment that makes ``manage.py check --deploy`` clean).

SECRET_KEY = security.secret_key(debug=DEBUG, embedded=IS_EMBEDDED_DB, var_dir=VAR_DIR)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = security.hsts_seconds()
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
security.check_hsts_preload(SECURE_HSTS_PRELOAD, SECURE_HSTS_SECONDS, SECURE_HSTS_INCLUDE_SUBDOMAINS)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
SECURE_PROXY_SSL_HEADER = security.proxy_ssl_header()
# --- end of security block ---
