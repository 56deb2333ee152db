"""The policy API and tools: the OPA bundle endpoint, what-if evaluation (which stores nothing)
and `manage.py policy replay` (which reads every tenant through the platform role)."""

import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from audit.models import AuditEvent
from policies.bundle import PolicySource, build_bundle
from policies.models import PolicyDecision

from tests.support import ROOT

from tests.support.clients import issue_token
from .test_api import assert_error
from .test_policies import GOOD, case


BUNDLE = "/api/v1/policies/bundle"
EVALUATE = "/api/v1/policies/evaluate"
TOKEN = "test-bundle-token-" + secrets.token_urlsafe(32)


def actions():
    return set(AuditEvent.objects.using("owner").values_list("action", flat=True))


# The bundle endpoint -------------------------------------------------------------------


def test_a_platform_admin_pulls_the_bundle_with_its_revision_as_etag(world, api):
    response = api(world.platform_admin).get(BUNDLE)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/gzip"
    assert response.content == build_bundle()
    assert response["ETag"] == f'"{PolicySource.load().revision}"'


@pytest.mark.parametrize("header", ['"{rev}"', 'W/"{rev}"', '"sha256:old", "{rev}"', "*"])
def test_a_matching_if_none_match_is_304_without_a_body(world, api, header):
    revision = PolicySource.load().revision
    response = api(world.platform_admin).get(BUNDLE, HTTP_IF_NONE_MATCH=header.format(rev=revision))
    assert response.status_code == 304
    assert response.content == b"" and response["ETag"] == f'"{revision}"'


def test_a_stale_etag_gets_the_bundle(world, api):
    response = api(world.platform_admin).get(BUNDLE, HTTP_IF_NONE_MATCH='"sha256:old"')
    assert response.status_code == 200 and response.content == build_bundle()


def test_the_bundle_token_pulls_without_a_user(world, api, settings):
    settings.POLICY_BUNDLE_TOKEN = TOKEN
    response = api(TOKEN).get(BUNDLE)
    assert response.status_code == 200 and response.content == build_bundle()
    assert_error(api(TOKEN + "x").get(BUNDLE), 401, "invalid_token")
    assert_error(api(TOKEN).get("/api/v1/me"), 401, "invalid_token")  # it opens nothing else


def test_without_a_bundle_token_setting_no_bearer_pulls(world, api, settings):
    settings.POLICY_BUNDLE_TOKEN = None
    assert_error(api(TOKEN).get(BUNDLE), 401, "invalid_token")


def test_only_platform_admins_and_the_token_pull_the_bundle(world, api, settings):
    settings.POLICY_BUNDLE_TOKEN = TOKEN
    assert_error(api().get(BUNDLE), 401, "not_authenticated")
    assert_error(api(world.a.admin).get(BUNDLE), 403, "permission_denied")
    assert_error(api(issue_token(world.a.developer, world.a.tenant)).get(BUNDLE), 403, "permission_denied")
    assert "request.denied" in actions()


