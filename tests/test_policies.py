"""The policy engine: the promotion baseline on regopy and on the real OPA engine, fail-closed
behaviour, the `policy` command, bundles, decision storage and the OPA-server adapter.

The only stand-in is ``OpaRestDouble``, a TEST DOUBLE for an OPA server: a loopback HTTP
server that speaks OPA's REST data API (``POST /v1/data/<path>``) and evaluates with the real
OPA engine (opa-golib-python-bindings) the policies it pulled, as a real OPA does, from the
platform's bundle endpoint on a live server. Everything else is the real thing.
"""

import copy
import io
import json
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import requests
from django.core.management import call_command

from policies.bundle import PolicySource, build_bundle, read_bundle
from policies.engines import DEFAULT_ENTRYPOINT, EmbeddedEngine, OpaServerEngine, interpret
from policies.opa_tests import opa_engine, run_rego_tests

from tests.support import ROOT

GOOD = {
    "stage": "production",
    "version": {
        "digest": "sha256:v1",
        "author": "alice",
        "artifacts": [
            {"digest": "sha256:model", "kind": "model", "verified": True, "identity": "ci@acme.example"},
            {"digest": "sha256:metrics", "kind": "metrics", "verified": True, "identity": "ci@acme.example"},
        ],
        "gpus": {"h100": 2},
        "base_model": "mistralai/Mistral-7B",
        "dataset_regions": ["eu", "eu-west1"],
        "dataset_jurisdictions": {"eu": "eu", "eu-west1": "eu"},
    },
    "tenant": {
        "jurisdiction": "eu",
        "quota": {"h100": 4},
        "policy": {"min_approvals": 2, "base_model_allowlist": ["mistralai/*"],
                   "metrics_thresholds": {"accuracy": 0.9}},
    },
    "metrics": {"accuracy": 0.93},
    "metrics_artifact": "sha256:metrics",
    "approvals": [{"user": "bob"}, {"user": "carol"}],
    "requester": "alice",
    "stages_reached": ["development", "staging"],
    "now": "2025-06-01T12:00:00+00:00",
}


def case(**changes):
    """GOOD with dotted-path changes applied (a value of ... deletes the key)."""
    value = copy.deepcopy(GOOD)
    for dotted, new in changes.items():
        *parents, last = dotted.split("__")
        node = value
        for p in parents:
            node = node[p]
        if new is ...:
            node.pop(last, None)
        else:
            node[last] = new
    return value


