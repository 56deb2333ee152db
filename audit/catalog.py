"""The catalogue of audit action types.

An action type, once shipped, keeps its name and meaning: exports and auditors' queries
depend on it. Add new types; never rename or reuse one.
"""

ACTIONS = {
    # platform scope
    "tenant.create": "A platform admin created a tenant.",
    "tenant.status_change": "A platform admin suspended or re-activated a tenant.",
    "platform.tenant_access": "A platform admin read or acted inside a tenant.",
    "platform_admin.create": "A platform admin account was created.",
    "user.create": "A user account was created.",
    "object_permission.grant": "A platform admin granted a user an explicit permission on a tenant.",
    "object_permission.revoke": "A platform admin withdrew an explicit permission on a tenant.",
    "gpu_flavor.create": "A platform admin added a GPU flavor.",
    "gpu_flavor.update": "A platform admin changed a GPU flavor's description, billing weight or availability.",
    "tenant_quota.set": "A platform admin set a tenant's GPU quota for one flavor.",
    # tenant scope
    "membership.grant": "A user was given a role in a tenant.",
    "membership.role_change": "A member's role in a tenant changed.",
    "membership.revoke": "A user's membership of a tenant was removed.",
    "service_account.create": "A service account was created for a tenant.",
    "service_account.deactivate": "A service account was deactivated.",
    "token.issue": "An API token was issued.",
    "token.revoke": "An API token was revoked.",
    "workflow.create": "A workflow was created by registering its first version.",
    "workflow_version.register": "An immutable workflow version was registered.",
    "artifact.register": "An artifact was registered and its bytes checked into the store.",
    "artifact.file_upload": "One file of a model directory was uploaded, to be assembled later.",
    "trust_config.update": "A tenant admin changed the tenant's trust configuration for signatures.",
    "policy.decide": "A policy was evaluated and its decision stored (outcome: success allow, denied deny, failed engine error).",
    "signature.verify": "A signature was verified against the tenant's trust configuration (outcome says how).",
    # authentication
    "auth.login": "A person signed in with a password and a verified one-time password.",
    "auth.login_failed": "A sign-in failed: wrong username or password.",
    "auth.locked_out": "A sign-in was refused because of repeated failures.",
    "auth.otp_failed": "A one-time password was wrong or throttled.",
    "auth.logout": "A person signed out.",
    "otp.device_enrol": "A person confirmed a new TOTP device.",
    # refusals recorded after the refused work rolled back
    "request.denied": "A request was refused (not found, forbidden, unauthenticated, or invalid).",
}

OUTCOMES = ("success", "denied", "failed")


def is_catalogued(action: str) -> bool:
    return action in ACTIONS
