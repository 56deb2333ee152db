"""Rego the platform did not ship may call only the builtins on the allow-list.

The check walks each candidate module as the engine parsed it, before anything compiles.
The list ships as an OPA capabilities file (policies/capabilities.json); the catalogue it is
checked against is OPA's own capabilities file for v1.20.2, vendored under tests/data/opa.
"""

import json
import os
import secrets

import pytest

from audit.models import AuditEvent
from policies.sandbox import (CAPABILITIES, RESERVED_ROOTS, BuiltinRefused, CheckFailed, allowed_builtins,
                              check_module_sets, check_modules, run_bounded)

from tests.support import ROOT
from tests.support.routes import walk_routes
from .test_api import assert_error
from .test_policy_api import EVALUATE, GOOD

CATALOGUE = json.loads((ROOT / "tests/data/opa/capabilities-v1.20.2.json").read_text())
# Each reads the process, its environment, files, the network, the clock or a random source,
# or writes into a response: none may be on the list.
NEVER = {"http.send", "opa.runtime", "print", "trace", "time.now_ns", "rand.intn", "uuid.rfc4122", "uuid.parse",
         "net.lookup_ip_addr", "io.jwt.decode_verify", "io.jwt.encode_sign", "io.jwt.encode_sign_raw",
         "rego.parse_module", "rego.metadata.chain", "rego.metadata.rule", "providers.aws.sign_req",
         "crypto.x509.parse_and_verify_certificates", "time.format", "time.date", "time.clock"}


def calling(name: str) -> str:
    return f"package cand\nimport rego.v1\n\nresult := {name}(1, 2) if {{\n  true\n}}\n"


def test_every_builtin_of_the_opa_catalogue_not_on_the_list_is_refused_by_the_walk():
    names = [builtin["name"] for builtin in CATALOGUE["builtins"]]
    found = check_module_sets([{"cand/uses.rego": calling(name)} for name in names])  # one child for all
    allowed, refused = allowed_builtins(), []
    for name, refusal in zip(names, found, strict=True):
        if name in allowed:
            assert refusal is None, (name, refusal)
            continue
        assert refusal is not None, f"{name} is not on the list, yet the walk let it through"
        assert (refusal.builtin, refusal.path, refusal.line) == (name, "cand/uses.rego", 4), name
        refused.append(name)
    assert len(refused) == len(names) - len(allowed) > 80
    assert NEVER <= set(refused)


def test_the_shipped_capabilities_file_is_the_catalogues_declarations_of_the_allowed_builtins():
    shipped = json.loads(CAPABILITIES.read_text())
    catalogue = {entry["name"]: entry for entry in CATALOGUE["builtins"]}
    assert [entry["name"] for entry in shipped["builtins"]] == sorted(allowed_builtins())
    for entry in shipped["builtins"]:
        assert entry == catalogue[entry["name"]], entry["name"]  # OPA reads the same declaration
    assert not NEVER & allowed_builtins()
    assert shipped["future_keywords"] == CATALOGUE["future_keywords"]


def test_the_platforms_own_policy_uses_only_listed_builtins():
    modules = {str(p.relative_to(ROOT / "policies/rego")): p.read_text()
               for p in (ROOT / "policies/rego").rglob("*.rego") if not p.name.endswith("_test.rego")}
    check_modules(modules)


@pytest.mark.parametrize("source, builtin, line", [
    ('x := 1 if {\n  y := http["send"]({"url": "http://169.254.169.254/"})\n}\n', "http.send", 4),
    ('x if {\n  y := upper("a") with upper as opa.runtime\n}\n', "opa.runtime", 4),
    ('opa := {"runtime": 1}\n\nz := opa.runtime()\n', "opa.runtime", 5),
    ('x := [y | some i in [1]; y := net.lookup_ip_addr("example.org")]\n', "net.lookup_ip_addr", 3),
    ('f(v) := trace(v)\n', "trace", 3),
    ('print.y := 5\n\nx := 1 if {\n  print("out")\n}\n', "print", 6),
    ('import data.lib as http\n\nx := http.send({})\n', "http.send", 5),
], ids=["bracketed-name", "with-replacement", "behind-a-rule-of-that-name", "in-a-comprehension", "in-a-function",
        "behind-a-rule-named-print", "behind-an-alias-named-http"])
def test_a_builtin_is_refused_however_it_is_written(source, builtin, line):
    with pytest.raises(BuiltinRefused) as caught:
        check_modules({"cand/m.rego": "package cand\nimport rego.v1\n" + source})
    assert (caught.value.builtin, caught.value.line, caught.value.verb) == (builtin, line, "calls")


@pytest.mark.parametrize("source, imported", [
    ("import opa.runtime\n\nx := runtime().env\n", "opa.runtime"),
    ("import opa as o\n\nx := o.runtime().env\n", "opa"),
    ("import time as t\n\nx := t.now_ns()\n", "time"),
    ("import opa.runtime as r\n\nf := 1\n\nx := y if {\n  y := f with f as r\n}\n", "opa.runtime"),
])
def test_an_import_of_a_builtin_is_refused_whatever_it_is_called(source, imported):
    with pytest.raises(BuiltinRefused) as caught:
        check_modules({"cand/m.rego": "package cand\nimport rego.v1\n" + source})
    assert (caught.value.builtin, caught.value.line, caught.value.verb) == (imported, 3, "imports")
    assert str(caught.value).startswith(f"cand/m.rego:3: imports {imported}, which candidate policies may not import")


