"""Cross-tenant references in request fields, derived from the published OpenAPI schema.

The route matrix (test_cross_tenant) fills path parameters; this module covers the fields of
bodies and query strings that name an object or bytes: a digest, a list or map of digests, a
service account, a workflow, a user, an audit actor or target. Every such field of every
operation is found in the schema, and each is tried by a member of acme-bank holding the
name or digest of st-mary-hospital's object. None may reach it: a write is refused and
changes nothing of st-mary-hospital's, a filter finds nothing of it. A new reference field
fails here until CASES says how to try it.
"""

import hashlib
import json

import pytest

from tests.support.clients import issue_token
from .test_api import assert_error
from .test_cross_tenant import tenant_rows
from .test_promotions import Gate

DIGEST_PATTERN = "^sha256:[0-9a-f]{64}$"
# Request fields that name something rather than describe it.
REFERENCE_NAMES = {"digest", "files", "artifacts", "metrics_artifact", "spec", "service_account", "workflow",
                   "username", "owner", "actor", "target", "tenant"}


def _schema():
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


def reference_fields() -> set[tuple[str, str, str]]:
    """(METHOD, path, field) for every body or query field of the schema that is a reference:
    named as one, ending in ``_id``, or holding digests by its pattern."""
    schema = _schema()
    components = schema["components"]["schemas"]

    def resolve(node):
        return components[node["$ref"].split("/")[-1]] if "$ref" in node else node

    found = set()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            fields = [(p["name"], p.get("schema", {})) for p in operation.get("parameters", []) if p["in"] == "query"]
            for content in operation.get("requestBody", {}).get("content", {}).values():
                body = resolve(content.get("schema", {}))
                fields += [(name, resolve(prop)) for name, prop in body.get("properties", {}).items()
                           if not resolve(prop).get("readOnly")]
            for name, prop in fields:
                patterns = {prop.get("pattern"), (prop.get("items") or {}).get("pattern")}
                if name in REFERENCE_NAMES or name.endswith("_id") or DIGEST_PATTERN in patterns:
                    found.add((method.upper(), path, name))
    return found


# The scene: st-mary-hospital's objects, and acme-bank's own, so every other field is valid.


@pytest.fixture
def scene(world, api, tmp_path):
    gate = Gate(world, api, tmp_path)  # acme-bank: quota, trust, policy data
    number = gate.version()
    theirs = api(issue_token(world.b.developer, world.b.tenant))
    records = b"patient,score\n1,0.2\n"
    digest = "sha256:" + hashlib.sha256(records).hexdigest()
    assert theirs.client.generic(
        "PUT", f"/api/v1/tenants/st-mary-hospital/artifacts/records/?digest={digest}&kind=dataset&region=us",
        data=records, content_type="application/octet-stream", **theirs.headers).status_code == 201
    metrics = json.dumps({"accuracy": 0.99}).encode()
    metrics_digest = "sha256:" + hashlib.sha256(metrics).hexdigest()
    assert theirs.client.generic(
        "PUT", f"/api/v1/tenants/st-mary-hospital/artifacts/eval/?digest={metrics_digest}&kind=metrics&region=us",
        data=metrics, content_type="application/octet-stream", **theirs.headers).status_code == 201
    blob = b"their weights"
    blob_digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    assert theirs.client.generic("PUT", f"/api/v1/tenants/st-mary-hospital/blobs/{blob_digest}", data=blob,
                                 content_type="application/octet-stream", **theirs.headers).status_code == 201
    assert theirs.post("/api/v1/tenants/st-mary-hospital/service-accounts/",
                       {"name": "their-pipeline", "role": "developer"}).status_code == 403  # tokens cannot
    assert api(world.b.developer).post("/api/v1/tenants/st-mary-hospital/service-accounts/",
                                       {"name": "their-pipeline", "role": "developer"}).status_code == 201
    assert theirs.post("/api/v1/tenants/st-mary-hospital/workflows/claims/versions/", {"spec": {
        "name": "claims", "steps": [{"name": "score", "command": ["python", "score.py"]}]}}).status_code == 201
    return {"gate": gate, "number": number, "digest": digest, "metrics_digest": metrics_digest,
            "blob_digest": blob_digest, "world": world, "api": api}


# Each case: (METHOD, path, field) -> a function making acme-bank's request with
# st-mary-hospital's value in that field, and checking the answer.

T = "/api/v1/tenants/{tenant}"


def _versions(s, **body):
    return s["gate"].developer.post("/api/v1/tenants/acme-bank/workflows/fraud-detector/versions/", body)


def _assert_refused(response):
    assert response.status_code in (400, 404), response.content
    assert b"st-mary" not in response.content


def _assert_nothing_found(response):
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["results"] == [], body


def spec_inputs(s):
    from .test_promotions import SPEC

    spec = {**SPEC, "inputs": [{**SPEC["inputs"][0], "digest": s["digest"]}]}
    _assert_refused(_versions(s, spec=spec))


def version_artifacts(s):
    _assert_refused(_versions(s, spec={"name": "fraud-detector", "steps": [{"name": "t", "command": ["x"]}]},
                              artifacts=[s["digest"]]))


def assembled_files(s):
    _assert_refused(s["gate"].developer.post(
        f"/api/v1/tenants/acme-bank/artifacts/stolen/?digest={s['blob_digest']}&kind=model&region=eu",
        {"files": {"weights.bin": s["blob_digest"]}}))


def upload_digest(s):
    developer = s["gate"].developer
    response = developer.client.generic(
        "PUT", f"/api/v1/tenants/acme-bank/artifacts/records/?digest={s['digest']}&kind=dataset&region=eu",
        data=b"not their bytes", content_type="application/octet-stream", **developer.headers)
    _assert_refused(response)