# input -> (allow, rule ids that must be reported, of them the pending ones)
DECISION_TABLE = [
    ("good production", GOOD, True, set(), set()),
    ("good staging, one approval", case(stage="staging", approvals=[{"user": "bob"}]), True, set(), set()),
    ("development, no approvals", case(stage="development", approvals=[], stages_reached=[]), True, set(), set()),
    ("unsigned artifact", case(version__artifacts=[{"digest": "sha256:model", "kind": "model", "verified": False,
                                                    "identity": ""}]),
     False, {"baseline.artifacts_signed", "baseline.metrics_thresholds"}, set()),
    ("no artifacts", case(version__artifacts=[]), False, {"baseline.artifacts_signed", "baseline.metrics_thresholds"},
     set()),
    ("one approval in production is pending", case(approvals=[{"user": "bob"}]), True, {"baseline.min_approvals"},
     {"baseline.min_approvals"}),
    ("tenant min 1 cannot lower the production floor", case(tenant__policy__min_approvals=1, approvals=[{"user": "bob"}]),
     True, {"baseline.min_approvals"}, {"baseline.min_approvals"}),
    ("tenant min 3 raises it", case(tenant__policy__min_approvals=3), True, {"baseline.min_approvals"},
     {"baseline.min_approvals"}),
    ("self approval", case(approvals=[{"user": "alice"}, {"user": "bob"}, {"user": "carol"}]), False,
     {"baseline.separation_of_duties"}, set()),
    ("over gpu quota", case(version__gpus={"h100": 5}), False, {"baseline.gpu_quota"}, set()),
    ("flavor without quota", case(version__gpus={"a100": 1}), False, {"baseline.gpu_quota"}, set()),
    ("base model not allow-listed", case(version__base_model="meta-llama/Llama-3-8B"), False,
     {"baseline.base_model_allowed"}, set()),
    ("no allow-list at all", case(tenant__policy__base_model_allowlist=...), False, {"baseline.base_model_allowed"},
     set()),
    ("dataset outside jurisdiction", case(version__dataset_regions=["eu-west-1", "us-east-1"]), False,
     {"baseline.dataset_residency"}, set()),
    ("a region that only looks like one of the jurisdiction's", case(version__dataset_regions=["eu-evil"]), False,
     {"baseline.dataset_residency"}, set()),
    ("the catalogue, not the code, places a region", case(
        version__dataset_regions=["eu-west1"], version__dataset_jurisdictions={"eu-west1": "us"}), False,
     {"baseline.dataset_residency"}, set()),
    ("production before staging", case(stages_reached=["development"]), False,
     {"baseline.staging_before_production"}, set()),
    ("metric below threshold", case(metrics={"accuracy": 0.5}), False, {"baseline.metrics_thresholds"}, set()),
    ("metric missing", case(metrics={}), False, {"baseline.metrics_thresholds"}, set()),
    ("metrics from an unverified artifact", case(metrics_artifact="sha256:elsewhere"), False,
     {"baseline.metrics_thresholds"}, set()),
    ("metric below threshold in development is advisory",
     case(stage="development", approvals=[], metrics={"accuracy": 0.5}), True, {"baseline.metrics_thresholds"}, set()),
    ("unknown stage", case(stage="prod"), False, {"baseline.stage_known"}, set()),
    ("quotes and unicode in strings", case(version__base_model='meta/"quoted" \\ \u00e9'), False,
     {"baseline.base_model_allowed"}, set()),
    ("wrong types", case(version__artifacts="all signed", version__gpus=[1]), False,
     {"baseline.input_shape", "baseline.artifacts_signed"}, set()),
    ("empty input", {}, False, {"baseline.stage_known", "baseline.artifacts_signed"}, set()),
    ("tenant raises a level", case(tenant__policy__rule_levels={"baseline.base_model_allowed": "hard-mandatory"},
                                   version__base_model="meta-llama/Llama-3-8B"),
     False, {"baseline.base_model_allowed"}, set()),
    ("tenant cannot lower a level", case(tenant__policy__rule_levels={"baseline.dataset_residency": "advisory"},
                                         version__dataset_regions=["us-east1"]),
     False, {"baseline.dataset_residency"}, set()),
    ("an exemption lifts a soft violation", case(version__base_model="meta-llama/Llama-3-8B",
                                                 exemptions=[{"rule": "baseline.base_model_allowed"}]),
     True, {"baseline.base_model_allowed"}, set()),
    ("an exemption never lifts a hard violation", case(version__dataset_regions=["us-east1"],
                                                       exemptions=[{"rule": "baseline.dataset_residency"}]),
     False, {"baseline.dataset_residency"}, set()),
    ("rollback needs one approval", case(kind="rollback", approvals=[{"user": "bob"}]), True, set(), set()),
    ("rollback without approvals is pending", case(kind="rollback", approvals=[]), True, {"baseline.min_approvals"},
     {"baseline.min_approvals"}),
    ("tenant rules tighten", case(tenant__policy__max_gpus={"h100": 1}, tenant__policy__allowed_regions=["eu-west-1"]),
     False, {"tenant.max_gpus", "tenant.allowed_regions"}, set()),
    ("malformed rule levels", case(tenant__policy__rule_levels=["raise everything"]), False,
     {"baseline.input_shape"}, set()),
]


@pytest.fixture(scope="module")
def embedded():
    return EmbeddedEngine(timeout_seconds=5)


class OpaInProcess:
    """The real OPA engine in process, behind the same interpretation as the others."""

    name = "opa-golib"

    def __init__(self, source=None):
        self.source = source or PolicySource.load()
        self.engine = opa_engine(self.source)

    def decide(self, entrypoint, input):
        started = time.perf_counter()
        result = self.engine.eval_document(entrypoint.replace("/", "."), input)
        return interpret(result, engine=self.name, revision=self.source.revision, decision_id="x", started=started)


