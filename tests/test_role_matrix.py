"""The role x privileged-action matrix, checked against docs/roles.md.

The expectations live in the doc's table only (derived from the design's roles table): this
module parses it, runs every (action, caller) through the public API, and reports every
mismatch at once. "allow" means the answer is not 401, 403 or 404 (a 400 or 409 because of
state or input still passed the permission check); "deny" means 403 or 404, and a denied call
must leave every row of the tenant and platform tables as it found them.

Each case builds the object it acts on afresh, asked for by someone other than the caller, so
the permission check is what decides; the world is built once for the module.
"""

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from tests.support.clients import ApiClient, sign_in
from tests.support.otp import fresh_totp
from tests.support.people import make_user, make_world

ROLES_DOC = Path(__file__).resolve().parent.parent / "docs" / "roles.md"
CALLERS = ("developer", "developer token", "approver", "auditor", "tenant admin", "platform admin")
T = "/api/v1/tenants/acme-bank"
ALLOWED_MODEL = "mistralai/Mistral-7B"
UNLISTED_MODEL = "meta-llama/Llama-3-8B"  # a soft-mandatory violation: the request stays "checked"
SOFT_RULE = "baseline.base_model_allowed"

# The expected table ------------------------------------------------------------------------

_FOOTNOTE_REF = re.compile(r"\[\^[\w-]+\]")


def expected_matrix(text: str) -> dict[str, dict[str, str]]:
    """action -> caller -> "allow" | "deny", from the table under "## The matrix"."""
    lines = text.split("## The matrix", 1)[1].splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    rows = []
    for line in lines[start:]:  # the first table under the heading, up to its first non-row line
        if not line.startswith("|"):
            break
        rows.append(line)
    if not rows:
        raise AssertionError("docs/roles.md has no table under '## The matrix'")
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert header == ["action", *CALLERS], f"the table's columns are {header}, expected action + {CALLERS}"
    matrix = {}
    for row in rows[2:]:  # past the header and its |---| rule
        cells = [_FOOTNOTE_REF.sub("", cell).strip() for cell in row.strip().strip("|").split("|")]
        action, verdicts = cells[0], cells[1:]
        assert len(verdicts) == len(CALLERS), f"row {action!r} has {len(verdicts)} verdicts"
        assert set(verdicts) <= {"allow", "deny"}, f"row {action!r}: each cell is allow or deny, not {verdicts}"
        assert action not in matrix, f"row {action!r} appears twice"
        matrix[action] = dict(zip(CALLERS, verdicts))
    return matrix


EXPECTED = expected_matrix(ROLES_DOC.read_text())

# The world --------------------------------------------------------------------------------

SPEC = {
    "name": "fraud-detector",
    "base_model": {"name": ALLOWED_MODEL},
    "inputs": [{"name": "transactions", "region": "eu-west1", "uri": "s3://acme-data/tx.parquet"}],
    "steps": [{"name": "train", "command": ["python", "train.py"], "gpu": {"flavor": "h100-80gb", "count": 1}}],
}


