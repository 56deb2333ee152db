"""The cross-tenant isolation matrix.

Every tenant-scoped route (API and console) is found by walking the URL conf: a route is
tenant-scoped when one of its path parameters is named ``tenant``. Each is requested with
every HTTP method its view allows, by a member of the other tenant (bearer token and
OTP-verified session) and by an outsider (session), with path parameters filled from the
first tenant's real objects. Every answer must be a 404 that is indistinguishable from the
404 for a tenant that does not exist, and no tenant row may change.

The scene is built once for the module and is read-only: every case checks the tenant
rows against the snapshot taken when it was built, so a case that changes it fails there.

A new route is covered automatically; a new path parameter fails the matrix until
``PATH_VALUES`` says how to fill it.
"""

import json
import re
from dataclasses import dataclass

import pytest
from django.test import Client

from tests.support.clients import issue_token, sign_in
from tests.support.people import make_world
from tests.support.routes import walk_routes
from tests.support.governance import update_governed

pytestmark = pytest.mark.embedded

MISSING_SLUG = "no-such-tenant-anywhere"

# Route discovery -----------------------------------------------------------------------

_PARAM = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>\w+)>")


@dataclass(frozen=True)
class Route:
    route: str  # the route as written in the URL conf, e.g. "api/v1/tenants/<slug:tenant>/"
    name: str
    view: type
    is_api: bool  # a DRF view (JSON errors, bearer tokens) rather than a console page
    params: tuple
    methods: tuple

    def __str__(self):
        return f"/{self.route}"


def _view_class(callback):
    """The class behind a URL pattern's callback: DRF sets ``cls``, Django CBVs ``view_class``."""
    return getattr(callback, "cls", None) or getattr(callback, "view_class", None)


def allowed_methods(view) -> tuple:
    """Methods the view answers: its http_method_names that it defines a handler for.

    HEAD rides on GET (Django's View.setup aliases it when the class has no ``head``);
    OPTIONS is kept, since every class-based view answers it and it too must not leak.
    """
    names = [m for m in view.http_method_names if m != "head" and hasattr(view, m)]
    if "head" in view.http_method_names and ("get" in names or hasattr(view, "head")):
        names.append("head")
    order = ["get", "head", "options", "post", "put", "patch", "delete", "trace"]
    return tuple(m.upper() for m in sorted(names, key=lambda m: order.index(m) if m in order else len(order)))


def discover_routes():
    """(tenant-scoped class-based routes, tenant-scoped routes whose methods cannot be told)."""
    routes, opaque = [], []
    for route, entry in walk_routes():
        params = tuple(m.group("name") for m in _PARAM.finditer(route))
        if "tenant" not in params:
            continue
        view = _view_class(entry.callback)
        if view is None:
            opaque.append(f"/{route}")
            continue
        routes.append(Route(route=route, name=entry.name or route, view=view,
                            is_api=hasattr(entry.callback, "cls"), params=params,
                            methods=allowed_methods(view)))
    return routes, opaque


ROUTES, OPAQUE_ROUTES = discover_routes()

# Filling path parameters ---------------------------------------------------------------

# Path-parameter name -> the first tenant's (world.a's) real object that fills it.
PATH_VALUES = {
    "tenant": lambda scene: scene.world.a.tenant.slug,
    "username": lambda scene: scene.world.a.developer.username,
    "account": lambda scene: scene.account.name,
    "token_id": lambda scene: scene.token.public_id,
    "flavor": lambda scene: scene.flavor.name,
    "workflow": lambda scene: scene.version.workflow.name,
    "number": lambda scene: scene.version.number,
    "name": lambda scene: scene.artifact.name,
    "digest": lambda scene: scene.artifact.digest,
    "promotion": lambda scene: scene.promotion.public_id,
    "override": lambda scene: scene.override.pk,
    "waiver": lambda scene: scene.waiver.pk,
    "proposal": lambda scene: scene.proposal.pk,
    "run": lambda scene: scene.run.public_id,
    "code": lambda scene: "eu-west1",  # a catalogue region
}


