"""Ways in: OTP-verified console sessions, bearer tokens, and a thin JSON client."""

import json
import os

import pytest


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