@dataclass
class Scene:
    world: object
    tmp: Path
    private_pem: bytes
    public_pem: str
    pipeline_token: str  # the developer-role service account's token; its owner is the developer
    clients: dict = field(default_factory=dict)  # caller -> ApiClient
    admin2: ApiClient = None  # the tenant's second admin, who asks for exceptions in set-up
    people: dict = field(default_factory=dict)  # caller -> the person whose OTP the caller sends
    artifacts: list = field(default_factory=list)  # the signed model's and metrics' digests
    dataset: str = ""  # the digest the spec's input names (not one of the version's artifacts)
    runnable: int = 0  # a version promoted to development
    serial: int = 0

    def next(self) -> int:
        self.serial += 1
        return self.serial

    @property
    def a(self):
        return self.world.a

    def person(self, user) -> ApiClient:
        return ApiClient(sign_in(Client(), user))

    @property
    def developer(self) -> ApiClient:
        return self.clients["developer"]

    @property
    def admin(self) -> ApiClient:
        return self.clients["tenant admin"]

    # Set-up through the API, as the people who may do it; a set-up that fails is the
    # test's own fault, never a mismatch.

    def push(self, name: str, data: bytes, kind="model", sign=True) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        response = upload(self.developer, name, data, kind)
        assert response.status_code in (200, 201), response.content
        if sign:
            response = attach(self.developer, name, digest, self.bundle(name, digest, data))
            assert response.status_code == 201, response.content
        return digest

    def bundle(self, name: str, digest: str, data: bytes) -> bytes:
        from workflows import signing

        path = self.tmp / f"{name}-{digest[7:19]}"
        path.write_bytes(data)
        return signing.sign_path(path, private_key_pem=self.private_pem, name=name).encode()

    def version(self, base_model=ALLOWED_MODEL) -> int:
        response = self.developer.post(f"{T}/workflows/fraud-detector/versions/",
                                       {"spec": self.spec(base_model), "artifacts": self.artifacts})
        assert response.status_code == 201, response.content
        return response.json()["number"]

    def spec(self, base_model=ALLOWED_MODEL) -> dict:
        return {**SPEC, "description": f"case {self.next()}", "base_model": {"name": base_model},
                "inputs": [{**SPEC["inputs"][0], "digest": self.dataset}]}

    def request(self, number: int, stage: str, expected_state: str) -> str:
        response = self.developer.post(f"{T}/promotions/", {"workflow": "fraud-detector", "version": number,
                                                            "stage": stage})
        assert response.status_code == 201 and response.json()["state"] == expected_state, response.json()
        return response.json()["id"]

    def awaiting_approval(self) -> str:
        """A staging request by the developer, awaiting one approval."""
        number = self.version()
        self.request(number, "development", "promoted")
        return self.request(number, "staging", "awaiting_approval")

    def checked(self) -> str:
        """A development request by the developer, held by a soft-mandatory violation."""
        return self.request(self.version(UNLISTED_MODEL), "development", "checked")

    def override(self, promotion: str) -> int:
        """An override of the checked promotion's soft violation, asked for by admin2."""
        response = self.admin2.post(f"{T}/promotions/{promotion}/overrides/",
                                    {"rule": SOFT_RULE, "justification": "Pilot approved in RISK-12"})
        assert response.status_code == 201, response.content
        return response.json()["id"]

    def waiver(self, *, approved=False) -> int:
        """A waiver asked for by admin2 (and approved by admin when ``approved``). Its rule is one
        no case's promotion trips over, so a waiver in force changes no other case."""
        response = self.admin2.post(f"{T}/waivers/", waiver_body())
        assert response.status_code == 201, response.content
        waiver = response.json()["id"]
        if approved:
            response = self.admin.post(f"{T}/waivers/{waiver}/approve/", {"otp_token": fresh_totp(self.a.admin)})
            assert response.status_code == 200 and response.json()["state"] == "active", response.content
        return waiver

    def member(self) -> str:
        """A fresh developer of acme-bank, for the member cases to act on."""
        from tenants.models import Membership

        user = make_user(f"acme-bank-extra-{self.next()}", device=False)
        Membership.objects.using("owner").create(tenant=self.a.tenant, user=user, role="developer")
        return user.username

    def run(self) -> str:
        response = self.developer.post(f"{T}/runs/", run_body(self.runnable))
        assert response.status_code == 201, response.content
        return response.json()["id"]


def upload(client: ApiClient, name: str, data: bytes, kind="model"):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return client.client.generic("PUT", f"{T}/artifacts/{name}/?digest={digest}&kind={kind}&region=eu", data=data,
                                 content_type="application/octet-stream", **client.headers)


def attach(client: ApiClient, name: str, digest: str, bundle: bytes):
    return client.client.generic("POST", f"{T}/artifacts/{name}/{digest}/signatures/", data=bundle,
                                 content_type="application/json", **client.headers)


def waiver_body() -> dict:
    return {"rule": "baseline.metrics_thresholds", "reason": "Holdout set is being rebuilt",
            "ticket_url": "https://tickets.example/RISK-7",
            "expires_at": (timezone.now() + timedelta(days=7)).isoformat()}