def test_the_reserved_roots_are_the_first_segments_of_every_builtin_of_the_catalogue():
    assert RESERVED_ROOTS == {builtin["name"].split(".")[0] for builtin in CATALOGUE["builtins"]}


def test_functions_the_candidate_defines_and_strings_that_look_like_calls_are_not_refused():
    check_modules({"cand/m.rego": 'package cand\nimport rego.v1\nimport data.lib as lib\nimport input.stage\n\n'
                                  'f(v) := v\nw := f(1)\nz := data.cand.f(2)\ns := lib.send(3)\n'
                                  'q := concat(") (opa.runtime()", ["a"])\n'})


@pytest.mark.embedded
def test_the_api_refuses_a_candidate_calling_an_unlisted_builtin_naming_it_and_records_the_attempt(world, api):
    evil = ("package neocloud.platform.promotion\nimport rego.v1\n\n"
            "decision := {\"allow\": true, \"violations\": [], \"env\": opa.runtime().env}\n")
    response = api(world.a.developer).post(EVALUATE, {"input": GOOD, "policy": {"platform/promotion.rego": evil}})
    body = assert_error(response, 400, "policy_builtin_refused")
    assert body["detail"].startswith("platform/promotion.rego:4: calls opa.runtime, which candidate policies may not")
    assert body["fields"] == {"policy.platform/promotion.rego": [body["detail"]]}
    [event] = AuditEvent.objects.using("owner").filter(action="policy.candidate_refused")
    assert (event.actor_name, event.outcome) == (world.a.developer.username, "denied")
    assert {k: event.data[k] for k in ("builtin", "how", "file", "line")} == {
        "builtin": "opa.runtime", "how": "calls", "file": "platform/promotion.rego", "line": 4}
    assert list(event.data["modules"]) == ["platform/promotion.rego"]
    assert not AuditEvent.objects.using("owner").filter(action="policy.candidate_evaluate").exists()


def policy_routes():
    """Every route of the policy endpoints, found in the URL conf."""
    return [(route, entry) for route, entry in walk_routes()
            if "polic" in route or "waiver" in route or (entry.name or "").startswith(("api-policy", "policy"))]


def test_a_canary_in_the_environment_reaches_no_response_of_any_policy_endpoint(world, api, monkeypatch):
    canary = f"canary-{secrets.token_hex(16)}"
    monkeypatch.setenv("NEOCLOUD_TEST_CANARY", canary)
    assert os.environ["NEOCLOUD_TEST_CANARY"] == canary
    attempts = [
        {"input": GOOD, "policy": {"p/leak.rego": "package neocloud.platform.promotion\nimport rego.v1\n\n"
                                                  "decision := {\"allow\": opa.runtime().env}\n"}},
        {"input": GOOD, "entrypoint": "neocloud/leak/env",
         "policy": {"p/leak.rego": "package neocloud.leak\nimport rego.v1\n\nenv := opa.runtime().env\n"}},
        {"input": GOOD, "entrypoint": "neocloud/leak/env",
         "policy": {"p/leak.rego": "package neocloud.leak\nimport rego.v1\n\nenv := object.get(input, 1, 2, 3)\n"}},
        {"input": GOOD, "policy": {"p/leak.rego": "package neocloud.leak\nenv := "}},
        {"input": {"NEOCLOUD_TEST_CANARY": "$NEOCLOUD_TEST_CANARY"}},
    ]
    answers = [api(world.a.developer).post(EVALUATE, attempt) for attempt in attempts]
    assert [a.status_code for a in answers] == [400, 400, 200, 400, 200], [a.content[:300] for a in answers]
    slug = world.a.tenant.slug
    for route, _ in policy_routes():
        path = "/" + route.replace("<slug:tenant>", slug).replace("<int:waiver>", "1")
        for client in (api(world.a.admin), api(world.platform_admin)):
            answers += [client.get(path), client.post(path, {"policy": attempts[0]["policy"], "input": GOOD})]
    assert len(answers) > 10
    for answer in answers:
        assert canary.encode() not in answer.content


def test_the_check_is_stopped_at_its_time_and_memory_bounds_not_after():
    assert run_bounded("tests.support.hog", {"hold_bytes": 1024}, seconds=10, memory_bytes=2 ** 30) == {"held": 1024}
    with pytest.raises(CheckFailed, match=r"^passed its 64 MiB bound$"):
        run_bounded("tests.support.hog", {"hold_bytes": 512 * 2 ** 20, "run_seconds": 60}, seconds=60,
                    memory_bytes=64 * 2 ** 20)
    with pytest.raises(CheckFailed, match=r"^passed its 0.5 s bound$"):
        run_bounded("tests.support.hog", {"run_seconds": 60}, seconds=0.5, memory_bytes=2 ** 30)


def test_a_candidate_evaluation_is_stopped_at_its_bound_and_is_a_deny(world, api, settings):
    settings.POLICY_TIMEOUT_SECONDS = 0.5
    endless = ("package neocloud.slow\nimport rego.v1\n\n"
               "decision := {\"allow\": count([1 | some i in numbers.range(1, 1000); "
               "some j in numbers.range(1, 1000); i * j == -1]) == 0, \"violations\": []}\n")
    response = api(world.a.developer).post(EVALUATE, {"input": GOOD, "entrypoint": "neocloud/slow/decision",
                                                      "policy": {"slow.rego": endless}})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["allow"] is False and body["error"] == "Policy evaluation failed: it passed its 0.5 s bound, and was stopped."
    [event] = AuditEvent.objects.using("owner").filter(action="policy.candidate_evaluate")
    assert event.data["error"] is True and event.data["allow"] is False
