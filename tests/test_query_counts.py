"""Query counts of the list endpoints, pinned.

Each list is read at N rows and at 3N rows, with a bearer token and with an OTP-verified
session of world.a's tenant admin: the number of queries must not grow with the rows
(no N+1), and it must be exactly the pinned number, so a new query per request shows up
in review.

The numbers are PostgreSQL's: there the choke point also binds the row-level security
context (``SELECT set_config(...)``), which the embedded SQLite stack skips, so this
module is not marked ``embedded`` and fails loudly on any other database.
"""

import itertools
import secrets
from datetime import timedelta

import pytest
from django.db import connections, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.support.clients import issue_token, sign_in

ON_POSTGRES = connections["default"].vendor == "postgresql"

N = 10  # 3N = 30 still fits on one page (the default page is 50), so every row is rendered

# (endpoint, way in) -> queries on the default connection for one request. Observed on
# PostgreSQL; the same at N and at 3N rows. How they add up:
# - a session costs 3 before the view (session, user, OTP device); a bearer token 4 inside
#   the request's transaction (set token_hash, the token with its user and tenant, set
#   user/tenant, the holder's membership);
# - BEGIN and COMMIT (ATOMIC_REQUESTS): 2;
# - each ``allowed_tenant_ids`` of a session: 3 (set user, memberships, guardian grants),
#   2 for a write action, which no grant gives, and none for a token; the tenant-scoped views
#   ask it 2 times (tenant_for, restrict), the tokens list 3 (also "admin"), the tenant audit
#   list 3 (require "audit", then events_visible_to), plus 2 for the tenant itself in
#   tenant_for (lookup, set tenant);
# - the page: COUNT and SELECT, 2, whatever the rows (select_related keeps it so); the audit
#   lists are keyset pages with no COUNT, 1.
PINNED = {
    ("tenants", "token"): 8,
    ("tenants", "session"): 10,
    ("members", "token"): 10,
    ("members", "session"): 15,
    ("service-accounts", "token"): 10,
    ("service-accounts", "session"): 15,
    ("tokens", "token"): 10,
    ("tokens", "session"): 17,
    ("tenant-audit-events", "token"): 9,
    ("tenant-audit-events", "session"): 17,
    ("audit-events", "token"): 7,
    ("audit-events", "session"): 9,
    # + 2 prefetches (approvals with their users, overrides with theirs) and + 2 to read the
    # tenant's memberships once, which decide whether each approval still counts; + 9 to read
    # the open ones' facts together (workflows.promotions.policy_inputs: artifacts, quota,
    # policy data, memberships 2, waivers, stage pointers, stages reached, confirmed overrides),
    # so each approval shows whether it binds to them now
    ("promotions", "token"): 23,
    ("promotions", "session"): 28,
    ("waivers", "token"): 10,
    ("waivers", "session"): 15,
    ("runs", "token"): 10,
    ("runs", "session"): 15,
}

_serial = itertools.count()


def _tenant_slug(world):
    return world.a.tenant.slug


# Growing each list through the owner alias -------------------------------------------


def add_tenants(world, k):
    """k more tenants where world.a's admin is a tenant admin."""
    from tenants.models import Membership, Tenant

    for _ in range(k):
        i = next(_serial)
        tenant = Tenant.objects.using("owner").create(slug=f"extra-{i}", name=f"Extra {i}", jurisdiction="eu")
        Membership.objects.using("owner").create(tenant=tenant, user=world.a.admin, role="tenant_admin")


def add_members(world, k):
    from django.contrib.auth import get_user_model

    from tenants.models import Membership

    users = get_user_model().objects.db_manager("owner")
    for _ in range(k):
        user = users.create_user(username=f"extra-member-{next(_serial)}", password=None)
        Membership.objects.using("owner").create(tenant=world.a.tenant, user=user, role="developer")


def add_service_accounts(world, k):
    from tenants.models import ServiceAccount

    owners = itertools.cycle([world.a.developer, world.a.admin, world.a.admin2])
    for _ in range(k):
        ServiceAccount.objects.using("owner").create(tenant=world.a.tenant, name=f"svc-{next(_serial)}",
                                                     owner=next(owners), role="developer")


