# Unit tests for the promotion baseline; run them with `manage.py policy test` (real OPA).
package neocloud.platform.promotion_test

import data.neocloud.platform.promotion

good := {
	"stage": "production",
	"version": {
		"digest": "sha256:v1",
		"author": "alice",
		"artifacts": [
			{"digest": "sha256:model", "kind": "model", "verified": true, "identity": "ci@acme.example"},
			{"digest": "sha256:metrics", "kind": "metrics", "verified": true, "identity": "ci@acme.example"},
		],
		"gpus": {"h100": 2},
		"base_model": "mistralai/Mistral-7B",
		"dataset_regions": ["eu", "eu-west1"],
		"dataset_jurisdictions": {"eu": "eu", "eu-west1": "eu"},
	},
	"tenant": {
		"jurisdiction": "eu",
		"quota": {"h100": 4},
		"policy": {
			"min_approvals": 2,
			"base_model_allowlist": ["mistralai/*"],
			"metrics_thresholds": {"accuracy": 0.9},
		},
	},
	"metrics": {"accuracy": 0.93},
	"metrics_artifact": "sha256:metrics",
	"approvals": [{"user": "bob"}, {"user": "carol"}],
	"requester": "alice",
	"stages_reached": ["development", "staging"],
	"now": "2025-06-01T12:00:00+00:00",
}

rules(d) := {v.rule | some v in d.violations}

test_good_production_promotion_is_allowed if {
	d := promotion.decision with input as good
	d.allow == true
	count(d.violations) == 0
}

test_unsigned_artifact_denies if {
	inp := json.patch(good, [{"op": "replace", "path": "/version/artifacts/0/verified", "value": false}])
	d := promotion.decision with input as inp
	d.allow == false
	"baseline.artifacts_signed" in rules(d)
}

test_missing_approvals_are_pending_not_deny if {
	inp := json.patch(good, [{"op": "replace", "path": "/approvals", "value": [{"user": "bob"}]}])
	d := promotion.decision with input as inp
	d.allow == true
	some v in d.violations
	v.rule == "baseline.min_approvals"
	v.pending == true
}

test_production_floor_is_two_even_if_tenant_says_one if {
	inp := json.patch(good, [
		{"op": "replace", "path": "/tenant/policy/min_approvals", "value": 1},
		{"op": "replace", "path": "/approvals", "value": [{"user": "bob"}]},
	])
	promotion.required_approvals == 2 with input as inp
}

test_staging_needs_one_development_none if {
	promotion.required_approvals == 1 with input as json.patch(good, [{"op": "replace", "path": "/stage", "value": "staging"}])
	promotion.required_approvals == 0 with input as json.patch(good, [{"op": "replace", "path": "/stage", "value": "development"}])
}

test_gpu_over_quota_denies if {
	inp := json.patch(good, [{"op": "replace", "path": "/version/gpus", "value": {"h100": 8}}])
	d := promotion.decision with input as inp
	d.allow == false
	"baseline.gpu_quota" in rules(d)
}

test_base_model_outside_allowlist_denies if {
	inp := json.patch(good, [{"op": "replace", "path": "/version/base_model", "value": "meta-llama/Llama-3-8B"}])
	d := promotion.decision with input as inp
	d.allow == false
	"baseline.base_model_allowed" in rules(d)
}

test_dataset_outside_jurisdiction_denies if {
	inp := json.patch(good, [{"op": "replace", "path": "/version/dataset_regions", "value": ["us-east-1"]}])
	d := promotion.decision with input as inp
	d.allow == false
	"baseline.dataset_residency" in rules(d)
}

test_production_needs_staging_first if {
	inp := json.patch(good, [{"op": "replace", "path": "/stages_reached", "value": ["development"]}])
	d := promotion.decision with input as inp
	d.allow == false
	"baseline.staging_before_production" in rules(d)
}

test_metrics_below_threshold_denies_in_production if {
	inp := json.patch(good, [{"op": "replace", "path": "/metrics/accuracy", "value": 0.5}])
	d := promotion.decision with input as inp
	d.allow == false
	"baseline.metrics_thresholds" in rules(d)
}

test_production_metrics_from_a_platform_signed_staging_run_need_no_tenant_signature if {
	inp := json.patch(good, [
		{"op": "replace", "path": "/metrics_artifact", "value": "sha256:staging-run-metrics"},
		{"op": "add", "path": "/metrics_run", "value": "0b6f6c9e-5a43-4c38-9a5e-1c2d3e4f5a6b"},
	])
	d := promotion.decision with input as inp
	not "baseline.metrics_thresholds" in rules(d)
}

