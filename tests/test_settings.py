"""Settings fail closed in production, and a correct production configuration passes --deploy."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings


ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = {
    "NEOCLOUD_ENV": "production",
    "SECRET_KEY": secrets.token_urlsafe(64),
    "DATABASE_URL": "postgresql://neocloud_app@db.internal:5432/neocloud",
    "ALLOWED_HOSTS": "neocloud.example.org",
}


@pytest.fixture(autouse=True)
def platform_keys(tmp_path):
    """A production configuration carries the platform's KEK and keyring."""
    from audit.keys import Keyring, read_kek, write_new_kek

    kek, keyring = tmp_path / "kek", tmp_path / "keyring.json"
    write_new_kek(kek)
    Keyring.create(keyring, read_kek(kek))
    PRODUCTION.update(PLATFORM_KEK_FILE=str(kek), PLATFORM_KEYRING_FILE=str(keyring))
    return kek, keyring


def manage(*args, env=None, tmp_path=None):
    clean = {k: v for k, v in os.environ.items()
             if not k.endswith("DATABASE_URL") and k not in ("SECRET_KEY", "ALLOWED_HOSTS", "NEOCLOUD_ENV")}
    clean.update(env or {})
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=clean,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("missing", ["SECRET_KEY", "DATABASE_URL", "ALLOWED_HOSTS"])
def test_production_refuses_to_start_without_a_required_setting(missing):
    env = {k: v for k, v in PRODUCTION.items() if k != missing}
    result = manage("check", env=env)
    assert result.returncode == 2
    assert result.stderr == f"neocloud: {missing} must be set in production (or {missing}_FILE naming a file that holds it).\n"
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("missing", ["PLATFORM_KEK_FILE", "PLATFORM_KEYRING_FILE"])
def test_production_refuses_to_start_without_its_signing_identity(missing):
    result = manage("check", env={k: v for k, v in PRODUCTION.items() if k != missing})
    assert result.returncode == 2
    assert result.stderr == f"neocloud: {missing} must name a file in production (see docs/operators.md).\n"


def test_production_refuses_a_keyring_that_does_not_decrypt(platform_keys, tmp_path):
    from audit.keys import write_new_kek

    other = tmp_path / "other-kek"
    write_new_kek(other)
    result = manage("check", env={**PRODUCTION, "PLATFORM_KEK_FILE": str(other)})
    assert result.returncode == 2
    assert result.stderr.startswith("neocloud: Platform key platform-") and "does not decrypt" in result.stderr
    assert result.stderr.count("\n") == 1


def test_correct_production_configuration_passes_deploy_checks():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_secrets_can_come_from_files(tmp_path):
    key_file = tmp_path / "secret_key"
    key_file.write_text(PRODUCTION["SECRET_KEY"] + "\n")
    env = {k: v for k, v in PRODUCTION.items() if k != "SECRET_KEY"}
    env["SECRET_KEY_FILE"] = str(key_file)
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stderr


def test_an_unreadable_secret_file_is_one_plain_sentence(tmp_path):
    env = {k: v for k, v in PRODUCTION.items() if k != "SECRET_KEY"}
    env["SECRET_KEY_FILE"] = str(tmp_path / "absent")
    result = manage("check", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("neocloud: SECRET_KEY_FILE points to ")
    assert result.stderr.count("\n") == 1


def test_production_is_never_in_debug_even_when_asked():
    result = manage("shell", "-c", "from django.conf import settings; print(settings.DEBUG)",
                    env={**PRODUCTION, "NEOCLOUD_DEBUG": "1"})
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr


def test_api_default_permission_is_not_allow_any():
    permissions = settings.REST_FRAMEWORK["DEFAULT_PERMISSION_CLASSES"]
    assert permissions == ["rest_framework.permissions.IsAuthenticated"]


def test_project_package_is_not_named_platform():
    # A package named platform shadows the standard library and breaks Django and Celery.
    assert not (ROOT / "platform").exists()
    import platform

    assert callable(platform.system)