@pytest.fixture(scope="module")
def opa_in_process():
    return OpaInProcess()


def rules_of(decision):
    return {v["rule"] for v in decision.violations}


@pytest.mark.parametrize("name,value,allow,rules,pending", DECISION_TABLE, ids=[c[0] for c in DECISION_TABLE])
def test_decision_table_on_both_engines(embedded, opa_in_process, name, value, allow, rules, pending):
    ours = embedded.decide(DEFAULT_ENTRYPOINT, value)
    real = opa_in_process.decide(DEFAULT_ENTRYPOINT, value)
    assert ours.error == "" and real.error == ""
    assert ours.allow is allow, ours.violations
    assert rules <= rules_of(ours), ours.violations
    assert {v["rule"] for v in ours.violations if v["pending"]} == pending
    # Both engines agree, rule by rule and message by message.
    assert (ours.allow, ours.violations) == (real.allow, real.violations)
    assert ours.policy_revision == PolicySource.load().revision


def test_the_rule_catalogue_agrees_with_the_rego(embedded):
    """policies.rules validates tenant data and waivers; every rule the policy reports is in it
    at the same baseline level."""
    from policies.rules import RULES

    seen = {}
    for _, value, *_ in DECISION_TABLE:
        if "rule_levels" in value.get("tenant", {}).get("policy", {}):
            continue  # raised levels are not the baseline
        for v in embedded.decide(DEFAULT_ENTRYPOINT, value).violations:
            if v["rule"] != "baseline.metrics_thresholds" or value.get("stage") != "development":
                seen[v["rule"]] = v["level"]
    assert set(seen) == set(RULES)
    assert all(RULES[rule][0] == level for rule, level in seen.items()), seen


def test_messages_name_the_values(embedded):
    decision = embedded.decide(DEFAULT_ENTRYPOINT, case(version__gpus={"h100": 5}, metrics={"accuracy": 0.5}))
    messages = {v["rule"]: v["message"] for v in decision.violations}
    assert messages["baseline.gpu_quota"] == \
        "version needs 5 h100 GPU(s); tenant quota (nominal + borrowing) is 4"
    assert messages["baseline.metrics_thresholds"] == "metric accuracy is 0.5, below the threshold 0.9"
    assert {v["level"] for v in decision.violations} == {"hard-mandatory", "soft-mandatory"}
    assert decision.enforcement == {"advisory": 0, "soft-mandatory": 1, "hard-mandatory": 1, "pending": 0, "exempt": 0}


# Fail closed ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [["not", "an", "object"], {"x": float("nan")}, {"x": {1, 2}}, None])
def test_malformed_input_is_a_deny(embedded, bad):
    decision = embedded.decide(DEFAULT_ENTRYPOINT, bad)
    assert decision.allow is False and decision.error


def test_undefined_entrypoint_is_a_deny(embedded):
    decision = embedded.decide("neocloud/platform/promotion/no_such_rule", GOOD)
    assert decision.allow is False
    assert "undefined" in decision.error
    decision = embedded.decide("../etc/passwd", GOOD)
    assert decision.allow is False and "Entrypoint" in decision.error


def test_syntax_error_in_a_candidate_policy_names_file_and_line(tmp_path):
    candidate = tmp_path / "platform"
    candidate.mkdir()
    text = (ROOT / "policies/rego/platform/promotion.rego").read_text()
    text = text.replace("decision := {", "decision := {{", 1)
    (candidate / "promotion.rego").write_text(text)
    line = text[: text.index("decision := {{")].count("\n") + 1
    decision = EmbeddedEngine(tmp_path).decide(DEFAULT_ENTRYPOINT, GOOD)
    assert decision.allow is False
    assert f"platform/promotion.rego:{line}:" in decision.error, decision.error


