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
    "user.rename": "An operator gave a person's account a new username (from and to are in the event).",
    "object_permission.grant": "A platform admin granted a user an explicit permission on a tenant.",
    "object_permission.revoke": "A platform admin withdrew an explicit permission on a tenant.",
    "gpu_flavor.create": "A platform admin added a GPU flavor.",
    "gpu_flavor.update": "A platform admin changed a GPU flavor's description, billing weight or availability.",
    "catalogue.jurisdiction_create": "A platform admin added a jurisdiction to the platform's catalogue.",
    "catalogue.region_create": "A platform admin proposed a region, with its jurisdiction, for the platform's catalogue.",
    "catalogue.region_accept": "A second platform admin accepted a proposed region: it is in force from now.",
    "tenant_quota.set": "A tenant's GPU quota for one flavor was set: a cut by a platform admin, a raise once a "
                        "second platform admin confirmed it.",
    "request.denied_repeated": "The same refusal met again by the same caller in one window: how many times.",
    "request.throttled": "A caller (or a source address) met too many distinct refusals in one window and is "
                         "answered 429 until it ends.",
    "audit.verify": "A platform admin checked the whole log against checkpoints kept outside the platform.",
    "audit.export": "An auditor or admin downloaded the tenant's verifiable audit export.",
    "audit.evidence_pack": "An auditor or admin downloaded a promotion's evidence pack.",
    "audit.checkpoint": "The platform signed a checkpoint of the audit tree, with a head per tenant.",
    "runner.register": "A runner node registered (or updated) itself with the GPUs it found.",
    "run.request": "A developer asked for a run; it passed the run policy and waits for admission.",
    "run.queue": "The admission cycle could not admit a run yet (quota or capacity); the reason says why.",
    "run.admit": "The admission cycle reserved devices on one node for a run, within the tenant's quota.",
    "run.claim_refused": ("A runner refused a run message: the run's devices are reserved on another node, or the "
                          "node lies outside the run's tenant's jurisdiction."),
    "run.input_refused": ("A runner refused to copy a run's input: not a stored artifact of the run's tenant, or "
                          "stored in a region outside the node's jurisdiction. The run fails before any step."),
    "run.start": "A runner claimed an admitted run with its fencing token and started its steps.",
    "run.finish": ("A run ended: on its runner (succeeded, failed with the step and why, or cancelled), or "
                   "cancelled by the reaper when its worker died after a cancellation was asked for."),
    "run.cancel": "A member asked to cancel a run; a waiting run ends at once, a running one when its runner sees it.",
    "run.preempt": "Admission asked a borrowing tenant's run to give its devices back to a tenant reclaiming its nominal quota.",
    "run.output": "A run's output was stored, registered as an artifact and given a platform-signed provenance statement.",
    "run.requeue": "The reaper took a run back from a node that did not claim it or stopped renewing its lease.",
    "run.lost": "The reaper gave up on a run that had been requeued the most times allowed.",
    "run.budget_stop": "A hard-mode GPU-hour budget ran out: the platform stopped the tenant's running runs of that flavor.",
    "quota.budget_alert": "A soft-mode GPU-hour budget passed 80% or 100% of the month's GPU-hours.",
    "tenant.run_priority_range_set": "A platform admin set the run priorities a tenant's admins may give workflows.",
    "workflow.run_priority_set": "A tenant admin set the priority of a workflow's runs, inside the tenant's range.",
    "platform.chargeback_read": "A platform admin read (or exported) every tenant's GPU usage for a month.",
    "runner.state_change": "A platform admin drained a runner node, took it down, or made it ready again.",
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
    "artifact.access_refused": ("A request named a digest its tenant holds no artifact (or uploaded file) for: an "
                                "unknown digest or another tenant's, recorded alike. A digest alone grants no bytes."),
    "trust_config.update": "A tenant admin changed the tenant's trust configuration for signatures.",
    "policy.decide": "A policy was evaluated and its decision stored (outcome: success allow, denied deny, failed engine error).",
    "signature.verify": "A signature was verified against the tenant's trust configuration (outcome says how).",
    "signature.revoke": "A signer left the tenant's trust configuration, so a verification it backed no longer counts.",
    "policy.baseline_propose": "A platform admin proposed the platform baseline revision now running for acceptance.",
    "policy.baseline_accept": ("A second platform admin accepted a platform baseline revision with a fresh one-time "
                               "password; promotions may be decided under it from then on."),
    "policy.replay": "An operator re-evaluated stored decisions under a candidate policy (nothing was changed).",
    "policy.candidate_evaluate": ("A member dry-ran a candidate policy through the what-if API; the event holds its "
                                  "module digests and the outcome, and nothing else was stored."),
    "policy.candidate_refused": ("A candidate policy called or imported a builtin that is not on the allow-list; it "
                                 "was refused before it compiled, and the event names the builtin, how, file and line."),
    "tenant_policy.update": "A tenant admin wrote a new revision of the tenant's policy data.",
    "governed_change.propose": ("A tenant admin asked for a change that loosens a governed setting (policy data or "
                                "trust configuration); it waits for a second tenant admin. The event holds the "
                                "diff digest, base revision and what loosens."),
    "governed_change.confirm": ("A second tenant admin confirmed a loosening proposal with a one-time password, "
                                "against its diff digest and base revision; the setting's next revision was written."),
    "governed_change.void": ("A loosening proposal became void unconfirmed: its setting changed after it was proposed, "
                             "or its proposer no longer held the tenant admin role."),
    "waiver.request": "A tenant admin asked for a waiver of one policy rule.",
    "waiver.approve": "A second person approved a waiver, with a one-time password.",
    "waiver.revoke": "A waiver was withdrawn before its expiry.",
    "promotion.request": "Someone asked to move a workflow version into a stage (or roll a stage back).",
    "promotion.check": "A promotion request was evaluated against policy; the outcome moves its state.",
    "promotion.approve": "An approver approved a promotion with a fresh one-time password.",
    "promotion.reject": "An approver rejected a promotion with a fresh one-time password.",
    "promotion.withdraw": "The requester or a tenant admin withdrew an open promotion request.",
    "promotion.expire": "An open promotion request passed its expiry and closed.",
    "promotion.promote": "A stage pointer moved to a version after a final policy allow; the attestation was signed.",
    "promotion.override_request": "A tenant admin asked to override one soft-mandatory violation, with a justification.",
    "promotion.override_confirm": "A second person confirmed an override, with a one-time password.",
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
