# Platform baseline for promotions (development -> staging -> production).
#
# Written in the subset of Rego that regopy (rego-cpp) and OPA agree on:
# optional fields are read with object.get defaults, messages are built with
# concat (numbers through format_int), builtin arguments are type-guarded,
# and the request time comes in the input. See docs/policies.md for the input.
package neocloud.platform.promotion

# Approvals the platform requires at each stage; a tenant may ask for more in production.
approval_floor := {"development": 0, "staging": 1, "production": 2}

stage := object.get(input, "stage", "")

version := as_object(object.get(input, "version", {}))

tenant := as_object(object.get(input, "tenant", {}))

policy_data := as_object(object.get(tenant, "policy", {}))

requester := object.get(input, "requester", "")

author := object.get(version, "author", "")

artifacts := as_array(object.get(version, "artifacts", []))

gpus := as_object(object.get(version, "gpus", {}))

quota := as_object(object.get(tenant, "quota", {}))

jurisdiction := object.get(tenant, "jurisdiction", "")

dataset_regions := as_array(object.get(version, "dataset_regions", []))

dataset_jurisdictions := as_object(object.get(version, "dataset_jurisdictions", {}))

base_model := object.get(version, "base_model", "")

allowlist := as_array(object.get(policy_data, "base_model_allowlist", []))

thresholds := as_object(object.get(policy_data, "metrics_thresholds", {}))

metrics := as_object(object.get(input, "metrics", {}))

metrics_artifact := object.get(input, "metrics_artifact", "")

approvals := as_array(object.get(input, "approvals", []))

stages_reached := as_array(object.get(input, "stages_reached", []))

# Type guards: a value of the wrong type reads as empty (and input_shape reports it).
as_object(x) := x if is_object(x)

as_object(x) := {} if not is_object(x)

as_array(x) := x if is_array(x)

as_array(x) := [] if not is_array(x)

as_number(x) := x if is_number(x)

as_number(x) := 0 if not is_number(x)

as_string(x) := x if is_string(x)

as_string(x) := "" if not is_string(x)

num(n) := format_int(as_number(n), 10)

# Tenant policy data may raise a rule's level (rule id -> level), never lower it.
level_rank := {"advisory": 0, "soft-mandatory": 1, "hard-mandatory": 2}

rule_levels := as_object(object.get(policy_data, "rule_levels", {}))

effective_level(rule, base) := raised if {
	raised := as_string(object.get(rule_levels, rule, base))
	object.get(level_rank, raised, -1) > object.get(level_rank, base, 0)
}

effective_level(rule, base) := base if {
	raised := as_string(object.get(rule_levels, rule, base))
	object.get(level_rank, raised, -1) <= object.get(level_rank, base, 0)
}

# Rules exempted for this request by an active waiver or a confirmed override. Only a
# soft-mandatory violation can be exempt; a hard-mandatory one never is.
exempt_rules := {r |
	some e in as_array(object.get(input, "exemptions", []))
	r := as_string(object.get(as_object(e), "rule", ""))
}

is_exempt(rule, level) if {
	level == "soft-mandatory"
	rule in exempt_rules
}

exempt(rule, level) := true if is_exempt(rule, level)

exempt(rule, level) := false if not is_exempt(rule, level)

violation(rule, level, message, pending) := {
	"rule": rule, "level": lvl, "message": message, "pending": pending,
	"exempt": exempt(rule, lvl),
} if {
	lvl := effective_level(rule, level)
}

# --- baseline.stage_known -------------------------------------------------------------

violations contains violation("baseline.stage_known", "hard-mandatory", msg, false) if {
	object.get(approval_floor, stage, -1) == -1
	msg := concat("", ["unknown stage '", as_string(stage), "': expected development, staging or production"])
}

# --- baseline.input_shape -------------------------------------------------------------