def run_body(number: int) -> dict:
    return {"workflow": "fraud-detector", "version": number, "stage": "development"}


def build_scene(tmp: Path) -> Scene:
    from audit.checkpointing import checkpoint_write
    from audit.sequencer import sequence_pending
    from tenants.services import gpu_flavor_create
    from workflows import signing

    from tests.support.governance import put_governed, set_quota as quota_set

    world = make_world()
    flavor = gpu_flavor_create(actor=world.platform_admin, name="h100-80gb", memory_gb=80, billing_weight="1")
    quota_set(world, world.a.tenant, flavor, nominal=8, borrowing_limit=4)
    private_pem, public_pem = signing.generate_key_pair()
    scene = Scene(world=world, tmp=tmp, private_pem=private_pem, public_pem=public_pem.decode(), pipeline_token="")

    person = scene.person
    for setting, body in (("trust/", {"public_keys": {"ci": scene.public_pem}}),
                          ("policy-data/", {"base_model_allowlist": ["mistralai/*"]})):
        response = put_governed(person, world.a, f"{T}/{setting}", body)
        assert response.status_code == 200, response.content

    a = world.a
    people = {"developer": a.developer, "developer token": a.developer, "approver": a.approver,
              "auditor": a.auditor, "tenant admin": a.admin, "platform admin": world.platform_admin}
    scene.people = people
    scene.clients = {caller: person(user) for caller, user in people.items() if caller != "developer token"}
    scene.admin2 = person(a.admin2)

    account = scene.developer.post(f"{T}/service-accounts/", {"name": "nightly-build", "role": "developer"})
    assert account.status_code == 201, account.content
    token = scene.developer.post(f"{T}/tokens/", {"name": "pipeline", "expires_in_days": 30,
                                                  "service_account": "nightly-build"})
    assert token.status_code == 201, token.content
    scene.pipeline_token = token.json()["token"]
    scene.clients["developer token"] = ApiClient(Client(), token=scene.pipeline_token)

    scene.dataset = scene.push("transactions", b"amount,label\n10,0\n20,1\n", kind="dataset", sign=False)
    scene.artifacts = [scene.push("scorer", os.urandom(4096)),
                       scene.push("eval", json.dumps({"accuracy": 0.95}).encode(), kind="metrics")]
    scene.runnable = scene.version()
    scene.request(scene.runnable, "development", "promoted")

    # The tenant's events in the tree, under a signed checkpoint, so there is a trail to export.
    sequence_pending(using="owner")
    checkpoint_write(using="owner")
    return scene


@pytest.fixture(scope="module")
def scene(module_live_db, tmp_path_factory):
    return build_scene(tmp_path_factory.mktemp("role-matrix"))


# The cases: one per row. Each gets the scene, the caller's client and the caller's name,
# prepares what the action acts on, and returns the one request that takes the action (unsent),
# so the rows are snapshotted after the set-up and just before it. ----------------------------

CASES = {}


def case(action):
    def register(function):
        CASES[action] = function
        return function
    return register


def otp_of(scene, caller) -> str:
    """A fresh code from the caller's own device (a pipeline token sends its owner's)."""
    return fresh_totp(scene.people[caller])


@case("register a workflow version")
def register_version(scene, client, caller):
    body = {"spec": scene.spec(), "artifacts": scene.artifacts}
    return lambda: client.post(f"{T}/workflows/fraud-detector/versions/", body)


@case("upload an artifact")
def upload_artifact(scene, client, caller):
    name, data = f"checkpoint-{scene.next()}", os.urandom(2048)
    return lambda: upload(client, name, data)


@case("attach a signature")
def attach_signature(scene, client, caller):
    data, name = os.urandom(2048), f"adapter-{scene.next()}"
    digest = scene.push(name, data, sign=False)
    bundle = scene.bundle(name, digest, data)
    return lambda: attach(client, name, digest, bundle)