def test_the_bundle_token_is_read_from_a_file_and_must_be_long(tmp_path):
    secret = tmp_path / "bundle-token"
    secret.write_text(TOKEN + "\n")
    show = ["manage.py", "shell", "-c", "from django.conf import settings; print(settings.POLICY_BUNDLE_TOKEN)"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICY_BUNDLE_TOKEN")}
    result = subprocess.run([sys.executable, *show], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**env, "POLICY_BUNDLE_TOKEN_FILE": str(secret)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == TOKEN
    short = subprocess.run([sys.executable, *show], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={**env, "POLICY_BUNDLE_TOKEN": "guessable"})
    assert short.returncode != 0
    assert "POLICY_BUNDLE_TOKEN must be at least 32 characters long." in short.stderr


# What-if -------------------------------------------------------------------------------

DRY_RUN_POLICY = {
    "neocloud/dryrun.rego": (
        "package neocloud.dryrun\n\n"
        'decision := {"allow": false, "violations": [{"rule": "dryrun.stage", "level": "hard-mandatory",\n'
        '\t"message": concat("", ["stage is ", object.get(input, "stage", "")]), "pending": false}]}\n'
    ),
}


@pytest.mark.embedded
def test_a_developer_dry_runs_the_configured_policy_and_nothing_is_stored(world, api):
    response = api(world.a.developer).post(EVALUATE, {"input": GOOD})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["stored"] is False and body["allow"] is True and body["error"] == ""
    assert body["policy_revision"] == PolicySource.load().revision and body["engine"] == "embedded"
    denied = api(world.a.developer).post(EVALUATE, {"input": case(version__gpus={"h100": 9})}).json()
    assert denied["allow"] is False and "baseline.gpu_quota" in {v["rule"] for v in denied["violations"]}
    assert not PolicyDecision.objects.using("owner").exists()
    assert actions() == set()


def test_a_candidate_policy_decides_under_its_own_revision(world, api, tmp_path):
    token = issue_token(world.a.developer, world.a.tenant)  # a CI pipeline dry-runs too
    response = api(token).post(EVALUATE, {"input": GOOD, "entrypoint": "neocloud/dryrun/decision",
                                          "policy": DRY_RUN_POLICY})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["allow"] is False and body["stored"] is False
    assert [(v["rule"], v["message"]) for v in body["violations"]] == [("dryrun.stage", "stage is production")]
    (tmp_path / "neocloud").mkdir()
    (tmp_path / "neocloud/dryrun.rego").write_text(DRY_RUN_POLICY["neocloud/dryrun.rego"])
    assert body["policy_revision"] == PolicySource.load(tmp_path).revision != PolicySource.load().revision
    assert not PolicyDecision.objects.using("owner").exists()
    assert actions() == {"token.issue", "policy.candidate_evaluate"}  # the run is on the record, nothing else
    [event] = AuditEvent.objects.using("owner").filter(action="policy.candidate_evaluate")
    source = DRY_RUN_POLICY["neocloud/dryrun.rego"].encode()
    assert event.data == {"entrypoint": "neocloud/dryrun/decision", "allow": False, "error": False,
                          "modules": {"neocloud/dryrun.rego": "sha256:" + hashlib.sha256(source).hexdigest()}}
    assert (event.actor_name, event.target_id) == (world.a.developer.username, body["policy_revision"])


def test_a_platform_admin_may_dry_run_and_outsiders_may_not(world, api):
    assert api(world.platform_admin).post(EVALUATE, {"input": GOOD}).json()["allow"] is True
    assert_error(api(world.outsider).post(EVALUATE, {"input": GOOD}), 403, "permission_denied")
    assert_error(api().post(EVALUATE, {"input": GOOD}), 401, "not_authenticated")


def test_a_syntax_error_names_the_file_and_line(world, api):
    text = (ROOT / "policies/rego/platform/promotion.rego").read_text()
    text = text.replace("decision := {", "decision := {{", 1)
    line = text[: text.index("decision := {{")].count("\n") + 1
    body = assert_error(api(world.a.developer).post(EVALUATE, {"input": GOOD,
                                                               "policy": {"platform/promotion.rego": text}}),
                        400, "policy_syntax_error")
    assert f"platform/promotion.rego:{line}:" in body["detail"], body["detail"]
    assert actions() == {"request.denied"}  # the API's denial record, nothing else


@pytest.mark.parametrize("payload,field", [
    ({"input": [1, 2]}, "input"),
    ({"input": "production"}, "input"),
    ({}, "input"),
    ({"input": GOOD, "entrypoint": "../etc/passwd"}, "entrypoint"),
    ({"input": GOOD, "policy": {}}, "policy"),
    ({"input": GOOD, "policy": {"../escape.rego": "package neocloud.x\n"}}, "policy"),
    ({"input": GOOD, "policy": {"notes.txt": "package neocloud.x\n"}}, "policy"),
    ({"input": GOOD, "policy": {"x_test.rego": "package neocloud.x_test\n"}}, "policy"),
    ({"input": GOOD, "policy": {"a.rego": "package neocloud.a\n", "a.rego/b.rego": "package neocloud.b\n"}}, "policy"),
    ({"input": GOOD, "policy": {f"m{i}.rego": f"package neocloud.m{i}\n" for i in range(51)}}, "policy"),
    ({"input": GOOD, "policy": {"big.rego": "package neocloud.big\n" + "# padding\n" * 27_000}}, "policy"),
])
def test_bad_what_if_requests_name_the_field(world, api, payload, field):
    body = assert_error(api(world.a.developer).post(EVALUATE, payload), 400, "invalid")
    assert field in body["fields"], body


# Replay --------------------------------------------------------------------------------

CANDIDATE = (
    "package neocloud.platform.promotion\n\n"
    "gpus := object.get(object.get(input, \"version\", {}), \"gpus\", {})\n\n"
    "violations contains {\"rule\": \"candidate.h100_cap\", \"level\": \"hard-mandatory\",\n"
    "\t\"message\": \"at most 2 h100\", \"pending\": false} if {\n"
    "\tobject.get(gpus, \"h100\", 0) > 2\n"
    "}\n\n"
    "decision := {\"allow\": count(violations) == 0, \"violations\": [v | some v in violations]}\n"
)


@pytest.fixture
def stored(world):
    """Decisions as the platform made them, in two tenants and at platform scope."""
    from policies.engines import DEFAULT_ENTRYPOINT as E
    from policies.services import policy_decide

    a, b = world.a, world.b
    return {
        "unchanged": policy_decide(actor=a.developer, tenant=a.tenant, entrypoint=E, input=GOOD),
        "pending": policy_decide(actor=a.developer, tenant=a.tenant, entrypoint=E,
                                 input=case(approvals=[{"user": "bob"}])),
        "now_denied": policy_decide(actor=a.developer, tenant=a.tenant, entrypoint=E,
                                    input=case(version__gpus={"h100": 3})),
        "other_rule": policy_decide(actor=b.developer, tenant=b.tenant, entrypoint=E,
                                    input=case(version__gpus={"h100": 9})),
        "now_allowed": policy_decide(actor=world.platform_admin, tenant=None, entrypoint=E,
                                     input=case(version__base_model="meta-llama/Llama-3-8B")),
        "errored": policy_decide(actor=a.developer, tenant=a.tenant, entrypoint="neocloud/platform/promotion/nope",
                                 input=GOOD),
    }


def candidate_dir(tmp_path, text=CANDIDATE):
    (tmp_path / "candidate/platform").mkdir(parents=True)
    (tmp_path / "candidate/platform/promotion.rego").write_text(text)
    return tmp_path / "candidate"


def replay(*args):
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("policy", "replay", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exited:
        code = exited.code
    return code, out.getvalue(), err.getvalue()


@pytest.mark.embedded
def test_replay_lists_what_a_candidate_would_change_in_every_tenant(stored, tmp_path):
    # On PostgreSQL the app role, with no tenant bound, would read none of these rows: seeing
    # both tenants proves the command reads through the platform role.
    policy = candidate_dir(tmp_path)
    code, out, err = replay("--policy", str(policy), "--since", "7")
    assert code == 1, err
    lines = out.splitlines()
    ids = {name: str(row.decision_id) for name, row in stored.items()}
    entrypoint = "neocloud/platform/promotion/decision"
    assert lines[:3] == [
        f"(platform)  {ids['now_allowed']}  {entrypoint}  deny->allow  -baseline.base_model_allowed",
        f"acme-bank  {ids['now_denied']}  {entrypoint}  allow->deny  +candidate.h100_cap",
        f"st-mary-hospital  {ids['other_rule']}  {entrypoint}  deny->deny  +candidate.h100_cap -baseline.gpu_quota",
    ]
    revision = PolicySource.load(policy).revision
    assert lines[3:] == [f"5 decision(s) of the last 7 day(s) replayed under {revision}: 3 would change."]
    [event] = AuditEvent.objects.using("owner").filter(action="policy.replay")
    assert (event.actor_type, event.actor_name, event.tenant, event.outcome) == ("system", "policy", "", "success")
    source = (policy / "platform/promotion.rego").read_bytes()
    assert event.data == {"candidate_revision": revision, "since_days": 7.0, "replayed": 5, "changed": 3,
                          "modules": {"platform/promotion.rego": "sha256:" + hashlib.sha256(source).hexdigest()},
                          "changed_per_tenant": {"(platform)": 1, "acme-bank": 1, "st-mary-hospital": 1}}
    assert PolicyDecision.objects.using("owner").count() == len(stored)  # nothing stored


def test_replay_as_json(stored, tmp_path):
    code, out, err = replay("--policy", str(candidate_dir(tmp_path)), "--since", "1", "--json")
    assert code == 1, err
    report = json.loads(out)
    assert report["replayed"] == 5
    assert {(c["tenant"], c["allow_before"], c["allow_after"], tuple(c["added"]), tuple(c["removed"]))
            for c in report["changes"]} == {
        ("(platform)", False, True, (), ("baseline.base_model_allowed",)),
        ("acme-bank", True, False, ("candidate.h100_cap",), ()),
        ("st-mary-hospital", False, False, ("candidate.h100_cap",), ("baseline.gpu_quota",)),
    }


def test_replay_of_the_current_policy_changes_nothing(stored, tmp_path):
    shutil.copytree(ROOT / "policies/rego", tmp_path / "same")
    code, out, err = replay("--policy", str(tmp_path / "same"), "--since", "7")
    assert code == 0, out + err
    assert out.splitlines() == [f"5 decision(s) of the last 7 day(s) replayed under {PolicySource.load().revision}: "
                                "0 would change."]
    assert AuditEvent.objects.using("owner").get(action="policy.replay").data["changed"] == 0


def test_replay_reads_only_the_window(stored, tmp_path):
    from policies.whatif import policy_replay

    report = policy_replay(policy_dir=candidate_dir(tmp_path), since=timedelta(days=1),
                           now=timezone.now() + timedelta(days=2))
    assert (report.replayed, report.changes) == (0, [])


def test_replay_of_a_broken_candidate_is_one_sentence_and_exit_2(live_db, tmp_path):
    broken = candidate_dir(tmp_path, CANDIDATE.replace("decision := {", "decision := {{"))
    line = CANDIDATE.count("\n")  # the decision is the last line
    result = subprocess.run([sys.executable, "manage.py", "policy", "replay", "--policy", str(broken), "--since", "7"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"platform/promotion.rego:{line}:" in result.stderr, result.stderr
    empty = replay("--policy", str(tmp_path / "nowhere"), "--since", "7")
    assert empty[0] == 2 and "holds no .rego modules" in empty[2]
    assert replay("--policy", str(broken), "--since", "0")[0] == 2
    assert not AuditEvent.objects.using("owner").filter(action="policy.replay").exists()