def test_an_engine_exception_is_a_deny(monkeypatch):
    import regopy

    engine = EmbeddedEngine()
    assert engine.decide(DEFAULT_ENTRYPOINT, GOOD).allow is True

    def explode(self, bundle, entrypoint):
        raise MemoryError("rego-cpp ran out of memory")

    monkeypatch.setattr(regopy.Interpreter, "query_bundle_entrypoint", explode)
    decision = engine.decide(DEFAULT_ENTRYPOINT, GOOD)
    assert decision.allow is False and "out of memory" in decision.error


def test_a_slow_embedded_decision_is_a_deny():
    decision = EmbeddedEngine(timeout_seconds=0).decide(DEFAULT_ENTRYPOINT, GOOD)
    assert decision.allow is False and "limit" in decision.error


@pytest.mark.parametrize("result", [None, True, {"allow": "yes", "violations": []}, {"allow": True},
                                    {"allow": True, "violations": [{"rule": "x", "level": "fatal", "message": "m",
                                                                    "pending": False}]}])
def test_a_malformed_result_is_a_deny(result):
    decision = interpret(result, engine="t", revision="r", decision_id="d", started=time.perf_counter())
    assert decision.allow is False and "malformed" in decision.error


def test_allow_next_to_a_blocking_violation_is_a_deny():
    result = {"allow": True, "violations": [{"rule": "x", "level": "soft-mandatory", "message": "m", "pending": False}]}
    assert interpret(result, engine="t", revision="r", decision_id="d", started=time.perf_counter()).allow is False


def test_one_interpreter_per_thread_under_concurrency(embedded):
    results, errors = [], []

    def worker(i):
        try:
            for _ in range(20):
                value = case(version__gpus={"h100": i % 6})
                results.append((i % 6 <= 4, embedded.decide(DEFAULT_ENTRYPOINT, value).allow))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 160 and all(expected == got for expected, got in results)


def test_embedded_warm_latency(embedded, capsys):
    embedded.decide(DEFAULT_ENTRYPOINT, GOOD)
    timings = []
    for _ in range(200):
        started = time.perf_counter()
        embedded.decide(DEFAULT_ENTRYPOINT, GOOD)
        timings.append((time.perf_counter() - started) * 1000)
    p50 = statistics.median(timings)
    with capsys.disabled():
        print(f"\nembedded warm decision: p50 {p50:.2f} ms, p95 {sorted(timings)[189]:.2f} ms")
    assert p50 < 50


# The `policy` command ------------------------------------------------------------------


def test_rego_unit_tests_pass_on_real_opa():
    results = run_rego_tests()
    assert len(results) >= 10
    assert all(r.passed for r in results), [r for r in results if not r.passed]


def test_policy_test_command_passes_and_fails(tmp_path):
    out = io.StringIO()
    call_command("policy", "test", stdout=out)
    assert "0 failed" in out.getvalue() and "PASS neocloud.platform.promotion_test.test_unsigned_artifact_denies" \
        in out.getvalue()

    candidate = tmp_path / "platform"
    candidate.mkdir()
    (candidate / "x.rego").write_text("package neocloud.x\n\nallow := false\n")
    (candidate / "x_test.rego").write_text(
        "package neocloud.x_test\n\nimport data.neocloud.x\n\n"
        "test_allow if {\n\tx.allow\n}\n\ntest_deny if {\n\tnot x.allow\n}\n\ntodo_later if {\n\tx.allow\n}\n")
    out = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("policy", "test", "--dir", str(tmp_path), stdout=out)
    assert exited.value.code == 1
    assert "FAIL neocloud.x_test.test_allow" in out.getvalue()
    assert "PASS neocloud.x_test.test_deny" in out.getvalue()
    assert "SKIP neocloud.x_test.todo_later" in out.getvalue()