def fill(route: str, values: dict) -> str:
    """The concrete path for ``route``: every ``<converter:name>`` replaced from ``values``."""
    if route.startswith("^") or "(?P<" in route:
        pytest.fail(f"route /{route} is a regular expression: the matrix only fills path() routes")

    def replace(match):
        name = match.group("name")
        if name not in values:
            pytest.fail(f"route /{route} has parameter {name} that the matrix cannot fill: "
                        f"add it to PATH_VALUES in tests/test_cross_tenant.py")
        return str(values[name])

    return "/" + _PARAM.sub(replace, route)


# Request bodies: plausible payloads for writes, so a 404 is shown to come before any
# validation or domain rule. Keyed by URL name and method; anything else sends {}.
def api_payload(scene, name, method):
    w = scene.world
    return {
        ("api-tenant-detail", "PATCH"): {"status": "suspended"},
        ("api-member-list", "POST"): {"username": w.b.developer.username, "role": "tenant_admin"},
        ("api-member-detail", "PATCH"): {"role": "tenant_admin"},
        ("api-service-account-list", "POST"): {"name": "intruder", "role": "developer"},
        ("api-token-list", "POST"): {"name": "intruder", "expires_in_days": 1,
                                     "service_account": scene.account.name},
        ("api-quota-detail", "PUT"): {"nominal": 512, "borrowing_limit": 512},
        ("api-version-list", "POST"): {"spec": {**scene.version.spec, "description": "intruder"}},
        ("api-artifact-upload", "POST"): {"files": {"config.json": scene.artifact.digest}},
        ("api-promotion-list", "POST"): {"workflow": scene.version.workflow.name, "version": scene.version.number,
                                         "stage": "staging"},
        ("api-promotion-approve", "POST"): {"otp_token": "123456"},
        ("api-promotion-reject", "POST"): {"otp_token": "123456", "comment": "intruder"},
        ("api-promotion-overrides", "POST"): {"rule": "baseline.base_model_allowed", "justification": "intruder"},
        ("api-promotion-override-confirm", "POST"): {"otp_token": "123456"},
        ("api-policy-data", "PUT"): {"min_approvals": 5},
        ("api-waiver-list", "POST"): {"rule": "baseline.base_model_allowed", "reason": "intruder",
                                      "ticket_url": "https://tickets.example/1", "expires_at": "2099-01-01T00:00:00Z"},
        ("api-waiver-approve", "POST"): {"otp_token": "123456"},
        ("api-proposal-confirm", "POST"): {"otp_token": "123456", "diff_digest": scene.proposal.diff_digest},
        ("api-admin-proposal-list", "POST"): {"username": w.b.developer.username},
        ("api-run-list", "POST"): {"workflow": scene.version.workflow.name, "version": scene.version.number,
                                   "stage": "development"},
    }.get((name, method), {})


def console_form(scene, name):
    w = scene.world
    return {
        "tenant-member-add": {"username": w.b.developer.username, "role": "tenant_admin"},
        "tenant-member-role": {"role": "tenant_admin"},
        "tenant-service-account-add": {"name": "intruder", "role": "developer"},
        "tenant-token-issue": {"name": "intruder", "expires_in_days": "1", "service_account": ""},
        "promotions": {"workflow": scene.version.workflow.name, "version": scene.version.number, "stage": "staging"},
        "promotion": {"action": "withdraw"},
        "policy": {"action": "data", "min_approvals": "5", "rollback_min_approvals": "1"},
    }.get(name, {})


# The scene -----------------------------------------------------------------------------


@dataclass
class Scene:
    world: object
    account: object  # a service account in world.a
    token: object  # a live token of world.a (the service account's)
    foreign_token: str  # world.b's admin's bearer token (plaintext)
    flavor: object  # a GPU flavor world.a holds a quota for
    version: object  # version 1 of a workflow in world.a
    artifact: object  # a stored artifact of world.a
    promotion: object  # the promotion of that version to development
    override: object  # an override asked for on it
    waiver: object  # a waiver of world.a
    proposal: object  # an open proposal to loosen world.a's policy data
    run: object  # a pending run of that version
    own_token: str  # world.a's admin's bearer token (plaintext)
    rows: dict  # tenant_rows() when the scene was built