def add_tokens(world, k):
    """k more tokens in world.a, of several holders, every other one a service account's."""
    from tenants.models import ApiToken, ServiceAccount, hash_token_secret, new_token_plaintext

    holders = itertools.cycle([world.a.developer, world.a.approver, world.a.auditor, world.a.admin2])
    for index in range(k):
        holder = next(holders)
        account = None
        if index % 2:
            account = ServiceAccount.objects.using("owner").create(
                tenant=world.a.tenant, name=f"pipeline-{next(_serial)}", owner=holder, role="developer")
        public_id, plaintext = new_token_plaintext()
        ApiToken.objects.using("owner").create(
            tenant=world.a.tenant, user=holder, service_account=account, name=f"extra-{index}",
            role="developer", public_id=public_id, key_hash=hash_token_secret(plaintext),
            expires_at=timezone.now() + timedelta(days=30))


def add_audit_events(world, k):
    """k more events in world.a's trail, sequenced (so each has its leaf)."""
    from audit.log import Actor, Target, record
    from audit.sequencer import sequence_pending

    with transaction.atomic(using="owner"):
        for _ in range(k):
            record(action="membership.grant", actor=Actor(type="user", id="1", name="someone"),
                   tenant=world.a.tenant.slug, target=Target("membership", f"m-{next(_serial)}"),
                   data={"note": secrets.token_hex(4)}, using="owner")
    sequence_pending()


def add_promotions(world, k):
    """k more promotions in world.a, each with two approvals and an override."""
    from workflows.models import Approval, Promotion, PromotionOverride, Workflow, WorkflowVersion

    workflow, _ = Workflow.objects.using("owner").get_or_create(tenant=world.a.tenant, name="counted",
                                                                defaults={"created_by": world.a.developer})
    for _ in range(k):
        i = next(_serial)
        version = WorkflowVersion.objects.using("owner").create(
            tenant=world.a.tenant, workflow=workflow, number=i + 1, spec={"name": "counted"}, spec_canonical="{}",
            digest=f"sha256:{i:064x}", created_by=world.a.developer)
        promotion = Promotion.objects.using("owner").create(
            tenant=world.a.tenant, workflow=workflow, version=version, stage="staging", requested_by=world.a.developer,
            expires_at=timezone.now() + timedelta(days=1), state="awaiting_approval", binding_digest="sha256:b",
            policy_revision="sha256:r")
        for approver in (world.a.approver, world.a.approver2):
            Approval.objects.using("owner").create(
                tenant=world.a.tenant, promotion=promotion, user=approver, verdict="approve",
                version_digest=version.digest, binding_digest="sha256:b", policy_revision="sha256:r",
                otp_device="otp_totp.totpdevice/1", via="api")
        PromotionOverride.objects.using("owner").create(tenant=world.a.tenant, promotion=promotion,
                                                        rule="baseline.base_model_allowed", justification="j",
                                                        requested_by=world.a.admin, confirmed_by=world.a.admin2)


def add_waivers(world, k):
    from policies.models import Waiver

    for _ in range(k):
        Waiver.objects.using("owner").create(
            tenant=world.a.tenant, rule="baseline.base_model_allowed", reason="r", ticket_url="https://t.example/1",
            expires_at=timezone.now() + timedelta(days=1), requested_by=world.a.admin, approved_by=world.a.admin2,
            approved_at=timezone.now())


def add_runs(world, k):
    from runners.models import Run
    from workflows.models import Workflow, WorkflowVersion

    workflow, _ = Workflow.objects.using("owner").get_or_create(tenant=world.a.tenant, name="ran",
                                                                defaults={"created_by": world.a.developer})
    version = WorkflowVersion.objects.using("owner").filter(workflow=workflow).first() or \
        WorkflowVersion.objects.using("owner").create(tenant=world.a.tenant, workflow=workflow, number=1,
                                                      spec={"name": "ran"}, spec_canonical="{}",
                                                      digest="sha256:" + "e" * 64, created_by=world.a.developer)
    for _ in range(k):
        Run.objects.using("owner").create(tenant=world.a.tenant, version=version, stage="development",
                                          requested_by=world.a.developer, max_runtime_seconds=60)