test_an_unsigned_metrics_artifact_without_a_staging_run_is_not_trusted if {
	inp := json.patch(good, [{"op": "replace", "path": "/metrics_artifact", "value": "sha256:staging-run-metrics"}])
	d := promotion.decision with input as inp
	"baseline.metrics_thresholds" in rules(d)
}

test_metrics_below_threshold_is_advisory_in_development if {
	inp := json.patch(good, [
		{"op": "replace", "path": "/metrics/accuracy", "value": 0.5},
		{"op": "replace", "path": "/stage", "value": "development"},
	])
	d := promotion.decision with input as inp
	d.allow == true
	some v in d.violations
	v.rule == "baseline.metrics_thresholds"
	v.level == "advisory"
}

test_self_approval_denies if {
	inp := json.patch(good, [{"op": "replace", "path": "/approvals", "value": [{"user": "alice"}, {"user": "bob"}, {"user": "carol"}]}])
	d := promotion.decision with input as inp
	d.allow == false
	"baseline.separation_of_duties" in rules(d)
}

test_unknown_stage_denies if {
	d := promotion.decision with input as json.patch(good, [{"op": "replace", "path": "/stage", "value": "prod"}])
	d.allow == false
	"baseline.stage_known" in rules(d)
}

test_empty_input_denies if {
	d := promotion.decision with input as {}
	d.allow == false
}

test_wrong_types_deny if {
	d := promotion.decision with input as json.patch(good, [{"op": "replace", "path": "/version/artifacts", "value": "all signed"}])
	d.allow == false
	"baseline.input_shape" in rules(d)
}

test_tenant_raises_a_level_but_cannot_lower_one if {
	raised := json.patch(good, [
		{"op": "add", "path": "/tenant/policy/rule_levels", "value": {"baseline.base_model_allowed": "hard-mandatory"}},
		{"op": "replace", "path": "/version/base_model", "value": "meta-llama/Llama-3-8B"},
	])
	r := promotion.decision with input as raised
	some v in r.violations
	v.rule == "baseline.base_model_allowed"
	v.level == "hard-mandatory"
	lowered := json.patch(good, [
		{"op": "add", "path": "/tenant/policy/rule_levels", "value": {"baseline.dataset_residency": "advisory"}},
		{"op": "replace", "path": "/version/dataset_regions", "value": ["us-east-1"]},
	])
	d := promotion.decision with input as lowered
	d.allow == false
	some w in d.violations
	w.rule == "baseline.dataset_residency"
	w.level == "hard-mandatory"
}

test_an_exemption_lifts_a_soft_violation if {
	inp := json.patch(good, [
		{"op": "replace", "path": "/version/base_model", "value": "meta-llama/Llama-3-8B"},
		{"op": "add", "path": "/exemptions", "value": [{"rule": "baseline.base_model_allowed"}]},
	])
	d := promotion.decision with input as inp
	d.allow == true
	some v in d.violations
	v.rule == "baseline.base_model_allowed"
	v.exempt == true
}

test_an_exemption_never_lifts_a_hard_violation if {
	inp := json.patch(good, [
		{"op": "replace", "path": "/version/dataset_regions", "value": ["us-east-1"]},
		{"op": "add", "path": "/exemptions", "value": [{"rule": "baseline.dataset_residency"}]},
	])
	d := promotion.decision with input as inp
	d.allow == false
	some v in d.violations
	v.rule == "baseline.dataset_residency"
	v.exempt == false
}

test_rollback_needs_one_approval_unless_the_tenant_asks_more if {
	promotion.required_approvals == 1 with input as json.patch(good, [{"op": "add", "path": "/kind", "value": "rollback"}])
	promotion.required_approvals == 2 with input as json.patch(good, [
		{"op": "add", "path": "/kind", "value": "rollback"},
		{"op": "add", "path": "/tenant/policy/rollback_min_approvals", "value": 2},
	])
}

test_tenant_rules_tighten if {
	inp := json.patch(good, [
		{"op": "add", "path": "/tenant/policy/max_gpus", "value": {"h100": 1}},
		{"op": "add", "path": "/tenant/policy/allowed_regions", "value": ["eu-west-1"]},
	])
	d := promotion.decision with input as inp
	d.allow == false
	"tenant.max_gpus" in rules(d)
	"tenant.allowed_regions" in rules(d)
}
