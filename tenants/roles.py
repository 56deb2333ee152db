"""Roles and what each may do in its tenant.

A user holds one role per tenant. An action names a capability; the choke point
(``restrict``) and the domain functions both ask ``role_allows``.
"""

from django.db import models


class Role(models.TextChoices):
    DEVELOPER = "developer", "Developer"
    APPROVER = "approver", "Approver"
    AUDITOR = "auditor", "Auditor"
    TENANT_ADMIN = "tenant_admin", "Tenant admin"


# view: read the tenant's objects; develop: register and run work; approve: decide
# promotions; audit: read the audit trail; admin: members, tokens of others, tenant data.
ACTIONS = ("view", "develop", "approve", "audit", "admin")
WRITE_ACTIONS = frozenset({"develop", "approve", "admin"})
# An explicit grant (a platform admin's, alone) only ever lets someone read a tenant: the power
# to change one comes from a membership, which the tenant's own admins govern.
GRANTABLE_ACTIONS = ("view", "audit")

ROLE_ACTIONS = {
    Role.DEVELOPER: frozenset({"view", "develop"}),
    Role.APPROVER: frozenset({"view", "approve"}),
    Role.AUDITOR: frozenset({"view", "audit"}),
    Role.TENANT_ADMIN: frozenset({"view", "audit", "admin"}),
}

# Service accounts run pipelines; they never approve or administer.
SERVICE_ACCOUNT_ROLES = (Role.DEVELOPER, Role.AUDITOR)
SERVICE_ACCOUNT_ROLE_CHOICES = [(role.value, role.label) for role in SERVICE_ACCOUNT_ROLES]


def role_allows(role: str, action: str) -> bool:
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    return action in ROLE_ACTIONS.get(role, frozenset())


def permission_codename(action: str) -> str:
    """The django-guardian object permission on Tenant that grants ``action``."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    return f"{action}_tenant"