@case("request a promotion")
def request_promotion(scene, client, caller):
    body = {"workflow": "fraud-detector", "version": scene.version(), "stage": "development"}
    return lambda: client.post(f"{T}/promotions/", body)


@case("approve a promotion (with a fresh OTP)")
def approve_promotion(scene, client, caller):
    promotion, code = scene.awaiting_approval(), otp_of(scene, caller)
    return lambda: client.post(f"{T}/promotions/{promotion}/approve/", {"otp_token": code})


@case("reject a promotion")
def reject_promotion(scene, client, caller):
    promotion, code = scene.awaiting_approval(), otp_of(scene, caller)
    return lambda: client.post(f"{T}/promotions/{promotion}/reject/",
                               {"otp_token": code, "comment": "The holdout set is stale."})


@case("withdraw a promotion")
def withdraw_promotion(scene, client, caller):
    promotion = scene.checked()
    return lambda: client.post(f"{T}/promotions/{promotion}/withdraw/", {"reason": "superseded"})


@case("recheck a promotion")
def recheck_promotion(scene, client, caller):
    promotion = scene.checked()
    return lambda: client.post(f"{T}/promotions/{promotion}/recheck/")


@case("request an override")
def request_override(scene, client, caller):
    promotion = scene.checked()
    return lambda: client.post(f"{T}/promotions/{promotion}/overrides/",
                               {"rule": SOFT_RULE, "justification": "Pilot approved in RISK-12"})


@case("confirm an override")
def confirm_override(scene, client, caller):
    promotion = scene.checked()
    override, code = scene.override(promotion), otp_of(scene, caller)
    return lambda: client.post(f"{T}/promotions/{promotion}/overrides/{override}/confirm/", {"otp_token": code})


@case("request a waiver")
def request_waiver(scene, client, caller):
    return lambda: client.post(f"{T}/waivers/", waiver_body())


@case("approve a waiver")
def approve_waiver(scene, client, caller):
    waiver, code = scene.waiver(), otp_of(scene, caller)
    return lambda: client.post(f"{T}/waivers/{waiver}/approve/", {"otp_token": code})


@case("revoke a waiver")
def revoke_waiver(scene, client, caller):
    waiver = scene.waiver(approved=True)
    return lambda: client.post(f"{T}/waivers/{waiver}/revoke/")


@case("write tenant policy data")
def write_policy_data(scene, client, caller):
    # A tightening (one more production approval), which applies at once when allowed.
    current = scene.admin.get(f"{T}/policy-data/").json()["min_approvals"]
    return lambda: client.put(f"{T}/policy-data/", {"min_approvals": current + 1})


@case("write the trust configuration")
def write_trust(scene, client, caller):
    # A tightening: a spare key, trusted through the two-admin path, is taken away again.
    from workflows import signing

    from tests.support.governance import put_governed

    spare = signing.generate_key_pair()[1].decode()
    response = put_governed(scene.person, scene.a, f"{T}/trust/",
                            {"public_keys": {"ci": scene.public_pem, "spare": spare}})
    assert response.status_code == 200 and "spare" in response.json()["public_keys"], response.content
    return lambda: client.put(f"{T}/trust/", {"public_keys": {"ci": scene.public_pem}})


@case("add a member")
def add_member(scene, client, caller):
    newcomer = make_user(f"newcomer-{scene.next()}", device=False)
    return lambda: client.post(f"{T}/members/", {"username": newcomer.username, "role": "developer"})


@case("change a member's role")
def change_member_role(scene, client, caller):
    member = scene.member()
    return lambda: client.patch(f"{T}/members/{member}/", {"role": "auditor"})


@case("remove a member")
def remove_member(scene, client, caller):
    member = scene.member()
    return lambda: client.delete(f"{T}/members/{member}/")


@case("request a run")
def request_run(scene, client, caller):
    return lambda: client.post(f"{T}/runs/", run_body(scene.runnable))


@case("cancel a run")
def cancel_run(scene, client, caller):
    run = scene.run()
    return lambda: client.post(f"{T}/runs/{run}/cancel/")


