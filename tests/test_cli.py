"""The `neocloud` command line, run as a subprocess against a live server with real tokens.

Nothing is mocked: the CLI signs with real keys and certificates, packs and uploads a few MB,
and the live server stores, hashes and verifies what it receives.
"""

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from workflows.digests import file_digest
from workflows.signing import generate_key_pair

from tests.support.clients import issue_token
from .test_signing import SIGNER_EMAIL, make_ca, make_leaf
from tests.support.governance import update_governed


NEOCLOUD = Path(sys.executable).parent / "neocloud"
SPEC = """\
name: fraud-detector
description: Fine-tune the fraud model
steps:
  - name: prepare
    command: [python, prepare.py]
  - name: train
    command: [python, train.py]
    gpu: {flavor: h100-80gb, count: 2}
    depends_on: [prepare]
"""


def neocloud(*args, url=None, token=None, **env):
    """Run the CLI with a minimal environment (no Django settings) and check it never shows a traceback."""
    environment = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8", **env}
    if url:
        environment["NEOCLOUD_URL"] = url
    if token:
        environment["NEOCLOUD_TOKEN"] = token
    result = subprocess.run([str(NEOCLOUD), *map(str, args)], env=environment, capture_output=True, text=True,
                            timeout=180, check=False)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


def as_json(result) -> dict:
    return json.loads(result.stdout)


