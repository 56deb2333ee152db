"""Neocloud settings: one module, driven by the environment.

NEOCLOUD_ENV selects the mode:
- ``development`` (default): the embedded stack under NEOCLOUD_DATA_DIR (SQLite, the
  filesystem broker), a secret key generated once into the data dir.
- ``production``: nothing is defaulted that matters for security; a missing SECRET_KEY,
  DATABASE_URL or ALLOWED_HOSTS stops start-up with one plain sentence.

Every secret can also be read from a file named by ``<NAME>_FILE``.
"""

import json
import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

NEOCLOUD_ENV = os.environ.get("NEOCLOUD_ENV", "development")
if NEOCLOUD_ENV not in ("development", "production"):
    raise ImproperlyConfigured(f"NEOCLOUD_ENV must be development or production, not {NEOCLOUD_ENV!r}.")
PRODUCTION = NEOCLOUD_ENV == "production"


def env(name, default=None):
    """Read NAME, or the contents of the file named by NAME_FILE."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE points to {file_path}, which cannot be read ({exc.strerror}).")
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def required(name):
    value = env(name)
    if value is None:
        raise ImproperlyConfigured(f"{name} must be set in production (or {name}_FILE naming a file that holds it).")
    return value


def env_bool(name, default=False):
    value = env(name)
    if value is None:
        return default
    return value.lower() in ("1", "true", "yes", "on")


DATA_DIR = Path(env("NEOCLOUD_DATA_DIR", str(BASE_DIR / "var"))).resolve()


def _development_secret_key():
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(64))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


if PRODUCTION:
    SECRET_KEY = required("SECRET_KEY")
    _database_url = required("DATABASE_URL")
    ALLOWED_HOSTS = [h.strip() for h in required("ALLOWED_HOSTS").split(",") if h.strip()]
else:
    SECRET_KEY = env("SECRET_KEY") or _development_secret_key()
    _database_url = env("DATABASE_URL", f"sqlite:///{DATA_DIR / 'neocloud.sqlite3'}")
    ALLOWED_HOSTS = [h.strip() for h in env("ALLOWED_HOSTS", "localhost,127.0.0.1,testserver").split(",")]

DEBUG = env_bool("NEOCLOUD_DEBUG") and not PRODUCTION

# The platform's signing identity (audit.keys): a keyring encrypted under a key-encryption
# key. `make run` creates both under the data dir; production must provide them.
if PRODUCTION:
    for _name in ("PLATFORM_KEK_FILE", "PLATFORM_KEYRING_FILE"):
        if not os.environ.get(_name):
            raise ImproperlyConfigured(f"{_name} must name a file in production (see docs/operators.md).")
    PLATFORM_KEK_FILE = Path(os.environ["PLATFORM_KEK_FILE"])
    PLATFORM_KEYRING_FILE = Path(os.environ["PLATFORM_KEYRING_FILE"])
else:
    PLATFORM_KEK_FILE = Path(env("PLATFORM_KEK_FILE", str(DATA_DIR / "platform-kek")))
    PLATFORM_KEYRING_FILE = Path(env("PLATFORM_KEYRING_FILE", str(DATA_DIR / "platform-keyring.json")))


def _database(url):
    config = dj_database_url.parse(url)
    config["ATOMIC_REQUESTS"] = True
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # Web, worker and beat share one file: WAL lets readers run beside the writer,
        # IMMEDIATE takes the write lock up front (no upgrade deadlocks), and the
        # timeout waits for it instead of failing with "database is locked".
        config["OPTIONS"] = {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
        }
    else:
        config["CONN_MAX_AGE"] = int(env("DATABASE_CONN_MAX_AGE", "0"))
    return config


# Three connections, three roles (see docs/operators.md):
# - default: the app role, subject to row-level security;
# - owner: the role that owns the schema and runs migrations;
# - platform: the role platform jobs (the audit sequencer, later admission) use.
# "audit_side" is a second connection as the app role: it records a denial after the
# request's own transaction has rolled back, so the denial is never lost with it.
DATABASES = {
    "default": _database(_database_url),
    "owner": _database(env("OWNER_DATABASE_URL", _database_url)),
    "platform": _database(env("PLATFORM_DATABASE_URL", _database_url)),
    "audit_side": _database(_database_url),
}
for _alias in ("owner", "platform", "audit_side"):
    DATABASES[_alias]["ATOMIC_REQUESTS"] = False
    DATABASES[_alias]["TEST"] = {"MIRROR": None}
DATABASE_ROUTERS = ["tenants.db.MigrateAsOwnerRouter"]
DB_APP_ROLE = env("DB_APP_ROLE", "neocloud_app")
DB_PLATFORM_ROLE = env("DB_PLATFORM_ROLE", "neocloud_platform")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    # Before django.contrib.auth, so that its createsuperuser (a refusal) replaces Django's.
    "tenants",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "axes",
    "audit",
    "policies",
    "workflows",
    "compliance",
    "runners",
]

MIDDLEWARE = [
    "tenants.middleware.AuditDenialsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "tenants.middleware.ApiBodyLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "tenants.middleware.DenialThrottleMiddleware",
    "tenants.middleware.RequireVerifiedOTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "neocloud.urls"
WSGI_APPLICATION = "neocloud.wsgi.application"

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

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
PASSWORD_HASHERS = (
    ["django.contrib.auth.hashers.MD5PasswordHasher"]
    if env_bool("NEOCLOUD_FAST_PASSWORD_HASHER") and not PRODUCTION
    else ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
)
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
ANONYMOUS_USER_NAME = None  # guardian: anonymous users get no object permissions

# Failed sign-ins: five per username and address, then fifteen minutes' cool-off.
AXES_FAILURE_LIMIT = int(env("AXES_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=int(env("AXES_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_LOCKOUT_CALLABLE = "tenants.console.signin_locked_out"
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False

OTP_TOTP_ISSUER = "Neocloud"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise expects it; collectstatic fills it in production
STATICFILES_DIRS = [BASE_DIR / "static"]
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# API request bodies above this size get a 413 before they are read.
API_MAX_BODY_BYTES = int(env("API_MAX_BODY_BYTES", str(1024 * 1024)))
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.authentication.BearerTokenAuthentication",
        "tenants.authentication.VerifiedSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "tenants.rest.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "tenants.rest.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
        "tenants.throttling.DenialCapThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env("API_THROTTLE_ANON", "60/min"),
        "user": env("API_THROTTLE_USER", "1200/min"),
    },
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Neocloud API",
    "DESCRIPTION": "Governed, multi-tenant platform for AI workflows.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "tenants.schema.document_errors"],
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "RoleEnum": "tenants.roles.Role",
        "ServiceAccountRoleEnum": "tenants.roles.SERVICE_ACCOUNT_ROLE_CHOICES",
        "StageEnum": "workflows.models.Stage",
        "ArtifactKindEnum": "workflows.models.ArtifactKind",
        "PromotionKindEnum": "workflows.models.PromotionKind",
        "RunStateEnum": "runners.models.RunState",
        "StepStateEnum": "runners.models.StepState",
    },
}

CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": env("CACHE_URL")}
        if env("CACHE_URL")
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# Celery: the broker carries only work the database already decided on.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _broker_dir = DATA_DIR / "broker"
    for _folder in ("queue", "processed", "control"):
        (_broker_dir / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = False
CELERY_TASK_SOFT_TIME_LIMIT = 300
CELERY_TASK_TIME_LIMIT = 360
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

# Artifacts: where their bytes live, and how big an upload may be.
ARTIFACT_STORE = env("ARTIFACT_STORE", "workflows.store.FileStore")
ARTIFACT_MAX_BYTES = int(env("ARTIFACT_MAX_BYTES", str(10 * 1024**3)))
SIGNATURE_BUNDLE_MAX_BYTES = int(env("SIGNATURE_BUNDLE_MAX_BYTES", str(1024 * 1024)))
# The S3 store (ARTIFACT_STORE=workflows.store.S3Store); docs/operators.md, "Artifact store".
ARTIFACT_S3_BUCKET = env("ARTIFACT_S3_BUCKET")
ARTIFACT_S3_ENDPOINT_URL = env("ARTIFACT_S3_ENDPOINT_URL")  # unset: AWS; else MinIO, Ceph, ...
ARTIFACT_S3_REGION = env("ARTIFACT_S3_REGION")
ARTIFACT_S3_ACCESS_KEY_ID = env("ARTIFACT_S3_ACCESS_KEY_ID")  # both unset: boto3's credential chain
ARTIFACT_S3_SECRET_ACCESS_KEY = env("ARTIFACT_S3_SECRET_ACCESS_KEY")
ARTIFACT_S3_PREFIX = env("ARTIFACT_S3_PREFIX", "artifacts/")
if ARTIFACT_STORE == "workflows.store.S3Store" and not ARTIFACT_S3_BUCKET:
    raise ImproperlyConfigured("ARTIFACT_S3_BUCKET must be set when ARTIFACT_STORE is workflows.store.S3Store.")

# Audit: how often the sequencer runs, and how long an event may stay unsequenced
# before `audit verify` calls the log broken.
AUDIT_SEQUENCER_INTERVAL_SECONDS = float(env("AUDIT_SEQUENCER_INTERVAL_SECONDS", "5"))
AUDIT_SEQUENCER_BATCH = int(env("AUDIT_SEQUENCER_BATCH", "1000"))
AUDIT_MAX_UNSEQUENCED_SECONDS = int(env("AUDIT_MAX_UNSEQUENCED_SECONDS", "300"))
# Signed checkpoints of the audit tree: every N events or T seconds, whichever comes first.
AUDIT_CHECKPOINT_EVERY = int(env("AUDIT_CHECKPOINT_EVERY", "1000"))
AUDIT_CHECKPOINT_SECONDS = float(env("AUDIT_CHECKPOINT_SECONDS", "60"))
AUDIT_LOG_ORIGIN = env("AUDIT_LOG_ORIGIN", "neocloud/audit-log")  # the first line of every checkpoint
# Refusals that cannot flood the log (audit/denials.py): per window, the first of each refusal
# is recorded and repeats are counted; past a cap of distinct refusals a caller (or an address)
# is answered 429 until the window ends.
AUDIT_DENIAL_WINDOW_SECONDS = int(env("AUDIT_DENIAL_WINDOW_SECONDS", "300"))
AUDIT_DENIAL_CAP_PER_CALLER = int(env("AUDIT_DENIAL_CAP_PER_CALLER", "10000"))
AUDIT_DENIAL_CAP_PER_SOURCE = int(env("AUDIT_DENIAL_CAP_PER_SOURCE", "100000"))
# Independent witnesses that co-sign each checkpoint (audit.witness): a JSON list of
# {"name", "url", "public_key_file"}. None by default.
try:
    AUDIT_WITNESSES = json.loads(env("AUDIT_WITNESSES", "[]"))
except ValueError as exc:
    raise ImproperlyConfigured(f"AUDIT_WITNESSES is a JSON list of witnesses: {exc}") from None

# Policy engine (docs/policies.md): "embedded" runs regopy in process, "opa" asks the OPA
# server at OPA_URL. Either way an error, a timeout or an undefined result is a deny.
POLICY_ENGINE = env("POLICY_ENGINE", "embedded")
if POLICY_ENGINE not in ("embedded", "opa"):
    raise ImproperlyConfigured("POLICY_ENGINE must be 'embedded' or 'opa'.")
OPA_URL = env("OPA_URL", "http://127.0.0.1:8181")
OPA_TIMEOUT_SECONDS = float(env("OPA_TIMEOUT_SECONDS", "2"))
POLICY_TIMEOUT_SECONDS = float(env("POLICY_TIMEOUT_SECONDS", "2"))
# An open promotion request closes as expired after this many hours without a decision.
PROMOTION_TTL_HOURS = float(env("PROMOTION_TTL_HOURS", "168"))
PROMOTION_EXPIRY_INTERVAL_SECONDS = float(env("PROMOTION_EXPIRY_INTERVAL_SECONDS", "60"))
# A proposal to loosen a governed setting (policy data, trust) lapses unconfirmed after this many hours.
GOVERNED_PROPOSAL_TTL_HOURS = float(env("GOVERNED_PROPOSAL_TTL_HOURS", "72"))

# Runner nodes (docs/operators.md, "Runner nodes"): what this machine offers when it registers.
RUNNER_HOSTNAME = env("RUNNER_HOSTNAME", "")  # default: the machine's fully qualified name
RUNNER_FLAVOR = env("RUNNER_FLAVOR", "")
RUNNER_REGION = env("RUNNER_REGION", "")
RUNNER_JURISDICTION = env("RUNNER_JURISDICTION", "")
RUNNER_GPU_DEVICES = env("RUNNER_GPU_DEVICES", "")  # e.g. "0,1"; unset: discover through NVML
RUNNER_HEARTBEAT_TIMEOUT_SECONDS = float(env("RUNNER_HEARTBEAT_TIMEOUT_SECONDS", "60"))
ADMISSION_INTERVAL_SECONDS = float(env("ADMISSION_INTERVAL_SECONDS", "5"))
# Fair order (docs/operators.md, "Runs and admission"): how fast past use is forgotten, and how
# long a run that does not fit may be passed by smaller ones before its pool waits for it.
FAIR_SHARE_HALF_LIFE_HOURS = float(env("FAIR_SHARE_HALF_LIFE_HOURS", "24"))
ADMISSION_BACKFILL_LIMIT_SECONDS = float(env("ADMISSION_BACKFILL_LIMIT_SECONDS", "900"))
# A preempted step gets SIGTERM, then SIGKILL after this many seconds.
RUN_PREEMPTION_GRACE_SECONDS = float(env("RUN_PREEMPTION_GRACE_SECONDS", "30"))
# Execution (docs/operators.md, "Workers"): a worker renews a running run's lease; the
# admission cycle reaps an expired lease, or a dispatched run nobody claimed within
# RUN_CLAIM_TIMEOUT_SECONDS, and requeues it at most RUN_MAX_REQUEUES times before it is lost.
RUNNER_LEASE_SECONDS = float(env("RUNNER_LEASE_SECONDS", "30"))
RUN_CLAIM_TIMEOUT_SECONDS = float(env("RUN_CLAIM_TIMEOUT_SECONDS", "120"))
RUN_MAX_REQUEUES = int(env("RUN_MAX_REQUEUES", "2"))
RUN_LOG_MAX_BYTES = int(env("RUN_LOG_MAX_BYTES", str(1024 * 1024)))
RUN_LOG_FOLLOW_SECONDS = float(env("RUN_LOG_FOLLOW_SECONDS", "600"))  # longest one streaming log response lasts
RUNNER_WORK_DIR = Path(env("RUNNER_WORK_DIR", str(DATA_DIR / "runs")))
RUNNER_SANDBOX_UID = int(env("RUNNER_SANDBOX_UID", "65534"))  # nobody: steps never run as the worker's user
RUNNER_SANDBOX_GID = int(env("RUNNER_SANDBOX_GID", "65534"))
RUNNER_BWRAP = env("RUNNER_BWRAP", "bwrap")
# The bearer token an OPA server pulls GET /api/v1/policies/bundle with; unset, only platform
# admins may pull it. A short token is guessable, so it is refused.
POLICY_BUNDLE_TOKEN = env("POLICY_BUNDLE_TOKEN")
if POLICY_BUNDLE_TOKEN is not None and len(POLICY_BUNDLE_TOKEN) < 32:
    raise ImproperlyConfigured("POLICY_BUNDLE_TOKEN must be at least 32 characters long.")

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = int(env("SESSION_COOKIE_AGE", str(8 * 3600)))
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = int(env("SECURE_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    if env_bool("SECURE_PROXY_SSL_HEADER"):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    CSRF_TRUSTED_ORIGINS = [o for o in (env("CSRF_TRUSTED_ORIGINS", "") or "").split(",") if o]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {"django.server": {"level": "INFO"}},
}
