"""Domain functions: every state change of tenants, members, service accounts and tokens.

Each is keyword-only, re-checks permission inside its transaction, and writes its audit
event in that same transaction.
"""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from guardian.models import UserObjectPermission

from audit.log import Actor, Target, record

from .access import actor_for, is_platform_admin, require, require_governing, require_platform_admin, role_in, token_of
from .catalogue import jurisdiction_problem
from .db import bind_rls
from .errors import Conflict, Forbidden, Invalid, NotFound, TenantSuspended, clean_or_invalid
from .models import (
    ApiToken,
    GpuFlavor,
    Membership,
    PersonName,
    ServiceAccount,
    Tenant,
    hash_token_secret,
    new_token_plaintext,
)
from .roles import GRANTABLE_ACTIONS, SERVICE_ACCOUNT_ROLES, Role, permission_codename
from .usernames import skeleton_sha256, username_problem

User = get_user_model()

MAX_TOKEN_DAYS = 365
DEFAULT_TOKEN_DAYS = 90




def _require_known_role(role, *, field="role", allowed=tuple(Role)):
    if role not in {str(r) for r in allowed}:
        raise Invalid(f"Role must be one of: {', '.join(str(r) for r in allowed)}.", field=field)


def _platform_marker(actor) -> dict:
    return {"platform_admin": True} if is_platform_admin(actor) else {}


# Users and platform admins -------------------------------------------------------------


def _command_line_or_platform_admin(actor) -> Actor:
    if actor is None:
        return Actor.system("manage.py")
    require_platform_admin(actor)
    return actor_for(actor)


def _require_free_username(username: str, *, other_than=None) -> None:
    problem = username_problem(username)
    if problem:
        raise Invalid(problem, field="username")
    if User.objects.filter(username=username).exclude(pk=getattr(other_than, "pk", None)).exists():
        raise Conflict(f"A user named {username} already exists.", field="username")


def _lookalike(username: str, holder: PersonName | None) -> Conflict:
    existing = f"the existing account {holder.user.username}" if holder else "an account created just now"
    return Conflict(f"Username {username} looks the same as {existing} (Unicode TS #39 confusables); "
                    "choose another username.", field="username")


def _claim_name(user) -> None:
    """Record the skeleton of ``user``'s username, refusing one another person's name already has."""
    digest = skeleton_sha256(user.username)
    holders = PersonName.objects.filter(skeleton_sha256=digest).exclude(user=user).select_related("user")
    holder = holders.first()
    if holder is not None:
        raise _lookalike(user.username, holder)
    try:
        with transaction.atomic():
            PersonName.objects.update_or_create(user=user, defaults={"skeleton_sha256": digest})
    except IntegrityError:  # a lookalike committed after the read above
        raise _lookalike(user.username, holders.first()) from None


def user_create(*, actor, username: str, password: str, email: str = "", platform_admin: bool = False) -> User:
    """Create a person's account. ``actor`` is a platform admin, or None for a command-line bootstrap.
    The username must meet the rule of tenants/usernames.py and look like no one else's."""
    audit_actor = _command_line_or_platform_admin(actor)
    with transaction.atomic():
        _require_free_username(username)
        user = User(username=username, email=email, is_superuser=platform_admin, is_staff=platform_admin)
        user.set_password(password)
        user.save()
        _claim_name(user)
        record(action="platform_admin.create" if platform_admin else "user.create", actor=audit_actor,
               target=Target("user", username), data={"platform_admin": platform_admin})
    return user


def user_rename(*, actor, user: User, username: str) -> User:
    """Give a person a new username, under the same rule as a new account's. Their memberships,
    tokens and devices stay theirs; audit events keep the name they were written with."""
    audit_actor = _command_line_or_platform_admin(actor)
    previous = user.username
    if username == previous:
        raise Invalid(f"User {user.pk} is already named {username}.", field="username")
    with transaction.atomic():
        _require_free_username(username, other_than=user)
        # Conditional: a rename that raced this one leaves nothing to change.
        if not User.objects.filter(pk=user.pk, username=previous).update(username=username):
            raise Conflict(f"User {user.pk} is no longer named {previous}; look again.", field="username")
        user.username = username
        _claim_name(user)
        record(action="user.rename", actor=audit_actor, target=Target("user", username),
               data={"user_id": user.pk, "from": previous, "to": username})
    return user


# Tenants -------------------------------------------------------------------------------


