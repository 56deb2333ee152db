"""Test harness on real services.

The suite runs against the database named by DATABASE_URL, connected as the app role
(no BYPASSRLS on PostgreSQL), with the owner role on the ``owner`` alias for fixtures and
teardown. Tests commit for real (requests are atomic, a worker is another process), so
every test that touches the database uses ``live_db``, which truncates through the owner
alias afterwards, lifting the audit triggers only inside that transaction.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import OperationalError, connections, transaction

ROOT = Path(__file__).resolve().parent.parent
STACK = os.environ.get("NEOCLOUD_TEST_STACK", "")
KEEP_TABLES = {"django_migrations", "django_content_type", "auth_permission", "audit_sequencerstate"}


def pytest_configure(config):
    name = settings.DATABASES["default"]["NAME"]
    if STACK not in ("postgres", "embedded") or "test" not in str(name):
        raise pytest.UsageError(
            "Run the suite with `make test` (or set NEOCLOUD_TEST_STACK and a DATABASE_URL whose name contains 'test'); "
            f"refusing to run against {name}."
        )


def pytest_collection_modifyitems(config, items):
    """Every test that starts the session's Celery worker runs after all that do not: once up,
    the worker keeps sequencing, checkpointing and admitting for the rest of the session, and
    tests that drive those steps themselves must not meet it, whatever files are named."""
    items.sort(key=lambda item: "celery_worker" in getattr(item, "fixturenames", ()))


def _recreate_postgres_database():
    import psycopg

    admin_url = os.environ["PG_ADMIN_URL"]
    name = settings.DATABASES["owner"]["NAME"]
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.exit(f"PostgreSQL is unreachable at {admin_url}: {str(exc).strip().splitlines()[0]}", returncode=3)
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')


@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker):
    with django_db_blocker.unblock():
        if connections["owner"].vendor == "postgresql":
            _recreate_postgres_database()
        else:
            db_file = Path(settings.DATABASES["owner"]["NAME"])
            db_file.parent.mkdir(parents=True, exist_ok=True)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db_file}{suffix}").unlink(missing_ok=True)
        call_command("migrate", verbosity=0)
        call_command("platform_keys", "init", stdout=io.StringIO())  # signs promotion attestations
        for alias in connections:
            connections[alias].close()


def truncate_all():
    """Empty every table but the schema's bookkeeping, as the owner, audit triggers lifted."""
    from audit.appendonly import triggers_suspended
    from audit.models import SequencerState

    owner = connections["owner"]
    tables = [t for t in owner.introspection.table_names() if t not in KEEP_TABLES]
    for attempt in range(5):
        try:
            return _truncate(owner, tables, SequencerState, triggers_suspended)
        except OperationalError as exc:  # the platform worker's admission cycle held a table: try again
            if "deadlock" not in str(exc) or attempt == 4:
                raise
            time.sleep(0.2)


def _truncate(owner, tables, SequencerState, triggers_suspended):
    with transaction.atomic(using="owner"):
        # Take the audit sequencer's lock first, as the sequencer itself does, so a worker
        # sequencing in the background waits for this teardown instead of deadlocking with it.
        SequencerState.objects.using("owner").select_for_update().filter(pk=1).first()
        with triggers_suspended(owner), owner.cursor() as cursor:
            if owner.vendor == "postgresql":
                cursor.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")
            else:
                cursor.execute("PRAGMA defer_foreign_keys = ON")
                for table in tables:
                    cursor.execute(f'DELETE FROM "{table}"')
        SequencerState.objects.using("owner").filter(pk=1).update(tree_size=0, updated_at=None)


@pytest.fixture
def live_db(django_db_setup, django_db_blocker):
    """Database access with real commits; everything is truncated afterwards."""
    from django.core.cache import cache

    with django_db_blocker.unblock():
        cache.clear()
        try:
            yield
        finally:
            for alias in ("default", "platform", "audit_side"):
                connections[alias].close()
            truncate_all()
            shutil.rmtree(Path(settings.DATA_DIR) / "artifacts", ignore_errors=True)


@pytest.fixture
def transactional_db(live_db):
    """live_server asks for pytest-django's transactional_db, whose flush as the app role would
    fail (append-only audit tables, row-level security). live_db commits for real and truncates
    as the owner afterwards, which is what a live server needs."""
    yield


# Personas ------------------------------------------------------------------------------


@dataclass
class TenantPeople:
    tenant: object
    developer: object
    approver: object
    approver2: object
    auditor: object
    admin: object
    admin2: object