def _policy_eval(tmp_path, content, *extra):
    path = tmp_path / "input.json"
    path.write_text(content)
    return subprocess.run([sys.executable, "manage.py", "policy", "eval", "--input", str(path),
                           "--engine", "embedded", *extra], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_policy_eval_exit_codes(tmp_path):
    allowed = _policy_eval(tmp_path, json.dumps(GOOD))
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["allow"] is True
    denied = _policy_eval(tmp_path, json.dumps(case(version__gpus={"h100": 9})))
    assert denied.returncode == 1
    assert "baseline.gpu_quota" in {v["rule"] for v in json.loads(denied.stdout)["violations"]}
    broken = _policy_eval(tmp_path, "{not json")
    assert broken.returncode == 2
    assert broken.stderr.strip().count("\n") == 0 and "not valid JSON" in broken.stderr
    undefined = _policy_eval(tmp_path, json.dumps(GOOD), "--entrypoint", "neocloud/platform/promotion/nothing")
    assert undefined.returncode == 2 and json.loads(undefined.stdout)["error"]


def test_bundle_is_deterministic_and_names_the_decision_revision(tmp_path, embedded, monkeypatch):
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    call_command("policy", "bundle", "-o", str(first), stdout=io.StringIO())
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)  # built an hour later, by the clock
    call_command("policy", "bundle", "-o", str(second), stdout=io.StringIO())
    assert first.read_bytes() == second.read_bytes()
    files = read_bundle(first.read_bytes())
    manifest = json.loads(files[".manifest"])
    assert manifest["roots"] == ["neocloud"]
    assert manifest["revision"] == embedded.decide(DEFAULT_ENTRYPOINT, GOOD).policy_revision
    assert "platform/promotion.rego" in files
    assert not any(name.endswith("_test.rego") for name in files)


def test_revision_changes_with_the_policy(tmp_path):
    source = PolicySource.load()
    (tmp_path / "platform").mkdir()
    text = source.modules["platform/promotion.rego"]
    (tmp_path / "platform/promotion.rego").write_text(text + "\n# changed\n")
    assert PolicySource.load(tmp_path).revision != source.revision
    assert build_bundle(PolicySource.load(tmp_path)) != build_bundle(source)


# The OPA server adapter, against a TEST DOUBLE speaking OPA's REST data API ------------

BUNDLE_TOKEN = "test-bundle-token-" + secrets.token_urlsafe(32)


class OpaRestDouble:
    """TEST DOUBLE of an OPA server pointed at the platform's bundle service.

    Like a real OPA it has no policy of its own: ``poll()`` pulls ``bundle_url`` over HTTP with
    the bearer token and ``If-None-Match: <last ETag>``; a 200 loads the bundle's modules into
    the real OPA engine and remembers the ``.manifest`` revision, a 304 (or a failed pull) keeps
    what it has. It answers ``POST /v1/data/<path>`` as OPA does: ``{"result": ..., "decision_id":
    ...}``, without ``result`` when undefined (always, before the first bundle), and with
    ``provenance.bundles.neocloud.revision`` when asked with ``?provenance``.
    ``delay`` makes it slow; ``undefined`` makes every answer undefined."""

    def __init__(self, bundle_url, *, token=None, delay=0.0, undefined=False):
        self.bundle_url, self.token = bundle_url, token
        self.engine, self.revision, self.etag = None, None, None
        self.delay, self.undefined, self.requests, self.pulls = delay, undefined, [], []
        self._engines = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                double.requests.append((self.path, body))
                time.sleep(double.delay)
                path, _, query = self.path.partition("?")
                path = path.removeprefix("/v1/data/").strip("/").replace("/", ".")
                answer = {"decision_id": f"opa-{len(double.requests)}"}
                engine = double.engine
                if engine is not None and not double.undefined:
                    try:
                        answer["result"] = engine.eval_document(path, body.get("input"))
                    except Exception:
                        pass  # undefined: OPA answers without "result"
                # OPA's boolean query parameters: present and empty, or "true" in any case.
                asked = parse_qs(query, keep_blank_values=True).get("provenance", [])
                if double.revision and any(v == "" or v.lower() == "true" for v in asked):
                    answer["provenance"] = {"bundles": {"neocloud": {"revision": double.revision}}}
                data = json.dumps(answer).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def poll(self) -> int:
        """One bundle download, as OPA's bundle plugin does it; returns the HTTP status."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        response = requests.get(self.bundle_url, headers=headers, timeout=30)
        self.pulls.append((headers.get("If-None-Match"), response.status_code))
        if response.status_code == 200:
            files = read_bundle(response.content)
            manifest = json.loads(files.pop(".manifest"))
            modules = {name: data.decode("utf-8") for name, data in files.items() if name.endswith(".rego")}
            self._engines.append(opa_engine(PolicySource(root=Path("bundle"), modules=modules, tests={})))
            self.engine, self.revision, self.etag = self._engines[-1], manifest["revision"], response.headers["ETag"]
        return response.status_code

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        for engine in self._engines:
            engine.close()


@pytest.fixture
def bundle_url(live_server, settings):
    """The platform's bundle endpoint on a live server, with the token a real OPA would hold."""
    settings.POLICY_BUNDLE_TOKEN = BUNDLE_TOKEN
    return f"{live_server.url}/api/v1/policies/bundle"