def tenant_create(*, actor, slug: str, name: str, jurisdiction: str) -> Tenant:
    require_platform_admin(actor)
    tenant = Tenant(slug=slug, name=name, jurisdiction=jurisdiction)
    clean_or_invalid(tenant)
    problem = jurisdiction_problem(jurisdiction)
    if problem:
        raise Invalid(problem, field="jurisdiction")
    with transaction.atomic():
        if Tenant.objects.filter(slug=slug).exists():
            raise Conflict(f"A tenant with slug {slug} already exists.", field="slug")
        tenant.save()
        record(action="tenant.create", actor=actor_for(actor), tenant=tenant.slug, target=Target("tenant", slug),
               data={"name": name, "jurisdiction": jurisdiction})
    return tenant


def tenant_set_status(*, actor, tenant: Tenant, status: str) -> Tenant:
    require_platform_admin(actor)
    if status not in Tenant.Status.values:
        raise Invalid(f"Status must be one of: {', '.join(Tenant.Status.values)}.", field="status")
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if tenant.status == status:
            return tenant
        previous, tenant.status = tenant.status, status
        tenant.save(update_fields=["status"])
        record(action="tenant.status_change", actor=actor_for(actor), tenant=tenant.slug,
               target=Target("tenant", tenant.slug), data={"from": previous, "to": status})
    return tenant


# Memberships ---------------------------------------------------------------------------


def membership_grant(*, actor, tenant: Tenant, user: User, role: str, proposal: int | None = None) -> Membership:
    """Give ``user`` a role in ``tenant``, or change the role they hold there.

    Making someone a tenant admin loosens who governs the tenant, so it takes two people:
    it is refused here, and proposed instead (policies/admins.py). ``proposal`` is the id of
    the confirmed proposal, passed only by that proposal's write path."""
    _require_known_role(role)
    with transaction.atomic():
        # A confirmed proposal was checked for who may propose and confirm it.
        require_governing(actor, tenant, platform_may=proposal is not None)
        bind_rls(tenant_id=tenant.pk)
        _lock_admins(tenant)
        membership = Membership.objects.select_for_update().filter(tenant=tenant, user=user).first()
        if membership is not None and membership.role == role:
            return membership
        if role == Role.TENANT_ADMIN and proposal is None:
            raise Conflict(_admin_grant_needs_proposal(tenant), code="admin_grant_needs_proposal", field="role")
        data = {"username": user.username, "role": role, **_platform_marker(actor),
                **({"proposal": proposal} if proposal is not None else {})}
        if membership is None:
            membership = Membership.objects.create(tenant=tenant, user=user, role=role)
            record(action="membership.grant", actor=actor_for(actor), tenant=tenant.slug,
                   target=Target("membership", user.username), data=data)
            _admins_changed(tenant, role)
            return membership
        if membership.role == Role.TENANT_ADMIN:
            _refuse_last_admin_change(tenant, membership)
        previous, membership.role, membership.role_since = membership.role, role, timezone.now()
        membership.save(update_fields=["role", "role_since"])
        _revoke_tokens(actor=actor, tokens=ApiToken.objects.filter(tenant=tenant, user=user, service_account=None),
                       reason="role changed")
        record(action="membership.role_change", actor=actor_for(actor), tenant=tenant.slug,
               target=Target("membership", user.username), data={**data, "from": previous})
        _admins_changed(tenant, role, previous)
    return membership


def _admin_grant_needs_proposal(tenant: Tenant) -> str:
    return (f"Making someone a tenant admin of {tenant.slug} takes two people, so it is proposed, not granted: "
            f"POST /api/v1/tenants/{tenant.slug}/admin-proposals/ with their username, then a second tenant admin "
            "confirms it with a one-time password (on the tenant's Policy page, or through the API). While the "
            "tenant has fewer than two tenant admins, a platform admin proposes it and a second one confirms it.")


def _lock_admins(tenant: Tenant) -> None:
    """The tenant's row, locked first: who its admins are changes one writer at a time, and in
    the same order as a confirmed admin proposal takes its locks."""
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()


def _admins_changed(tenant: Tenant, *roles) -> None:
    """A change that gives or takes the tenant admin role is the next admins revision: an admin
    proposal made against an earlier one no longer applies."""
    if Role.TENANT_ADMIN in roles:
        Tenant.objects.filter(pk=tenant.pk).update(admins_revision=F("admins_revision") + 1)


def _refuse_last_admin_change(tenant, membership):
    admins = Membership.objects.filter(tenant=tenant, role=Role.TENANT_ADMIN).exclude(pk=membership.pk)
    if not admins.exists():
        raise Conflict(f"{membership.user.username} is the last tenant admin of {tenant.slug}; "
                       "appoint another before stepping down.")