@dataclass
class World:
    a: TenantPeople
    b: TenantPeople
    outsider: object
    platform_admin: object


PASSWORD = "correct-horse-battery-staple"


def make_user(username, *, platform_admin=False, device=True):
    from django.contrib.auth import get_user_model
    from django_otp.plugins.otp_totp.models import TOTPDevice

    user = get_user_model().objects.db_manager("owner").create_user(
        username=username, password=PASSWORD, is_superuser=platform_admin, is_staff=platform_admin)
    if device:
        TOTPDevice.objects.using("owner").create(user=user, name="test authenticator", confirmed=True)
    return user


def make_tenant_people(slug, jurisdiction):
    from tenants.models import Membership, Tenant

    tenant = Tenant.objects.using("owner").create(slug=slug, name=slug.replace("-", " ").title(),
                                                  jurisdiction=jurisdiction)
    people = {}
    for field, role in [("developer", "developer"), ("approver", "approver"), ("approver2", "approver"),
                        ("auditor", "auditor"), ("admin", "tenant_admin"), ("admin2", "tenant_admin")]:
        user = make_user(f"{slug}-{field}")
        Membership.objects.using("owner").create(tenant=tenant, user=user, role=role)
        people[field] = user
    return TenantPeople(tenant=tenant, **people)


@pytest.fixture
def world(live_db):
    """Two tenants, each with every role; an outsider; a platform admin."""
    return World(
        a=make_tenant_people("acme-bank", "eu"),
        b=make_tenant_people("st-mary-hospital", "us"),
        outsider=make_user("outsider"),
        platform_admin=make_user("ops-admin", platform_admin=True),
    )


# Clients -------------------------------------------------------------------------------


def current_totp(user, *, steps_ahead=0):
    """The user's TOTP code now, or ``steps_ahead`` periods later (within the device's
    tolerance of one), for a second code inside the same 30 seconds."""
    from django_otp.oath import TOTP
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.using("owner").get(user=user, confirmed=True)
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time() + steps_ahead * device.step
    return f"{totp.token():06d}"


def fresh_totp(user):
    """A code the user's device has not accepted yet: the current period's, or the next one's
    (inside the tolerance) when the current one is spent; waits when both are."""
    from django_otp.oath import TOTP
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.using("owner").get(user=user, confirmed=True)
    now_t = int((time.time() - device.t0) // device.step)
    wanted = max(now_t, device.last_t + 1)
    if wanted > now_t + 1:
        time.sleep((now_t + 1) * device.step + device.t0 - time.time() + 0.05)
        return fresh_totp(user)
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, 0)
    totp.time = device.t0 + wanted * device.step + 0.5
    return f"{totp.token():06d}"


def sign_in(client, user):
    """A console session whose TOTP device has been verified (as after a real sign-in)."""
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    device = TOTPDevice.objects.using("owner").get(user=user, confirmed=True)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


def issue_token(user, tenant, *, name="ci", service_account=None, days=30):
    from tenants.services import token_issue

    return token_issue(actor=user, tenant=tenant, name=name, expires_in_days=days,
                       service_account=service_account)[1]


class ApiClient:
    """A thin JSON client over Django's test client, with a bearer token or a session."""

    def __init__(self, client, token=None):
        self.client = client
        self.headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}

    def _call(self, method, path, data=None, **extra):
        kwargs = {**self.headers, **extra}
        if data is not None:
            kwargs.setdefault("content_type", "application/json")
            kwargs["data"] = data
        return getattr(self.client, method)(path, **kwargs)

    def get(self, path, **extra):
        return self._call("get", path, **extra)

    def post(self, path, data=None, **extra):
        return self._call("post", path, data if data is not None else {}, **extra)

    def patch(self, path, data=None, **extra):
        return self._call("patch", path, data if data is not None else {}, **extra)

    def put(self, path, data=None, **extra):
        return self._call("put", path, data if data is not None else {}, **extra)

    def delete(self, path, **extra):
        return self._call("delete", path, **extra)


@pytest.fixture
def api(client):
    """api(user_or_token) -> ApiClient: a token string, or a user for an OTP-verified session."""

    def make(who=None):
        from django.test import Client

        if who is None:
            return ApiClient(Client())
        if isinstance(who, str):
            return ApiClient(Client(), token=who)
        return ApiClient(sign_in(Client(), who))

    return make


