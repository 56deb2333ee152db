"""The platform baseline follows the two-person rule: promotions are decided only under a
baseline revision that two platform admins took on, one proposing and another accepting it
with a fresh one-time password. The revision the platform was installed with is accepted."""

import pytest

from audit.models import AuditEvent
from policies.bundle import REGO_DIR

from tests.support.otp import fresh_totp
from tests.support.governance import second_platform_admin
from .test_api import assert_error
from .test_promotions import T, Gate

BASELINE = "/api/v1/policies/baseline"


@pytest.fixture
def gate(world, api, tmp_path):
    return Gate(world, api, tmp_path)


@pytest.fixture
def changed_baseline(monkeypatch, tmp_path):
    """The shipped baseline with one more line: a new revision, whatever it changes."""
    root = tmp_path / "rego"
    (root / "platform").mkdir(parents=True)
    source = (REGO_DIR / "platform" / "promotion.rego").read_text()
    (root / "platform" / "promotion.rego").write_text(source + "\n# reviewed once, not yet accepted\n")
    monkeypatch.setattr("policies.bundle.REGO_DIR", root)


def test_the_installed_baseline_is_accepted(world, api):
    body = api(world.platform_admin).get(BASELINE).json()
    assert body["accepted"] is True
    [installed] = body["revisions"]
    assert (installed["revision"], installed["proposed_by"]) == (body["revision"], None)
    assert_error(api(world.a.admin).get(BASELINE), 403, "permission_denied")


@pytest.mark.embedded  # its select_for_update must run on SQLite too
def test_a_new_baseline_decides_nothing_until_a_second_platform_admin_accepts_it(gate, world, api, changed_baseline):
    number = gate.version()
    held = gate.request(number, "development").json()
    assert held["state"] == "rejected" and "has not been accepted by two platform admins" in held["close_reason"]

    proposer, second = world.platform_admin, second_platform_admin()
    status = api(proposer).get(BASELINE).json()
    assert status["accepted"] is False
    proposed = api(proposer).post(BASELINE)
    assert proposed.status_code == 201 and proposed.json()["proposed_by"] == proposer.username
    assert_error(api(proposer).post(BASELINE), 409, "baseline_proposed")
    accept = f"{BASELINE}/accept"
    revision = status["revision"]
    assert_error(api(proposer).post(accept, {"revision": revision, "otp_token": fresh_totp(proposer)}),
                 403, "separation_of_duties")
    assert_error(api(world.a.admin).post(accept, {"revision": revision, "otp_token": fresh_totp(world.a.admin)}),
                 403, "permission_denied")
    accepted = api(second).post(accept, {"revision": revision, "otp_token": fresh_totp(second)})
    assert accepted.status_code == 200 and accepted.json()["accepted_by"] == "ops-second", accepted.content
    assert api(second).get(BASELINE).json()["accepted"] is True
    actions = set(AuditEvent.objects.using("owner").values_list("action", "target_id"))
    assert {("policy.baseline_propose", revision), ("policy.baseline_accept", revision)} <= actions

    assert gate.request(number, "development").json()["state"] == "promoted"
