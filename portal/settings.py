"""The one settings module.

Everything is read from the environment with embedded defaults, so `make demo` runs on a laptop
with no external service (SQLite, local disk, a file-system Celery broker, console email) and the
same code switches to PostgreSQL, Redis, S3 and SMTP when their variables are set.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from portal import env
from portal.env import env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("PORTAL_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

# --- Mode ------------------------------------------------------------------------------------
PORTAL_ENV = env_str("PORTAL_ENV", "development")
if PORTAL_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(f"PORTAL_ENV={PORTAL_ENV!r}: use 'development' or 'production'.")
PRODUCTION = PORTAL_ENV == "production"

_DEV_SECRET_KEY = "dev-insecure-secret-key-change-me"
SECRET_KEY = env_str("SECRET_KEY", _DEV_SECRET_KEY)
DEBUG = env_bool("DEBUG", not PRODUCTION)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000").rstrip("/")

if PRODUCTION:
    if DEBUG:
        raise ImproperlyConfigured("Production mode refuses DEBUG: set DEBUG=0.")
    # The same bar as Django's deploy check (security.W009), so `check --deploy` stays clean.
    if SECRET_KEY == _DEV_SECRET_KEY or len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5:
        raise ImproperlyConfigured(
            "Production mode needs a real secret: set SECRET_KEY to a random string of 50+ characters, "
            "e.g. from `python -c 'import secrets; print(secrets.token_urlsafe(50))'`."
        )
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("Production mode needs ALLOWED_HOSTS (comma-separated host names).")
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- HTTPS and browser security (on in production, each switchable) ---------------------------
# nginx terminates TLS (deploy/nginx/openrelease.conf) and sets X-Forwarded-Proto; these make the
# portal itself insist on HTTPS too, so a misrouted plain-HTTP request never carries a session.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PRODUCTION)
# Health probes talk to gunicorn directly over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", PRODUCTION)
# Sent by portal.csp.ContentSecurityPolicyMiddleware; "{nonce}" becomes the request's nonce, which
# templates put on their inline scripts as nonce="{{ request.csp_nonce }}". Style attributes stay
# allowed: they cannot run code, and the pages and Swagger UI use them. data: images are the SVG
# charts' and Swagger UI's icons.
CONTENT_SECURITY_POLICY = env_str(
    "CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'",
)
# Development only reports violations (browser console), so Django's debug pages keep working.
CONTENT_SECURITY_POLICY_REPORT_ONLY = env_bool("CONTENT_SECURITY_POLICY_REPORT_ONLY", not PRODUCTION)

# --- Apps ------------------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "portal",
    "access",
    "artifacts",
    "jobs",
    "gateway",
    "finetune",
]

# Under ASGI, portal/asgi.py loads Django's own middleware here as `portal.async_middleware` subclasses
# it (hooks on the event loop, not one thread hop each); `check --deploy` sees Django's names.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "portal.csp.ContentSecurityPolicyMiddleware",
    # WhiteNoise, async-capable, so no request of the async gateway views is pinned to a thread.
    "portal.async_middleware.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Under ASGI, Django would read a synchronous streaming body (a file download, a CSV export) whole
    # into memory; this pulls it chunk by chunk instead.
    "portal.async_middleware.SyncStreamingMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
# The portal runs under an ASGI server (uvicorn): the gateway's streams are async views that hold no thread.
ASGI_APPLICATION = "portal.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "portal" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "access.context_processors.roles",
            ],
        },
    },
]

# --- Database --------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", "")
if DATABASE_URL:
    if not DATABASE_URL.startswith(("postgres://", "postgresql://", "sqlite://")):
        raise ImproperlyConfigured("DATABASE_URL must be a postgresql:// (psycopg 3) or sqlite:// URL.")
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
    # Under ASGI each request runs its synchronous parts in a thread of its own, and Django's connections
    # are per thread: without a pool every API request would open a new PostgreSQL connection (~7 ms on
    # a small VM). So the ASGI process (portal/asgi.py) takes its connections from a psycopg pool; Celery
    # workers and management commands keep one persistent connection per thread.
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env_bool("DB_POOL", env.UNDER_ASGI):
        DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps the connections
        # The pool checks a connection before lending it: one the server dropped (a restart, a failover)
        # is replaced, not handed to a request.
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 2,
            "max_size": env_int("DB_POOL_MAX_SIZE", 20),
            "timeout": env_int("DB_POOL_TIMEOUT", 10),  # seconds a request waits for a connection, then fails
        }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "portal.sqlite3"),
            # Several processes (portal, worker) share the file: wait for locks instead of failing.
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
            # A file, not shared-cache memory, so threaded tests see real locking, as in production.
            # Per process, so concurrent runs never share a test database; pytest-django removes it.
            "TEST": {"NAME": str(VAR_DIR / f"test-portal-{os.getpid()}.sqlite3")},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (login throttling) ----------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "")
if REDIS_URL:
    # Degrades to "no cache" while Redis is unreachable (see portal/cache.py); short socket
    # timeouts so a dead host costs a second, not a hung request.
    CACHES = {
        "default": {
            "BACKEND": "portal.cache.DegradingRedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# --- Accounts --------------------------------------------------------------------------------
AUTH_USER_MODEL = "access.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_MAX_FAILURES = env_int("LOGIN_MAX_FAILURES", 5)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 15 * 60)
# How many reverse proxies in front of the portal append to X-Forwarded-For (nginx: 1). 0 trusts no
# header and records REMOTE_ADDR; see portal/client_ip.py.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured(f"TRUSTED_PROXY_COUNT={TRUSTED_PROXY_COUNT}: use 0 (no proxy) or the number of proxies.")
EMAIL_VERIFICATION_MAX_AGE = timedelta(days=env_int("EMAIL_VERIFICATION_DAYS", 3))

# --- Access policy ---------------------------------------------------------------------------
GRANT_DEFAULT_DAYS = env_int("GRANT_DEFAULT_DAYS", 365)
GRANT_RENEWAL_WINDOW_DAYS = env_int("GRANT_RENEWAL_WINDOW_DAYS", 30)
REAPPLY_COOLDOWN_DAYS = env_int("REAPPLY_COOLDOWN_DAYS", 30)
RESEARCH_PURPOSE_MIN_LENGTH = env_int("RESEARCH_PURPOSE_MIN_LENGTH", 200)
REVIEWER_GROUP = "Reviewers"

# --- Email -----------------------------------------------------------------------------------
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "OpenRelease <releases@localhost>")
EMAIL_HOST = env_str("EMAIL_HOST", "")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = env_int("EMAIL_PORT", 587)
    EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
else:
    EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
    EMAIL_FILE_PATH = env_str("EMAIL_FILE_PATH", str(VAR_DIR / "mail"))

# --- Long jobs (the `jobs` app: claim, heartbeat, reaper) -----------------------------------------
# Every Celery task has a soft limit (the task records the failure) and a hard limit; these are the
# defaults, and job kinds set their own.
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 300)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 360)
ARTIFACTS_VERIFY_SOFT_TIME_LIMIT = env_int("ARTIFACTS_VERIFY_SOFT_TIME_LIMIT", 6 * 3600)
ARTIFACTS_VERIFY_TIME_LIMIT = ARTIFACTS_VERIFY_SOFT_TIME_LIMIT + 300
ARTIFACTS_VERIFY_STALE_SECONDS = env_int("ARTIFACTS_VERIFY_STALE_SECONDS", 600)
ARTIFACTS_VERIFY_HEARTBEAT_SECONDS = env_int("ARTIFACTS_VERIFY_HEARTBEAT_SECONDS", 30)
ARTIFACTS_VERIFY_MAX_ATTEMPTS = env_int("ARTIFACTS_VERIFY_MAX_ATTEMPTS", 3)
ARTIFACTS_RESHARD_SOFT_TIME_LIMIT = env_int("ARTIFACTS_RESHARD_SOFT_TIME_LIMIT", 12 * 3600)
ARTIFACTS_RESHARD_TIME_LIMIT = ARTIFACTS_RESHARD_SOFT_TIME_LIMIT + 600
ARTIFACTS_RESHARD_STALE_SECONDS = env_int("ARTIFACTS_RESHARD_STALE_SECONDS", 900)
ARTIFACTS_RESHARD_HEARTBEAT_SECONDS = env_int("ARTIFACTS_RESHARD_HEARTBEAT_SECONDS", 30)
ARTIFACTS_RESHARD_MAX_ATTEMPTS = env_int("ARTIFACTS_RESHARD_MAX_ATTEMPTS", 3)
# The work folder of a reshard job (source symlinks or downloads, the output before it is stored).
ARTIFACTS_RESHARD_WORK_DIR = Path(env_str("ARTIFACTS_RESHARD_WORK_DIR", str(VAR_DIR / "reshard-work")))
# Sources up to this size are also compared numerically (logits) with the output.
ARTIFACTS_RESHARD_NUMERICS_MAX_BYTES = env_int("ARTIFACTS_RESHARD_NUMERICS_MAX_BYTES", 256 * 1024 * 1024)
# Fine-tuning (the `finetune` app): uploads, tokenized datasets and run directories live under FINETUNE_DIR
# (one file system every gpu worker sees: a requeued attempt resumes from the run's committed checkpoints).
FINETUNE_DIR = Path(env_str("FINETUNE_DIR", str(VAR_DIR / "finetune")))
# Keep it under nginx's client_max_body_size (deploy/nginx: 20m), or raise both.
FINETUNE_DATASET_MAX_BYTES = env_int("FINETUNE_DATASET_MAX_BYTES", 16 * 1024 * 1024)
# GPU-hours one user's jobs may use: finished attempts count what they used, queued and running jobs
# count their whole time limit (gpus x max hours).
FINETUNE_GPU_HOURS_PER_USER = env_int("FINETUNE_GPU_HOURS_PER_USER", 64)
FINETUNE_MAX_HOURS_PER_JOB = env_int("FINETUNE_MAX_HOURS_PER_JOB", 24)
FINETUNE_MAX_GPUS = env_int("FINETUNE_MAX_GPUS", 8)
FINETUNE_MAX_STEPS = env_int("FINETUNE_MAX_STEPS", 100_000)
# auto: cuda when the worker has a GPU, else cpu (gloo).
FINETUNE_DEVICE = env_str("FINETUNE_DEVICE", "auto")
# Flags added to every `python -m training train` of a job (e.g. "--activation-checkpointing", or a fault drill).
FINETUNE_TRAIN_EXTRA_ARGS = env_list("FINETUNE_TRAIN_EXTRA_ARGS")
FINETUNE_TRAIN_SOFT_TIME_LIMIT = FINETUNE_MAX_HOURS_PER_JOB * 3600 + 1800
FINETUNE_TRAIN_TIME_LIMIT = FINETUNE_TRAIN_SOFT_TIME_LIMIT + 600
FINETUNE_TOKENIZE_SOFT_TIME_LIMIT = env_int("FINETUNE_TOKENIZE_SOFT_TIME_LIMIT", 3600)
FINETUNE_TOKENIZE_TIME_LIMIT = FINETUNE_TOKENIZE_SOFT_TIME_LIMIT + 300
FINETUNE_STALE_SECONDS = env_int("FINETUNE_STALE_SECONDS", 600)
FINETUNE_HEARTBEAT_SECONDS = env_int("FINETUNE_HEARTBEAT_SECONDS", 30)
FINETUNE_MAX_ATTEMPTS = env_int("FINETUNE_MAX_ATTEMPTS", 5)
# A queued job unclaimed this long has its task message sent again (a broker lost it).
JOBS_REDISPATCH_SECONDS = env_int("JOBS_REDISPATCH_SECONDS", 3600)
for _kind, _heartbeat, _stale in [
    ("ARTIFACTS_VERIFY", ARTIFACTS_VERIFY_HEARTBEAT_SECONDS, ARTIFACTS_VERIFY_STALE_SECONDS),
    ("ARTIFACTS_RESHARD", ARTIFACTS_RESHARD_HEARTBEAT_SECONDS, ARTIFACTS_RESHARD_STALE_SECONDS),
    ("FINETUNE", FINETUNE_HEARTBEAT_SECONDS, FINETUNE_STALE_SECONDS),
]:
    if _stale < 3 * _heartbeat:
        raise ImproperlyConfigured(
            f"{_kind}_STALE_SECONDS={_stale} is under 3x {_kind}_HEARTBEAT_SECONDS={_heartbeat}: a live job "
            "would look dead. Raise the first or lower the second."
        )

# --- Celery ----------------------------------------------------------------------------------
# Without Redis the broker is a directory on disk, so a laptop needs no server.
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    # Redis hands an unacknowledged message to another worker after the visibility timeout: it must
    # outlast the longest task (acks_late tasks are acknowledged at their end) plus a retry countdown.
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        "visibility_timeout": max(
            CELERY_TASK_TIME_LIMIT, ARTIFACTS_VERIFY_TIME_LIMIT, ARTIFACTS_RESHARD_TIME_LIMIT, FINETUNE_TRAIN_TIME_LIMIT
        )
        + 3600
    }
else:
    _broker_dir = VAR_DIR / "celery-broker"
    (_broker_dir / "processed").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "processed_folder": str(_broker_dir / "processed"),
        # Exchange and pidbox files; without this kombu writes them into the working directory.
        "control_folder": str(_broker_dir / "control"),
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
# Queues: `default` (email, sweeps), `io` (hashing, imports), `gpu` (reshard, verify numerics, training).
CELERY_TASK_ROUTES = {
    "access.tasks.*": {"queue": "default"},
    "artifacts.tasks.run_reshard_job": {"queue": "gpu"},
    "artifacts.tasks.*": {"queue": "io"},
    "jobs.tasks.*": {"queue": "default"},
    "gateway.tasks.*": {"queue": "default"},
    "finetune.tasks.run_training_job": {"queue": "gpu"},
    "finetune.tasks.*": {"queue": "io"},
}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BEAT_SCHEDULE = {
    "sweep-unsent-notifications": {"task": "access.tasks.sweep_unsent_notifications", "schedule": 300.0},
    "remind-expiring-grants": {"task": "access.tasks.remind_expiring_grants", "schedule": 3600.0},
    "jobs-reap": {"task": "jobs.tasks.reap_jobs", "schedule": 300.0},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- API -------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "access.api.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "access.api.exceptions.handler",
    # JSON only, size- and depth-bounded (access/api/parsers.py); other bodies get a 415 in the error shape.
    "DEFAULT_PARSER_CLASSES": ["access.api.parsers.JSONParser"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "OpenRelease API",
    "DESCRIPTION": "Catalog, license applications, reviews and grants for gated model releases.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI from drf-spectacular-sidecar's static files, not a CDN: /api/docs/ works offline
    # and under the Content-Security-Policy.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Static, i18n ----------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # httpx2 logs every request at INFO: the gateway's calls to its engines would flood the log.
    "loggers": {"django.db.backends": {"level": "WARNING"}, "httpx2": {"level": "WARNING"}},
}

# --- Artifacts: checkpoint storage, verification, signed downloads ----------------------------
ARTIFACTS_STORAGE = env_str("ARTIFACTS_STORAGE", "local")
if ARTIFACTS_STORAGE not in {"local", "s3"}:
    raise ImproperlyConfigured(f"ARTIFACTS_STORAGE={ARTIFACTS_STORAGE!r}: use 'local' or 's3'.")
ARTIFACTS_LOCAL_ROOT = Path(env_str("ARTIFACTS_LOCAL_ROOT", str(VAR_DIR / "storage")))
S3_ENDPOINT_URL = env_str("S3_ENDPOINT_URL", "")
S3_BUCKET = env_str("S3_BUCKET", "")
AWS_ACCESS_KEY_ID = env_str("AWS_ACCESS_KEY_ID", "")
AWS_SECRET_ACCESS_KEY = env_str("AWS_SECRET_ACCESS_KEY", "")
AWS_REGION = env_str("AWS_REGION", "us-east-1")
if ARTIFACTS_STORAGE == "s3" and not S3_BUCKET:
    raise ImproperlyConfigured("ARTIFACTS_STORAGE=s3 needs S3_BUCKET (and S3_ENDPOINT_URL for non-AWS servers).")
ARTIFACTS_S3_MULTIPART_THRESHOLD_MB = env_int("ARTIFACTS_S3_MULTIPART_THRESHOLD_MB", 64)
# Presigned S3 URLs live at most a minute, so a revocation bites within a minute.
ARTIFACTS_PRESIGNED_URL_SECONDS = env_int("ARTIFACTS_PRESIGNED_URL_SECONDS", 60)
if not 1 <= ARTIFACTS_PRESIGNED_URL_SECONDS <= 60:
    raise ImproperlyConfigured("ARTIFACTS_PRESIGNED_URL_SECONDS must be between 1 and 60.")
ARTIFACTS_LINK_LIFETIME_HOURS = env_int("ARTIFACTS_LINK_LIFETIME_HOURS", 24)
ARTIFACTS_DOWNLOAD_QUOTA = env_int("ARTIFACTS_DOWNLOAD_QUOTA", 5)  # complete downloads per grant per file
# Set (e.g. "/_protected/") when nginx serves the storage root from an `internal` location.
ARTIFACTS_X_ACCEL_PREFIX = env_str("ARTIFACTS_X_ACCEL_PREFIX", "")
ARTIFACTS_VERIFY_WORKERS = env_int("ARTIFACTS_VERIFY_WORKERS", 0)  # 0: one per CPU core
# When set, import_checkpoint accepts local sources only under these directories.
ARTIFACTS_IMPORT_ROOTS = env_list("ARTIFACTS_IMPORT_ROOTS")

# --- Gateway: hosted inference (engines, the OpenAI-compatible API, quotas, usage) ----------------
# Default quotas per user and release; an operator overrides them per grant on the grant's limits page.
GATEWAY_TOKENS_PER_DAY = env_int("GATEWAY_TOKENS_PER_DAY", 200_000)  # prompt + completion tokens, UTC day
GATEWAY_REQUESTS_PER_MINUTE = env_int("GATEWAY_REQUESTS_PER_MINUTE", 60)
GATEWAY_MAX_CONCURRENT = env_int("GATEWAY_MAX_CONCURRENT", 4)
for _name in ("GATEWAY_TOKENS_PER_DAY", "GATEWAY_REQUESTS_PER_MINUTE", "GATEWAY_MAX_CONCURRENT"):
    if globals()[_name] < 1:
        raise ImproperlyConfigured(f"{_name}={globals()[_name]}: a quota must be at least 1.")
# An open request re-reads the caller's access (grant, key) this often and stops when it ended.
GATEWAY_RECHECK_SECONDS = env_int("GATEWAY_RECHECK_SECONDS", 2)
# In-flight requests hold a lease renewed at every re-check; a portal process that dies frees its
# leases after this long.
GATEWAY_LEASE_SECONDS = env_int("GATEWAY_LEASE_SECONDS", 60)
if not 1 <= GATEWAY_RECHECK_SECONDS <= GATEWAY_LEASE_SECONDS // 3:
    raise ImproperlyConfigured(
        f"GATEWAY_RECHECK_SECONDS={GATEWAY_RECHECK_SECONDS} must be at least 1 and at most a third of "
        f"GATEWAY_LEASE_SECONDS={GATEWAY_LEASE_SECONDS}, or a live request loses its lease."
    )
GATEWAY_HEALTH_CHECK_SECONDS = env_int("GATEWAY_HEALTH_CHECK_SECONDS", 15)
GATEWAY_CONNECT_TIMEOUT_SECONDS = env_int("GATEWAY_CONNECT_TIMEOUT_SECONDS", 3)
# A non-streamed completion (or the gap between two chunks of a stream) may take this long.
GATEWAY_ENGINE_TIMEOUT_SECONDS = env_int("GATEWAY_ENGINE_TIMEOUT_SECONDS", 600)
# Under Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB), which refuses larger bodies anyway.
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 2 * 1024 * 1024)
# Counters of in-flight requests and request rates: "redis" (shared by every portal process) or
# "local" (this process only: the demo's single uvicorn process).
GATEWAY_COUNTERS = env_str("GATEWAY_COUNTERS", "redis" if REDIS_URL else "local")
if GATEWAY_COUNTERS not in {"redis", "local"}:
    raise ImproperlyConfigured(f"GATEWAY_COUNTERS={GATEWAY_COUNTERS!r}: use 'redis' or 'local'.")
if GATEWAY_COUNTERS == "redis" and not REDIS_URL:
    raise ImproperlyConfigured("GATEWAY_COUNTERS=redis needs REDIS_URL.")
GATEWAY_REDIS_PREFIX = env_str("GATEWAY_REDIS_PREFIX", "gw:")
# Secret files named on the operator pages must lie under this directory (the management command,
# run by someone with a shell on the host, may name any file).
GATEWAY_SECRETS_DIR = Path(env_str("GATEWAY_SECRETS_DIR", str(VAR_DIR / "engine-secrets")))
# The usage CSV export stops after this many rows (the file says so in its last line).
GATEWAY_USAGE_CSV_MAX_ROWS = env_int("GATEWAY_USAGE_CSV_MAX_ROWS", 1_000_000)
CELERY_BEAT_SCHEDULE["gateway-health-check"] = {
    "task": "gateway.tasks.check_deployments",
    "schedule": float(GATEWAY_HEALTH_CHECK_SECONDS),
}