def membership_revoke(*, actor, tenant: Tenant, user: User) -> None:
    """Remove ``user`` from ``tenant``; their tokens there, and their service accounts' tokens, die with it."""
    with transaction.atomic():
        require(actor, tenant, "admin")
        bind_rls(tenant_id=tenant.pk)
        _lock_admins(tenant)
        membership = Membership.objects.select_for_update().filter(tenant=tenant, user=user).first()
        if membership is None:
            raise NotFound(f"{user.username} is not a member of {tenant.slug}.")
        if membership.role == Role.TENANT_ADMIN:
            _refuse_last_admin_change(tenant, membership)
        _revoke_tokens(actor=actor, tokens=ApiToken.objects.filter(tenant=tenant, user=user),
                       reason="membership revoked")
        deactivated = list(ServiceAccount.objects.filter(tenant=tenant, owner=user, is_active=True)
                           .values_list("name", flat=True))
        ServiceAccount.objects.filter(tenant=tenant, owner=user).update(is_active=False)
        membership.delete()
        _admins_changed(tenant, membership.role)
        record(action="membership.revoke", actor=actor_for(actor), tenant=tenant.slug,
               target=Target("membership", user.username),
               data={"username": user.username, "role": membership.role,
                     "service_accounts_deactivated": deactivated, **_platform_marker(actor)})


def object_permission_grant(*, actor, tenant: Tenant, user: User, action: str) -> None:
    """Grant one explicit read permission on one tenant (for example audit access for an
    external auditor). One platform admin grants it, so it never reaches a write: developing,
    deciding and administering come only from a membership (docs/roles.md)."""
    require_platform_admin(actor)
    if action not in GRANTABLE_ACTIONS:
        raise Invalid(f"An explicit grant is one of: {', '.join(GRANTABLE_ACTIONS)}; the power to change a tenant "
                      "comes from a membership, which its tenant admins give.", field="action")
    with transaction.atomic():
        permission = Permission.objects.get(codename=permission_codename(action),
                                            content_type=ContentType.objects.get_for_model(Tenant))
        _, created = UserObjectPermission.objects.get_or_create(
            user=user, permission=permission, content_type=permission.content_type, object_pk=str(tenant.pk))
        if created:
            record(action="object_permission.grant", actor=actor_for(actor), tenant=tenant.slug,
                   target=Target("user", user.username), data={"action": action})


# Service accounts and tokens -----------------------------------------------------------


def service_account_create(*, actor, tenant: Tenant, name: str, role: str) -> ServiceAccount:
    """A developer (or admin) creates a pipeline identity that they own and answer for."""
    _require_known_role(role, allowed=SERVICE_ACCOUNT_ROLES)
    if token_of(actor) is not None:
        raise Forbidden("Service accounts are created by a person, not with a token.")
    account = ServiceAccount(tenant=tenant, name=name, owner=actor, role=role)
    clean_or_invalid(account)
    with transaction.atomic():
        require(actor, tenant, "develop" if role == Role.DEVELOPER else "admin")
        bind_rls(tenant_id=tenant.pk)
        if ServiceAccount.objects.filter(tenant=tenant, name=name).exists():
            raise Conflict(f"A service account named {name} already exists in {tenant.slug}.", field="name")
        account.save()
        record(action="service_account.create", actor=actor_for(actor), tenant=tenant.slug,
               target=Target("service_account", name), data={"role": role, "owner": actor.username})
    return account