def on_default(obj):
    """The same row loaded through the app's own alias. The personas were made through
    ``owner``, and a model built from them (``ServiceAccount(tenant=...)``) would otherwise
    be saved through ``owner`` too, outside the domain function's transaction.
    auth_user and tenants_tenant carry no row-level security, so the app role reads them."""
    return type(obj).objects.using("default").get(pk=obj.pk)


@pytest.fixture(scope="module")
def scene(module_live_db):
    return build_scene()


def build_scene() -> Scene:
    """world.a with one of every object a route can name, and the tokens the matrix uses."""
    from tenants.services import service_account_create, token_issue

    world = make_world()

    developer, tenant = on_default(world.a.developer), on_default(world.a.tenant)
    account = service_account_create(actor=developer, tenant=tenant, name="nightly-build", role="developer")
    token, _ = token_issue(actor=developer, tenant=tenant, name="pipeline",
                           expires_in_days=30, service_account=account)
    issue_token(world.a.admin, world.a.tenant, name="a-admin-laptop")
    from tenants.services import gpu_flavor_create
    from tests.support.governance import set_quota
    from workflows.services import workflow_version_register

    admin = on_default(world.platform_admin)
    flavor = gpu_flavor_create(actor=admin, name="h100-80gb", memory_gb=80, billing_weight="1.0")
    set_quota(world, tenant, flavor, nominal=8, borrowing_limit=4)
    import hashlib
    import io

    from workflows.services import artifact_upload

    weights = b"model weights " * 1000
    artifact, _ = artifact_upload(actor=developer, tenant=tenant, name="base-model", kind="model", region="eu",
                                  digest="sha256:" + hashlib.sha256(weights).hexdigest(),
                                  declared_size=len(weights), stream=io.BytesIO(weights))
    from workflows import signing
    from workflows.store import get_store
    from workflows.trust import signature_attach, trust_config_update

    private_pem, public_pem = signing.generate_key_pair()
    update_governed(trust_config_update, tenant=tenant, proposer=on_default(world.a.admin),
                    confirmer=on_default(world.a.admin2), public_keys={"ci": public_pem.decode()})
    bundle = signing.sign_path(get_store().path_for(artifact.digest), private_key_pem=private_pem,
                                name=artifact.name)
    assert signature_attach(actor=developer, tenant=tenant, artifact=artifact, bundle=bundle.encode()).verified
    version, _ = workflow_version_register(actor=developer, tenant=tenant, artifact_digests=[artifact.digest], spec={
        "name": "fraud-detector",
        "steps": [{"name": "train", "command": ["python", "train.py"], "gpu": {"flavor": "h100-80gb", "count": 1}}]})
    from datetime import timedelta

    from django.utils import timezone

    from policies.models import Waiver
    from workflows.models import PromotionOverride
    from workflows.promotions import promotion_request

    promotion = promotion_request(actor=developer, tenant=tenant, version=version, stage="development")
    override = PromotionOverride.objects.using("owner").create(
        tenant=world.a.tenant, promotion_id=promotion.pk, rule="baseline.base_model_allowed", justification="j",
        requested_by=world.a.admin)
    waiver = Waiver.objects.using("owner").create(
        tenant=world.a.tenant, rule="baseline.base_model_allowed", reason="r", ticket_url="https://tickets.example/2",
        expires_at=timezone.now() + timedelta(days=1), requested_by=world.a.admin)
    from policies.services import tenant_policy_update

    proposal = tenant_policy_update(actor=on_default(world.a.admin), tenant=tenant, base_model_allowlist=["meta/*"])
    from runners.admission import run_request

    run, _ = run_request(actor=developer, tenant=tenant, version=version, stage="development")
    foreign_token = issue_token(world.b.admin, world.b.tenant, name="b-admin-laptop")
    own_token = issue_token(world.a.admin, world.a.tenant, name="own")
    return Scene(world=world, account=account, token=token, foreign_token=foreign_token, flavor=flavor,
                 version=version, artifact=artifact, promotion=promotion, override=override, waiver=waiver,
                 proposal=proposal, run=run, own_token=own_token, rows=tenant_rows())


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each case starts with empty caches (throttle counters among them), as under live_db."""
    from django.core.cache import cache

    cache.clear()


def tenant_rows():
    """Every row of the tenant tables, read as the owner (no row-level security)."""
    from tenants.models import ApiToken, Membership, ServiceAccount, Tenant, TenantQuota
    from workflows.models import Artifact, StagePointer, VersionArtifact, Workflow, WorkflowVersion

    from policies.models import GovernedChangeProposal, PolicyDecision, TenantPolicy, Waiver
    from runners.models import Run
    from workflows.models import (Approval, Blob, Promotion, PromotionOverride, Signature, TrustConfiguration,
                                  Verification)

    models = (Tenant, Membership, ServiceAccount, ApiToken, TenantQuota, Workflow, WorkflowVersion,
              VersionArtifact, Artifact, StagePointer, TrustConfiguration, Signature, Verification, Blob,
              Promotion, Approval, PromotionOverride, TenantPolicy, Waiver, PolicyDecision, Run,
              GovernedChangeProposal)
    return {model._meta.db_table: list(model.objects.using("owner").order_by("pk").values()) for model in models}


# Ways in: who asks, and how.
API_CALLERS = ("other-tenant-admin-token", "other-tenant-admin-session", "outsider-session")
CONSOLE_CALLERS = ("other-tenant-admin-session", "outsider-session")


def client_for(scene, caller):
    w = scene.world
    if caller == "other-tenant-admin-token":
        return Client(headers={"authorization": f"Bearer {scene.foreign_token}"})
    if caller == "other-tenant-admin-session":
        return sign_in(Client(), w.b.admin)
    if caller == "outsider-session":
        return sign_in(Client(), w.outsider)
    if caller == "own-admin-token":
        return Client(headers={"authorization": f"Bearer {scene.own_token}"})
    if caller == "own-admin-session":
        return sign_in(Client(), w.a.admin)
    raise AssertionError(f"unknown caller {caller}")


def send(client, route: Route, method: str, path: str, scene):
    if route.is_api:
        body = api_payload(scene, route.name, method)
        if method in ("POST", "PUT", "PATCH"):
            return client.generic(method, path, json.dumps(body), content_type="application/json")
        return client.generic(method, path)
    if method == "POST":
        return client.post(path, console_form(scene, route.name))
    return client.generic(method, path)


_CSRF_VALUE = re.compile(rb'(name="csrfmiddlewaretoken" value=")[^"]*(")')


def comparable(response) -> bytes:
    """The body, with the per-response CSRF mask blanked (it is random on every render)."""
    return _CSRF_VALUE.sub(rb"\1\2", response.content)


CASES = [
    pytest.param(route, method, caller, id=f"{method} {route} as {caller}")
    for route in ROUTES
    for method in route.methods
    for caller in (API_CALLERS if route.is_api else CONSOLE_CALLERS)
]


# The matrix ----------------------------------------------------------------------------


@pytest.mark.parametrize("route, method, caller", CASES)
def test_foreign_tenant_route_is_404_and_changes_nothing(scene, route, method, caller):
    values = {name: PATH_VALUES[name](scene) for name in PATH_VALUES}
    path = fill(route.route, values)
    missing_path = fill(route.route, {**values, "tenant": MISSING_SLUG})

    client = client_for(scene, caller)
    response = send(client, route, method, path, scene)
    missing = send(client, route, method, missing_path, scene)

    assert response.status_code == 404, (
        f"{method} {path} as {caller} answered {response.status_code}, not 404: {response.content[:500]!r}")
    assert missing.status_code == 404, f"{method} {missing_path} as {caller} answered {missing.status_code}"
    if route.is_api and method != "HEAD":
        body = response.json()
        assert body["code"] == "not_found", body
        assert isinstance(body.get("detail"), str) and body["detail"], body
        assert response["Content-Type"] == "application/json"
    assert comparable(response) == comparable(missing), (
        f"{method} {path} as {caller}: the 404 for an existing tenant differs from the one for a missing tenant\n"
        f"existing: {response.content[:800]!r}\nmissing:  {missing.content[:800]!r}")
    for header in ("Content-Type", "Content-Length"):  # HEAD has no body, but says how long it would be
        assert response.get(header) == missing.get(header), (header, response.get(header), missing.get(header))
    assert tenant_rows() == scene.rows, f"{method} {path} as {caller} changed tenant rows"


# The matrix is not vacuous -------------------------------------------------------------


GET_CASES = [
    pytest.param(route, caller, id=f"GET {route} as {caller}")
    for route in ROUTES if "GET" in route.methods
    for caller in (("own-admin-token", "own-admin-session") if route.is_api else ("own-admin-session",))
]


@pytest.mark.parametrize("route, caller", GET_CASES)
def test_own_tenant_admin_reads_every_route(scene, route, caller):
    values = {name: PATH_VALUES[name](scene) for name in PATH_VALUES}
    path = fill(route.route, values)
    response = send(client_for(scene, caller), route, "GET", path, scene)
    assert response.status_code < 400, f"GET {path} as {caller}: {response.status_code} {response.content[:500]!r}"
    assert tenant_rows() == scene.rows, f"GET {path} as {caller} changed tenant rows"
    if route.is_api and response["Content-Type"].startswith("application/json"):
        body = response.json()
        assert body, f"GET {path} as {caller} answered an empty body"
        if "results" in body:
            assert body["results"], f"GET {path} as {caller} listed nothing: the matrix would prove little"


def test_discovery_finds_the_tenant_routes():
    found = {route.name: route for route in ROUTES}
    expected_api = {"api-tenant-detail", "api-member-list", "api-member-detail", "api-service-account-list",
                    "api-service-account-detail", "api-token-list", "api-token-detail", "api-tenant-audit-events"}
    expected_console = {"tenant", "tenant-member-add", "tenant-member-role", "tenant-member-remove",
                        "tenant-service-account-add", "tenant-token-issue", "tenant-token-revoke", "tenant-audit"}
    assert expected_api <= {name for name, r in found.items() if r.is_api}
    assert expected_console <= {name for name, r in found.items() if not r.is_api}
    assert "api-tenant-list" not in found and "home" not in found  # not tenant-scoped
    assert found["api-member-detail"].methods == ("GET", "HEAD", "OPTIONS", "PATCH", "DELETE")
    assert found["api-token-detail"].methods == ("GET", "HEAD", "OPTIONS", "DELETE")
    assert found["tenant-member-remove"].methods == ("POST",)
    assert len(CASES) == sum(len(r.methods) * (3 if r.is_api else 2) for r in ROUTES)


def test_every_tenant_route_is_class_based():
    assert not OPAQUE_ROUTES, (
        f"tenant-scoped routes {OPAQUE_ROUTES} are not class-based views, so the matrix cannot tell which "
        "methods they allow: make them class-based (TenantScopedAPIView or TenantConsoleMixin)")


def test_a_parameter_the_matrix_cannot_fill_fails_loudly():
    with pytest.raises(pytest.fail.Exception,
                       match=r"route /t/<slug:tenant>/widgets/<int:widget>/ has parameter widget "
                             r"that the matrix cannot fill: add it"):
        fill("t/<slug:tenant>/widgets/<int:widget>/", {"tenant": "acme-bank"})


# Platform admins reach in, on the record -----------------------------------------------


def test_platform_admin_reads_members_and_it_is_audited(scene):
    from audit.models import AuditEvent

    world = scene.world  # no case of the matrix acts as a platform admin

    path = f"/api/v1/tenants/{world.a.tenant.slug}/members/"
    response = sign_in(Client(), world.platform_admin).get(path)
    assert response.status_code == 200, response.content
    assert {m["username"] for m in response.json()["results"]} == {
        u.username for u in (world.a.developer, world.a.approver, world.a.approver2, world.a.auditor,
                             world.a.admin, world.a.admin2)}
    events = list(AuditEvent.objects.using("owner").filter(action="platform.tenant_access"))
    assert len(events) == 1, [(e.action, e.tenant, e.actor_name) for e in events]
    event = events[0]
    assert event.tenant == world.a.tenant.slug
    assert (event.actor_type, event.actor_name) == ("user", world.platform_admin.username)
    assert (event.target_type, event.target_id) == ("tenant", world.a.tenant.slug)
    assert event.data == {"action": "view", "method": "GET", "path": path}
    assert event.outcome == "success"
