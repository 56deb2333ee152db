"""What counts as loosening a governed setting: a change after which some request that was
refused or held would be allowed. Each setting declares its order here, one function per
field taking (before, after) and returning a sentence per loosening part; a change whose
direction cannot be decided counts as loosening. Anything else is tightening or no change.

The directions follow policies/rego/platform/promotion.rego: an empty base-model allow-list
allows no base model, an empty region list allows any region of the jurisdiction, a flavor
with no cap has none, a metric with no threshold is not checked.
"""

import hashlib

from .rules import rank


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def lower_is_looser(field: str):
    """An approval count: fewer people is looser."""
    def order(before, after) -> list[str]:
        return [f"{field} {before} → {after}"] if after < before else []
    order.__name__ = field
    return order


def base_model_allowlist(before: list, after: list) -> list[str]:
    # Whether a new glob matches anything the old ones did not is undecidable in general, so
    # any added pattern loosens; removing one only ever refuses more.
    return [f"adds base-model pattern {p}" for p in after if p not in before]


def _bounds(field: str, noun: str, before: dict, after: dict, *, looser) -> list[str]:
    """A map of bounds (a minimum per metric, a cap per flavor): removing one, or moving it the
    way ``looser(old, new)`` says, loosens."""
    changes = []
    for key, bound in before.items():
        if key not in after:
            changes.append(f"removes the {key} {noun} ({_number(bound)})")
        elif looser(bound, after[key]):
            changes.append(f"{field}.{key} {_number(bound)} → {_number(after[key])}")
    return changes


def metrics_thresholds(before: dict, after: dict) -> list[str]:
    return _bounds("metrics_thresholds", "threshold", before, after, looser=lambda old, new: new < old)


def allowed_regions(before: list, after: list) -> list[str]:
    if not before:  # already any region of the jurisdiction
        return []
    if not after:
        return ["allows any region of the jurisdiction (the list becomes empty)"]
    return [f"adds allowed region {r}" for r in after if r not in before]


def max_gpus(before: dict, after: dict) -> list[str]:
    return _bounds("max_gpus", "cap", before, after, looser=lambda old, new: new > old)


def rule_levels(before: dict, after: dict) -> list[str]:
    changes = []
    for rule, level in before.items():
        if rule not in after:
            changes.append(f"removes the raised level of {rule} ({level})")
        elif rank(after[rule]) < rank(level):
            changes.append(f"rule_levels.{rule} {level} → {after[rule]}")
    return changes


POLICY_DATA = {
    "min_approvals": lower_is_looser("min_approvals"),
    "rollback_min_approvals": lower_is_looser("rollback_min_approvals"),
    "base_model_allowlist": base_model_allowlist,
    "metrics_thresholds": metrics_thresholds,
    "allowed_regions": allowed_regions,
    "max_gpus": max_gpus,
    "rule_levels": rule_levels,
}


# Trust configuration: every entry trusts a signer more; removing one only trusts less, and a
# changed value (another key under the same id) may trust signatures the old one did not.

def pem_fingerprint(pem: str) -> str:
    """How a PEM is named in sentences and audit events."""
    return "sha256:" + hashlib.sha256(pem.strip().encode()).hexdigest()[:16]


def public_keys(before: dict, after: dict) -> list[str]:
    changes = []
    for key_id, pem in after.items():
        if key_id not in before:
            changes.append(f"adds trusted key {key_id}")
        elif pem.strip() != before[key_id].strip():
            changes.append(f"replaces key {key_id}'s PEM (direction undecidable)")
    return changes


def ca_roots(before: list, after: list) -> list[str]:
    known = {pem.strip() for pem in before}
    return [f"adds CA root {pem_fingerprint(pem)}" for pem in after if pem.strip() not in known]


def allowed_identities(before: list, after: list) -> list[str]:
    return [f"adds allowed certificate identity {i}" for i in after if i not in before]


def sigstore_identities(before: list, after: list) -> list[str]:
    known = [list(pair) for pair in before]
    return [f"adds Sigstore identity {pair[0]} (issuer {pair[1]})" for pair in after if list(pair) not in known]


TRUST = {
    "public_keys": public_keys,
    "ca_roots": ca_roots,
    "allowed_identities": allowed_identities,
    "sigstore_identities": sigstore_identities,
}


# Tenant admins: every added one may loosen every governed setting with another admin; a
# removed one only takes a voice away.

def admins(before: list, after: list) -> list[str]:
    return [f"makes {username} a tenant admin" for username in after if username not in before]


ADMINS = {"admins": admins}


# GPU quotas, per flavor: more GPUs of the tenant's own or to borrow, a larger monthly budget
# or none, or a hard budget made soft admits a run that was held and passes baseline.gpu_quota
# for a version that failed it. A flavor without a quota allows nothing.

NO_QUOTA = {"nominal": 0, "borrowing_limit": 0, "gpu_hours_budget": 0, "budget_mode": "hard"}


def gpu_quotas(before: dict, after: dict) -> list[str]:
    changes = []
    for flavor, new in after.items():
        old = before.get(flavor, NO_QUOTA)
        for field in ("nominal", "borrowing_limit"):
            if new[field] > old[field]:
                changes.append(f"{flavor}.{field} {old[field]} → {new[field]}")
        budget_before, budget_after = old["gpu_hours_budget"], new["gpu_hours_budget"]
        if budget_before is not None and (budget_after is None or budget_after > budget_before):
            changes.append(f"{flavor}.gpu_hours_budget {budget_before} → "
                           f"{'none' if budget_after is None else budget_after}")
        if budget_after is not None and old["budget_mode"] == "hard" and new["budget_mode"] != "hard":
            changes.append(f"{flavor}.budget_mode hard → {new['budget_mode']}")
    return changes


QUOTAS = {"quotas": gpu_quotas}


def loosening(orders: dict, before: dict, after: dict) -> list[str]:
    """Every loosening part of changing ``before`` into ``after`` (both hold every field of ``orders``)."""
    return [sentence for field, order in orders.items() for sentence in order(before[field], after[field])]