@pytest.fixture
def opa_double(bundle_url):
    double = OpaRestDouble(bundle_url, token=BUNDLE_TOKEN)
    assert double.poll() == 200
    yield double
    double.close()


@pytest.mark.parametrize("name,value,allow,rules,pending", DECISION_TABLE[:8], ids=[c[0] for c in DECISION_TABLE[:8]])
def test_opa_server_engine_agrees_with_embedded(opa_double, embedded, name, value, allow, rules, pending):
    decision = OpaServerEngine(opa_double.url, timeout_seconds=5).decide(DEFAULT_ENTRYPOINT, value)
    ours = embedded.decide(DEFAULT_ENTRYPOINT, value)
    assert decision.error == ""
    assert (decision.allow, decision.violations) == (ours.allow, ours.violations) == (allow, ours.violations)
    assert decision.engine == "opa" and decision.decision_id.startswith("opa-")
    assert decision.policy_revision == ours.policy_revision == opa_double.revision
    path, body = opa_double.requests[-1]
    assert path == "/v1/data/neocloud/platform/promotion/decision?provenance=true" and body == {"input": value}


def test_opa_server_down_is_a_deny():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    decision = OpaServerEngine(f"http://127.0.0.1:{port}", timeout_seconds=2).decide(DEFAULT_ENTRYPOINT, GOOD)
    assert decision.allow is False and "ConnectionError" in decision.error
    assert str(port) not in decision.error and "127.0.0.1" not in decision.error  # configuration stays in the log


def test_opa_server_slow_is_a_deny(bundle_url):
    double = OpaRestDouble(bundle_url, token=BUNDLE_TOKEN, delay=1.5)
    try:
        assert double.poll() == 200
        started = time.perf_counter()
        decision = OpaServerEngine(double.url, timeout_seconds=0.3).decide(DEFAULT_ENTRYPOINT, GOOD)
        assert time.perf_counter() - started < 1.4
        assert decision.allow is False and "Timeout" in decision.error
    finally:
        double.close()


def test_opa_server_without_result_is_a_deny(bundle_url):
    double = OpaRestDouble(bundle_url, token=BUNDLE_TOKEN, undefined=True)
    try:
        assert double.poll() == 200
        decision = OpaServerEngine(double.url, timeout_seconds=2).decide(DEFAULT_ENTRYPOINT, GOOD)
        assert decision.allow is False and "no result" in decision.error
        assert decision.decision_id == "opa-1"
    finally:
        double.close()


def test_opa_server_undefined_rule_is_a_deny(opa_double):
    decision = OpaServerEngine(opa_double.url, timeout_seconds=2).decide("neocloud/platform/promotion/nope", GOOD)
    assert decision.allow is False and "no result" in decision.error


def ask(double, entrypoint=DEFAULT_ENTRYPOINT, value=GOOD, query="provenance"):
    """What the double answers on the wire."""
    return requests.post(f"{double.url}/v1/data/{entrypoint}?{query}", json={"input": value}, timeout=10).json()