ENDPOINTS = {
    "tenants": (lambda w: "/api/v1/tenants/", add_tenants),
    "members": (lambda w: f"/api/v1/tenants/{_tenant_slug(w)}/members/", add_members),
    "service-accounts": (lambda w: f"/api/v1/tenants/{_tenant_slug(w)}/service-accounts/", add_service_accounts),
    "tokens": (lambda w: f"/api/v1/tenants/{_tenant_slug(w)}/tokens/", add_tokens),
    "tenant-audit-events": (lambda w: f"/api/v1/tenants/{_tenant_slug(w)}/audit/events/", add_audit_events),
    "audit-events": (lambda w: "/api/v1/audit/events/", add_audit_events),
    "promotions": (lambda w: f"/api/v1/tenants/{_tenant_slug(w)}/promotions/", add_promotions),
    "waivers": (lambda w: f"/api/v1/tenants/{_tenant_slug(w)}/waivers/", add_waivers),
    "runs": (lambda w: f"/api/v1/tenants/{_tenant_slug(w)}/runs/", add_runs),
}


def client_for(world, way):
    if way == "token":
        return Client(headers={"authorization": f"Bearer {issue_token(world.a.admin, world.a.tenant)}"})
    return sign_in(Client(), world.a.admin)


def measure(client, path):
    with CaptureQueriesContext(connections["default"]) as captured:
        response = client.get(path)
    assert response.status_code == 200, response.content[:500]
    return len(captured), response.json(), [q["sql"] for q in captured.captured_queries]


def _rows(body) -> int:
    """How many rows the list holds: its count, or for the keyset-paged audit lists (no count),
    the rows of its one page (3N fits on one)."""
    return body["count"] if "count" in body else len(body["results"])


def growth(endpoint, way):
    """How many of the added rows the caller sees: a token reaches only its own tenant."""
    return 0 if (endpoint, way) == ("tenants", "token") else 1


@pytest.mark.parametrize("way", ["token", "session"])
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_list_query_count_is_flat_and_pinned(world, endpoint, way):
    assert ON_POSTGRES, "the query counts are pinned for PostgreSQL: run this module with `make test-postgres`"
    path_for, add_rows = ENDPOINTS[endpoint]
    path = path_for(world)
    client = client_for(world, way)

    _, body, _ = measure(client, path)  # warms per-process caches (content types, ...)
    start = _rows(body)
    add_rows(world, max(N - start, 0))
    at_n, body_n, sql_n = measure(client, path)
    add_rows(world, 2 * N)
    at_3n, body_3n, sql_3n = measure(client, path)

    rows_n, rows_3n = _rows(body_n), _rows(body_3n)
    if growth(endpoint, way):
        assert rows_n == max(N, start) and rows_3n == rows_n + 2 * N, (rows_n, rows_3n)
        assert len(body_3n["results"]) == rows_3n  # every row rendered on the page
    else:
        assert rows_n == rows_3n == 1
    assert at_n == at_3n, (
        f"{endpoint} as {way}: {at_n} queries at {rows_n} rows but {at_3n} at {rows_3n} rows (N+1?)\n"
        + "\n".join(sql_3n))
    assert at_n == PINNED[(endpoint, way)], (
        f"{endpoint} as {way} runs {at_n} queries, pinned at {PINNED[(endpoint, way)]}:\n" + "\n".join(sql_n))


def test_the_promotion_queue_page_query_count_is_flat_and_pinned(world):
    """The console's approver queue renders every open promotion without a query per row."""
    assert ON_POSTGRES, "the query counts are pinned for PostgreSQL: run this module with `make test-postgres`"
    client = sign_in(Client(), world.a.approver)
    path = f"/t/{_tenant_slug(world)}/promotions/"

    def count():
        with CaptureQueriesContext(connections["default"]) as captured:
            response = client.get(path)
        assert response.status_code == 200
        return len(captured), response.content.decode().count("data-promotion=")

    count()  # warm per-process caches
    add_promotions(world, N)
    at_n, rows_n = count()
    add_promotions(world, 2 * N)
    at_3n, rows_3n = count()
    assert (rows_n, rows_3n) == (N, 3 * N)
    assert at_n == at_3n == 18, (at_n, at_3n)

