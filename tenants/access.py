"""Who may do what in which tenant: memberships (one role per tenant) plus explicit
django-guardian object permissions on a Tenant (for example a regulator's auditor given
``audit`` on one tenant). Platform admins reach every tenant, and their presence inside
one is audited by ``tenant_for``.
"""

from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from guardian.models import UserObjectPermission

from audit.log import Actor, Target, record

from .db import bind_rls
from .errors import Forbidden, NotFound, TenantSuspended
from .models import Membership, Tenant
from .roles import GRANTABLE_ACTIONS, WRITE_ACTIONS, permission_codename, role_allows


def token_of(user):
    """The API token the request authenticated with, if any."""
    return getattr(user, "api_token", None)


def is_platform_admin(user) -> bool:
    # A token is tenant-scoped, so a token never carries platform powers.
    return bool(user and user.is_authenticated and user.is_superuser and token_of(user) is None)


def require_platform_admin(actor) -> None:
    if not is_platform_admin(actor):
        raise Forbidden("Only a platform admin may do this.")


def actor_for(user) -> Actor:
    if user is None or not user.is_authenticated:
        return Actor.anonymous()
    token = token_of(user)
    if token is not None:
        return Actor(type="token", id=str(user.pk), name=user.username, token=token.public_id)
    return Actor(type="user", id=str(user.pk), name=user.username)


# What a platform admin may do in every tenant: see it, audited. Tenant work (develop, approve,
# admin) and the tenant's audit trail are for its members and for auditors granted it
# explicitly (docs/roles.md); a platform admin holds them only through a membership or a grant.
PLATFORM_READS = frozenset({"view"})


def allowed_tenant_ids(user, action: str):
    """Tenant ids where ``user`` may do ``action``; None means every tenant."""
    if user is None or not user.is_authenticated:
        return frozenset()
    token = token_of(user)
    if token is not None:
        # A token reaches its own tenant only, with its own role.
        return frozenset({token.tenant_id}) if role_allows(token.role, action) else frozenset()
    if is_platform_admin(user) and action in PLATFORM_READS:
        return None  # every read inside a tenant is recorded as platform.tenant_access
    with transaction.atomic(savepoint=False):  # the context and the read in one transaction
        bind_rls(user_id=user.pk)
        roles = list(Membership.objects.filter(user=user).values_list("tenant_id", "role"))
    by_role = {tenant_id for tenant_id, role in roles if role_allows(role, action)}
    if action not in GRANTABLE_ACTIONS:
        return frozenset(by_role)  # a grant never reaches a write, whatever rows say
    # Any explicit grant on a tenant lets its holder see that tenant.
    codenames = [permission_codename(a) for a in GRANTABLE_ACTIONS] if action == "view" \
        else [permission_codename(action)]
    granted = UserObjectPermission.objects.filter(
        user=user,
        permission__codename__in=codenames,
        content_type=ContentType.objects.get_for_model(Tenant),
    ).values_list("object_pk", flat=True)
    return frozenset(by_role | {int(pk) for pk in granted})


def can(user, tenant: Tenant, action: str) -> bool:
    allowed = allowed_tenant_ids(user, action)
    return allowed is None or tenant.pk in allowed


def require_one_of(user, tenant: Tenant, actions: tuple[str, ...]) -> str:
    """Like ``require`` for the first of ``actions`` the user may do (suspension included);
    refuses as the last one would when they may do none. Returns the action used."""
    for action in actions:
        if can(user, tenant, action):
            require(user, tenant, action)
            return action
    require(user, tenant, actions[-1])
    return actions[-1]


def role_in(user, tenant) -> str | None:
    token = token_of(user)
    if token is not None:
        return token.role
    with transaction.atomic(savepoint=False):
        bind_rls(user_id=user.pk, tenant_id=tenant.pk)
        return Membership.objects.filter(user=user, tenant=tenant).values_list("role", flat=True).first()


def tenant_for(user, slug: str, action: str = "view", *, context: dict | None = None) -> Tenant:
    """Resolve a tenant by slug for ``user`` and bind the row-level security context to it.

    Raises NotFound when the user may not see the tenant at all, and Forbidden when they
    may see it but not do ``action`` there: a member already knows the tenant exists.
    """
    tenant = Tenant.objects.restrict(user, "view").filter(slug=slug).first()
    if tenant is None:
        raise NotFound("No such tenant.")
    with transaction.atomic(savepoint=False):
        bind_rls(user_id=user.pk, tenant_id=tenant.pk)
        if action != "view":
            require(user, tenant, action)
        if is_platform_admin(user):
            record(action="platform.tenant_access", actor=actor_for(user), tenant=tenant.slug,
                   target=Target("tenant", tenant.slug), data={"action": action, **(context or {})})
    return tenant


def require(user, tenant: Tenant, action: str) -> None:
    """Re-check, inside the transaction of a change, that ``user`` may do ``action``."""
    allowed = allowed_tenant_ids(user, action)
    if allowed is not None and tenant.pk not in allowed:
        visible = allowed_tenant_ids(user, "view")
        if visible is not None and tenant.pk not in visible:
            raise NotFound("No such tenant.")
        raise Forbidden(f"Your role in {tenant.slug} does not allow this.")
    if action in WRITE_ACTIONS:
        _refuse_if_suspended(tenant)


def _refuse_if_suspended(tenant: Tenant) -> None:
    if not tenant.is_active:
        raise TenantSuspended(f"Tenant {tenant.slug} is suspended: its members can read but not change anything.")


def require_governing(user, tenant: Tenant, *, platform_may: bool) -> None:
    """Who may change who governs a tenant: its admins, and where ``platform_may`` (a tenant
    with fewer than two admins, whose next one two platform admins make) a platform admin,
    who otherwise does no tenant work."""
    if is_platform_admin(user) and token_of(user) is None:
        if not platform_may:
            raise Forbidden(f"Only a tenant admin of {tenant.slug} may do this: its admins govern it.",
                            code="tenant_admin_required")
        require(user, tenant, "view")
        _refuse_if_suspended(tenant)
        return
    require(user, tenant, "admin")


def memberships_of(tenant_id: int) -> dict[int, tuple[str, object]]:
    """Each member of a tenant as user id -> (role, role_since): one read for many standings."""
    with transaction.atomic(savepoint=False):
        bind_rls(tenant_id=tenant_id)
        return {user_id: (role, since) for user_id, role, since in
                Membership.objects.filter(tenant_id=tenant_id).values_list("user_id", "role", "role_since")}


def standing_lapse(user, tenant_id: int, *, given_at, roles, memberships=None) -> str:
    """Why a decision ``user`` gave in a tenant at ``given_at`` (an approval, a confirmation)
    no longer counts, or "" while it stands: its giver is still an active member holding one of
    ``roles``, taken no later than then. A lapse is final: a membership granted again, or a
    role changed back, starts after the decision (``Membership.role_since``). ``memberships``
    (from ``memberships_of``) saves the read when many standings are asked at once."""
    if not user.is_active:
        return f"{user.username}'s account is deactivated"
    if memberships is None:
        memberships = memberships_of(tenant_id)
    membership = memberships.get(user.pk)
    if membership is None:
        return f"{user.username} is no longer a member of the tenant"
    role, since = membership
    if since > given_at:
        return f"{user.username}'s role changed after they gave it"
    if role not in roles:
        return f"{user.username} no longer holds a role that may give it"
    return ""