def test_the_double_decides_nothing_before_it_has_pulled_a_bundle(bundle_url):
    double = OpaRestDouble(bundle_url, token=BUNDLE_TOKEN)
    try:
        assert ask(double) == {"decision_id": "opa-1"}  # undefined, and no bundle to name
        decision = OpaServerEngine(double.url, timeout_seconds=5).decide(DEFAULT_ENTRYPOINT, GOOD)
        assert decision.allow is False and "no result" in decision.error
        # Only the platform's bundle endpoint gives it policies, and only with the token.
        double.token = "test-bundle-token-wrong-" + secrets.token_urlsafe(32)
        assert double.poll() == 401 and double.engine is None
        double.token = BUNDLE_TOKEN
        assert double.poll() == 200
        assert OpaServerEngine(double.url, timeout_seconds=5).decide(DEFAULT_ENTRYPOINT, GOOD).allow is True
    finally:
        double.close()


def test_a_304_keeps_the_revision_and_a_new_policy_replaces_it(opa_double, tmp_path, monkeypatch):
    first = opa_double.revision
    assert first == PolicySource.load().revision and opa_double.etag == f'"{first}"'
    assert opa_double.poll() == 304
    assert opa_double.pulls == [(None, 200), (f'"{first}"', 304)]
    answer = ask(opa_double)
    assert opa_double.revision == first and answer["result"]["allow"] is True
    assert answer["provenance"] == {"bundles": {"neocloud": {"revision": first}}}
    assert "provenance" not in ask(opa_double, query="")  # only when asked, as OPA does
    assert "result" not in ask(opa_double, "neocloud/extra/answer")

    # The platform's policy changes: the next poll downloads and activates it.
    candidate = tmp_path / "rego"
    shutil.copytree(ROOT / "policies/rego", candidate)
    (candidate / "extra.rego").write_text("package neocloud.extra\n\nanswer := 42\n")
    monkeypatch.setattr("policies.bundle.REGO_DIR", candidate)
    assert opa_double.poll() == 200
    assert opa_double.revision == PolicySource.load(candidate).revision != first
    answer = ask(opa_double, "neocloud/extra/answer")
    assert answer["result"] == 42 and answer["provenance"]["bundles"]["neocloud"]["revision"] == opa_double.revision


def test_opa_server_engine_records_opa_decision_id_and_revision(opa_double, world, settings, monkeypatch):
    from policies import engines
    from policies.models import PolicyDecision
    from policies.services import policy_decide

    settings.POLICY_ENGINE, settings.OPA_URL = "opa", opa_double.url
    monkeypatch.setattr(engines, "_engines", {})  # no engine cached from another configuration
    row = policy_decide(actor=world.a.developer, tenant=world.a.tenant, entrypoint=DEFAULT_ENTRYPOINT, input=GOOD)
    stored = PolicyDecision.objects.using("owner").get(pk=row.pk)
    assert (stored.engine, stored.allow, stored.error) == ("opa", True, "")
    assert stored.engine_decision_id == f"opa-{len(opa_double.requests)}"
    assert stored.policy_revision == opa_double.revision


# Decisions stored and audited ----------------------------------------------------------


@pytest.mark.embedded
def test_policy_decide_stores_and_audits(world):
    from audit.hashing import canonical_json
    from audit.models import AuditEvent
    from policies.models import PolicyDecision
    from policies.services import input_digest, policy_decide

    allowed = policy_decide(actor=world.a.developer, tenant=world.a.tenant, entrypoint=DEFAULT_ENTRYPOINT, input=GOOD)
    denied = policy_decide(actor=world.a.developer, tenant=world.a.tenant, entrypoint=DEFAULT_ENTRYPOINT,
                           input=case(version__gpus={"h100": 9}))
    rows = {r.decision_id: r for r in PolicyDecision.objects.using("owner").all()}
    assert set(rows) == {allowed.decision_id, denied.decision_id}
    stored = rows[allowed.decision_id]
    assert stored.allow is True and stored.tenant_id == world.a.tenant.pk and stored.engine == "embedded"
    assert stored.policy_revision == PolicySource.load().revision
    import hashlib
    assert stored.input_digest == input_digest(GOOD) == "sha256:" + hashlib.sha256(canonical_json(GOOD)).hexdigest()
    assert rows[denied.decision_id].allow is False
    assert "baseline.gpu_quota" in {v["rule"] for v in rows[denied.decision_id].violations}
    events = list(AuditEvent.objects.using("owner").filter(action="policy.decide").order_by("id"))
    assert [(e.target_id, e.outcome) for e in events] == [(str(allowed.decision_id), "success"),
                                                          (str(denied.decision_id), "denied")]
    assert events[0].tenant == world.a.tenant.slug and events[0].data["input_digest"] == stored.input_digest