def one_sentence(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("neocloud: ") and lines[0].endswith("."), lines[0]
    return lines[0].removeprefix("neocloud: ")


def unused_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# Local material ------------------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path):
    """Two key pairs on disk: `ci` (trusted) and `stranger`."""
    paths = {}
    for name in ("ci", "stranger"):
        private_pem, public_pem = generate_key_pair()
        (tmp_path / f"{name}.pem").write_bytes(private_pem)
        (tmp_path / f"{name}.pub").write_bytes(public_pem)
        paths[name] = (tmp_path / f"{name}.pem", tmp_path / f"{name}.pub")
    return paths


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return path


# Offline signing -----------------------------------------------------------------------------


def test_a_file_signed_with_a_key_verifies_offline(weights, keys, tmp_path):
    bundle = tmp_path / "weights.sigstore.json"
    signed = neocloud("sign", weights, "--key", keys["ci"][0], "-o", bundle)
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout == f"Signed {weights} as weights.bin in key mode; the bundle is in {bundle}.\n"

    verified = neocloud("verify", weights, bundle, "--public-key", f"ci-2026={keys['ci'][1]}", "--json")
    assert verified.returncode == 0, verified.stdout
    assert as_json(verified) == {"verified": True, "mode": "key", "identity": "ci-2026",
                                 "reason": "Signed by key ci-2026 over 1 file.", "digest": file_digest(weights),
                                 "signed_at": None}


def test_a_model_directory_signed_with_a_key_verifies_offline_and_a_change_does_not(model_dir, keys, tmp_path):
    bundle = tmp_path / "model.sigstore.json"
    assert neocloud("sign", model_dir, "--key", keys["ci"][0], "-o", bundle).returncode == 0

    verified = neocloud("verify", model_dir, bundle, "--public-key", f"ci={keys['ci'][1]}")
    assert (verified.returncode, verified.stdout) == (0, "Verified: Signed by key ci over 5 files.\n")

    (model_dir / "tokenizer" / "extra.bin").write_bytes(b"smuggled in")
    tampered = neocloud("verify", model_dir, bundle, "--public-key", f"ci={keys['ci'][1]}")
    assert tampered.returncode == 1
    assert tampered.stdout == ("Not verified: The artifact does not match its signature: "
                               "tokenizer/extra.bin is not covered by the signature.\n")


def test_sign_names_the_subject_and_verify_requires_that_name(weights, keys, tmp_path):
    bundle = tmp_path / "weights.sigstore.json"
    signed = neocloud("sign", weights, "--name", "scorer", "--key", keys["ci"][0], "-o", bundle, "--json")
    assert signed.returncode == 0, signed.stderr
    assert as_json(signed)["name"] == "scorer"
    trust = ("--public-key", f"ci={keys['ci'][1]}")

    named = neocloud("verify", weights, bundle, "--name", "scorer", *trust)
    assert (named.returncode, named.stdout) == (0, "Verified: Signed by key ci over 1 file.\n")

    by_path = neocloud("verify", weights, bundle, *trust)  # the name defaults to the file's, weights.bin
    assert by_path.returncode == 1
    assert by_path.stdout == ("Not verified: The signature's subject is named scorer, not weights.bin, "
                              "the artifact it is attached to.\n")


def test_verifying_with_the_wrong_key_exits_1_with_the_reason(weights, keys, tmp_path):
    bundle = tmp_path / "weights.sigstore.json"
    neocloud("sign", weights, "--key", keys["ci"][0], "-o", bundle)

    result = neocloud("verify", weights, bundle, "--public-key", f"stranger={keys['stranger'][1]}")

    assert result.returncode == 1
    assert result.stdout == ("Not verified: The bundle was not signed by any key this tenant trusts "
                             "(trusted key ids: stranger).\n")


def test_certificate_mode_signs_with_a_chain_and_verifies_against_the_root(model_dir, tmp_path):
    root = make_ca("Acme Bank Root CA")
    intermediate = make_ca("Acme Bank Code Signing CA", issuer=root)
    now = datetime.now(UTC)
    leaf = make_leaf(intermediate, not_before=now - timedelta(hours=1), not_after=now + timedelta(hours=1))
    for name, data in [("leaf.pem", leaf.key_pem), ("leaf.crt", leaf.pem), ("intermediate.crt", intermediate.pem),
                       ("root.crt", root.pem)]:
        (tmp_path / name).write_bytes(data)
    bundle = tmp_path / "model.sigstore.json"

    signed = neocloud("sign", model_dir, "--key", tmp_path / "leaf.pem", "--cert", tmp_path / "leaf.crt",
                      "--chain", tmp_path / "intermediate.crt", "-o", bundle, "--json")
    assert signed.returncode == 0 and as_json(signed)["mode"] == "certificate", signed.stderr

    verified = neocloud("verify", model_dir, bundle, "--ca-root", tmp_path / "root.crt", "--identity", SIGNER_EMAIL,
                        "--json")
    assert verified.returncode == 0, verified.stdout
    assert (as_json(verified)["mode"], as_json(verified)["identity"]) == ("certificate", SIGNER_EMAIL)

    other = neocloud("verify", model_dir, bundle, "--ca-root", tmp_path / "root.crt", "--identity", "x@example.com")
    assert other.returncode == 1 and "which this tenant does not allow to sign" in other.stdout


def test_an_encrypted_key_needs_its_password_from_the_environment(weights, tmp_path):
    private_pem, _ = generate_key_pair(password=b"correct horse")
    (tmp_path / "locked.pem").write_bytes(private_pem)
    bundle = tmp_path / "bundle.json"

    without = neocloud("sign", weights, "--key", tmp_path / "locked.pem", "-o", bundle)
    assert without.returncode == 2
    assert "is encrypted: name the environment variable holding its password" in one_sentence(without)

    wrong = neocloud("sign", weights, "--key", tmp_path / "locked.pem", "--password-env", "KEY_PASSWORD",
                     "-o", bundle, KEY_PASSWORD="battery staple")
    assert wrong.returncode == 2 and "or its password is wrong" in one_sentence(wrong)

    right = neocloud("sign", weights, "--key", tmp_path / "locked.pem", "--password-env", "KEY_PASSWORD",
                     "-o", bundle, KEY_PASSWORD="correct horse")
    assert right.returncode == 0, right.stderr


@pytest.mark.parametrize("key_text, expected", [
    (None, "Cannot read the key file {key}: no such file or directory."),
    (b"not a key", "The key {key} cannot be loaded: it is not a PEM private key, or its password is wrong."),
])
def test_a_bad_key_exits_2_with_one_sentence(weights, tmp_path, key_text, expected):
    key = tmp_path / "key.pem"
    if key_text is not None:
        key.write_bytes(key_text)

    result = neocloud("sign", weights, "--key", key, "-o", tmp_path / "bundle.json")

    assert result.returncode == 2
    assert one_sentence(result) == expected.format(key=key)
    assert not (tmp_path / "bundle.json").exists()


def test_usage_errors_exit_2_and_are_json_with_json(weights, tmp_path):
    plain = neocloud("sign", weights, "-o", tmp_path / "bundle.json")
    assert plain.returncode == 2
    assert one_sentence(plain) == "The following arguments are required: --key (see 'neocloud sign --help')."

    as_object = neocloud("verify", weights, tmp_path / "bundle.json", "--json")
    assert as_object.returncode == 2 and as_object.stderr == ""
    assert as_json(as_object)["error"]["code"] == "usage"
    assert as_json(as_object)["error"]["detail"].startswith("Say whom to trust")


def test_help_documents_the_exit_codes():
    result = neocloud("--help")
    assert result.returncode == 0
    for line in ("0  success", "1  verification failed", "2  usage or local input error",
                 "3  the server refused the request", "4  cannot reach the server", "5  authentication failed"):
        assert line in result.stdout


def test_the_cli_imports_no_django(weights, keys, tmp_path):
    """The CLI is a client: it must run where the server's dependencies are not configured."""
    program = ("import sys\n"
               "from neocloud_cli.main import main\n"
               f"assert main(['sign', {str(weights)!r}, '--key', {str(keys['ci'][0])!r}, '-o', "
               f"{str(tmp_path / 'b.json')!r}]) == 0\n"
               f"assert main(['workflow', 'push', {str(tmp_path / 'missing.yaml')!r}]) == 2\n"
               "server_side = {'django', 'rest_framework', 'tenants', 'audit', 'compliance', 'neocloud'}\n"
               "print(sorted(m for m in sys.modules if m.split('.')[0] in server_side))\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False,
                            env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


# Against the server --------------------------------------------------------------------------


@pytest.fixture
def server(world, live_server):
    """The live server's URL and a developer token of acme-bank, with the GPU flavor the spec names."""
    from tenants.services import gpu_flavor_create

    gpu_flavor_create(actor=world.platform_admin, name="h100-80gb", memory_gb=80, billing_weight="1.0")
    return {"url": live_server.url, "token": issue_token(world.a.developer, world.a.tenant)}


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "workflow.yaml"
    path.write_text(SPEC)
    return path


def test_workflow_push_registers_version_1_and_again_reports_it_exists(server, spec_file):
    first = neocloud("workflow", "push", spec_file, **server)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("Registered fraud-detector version 1 (sha256:")

    again = neocloud("workflow", "push", spec_file, "--json", **server)
    assert again.returncode == 0, again.stdout
    body = as_json(again)
    assert (body["created"], body["workflow"], body["number"]) == (False, "fraud-detector", 1)
    assert body["tenant"] == "acme-bank"
    assert body["digest"] in first.stdout

    from workflows.models import WorkflowVersion

    assert WorkflowVersion.objects.using("owner").filter(workflow__name="fraud-detector").count() == 1


def test_workflow_push_of_an_invalid_spec_exits_2_with_the_json_path_before_any_call(spec_file):
    spec_file.write_text(SPEC.replace("count: 2", "count: -1").replace("depends_on: [prepare]",
                                                                        "depends_on: [prepare, evaluate]"))
    # An unreachable server proves the spec was checked locally, before any call.
    result = neocloud("workflow", "push", spec_file, url=unused_port_url(), token="nct_unused")

    assert result.returncode == 2
    assert result.stderr.splitlines() == [(f"neocloud: The spec {spec_file} is invalid at $.steps[1].gpu.count: "
                                           "must be at least 0.")]

    as_object = neocloud("workflow", "push", spec_file, "--json", url=unused_port_url(), token="nct_unused")
    assert as_json(as_object)["error"]["code"] == "invalid_spec"
    assert as_json(as_object)["error"]["fields"] == {"$.steps[1].gpu.count": ["must be at least 0"]}


def test_every_local_spec_problem_is_listed_with_its_path(spec_file):
    spec_file.write_text(SPEC.replace("depends_on: [prepare]", "depends_on: [prepare, evaluate]")
                         + "  - name: prepare\n    command: [echo]\n")
    result = neocloud("workflow", "push", spec_file, url=unused_port_url(), token="nct_unused")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        (f"neocloud: The spec {spec_file} is invalid at $.steps[2].name: duplicate step name 'prepare' "
         "(also $.steps[0])."),
        "  $.steps[1].depends_on[1]: depends on unknown step 'evaluate'"]


def test_the_server_judges_what_only_it_knows(server, spec_file):
    spec_file.write_text(SPEC.replace("h100-80gb", "a100-40gb"))
    result = neocloud("workflow", "push", spec_file, **server)
    assert result.returncode == 3
    assert result.stderr.splitlines()[0] == ("neocloud: $.steps[1].gpu.flavor: unknown GPU flavor 'a100-40gb' "
                                             "(known: h100-80gb).")


def test_workflow_versions_lists_number_digest_author_and_time(server, spec_file):
    neocloud("workflow", "push", spec_file, **server)
    spec_file.write_text(SPEC.replace("count: 2", "count: 4"))
    second = as_json(neocloud("workflow", "push", spec_file, "--json", **server))
    assert second["number"] == 2

    listed = neocloud("workflow", "versions", "fraud-detector", **server)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NUMBER", "DIGEST", "CREATED_BY", "CREATED_AT"]
    assert rows[0].split()[:3] == ["2", second["digest"], "acme-bank-developer"]
    assert [row.split()[0] for row in rows] == ["2", "1"]

    versions = as_json(neocloud("workflow", "versions", "fraud-detector", "--json", **server))["versions"]
    assert [(v["number"], v["created_by"]) for v in versions] == [(2, "acme-bank-developer"),
                                                                  (1, "acme-bank-developer")]
    assert set(versions[0]) == {"number", "digest", "created_by", "created_at"}

    missing = neocloud("workflow", "versions", "no-such-workflow", **server)
    assert (missing.returncode, one_sentence(missing)) == (3, "No such workflow.")


def test_artifact_push_streams_a_file_into_the_tenants_jurisdiction(server, weights):
    result = neocloud("artifact", "push", weights, "--name", "weights", "--kind", "model", "--json", **server)

    assert result.returncode == 0, result.stdout
    body = as_json(result)
    assert body["created"] is True
    assert body["artifact"]["digest"] == file_digest(weights)
    assert (body["artifact"]["size_bytes"], body["artifact"]["region"]) == (weights.stat().st_size, "eu")

    from workflows.models import Artifact

    stored = Artifact.objects.using("owner").get(name="weights")
    assert (stored.digest, stored.layout, stored.stored_at is not None) == (file_digest(weights), "file", True)

    again = neocloud("artifact", "push", weights, "--name", "weights", "--kind", "model", **server)
    assert again.returncode == 0 and "was already stored" in again.stdout


def test_artifact_push_shows_progress_on_stderr_when_asked(server, weights):
    result = neocloud("artifact", "push", weights, "--name", "weights", "--kind", "model", "--progress", **server)
    assert result.returncode == 0, result.stderr
    assert "hashing weights.bin" in result.stderr and "uploading weights.bin" in result.stderr

    quiet = neocloud("artifact", "push", weights, "--name", "weights", "--kind", "model", "--progress", "--json",
                     **server)
    assert quiet.stderr == "" and as_json(quiet)["created"] is False


def test_artifact_push_refused_by_the_server_exits_3_with_the_field(server, weights):
    result = neocloud("artifact", "push", weights, "--name", "weights", "--kind", "model", "--region", "us", **server)
    assert result.returncode == 3
    assert result.stderr.splitlines() == ["neocloud: Region us is outside acme-bank's jurisdiction (eu)."]


def test_a_model_directory_with_a_symbolic_link_is_refused_before_any_call(model_dir):
    (model_dir / "latest.safetensors").symlink_to(model_dir / "model-00001-of-00003.safetensors")
    result = neocloud("artifact", "push", model_dir, "--name", "credit-scorer", "--kind", "model",
                      url=unused_port_url(), token="nct_unused")
    assert result.returncode == 2
    assert one_sentence(result) == ("Cannot pack latest.safetensors: it is a symbolic link, and archives hold "
                                    "no links.")


def trust_public_key(world, key_id, public_key_path):
    from workflows.trust import trust_config_update

    update_governed(trust_config_update, tenant=world.a.tenant, proposer=world.a.admin, confirmer=world.a.admin2,
                    public_keys={key_id: public_key_path.read_text()})


def test_a_signed_model_directory_is_uploaded_and_verified_by_the_server(world, server, model_dir, keys):
    trust_public_key(world, "ci-2026", keys["ci"][1])
    # The directory is acme-credit-scorer: the CLI names the signature's subject credit-scorer.
    assert model_dir.name != "credit-scorer"

    result = neocloud("artifact", "push", model_dir, "--name", "credit-scorer", "--kind", "model",
                      "--sign", "--key", keys["ci"][0], "--json", **server)

    assert result.returncode == 0, result.stdout
    body = as_json(result)
    assert body["signature"]["verified"] is True
    assert (body["signature"]["mode"], body["signature"]["identity"]) == ("key", "ci-2026")
    assert body["signature"]["reason"] == "Signed by key ci-2026 over 5 files."

    from workflows.models import Artifact, Verification

    artifact = Artifact.objects.using("owner").get(name="credit-scorer")
    assert (artifact.layout, artifact.digest) == ("directory", body["artifact"]["digest"])
    [verification] = Verification.objects.using("owner").filter(artifact=artifact)
    assert (verification.verified, verification.identity) == (True, "ci-2026")


def test_a_model_signed_with_an_untrusted_key_is_uploaded_but_not_verified(world, server, model_dir, keys):
    trust_public_key(world, "ci-2026", keys["ci"][1])

    result = neocloud("artifact", "push", model_dir, "--name", "credit-scorer", "--kind", "model",
                      "--sign", "--key", keys["stranger"][0], **server)

    assert result.returncode == 1
    reason = "The bundle was not signed by any key this tenant trusts (trusted key ids: ci-2026)."
    assert result.stdout.splitlines()[-1] == f"The server did not verify the signature: {reason}"

    again = neocloud("artifact", "push", model_dir, "--name", "credit-scorer", "--kind", "model",
                     "--sign", "--key", keys["stranger"][0], "--json", **server)
    assert again.returncode == 1
    assert as_json(again)["created"] is False
    assert (as_json(again)["signature"]["verified"], as_json(again)["signature"]["reason"]) == (False, reason)

    from workflows.models import Verification

    assert list(Verification.objects.using("owner").values_list("verified", flat=True)) == [False, False]


def test_an_unknown_or_revoked_token_exits_5(world, server, spec_file):
    from tenants.services import token_issue, token_revoke

    unknown = neocloud("workflow", "versions", "fraud-detector", url=server["url"], token="nct_unknown_secret")
    assert unknown.returncode == 5
    assert one_sentence(unknown).startswith("Authentication failed: ")

    token, secret = token_issue(actor=world.a.developer, tenant=world.a.tenant, name="soon-revoked")
    token_revoke(actor=world.a.developer, token=token)
    revoked = neocloud("workflow", "push", spec_file, "--json", url=server["url"], token=secret)
    assert revoked.returncode == 5
    assert as_json(revoked)["error"]["code"] == "token_revoked"


def test_an_unreachable_server_exits_4_with_one_sentence(spec_file):
    url = unused_port_url()
    result = neocloud("workflow", "push", spec_file, url=url, token="nct_unused")
    assert result.returncode == 4
    assert one_sentence(result) == f"Cannot reach Neocloud at {url}: connection refused."

    as_object = neocloud("workflow", "versions", "fraud-detector", "--json", url=url, token="nct_unused")
    assert as_object.returncode == 4
    assert as_json(as_object) == {"error": {"code": "unreachable",
                                            "detail": f"Cannot reach Neocloud at {url}: connection refused."}}


class _FailingServer(http.server.BaseHTTPRequestHandler):
    """A real HTTP server in front of nothing, as a broken proxy would answer."""

    def do_GET(self):
        self.send_response(503)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html><body>Service Unavailable</body></html>")

    def log_message(self, *args):
        pass


def test_a_server_failure_exits_4_with_one_sentence():
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FailingServer) as failing:
        threading.Thread(target=failing.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{failing.server_address[1]}"
        result = neocloud("workflow", "versions", "fraud-detector", url=url, token="nct_unused")
        failing.shutdown()
    assert result.returncode == 4
    assert one_sentence(result) == f"Neocloud at {url} failed with HTTP 503."


def test_missing_configuration_is_a_usage_error(spec_file):
    result = neocloud("workflow", "push", spec_file)
    assert result.returncode == 2
    assert one_sentence(result).startswith("Set NEOCLOUD_URL")


@pytest.mark.embedded
def test_a_pipeline_pushes_a_signed_model_and_a_version_and_the_console_shows_it_verified(
        world, server, model_dir, keys, spec_file, client):
    from tests.support.clients import sign_in

    trust_public_key(world, "ci-2026", keys["ci"][1])
    pushed = neocloud("artifact", "push", model_dir, "--name", "credit-scorer", "--kind", "model",
                      "--sign", "--key", keys["ci"][0], "--json", **server)
    assert pushed.returncode == 0, pushed.stdout
    digest = as_json(pushed)["artifact"]["digest"]
    version = neocloud("workflow", "push", spec_file, "--artifact", digest, "--json", **server)
    assert version.returncode == 0, version.stdout
    number = as_json(version)["number"]

    sign_in(client, world.a.approver)
    page = client.get(f"/t/acme-bank/workflows/fraud-detector/v{number}/").content.decode()
    assert 'data-artifact="credit-scorer"' in page and "✓ verified · ci-2026" in page