@case("export the tenant's audit trail")
def export_audit(scene, client, caller):
    return lambda: client.get(f"{T}/audit/export/")


@case("create a tenant")
def create_tenant(scene, client, caller):
    body = {"slug": f"new-tenant-{scene.next()}", "name": "New Tenant", "jurisdiction": "eu"}
    return lambda: client.post("/api/v1/tenants/", body)


@case("set a tenant's GPU quota")
def set_quota(scene, client, caller):
    body = {"nominal": 16 + scene.next(), "borrowing_limit": 4}  # a raise every time
    return lambda: client.put(f"{T}/quota/h100-80gb/", body)


@case("create a GPU flavor")
def create_flavor(scene, client, caller):
    body = {"name": f"l40s-{scene.next()}", "memory_gb": 48, "billing_weight": "1.0"}
    return lambda: client.post("/api/v1/gpu-flavors/", body)


@case("add a region to the catalogue")
def add_region(scene, client, caller):
    body = {"code": f"eu-test{scene.next()}", "name": "Test region", "jurisdiction": "eu"}
    return lambda: client.post("/api/v1/regions/", body)


# What a denied call must not change -------------------------------------------------------

SNAPSHOT_APPS = ("tenants", "workflows", "policies", "runners")
# Bookkeeping a request writes whoever it comes from (a token's last use).
VOLATILE = {"tenants_apitoken": {"last_used_at"}}


def all_rows() -> dict:
    """Every row of the tenant and platform tables (not the audit log), read as the owner."""
    from django.apps import apps

    rows = {}
    for label in SNAPSHOT_APPS:
        for model in apps.get_app_config(label).get_models():
            table = model._meta.db_table
            skip = VOLATILE.get(table, set())
            rows[table] = [{k: v for k, v in row.items() if k not in skip}
                           for row in model.objects.using("owner").order_by("pk").values()]
    return rows


# Rows whose action changes no tenant or platform row (it only adds to the audit log).
READS = {"export the tenant's audit trail"}


def changed_tables(before: dict, after: dict) -> list[str]:
    return sorted(table for table in before if before[table] != after.get(table))


# The matrix -------------------------------------------------------------------------------


def verdict_of(response) -> str:
    """allow, deny, or unauthenticated (every caller here is signed in: a 401 is the test's fault)."""
    if response.status_code == 401:
        return "unauthenticated"
    return "deny" if response.status_code in (403, 404) else "allow"


def code_of(response) -> str:
    """An error answer's stable code ("" for a success or a body that is not JSON)."""
    if response.status_code < 400 or not response.get("Content-Type", "").startswith("application/json"):
        return ""
    body = response.json()
    return body.get("code", "") if isinstance(body, dict) else ""


def test_every_row_of_the_table_has_a_case_and_every_case_a_row():
    assert set(EXPECTED) - set(CASES) == set(), "rows of docs/roles.md with no case here"
    assert set(CASES) - set(EXPECTED) == set(), "cases here with no row in docs/roles.md"


def test_each_caller_may_take_exactly_the_actions_the_roles_table_allows(scene):
    from django.core.cache import cache

    mismatches, leaks, blind = [], [], []
    for action, expected in EXPECTED.items():
        if action not in CASES:
            continue  # reported by the test above
        for caller in CALLERS:
            cache.clear()  # throttle counters start afresh for each case
            send = CASES[action](scene, scene.clients[caller], caller)
            before = all_rows()
            response = send()
            got = verdict_of(response)
            line = f"{action!r} as {caller}: {response.status_code} {code_of(response) or '-'}"
            if got != expected[caller]:
                mismatches.append(f"unexpected {got}: {line}")
            touched = changed_tables(before, all_rows())
            if got == "deny" and touched:
                leaks.append(f"denied but changed {', '.join(touched)}: {line}")
            if got == "allow" and response.status_code < 300 and action not in READS and not touched:
                blind.append(f"allowed, yet the snapshot saw no change: {line}")
    problems = mismatches + leaks + blind
    assert not problems, f"{len(problems)} departures from docs/roles.md:\n" + "\n".join(problems)