@pytest.mark.embedded
def test_policy_decisions_are_immutable(world):
    from django.db import IntegrityError, InternalError, OperationalError, ProgrammingError, transaction

    from policies.models import PolicyDecision
    from policies.services import policy_decide

    row = policy_decide(actor=world.a.developer, tenant=world.a.tenant, entrypoint=DEFAULT_ENTRYPOINT, input=GOOD)
    with pytest.raises((IntegrityError, InternalError, OperationalError, ProgrammingError)):
        with transaction.atomic(using="owner"):
            PolicyDecision.objects.using("owner").filter(pk=row.pk).update(allow=False)
    assert PolicyDecision.objects.using("owner").get(pk=row.pk).allow is True


def test_policy_decide_refuses_outsiders_and_stores_engine_errors(world):
    from audit.models import AuditEvent
    from policies.models import PolicyDecision
    from policies.services import policy_decide
    from tenants.errors import Forbidden, Invalid, NotFound

    with pytest.raises((NotFound, Forbidden)):
        policy_decide(actor=world.b.developer, tenant=world.a.tenant, entrypoint=DEFAULT_ENTRYPOINT, input=GOOD)
    with pytest.raises(Forbidden):
        policy_decide(actor=world.a.developer, tenant=None, entrypoint=DEFAULT_ENTRYPOINT, input=GOOD)
    with pytest.raises(Invalid):
        policy_decide(actor=world.a.developer, tenant=world.a.tenant, entrypoint=DEFAULT_ENTRYPOINT, input=[1])
    assert not PolicyDecision.objects.using("owner").exists()
    failed = policy_decide(actor=world.a.developer, tenant=world.a.tenant,
                           entrypoint="neocloud/platform/promotion/nope", input=GOOD)
    assert failed.allow is False and failed.error
    assert AuditEvent.objects.using("owner").get(action="policy.decide").outcome == "failed"
    platform = policy_decide(actor=world.platform_admin, tenant=None, entrypoint=DEFAULT_ENTRYPOINT, input=GOOD)
    assert PolicyDecision.objects.using("owner").get(pk=platform.pk).tenant_id is None


@pytest.mark.postgres
def test_policy_decisions_are_row_level_secured(world):
    from django.db import connections, transaction

    assert connections["default"].vendor == "postgresql"

    from policies.models import PolicyDecision
    from policies.services import policy_decide
    from tenants.db import bind_rls

    policy_decide(actor=world.a.developer, tenant=world.a.tenant, entrypoint=DEFAULT_ENTRYPOINT, input=GOOD)
    with transaction.atomic():
        bind_rls(tenant_id=world.b.tenant.pk)
        assert PolicyDecision.objects.count() == 0
    with transaction.atomic():
        bind_rls(tenant_id=world.a.tenant.pk)
        assert PolicyDecision.objects.count() == 1


def test_an_opa_server_on_another_bundle_revision_is_a_deny(opa_double):
    """The platform moved on (or OPA serves something else): OPA's answer names the bundle it
    decided under, and a decision under any revision but the platform's is a deny."""
    expected = "sha256:" + "0" * 64
    decision = OpaServerEngine(opa_double.url, timeout_seconds=5, revision=expected).decide(DEFAULT_ENTRYPOINT, GOOD)
    assert decision.allow is False and decision.policy_revision == opa_double.revision
    assert f"decided under bundle revision {opa_double.revision}, not the platform's {expected}" in decision.error
    path, _ = opa_double.requests[-1]
    assert path.endswith("?provenance=true")