typed_fields := [
	["version", object.get(input, "version", {}), "object"],
	["version.artifacts", object.get(version, "artifacts", []), "array"],
	["version.gpus", object.get(version, "gpus", {}), "object"],
	["version.dataset_regions", object.get(version, "dataset_regions", []), "array"],
	["version.dataset_jurisdictions", object.get(version, "dataset_jurisdictions", {}), "object"],
	["tenant", object.get(input, "tenant", {}), "object"],
	["tenant.quota", object.get(tenant, "quota", {}), "object"],
	["tenant.policy", object.get(tenant, "policy", {}), "object"],
	["tenant.policy.base_model_allowlist", object.get(policy_data, "base_model_allowlist", []), "array"],
	["tenant.policy.metrics_thresholds", object.get(policy_data, "metrics_thresholds", {}), "object"],
	["metrics", object.get(input, "metrics", {}), "object"],
	["tenant.policy.rule_levels", object.get(policy_data, "rule_levels", {}), "object"],
	["tenant.policy.max_gpus", object.get(policy_data, "max_gpus", {}), "object"],
	["tenant.policy.allowed_regions", object.get(policy_data, "allowed_regions", []), "array"],
	["approvals", object.get(input, "approvals", []), "array"],
	["exemptions", object.get(input, "exemptions", []), "array"],
	["stages_reached", object.get(input, "stages_reached", []), "array"],
]

violations contains violation("baseline.input_shape", "hard-mandatory", msg, false) if {
	some field in typed_fields
	type_name(field[1]) != field[2]
	msg := concat("", ["input field ", field[0], " must be an ", field[2], ", got ", type_name(field[1])])
}

# --- baseline.artifacts_signed --------------------------------------------------------

violations contains violation("baseline.artifacts_signed", "hard-mandatory", msg, false) if {
	some artifact in artifacts
	object.get(as_object(artifact), "verified", false) != true
	a := as_object(artifact)
	msg := concat("", [
		"artifact ", as_string(object.get(a, "digest", "")), " (", as_string(object.get(a, "kind", "")),
		") has no signature verified against the tenant's trust roots",
	])
}

violations contains violation("baseline.artifacts_signed", "hard-mandatory", msg, false) if {
	count(artifacts) == 0
	msg := concat("", ["version ", as_string(object.get(version, "digest", "")), " has no artifacts to verify"])
}

# --- baseline.separation_of_duties ----------------------------------------------------

approvers := [u | some a in approvals; u := as_string(object.get(as_object(a), "user", "")); u != ""]

violations contains violation("baseline.separation_of_duties", "hard-mandatory", msg, false) if {
	some u in approvers
	u in {as_string(requester), as_string(author)}
	msg := concat("", ["approver ", u, " is the requester or the author of the version"])
}

# --- baseline.min_approvals (pending, never a deny on its own) ------------------------

tenant_min := as_number(object.get(policy_data, "min_approvals", 0))

tenant_rollback_min := as_number(object.get(policy_data, "rollback_min_approvals", 0))

# A rollback (back to the version a stage held just before) has a floor of one approval.
is_rollback if object.get(input, "kind", "promotion") == "rollback"

required_approvals := max([1, tenant_rollback_min]) if is_rollback

required_approvals := max([object.get(approval_floor, "production", 2), tenant_min]) if {
	not is_rollback
	stage == "production"
}

required_approvals := object.get(approval_floor, stage, 0) if {
	not is_rollback
	stage != "production"
}

valid_approvers := {u | some u in approvers; not u in {as_string(requester), as_string(author)}}

violations contains violation("baseline.min_approvals", "hard-mandatory", msg, true) if {
	count(valid_approvers) < required_approvals
	msg := concat("", [
		as_string(stage), " needs ", num(required_approvals), " approval(s) from people other than the requester and author; has ",
		num(count(valid_approvers)),
	])
}

# --- baseline.gpu_quota ---------------------------------------------------------------

violations contains violation("baseline.gpu_quota", "hard-mandatory", msg, false) if {
	some flavor, wanted in gpus
	limit := as_number(object.get(quota, flavor, 0))
	as_number(wanted) > limit
	msg := concat("", [
		"version needs ", num(wanted), " ", flavor, " GPU(s); tenant quota (nominal + borrowing) is ", num(limit),
	])
}

# --- baseline.base_model_allowed ------------------------------------------------------

model_allowed if {
	some pattern in allowlist
	glob.match(as_string(pattern), ["/"], as_string(base_model))
}