@pytest.fixture
def model_dir(tmp_path):
    """About 4 MB of model: three weight shards of random bytes and a config."""
    model = tmp_path / "acme-credit-scorer"
    model.mkdir()
    for index in range(3):
        (model / f"model-0000{index + 1}-of-00003.safetensors").write_bytes(os.urandom(1_300_000))
    (model / "tokenizer").mkdir()
    (model / "tokenizer" / "vocab.bin").write_bytes(os.urandom(200_000))
    (model / "config.json").write_text(json.dumps({"architectures": ["Scorer"], "hidden_size": 256}))
    return model


# A real browser ------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}
TIMEOUT_MS = 15_000


@pytest.fixture
def open_page(monkeypatch):
    """open_page() -> a Playwright page in headless Chromium at 1280x900.

    The browser starts inside the test, so a missing Chromium fails the test itself."""
    # Playwright's sync API keeps an event loop on this thread; the test's own ORM calls
    # (fixtures, reading results as the owner) are plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    started = {}

    def open_page():
        if not CHROMIUM.exists():
            pytest.fail("Chromium is not installed at /usr/bin/chromium; install the Debian package chromium "
                        "(make test does this).", pytrace=False)
        from playwright.sync_api import sync_playwright

        started["playwright"] = sync_playwright().start()
        started["browser"] = started["playwright"].chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = started["browser"].new_context(viewport=VIEWPORT)
        context.set_default_timeout(TIMEOUT_MS)
        return context.new_page()

    yield open_page
    if "browser" in started:
        started["browser"].close()
    if "playwright" in started:
        started["playwright"].stop()


def sign_in_with_password(page, base_url, username):
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("button:has-text('Continue')")


# A real Celery worker ------------------------------------------------------------------


def _broker_reachable():
    url = settings.CELERY_BROKER_URL
    if url.startswith("redis://"):
        import redis

        try:
            connection = redis.Redis.from_url(url, socket_connect_timeout=3)
            connection.ping()
            connection.flushdb()
        except redis.RedisError as exc:
            pytest.fail(f"Redis is unreachable at {url}: {exc}. The worker tests need it; they do not skip.")


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, tmp_path_factory):
    """A real `celery worker` subprocess with embedded beat, on the test database and broker.

    Beat sequences the audit log every half second from then on (and admits runs every
    second), so pytest_collection_modifyitems runs every test that asks for it last."""
    _broker_reachable()
    workdir = tmp_path_factory.mktemp("worker")
    log_path = workdir / "worker.log"
    env = dict(os.environ, AUDIT_SEQUENCER_INTERVAL_SECONDS="0.5", PYTHONUNBUFFERED="1", **RUNNER_TEST_SETTINGS)
    command = [str(Path(sys.executable).parent / "celery"), "-A", "neocloud", "worker", "--beat",
               "--pool", "solo", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
               "--schedule", str(workdir / "beat-schedule"), "--hostname", f"test-{os.getpid()}@localhost"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if " ready." in text:
            break
        if process.poll() is not None:
            pytest.fail(f"The Celery worker exited early:\n{text[-3000:]}")
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"The Celery worker did not become ready:\n{log_path.read_text(errors='replace')[-3000:]}")
    yield process, log_path
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


# Short leases and cycles, so the tests of reaping and requeueing finish in seconds; the
# platform worker and every runner must agree on them.
RUNNER_TEST_SETTINGS = {"ADMISSION_INTERVAL_SECONDS": "1", "RUNNER_LEASE_SECONDS": "3",
                        "RUNNER_HEARTBEAT_TIMEOUT_SECONDS": "6"}


class Runner:
    """A real `manage.py runner start` process for one node, with declared devices."""

    def __init__(self, hostname, devices, workdir, jurisdiction="eu", flavor="h100-80gb", env=None):
        self.hostname, self.log_path = hostname, workdir / f"runner-{hostname}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", RUNNER_HOSTNAME=hostname, RUNNER_FLAVOR=flavor,
                   RUNNER_REGION=jurisdiction, RUNNER_JURISDICTION=jurisdiction, RUNNER_GPU_DEVICES=devices,
                   **RUNNER_TEST_SETTINGS, **(env or {}))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "manage.py", "runner", "start"], cwd=ROOT, env=env,
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while " ready." not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"The runner did not start:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def start_runner(tmp_path):
    """Start runner processes for the test; each is stopped afterwards."""
    started = []

    def start(hostname, devices="0,1,2,3", **options):
        runner = Runner(hostname, devices, tmp_path, **options)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.stop()


def wait_for(predicate, *, timeout=30.0, interval=0.2, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