def token_issue(*, actor, tenant: Tenant, name: str, expires_in_days: int = DEFAULT_TOKEN_DAYS,
                service_account: ServiceAccount | None = None) -> tuple[ApiToken, str]:
    """Issue a token and return it with its plaintext, which is never stored or shown again.

    A personal token carries the issuer's current role in the tenant. A service account's
    token carries the account's role and acts for its owner; only the owner or a tenant
    admin may issue one.
    """
    if token_of(actor) is not None:
        raise Forbidden("Tokens are issued by a person, not with another token.")
    if not name or len(name) > 100:
        raise Invalid("Give the token a name of 1 to 100 characters.", field="name")
    if not isinstance(expires_in_days, int) or not 1 <= expires_in_days <= MAX_TOKEN_DAYS:
        raise Invalid(f"Expiry must be between 1 and {MAX_TOKEN_DAYS} days.", field="expires_in_days")
    with transaction.atomic():
        require(actor, tenant, "view")
        if not tenant.is_active:
            raise TenantSuspended(f"Tenant {tenant.slug} is suspended: no new tokens are issued.")
        bind_rls(user_id=actor.pk, tenant_id=tenant.pk)
        if service_account is not None:
            if service_account.tenant_id != tenant.pk or not service_account.is_active:
                raise NotFound("No such service account.", field="service_account")
            if service_account.owner_id != actor.pk:
                require(actor, tenant, "admin")
            owner, role = service_account.owner, service_account.role
        else:
            role = role_in(actor, tenant)
            if role is None:
                raise Forbidden("Platform admins use their session, not tenant tokens.")
            owner = actor
        public_id, plaintext = new_token_plaintext()
        token = ApiToken.objects.create(
            tenant=tenant, user=owner, service_account=service_account, name=name, role=role,
            public_id=public_id, key_hash=hash_token_secret(plaintext),
            expires_at=timezone.now() + timedelta(days=expires_in_days),
        )
        record(action="token.issue", actor=actor_for(actor), tenant=tenant.slug, target=Target("token", public_id),
               data={"name": name, "role": role, "expires_at": token.expires_at.isoformat(),
                     "service_account": service_account.name if service_account else ""})
    return token, plaintext


def token_revoke(*, actor, token: ApiToken) -> ApiToken:
    """Revoke a token: its holder may, and so may a tenant admin."""
    with transaction.atomic():
        tenant = token.tenant
        require(actor, tenant, "view")
        if token.user_id != actor.pk:
            require(actor, tenant, "admin")
        bind_rls(tenant_id=tenant.pk)
        _revoke_tokens(actor=actor, tokens=ApiToken.objects.filter(pk=token.pk), reason="revoked")
        token.refresh_from_db()
    return token


def _revoke_tokens(*, actor, tokens, reason: str) -> None:
    now = timezone.now()
    for token in tokens.select_for_update().filter(revoked_at__isnull=True).select_related("tenant"):
        token.revoked_at = now
        token.save(update_fields=["revoked_at"])
        record(action="token.revoke", actor=actor_for(actor), tenant=token.tenant.slug,
               target=Target("token", token.public_id), data={"reason": reason, "name": token.name})


def service_account_named(*, actor, tenant: Tenant, name: str | None) -> ServiceAccount | None:
    """The tenant's service account called ``name`` as ``actor`` may see it (None for no name)."""
    if not name:
        return None
    account = ServiceAccount.objects.restrict(actor, "view").filter(tenant=tenant, name=name).first()
    if account is None:
        raise NotFound("No such service account.", field="service_account")
    return account


def user_by_username(username: str) -> User:
    user = User.objects.filter(username=username, is_active=True).first()
    if user is None:
        raise NotFound(f"No user named {username}.", field="username")
    return user



# GPU flavors (platform admins only; quotas are a governed setting: policies/quotas.py) ----


def gpu_flavor_create(*, actor, name: str, memory_gb: int, billing_weight, description: str = "") -> GpuFlavor:
    require_platform_admin(actor)
    flavor = GpuFlavor(name=name, memory_gb=memory_gb, billing_weight=billing_weight, description=description)
    clean_or_invalid(flavor)
    with transaction.atomic():
        if GpuFlavor.objects.filter(name=name).exists():
            raise Conflict(f"A GPU flavor named {name} already exists.", field="name")
        flavor.save()
        record(action="gpu_flavor.create", actor=actor_for(actor), target=Target("gpu_flavor", name),
               data={"memory_gb": memory_gb, "billing_weight": str(flavor.billing_weight), "description": description})
    return flavor


def gpu_flavor_update(*, actor, flavor: GpuFlavor, **changes) -> GpuFlavor:
    """Change a flavor's description, billing weight or whether it is offered. Its name and
    memory size are what specs and quotas refer to, so they never change."""
    require_platform_admin(actor)
    allowed = {"description", "billing_weight", "is_active"}
    if set(changes) - allowed:
        field = sorted(set(changes) - allowed)[0]
        raise Invalid(f"{field} cannot be changed; create a new flavor instead.", field=field)
    with transaction.atomic():
        flavor = GpuFlavor.objects.select_for_update().get(pk=flavor.pk)
        before = {key: str(getattr(flavor, key)) for key in changes}
        for key, value in changes.items():
            setattr(flavor, key, value)
        clean_or_invalid(flavor)
        flavor.save(update_fields=list(changes) or None)
        record(action="gpu_flavor.update", actor=actor_for(actor), target=Target("gpu_flavor", flavor.name),
               data={"from": before, "to": {key: str(value) for key, value in changes.items()}})
    return flavor
