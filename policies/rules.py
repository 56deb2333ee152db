"""The rules the promotion policy reports, with their baseline enforcement level.

The Rego is the authority on what a rule checks; this catalogue is what tenant policy data
and waivers are validated against (a test checks the two agree).
"""

LEVELS = ("advisory", "soft-mandatory", "hard-mandatory")

RULES = {
    "baseline.stage_known": ("hard-mandatory", "The stage is development, staging or production."),
    "baseline.input_shape": ("hard-mandatory", "The policy input has the expected types."),
    "baseline.artifacts_signed": ("hard-mandatory", "Every artifact is signed and verified under the trust configuration."),
    "baseline.separation_of_duties": ("hard-mandatory", "No approver is the requester or the version's author."),
    "baseline.min_approvals": ("hard-mandatory", "Enough approvals from distinct people (pending until then)."),
    "baseline.gpu_quota": ("hard-mandatory", "The GPUs the version asks for fit the tenant's quota per flavor."),
    "baseline.base_model_allowed": ("soft-mandatory", "The base model is on the tenant's allow-list."),
    "baseline.dataset_residency": ("hard-mandatory", "Every dataset region is inside the tenant's jurisdiction."),
    "baseline.staging_before_production": ("hard-mandatory", "Production only after staging."),
    "baseline.metrics_thresholds": ("soft-mandatory", "Signed evaluation metrics meet the tenant's thresholds."),
    "tenant.max_gpus": ("soft-mandatory", "The tenant's own cap on GPUs per version."),
    "tenant.allowed_regions": ("soft-mandatory", "Datasets only from the tenant's allowed regions."),
}


def rank(level: str) -> int:
    return LEVELS.index(level)


def is_waivable(rule: str) -> bool:
    """Tenant rules and soft-mandatory baseline rules; never a hard-mandatory baseline rule."""
    level = RULES.get(rule, (None,))[0]
    return rule.startswith("tenant.") or level == "soft-mandatory"