violations contains violation("baseline.base_model_allowed", "soft-mandatory", msg, false) if {
	as_string(base_model) != ""
	not model_allowed
	msg := concat("", ["base model ", as_string(base_model), " matches no pattern of the tenant's allow-list [",
		concat(", ", [as_string(p) | some p in allowlist]), "]"])
}

# --- baseline.dataset_residency -------------------------------------------------------

# The platform's region catalogue says which jurisdiction a region is in (the input carries
# the entry of each dataset region); no prefix or pattern of the code decides it.
in_jurisdiction(region) if {
	as_string(jurisdiction) != ""
	object.get(dataset_jurisdictions, region, "") == jurisdiction
}

violations contains violation("baseline.dataset_residency", "hard-mandatory", msg, false) if {
	some r in dataset_regions
	region := as_string(r)
	not in_jurisdiction(region)
	msg := concat("", ["dataset region ", region, " is outside the tenant's jurisdiction ", as_string(jurisdiction)])
}

# --- baseline.staging_before_production -----------------------------------------------

violations contains violation("baseline.staging_before_production", "hard-mandatory", msg, false) if {
	stage == "production"
	not "staging" in stages_reached
	msg := concat("", ["version ", as_string(object.get(version, "digest", "")), " must reach staging before production"])
}

# --- tenant.max_gpus: the tenant's own cap per version, tighter than its quota -----------

tenant_max_gpus := as_object(object.get(policy_data, "max_gpus", {}))

violations contains violation("tenant.max_gpus", "soft-mandatory", msg, false) if {
	some flavor, limit in tenant_max_gpus
	wanted := as_number(object.get(gpus, flavor, 0))
	wanted > as_number(limit)
	msg := concat("", [
		"version needs ", num(wanted), " ", flavor, " GPU(s); the tenant allows at most ", num(limit), " per version",
	])
}

# --- tenant.allowed_regions: datasets only from the regions the tenant names -------------

tenant_regions := as_array(object.get(policy_data, "allowed_regions", []))

region_allowed(region) if {
	some r in tenant_regions
	as_string(r) == region
}

violations contains violation("tenant.allowed_regions", "soft-mandatory", msg, false) if {
	count(tenant_regions) > 0
	some r in dataset_regions
	region := as_string(r)
	not region_allowed(region)
	msg := concat("", ["dataset region ", region, " is not one of the tenant's allowed regions [",
		concat(", ", [as_string(x) | some x in tenant_regions]), "]"])
}

# --- baseline.metrics_thresholds (advisory in development) ----------------------------

metrics_level := "advisory" if stage == "development"

metrics_level := "soft-mandatory" if stage != "development"

verified_digests := {as_string(object.get(as_object(a), "digest", "")) |
	some a in artifacts
	object.get(as_object(a), "verified", false) == true
}

# In production the platform picks the metrics: the output of the version's latest successful
# staging run, whose provenance the platform signed and checked (metrics_run names that run).
metrics_signed_by_platform if {
	stage == "production"
	as_string(object.get(input, "metrics_run", "")) != ""
}

violations contains violation("baseline.metrics_thresholds", metrics_level, msg, false) if {
	count(thresholds) > 0
	not as_string(metrics_artifact) in verified_digests
	not metrics_signed_by_platform
	msg := concat("", ["metrics artifact ", as_string(metrics_artifact), " is not a verified artifact of this version"])
}

violations contains violation("baseline.metrics_thresholds", metrics_level, msg, false) if {
	some name, minimum in thresholds
	value := object.get(metrics, name, null)
	not is_number(value)
	msg := concat("", ["metric ", name, " is missing (threshold ", format_number(minimum), ")"])
}

violations contains violation("baseline.metrics_thresholds", metrics_level, msg, false) if {
	some name, minimum in thresholds
	value := object.get(metrics, name, null)
	is_number(value)
	value < as_number(minimum)
	msg := concat("", ["metric ", name, " is ", format_number(value), ", below the threshold ", format_number(minimum)])
}

format_number(x) := sprintf("%v", [x]) if is_number(x)

format_number(x) := "?" if not is_number(x)

# --- the decision ---------------------------------------------------------------------

blocking := [v | some v in violations; v.level != "advisory"; v.pending == false; v.exempt == false]

decision := {
	"allow": count(blocking) == 0,
	"violations": [v | some v in violations],
}