def artifact_filter(s):
    _assert_nothing_found(s["gate"].developer.get(f"/api/v1/tenants/acme-bank/artifacts/?digest={s['digest']}"))


def promotion_metrics(s):
    _assert_refused(s["gate"].developer.post("/api/v1/tenants/acme-bank/promotions/", {
        "workflow": "fraud-detector", "version": s["number"], "stage": "development",
        "metrics_artifact": s["metrics_digest"]}))


def _same_as_for_a_name_nobody_has(post):
    """st-mary's workflow name gets exactly the answer a name no tenant uses gets."""
    theirs, nobodys = post("claims"), post("no-such-workflow")
    assert theirs.status_code in (400, 404), theirs.content
    assert theirs.content.replace(b"claims", b"no-such-workflow") == nobodys.content


def promotion_workflow(s):
    _same_as_for_a_name_nobody_has(lambda name: s["gate"].developer.post(
        "/api/v1/tenants/acme-bank/promotions/", {"workflow": name, "version": 1, "stage": "development"}))


def run_workflow(s):
    _same_as_for_a_name_nobody_has(lambda name: s["gate"].developer.post(
        "/api/v1/tenants/acme-bank/runs/", {"workflow": name, "version": 1, "stage": "development"}))


def token_service_account(s):
    admin = s["api"](s["world"].a.developer)
    _assert_refused(admin.post("/api/v1/tenants/acme-bank/tokens/", {
        "name": "stolen", "expires_in_days": 1, "service_account": "their-pipeline"}))


def token_owner_filter(s):
    owner = s["world"].b.developer.username
    _assert_nothing_found(s["api"](s["world"].a.admin).get(f"/api/v1/tenants/acme-bank/tokens/?owner={owner}"))


def member_username_filter(s):
    username = s["world"].b.developer.username
    _assert_nothing_found(s["api"](s["world"].a.admin).get(f"/api/v1/tenants/acme-bank/members/?username={username}"))


def member_add_username(s):
    """People are platform-wide: adding st-mary's developer to acme-bank gives them an acme-bank
    membership and nothing of st-mary's (checked by the test's unchanged rows)."""
    response = s["api"](s["world"].a.admin).post("/api/v1/tenants/acme-bank/members/", {
        "username": s["world"].b.developer.username, "role": "auditor"})
    assert response.status_code == 201, response.content
    assert response.json()["tenant"] == "acme-bank"


def admin_proposal_username(s):
    """Proposing st-mary's developer as acme-bank's admin proposes an acme-bank membership, and
    touches nothing of st-mary's (checked by the test's unchanged rows)."""
    response = s["api"](s["world"].a.admin).post("/api/v1/tenants/acme-bank/admin-proposals/", {
        "username": s["world"].b.developer.username})
    assert response.status_code == 202, response.content
    assert response.json()["diff"]["fields"]["admins"]["after"] == sorted(
        [s["world"].a.admin.username, s["world"].a.admin2.username, s["world"].b.developer.username])


def audit_filters(path):
    def check(s):
        world = s["world"]
        for query in (f"tenant={world.b.tenant.slug}", f"actor={world.b.developer.username}",
                      "target=claims", f"target={s['digest']}"):
            _assert_nothing_found(s["api"](world.a.admin).get(f"{path}?{query}"))
    return check


CASES = {
    ("POST", f"{T}/workflows/{{workflow}}/versions/", "spec"): spec_inputs,
    ("POST", f"{T}/workflows/{{workflow}}/versions/", "artifacts"): version_artifacts,
    ("POST", f"{T}/artifacts/{{name}}/", "files"): assembled_files,
    ("POST", f"{T}/artifacts/{{name}}/", "digest"): assembled_files,
    ("PUT", f"{T}/artifacts/{{name}}/", "digest"): upload_digest,
    ("GET", f"{T}/artifacts/", "digest"): artifact_filter,
    ("POST", f"{T}/promotions/", "metrics_artifact"): promotion_metrics,
    ("POST", f"{T}/promotions/", "workflow"): promotion_workflow,
    ("POST", f"{T}/runs/", "workflow"): run_workflow,
    ("POST", f"{T}/tokens/", "service_account"): token_service_account,
    ("GET", f"{T}/tokens/", "owner"): token_owner_filter,
    ("GET", f"{T}/members/", "username"): member_username_filter,
    ("POST", f"{T}/members/", "username"): member_add_username,
    ("POST", f"{T}/admin-proposals/", "username"): admin_proposal_username,
    **{("GET", f"{T}/audit/events/", field): audit_filters("/api/v1/tenants/acme-bank/audit/events/")
       for field in ("actor", "target", "tenant")},
    **{("GET", "/api/v1/audit/events/", field): audit_filters("/api/v1/audit/events/")
       for field in ("actor", "target", "tenant")},
}


def test_every_reference_field_of_the_schema_has_a_cross_tenant_case():
    found = reference_fields()
    missing, stale = found - set(CASES), set(CASES) - found
    assert not missing, f"reference fields with no cross-tenant case: add them to CASES: {sorted(missing)}"
    assert not stale, f"CASES names fields the schema no longer has: {sorted(stale)}"


@pytest.mark.parametrize("key", sorted(CASES), ids=lambda key: f"{key[0]} {key[1]} {key[2]}")
def test_a_reference_to_another_tenants_object_reaches_nothing_of_it(scene, key):
    others = scene["world"].b.tenant.pk
    before = {table: [row for row in rows if row.get("tenant_id") == others]
              for table, rows in tenant_rows().items()}
    CASES[key](scene)
    after = {table: [row for row in rows if row.get("tenant_id") == others]
             for table, rows in tenant_rows().items()}
    assert after == before, f"{key}: st-mary-hospital's rows changed"
