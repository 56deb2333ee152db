"""Run requests and admission.

``run_request`` only records a pending run, after the run policy (stage, promotion and
attestation for production, revoked artifacts, GPUs within the tenant's limits).
``admission_cycle`` is the one platform job that admits runs: it sees every tenant's runs
(platform role, BYPASSRLS) and admits each in its own transaction that locks, in one fixed
order, the tenant's quota row, then the pool's nodes by id, then the run, so concurrent cycles
and submitters can never over-admit. A run's devices all come from one node in a jurisdiction
the tenant's residency allows.
"""

import hashlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from celery import current_app as celery_app
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Min, Sum
from django.utils import timezone

from audit.hashing import canonical_json
from audit.keys import platform_public_keys
from audit.log import Actor, Target, record
from tenants.access import actor_for, require
from tenants.db import PLATFORM_ALIAS, bind_rls
from tenants.errors import Conflict, Forbidden, Invalid, Unprocessable
from tenants.models import BudgetMode, GpuFlavor, Tenant, TenantQuota
from workflows.models import Promotion, PromotionState, Stage, StagePointer, WorkflowVersion
from workflows import attestations
from workflows.selectors import artifacts_with_status
from workflows.services import held_digests
from workflows.spec import gpus_by_flavor, step_timeout

from . import budgets
from .dispatch import outbox_add, outbox_sweep, reap_expired
from .models import HOLDING_STATES, WAITING_STATES, NodeState, Run, RunnerNode, RunState, UsageEntry
from .services import run_priority_for

logger = logging.getLogger(__name__)
ADMISSION_CYCLE = "runners.admission_cycle"  # the task, sent by name: domain code never imports tasks


# Requests --------------------------------------------------------------------------------


def _flavor_and_gpus(spec: dict) -> tuple[str | None, int]:
    """A run holds the most GPUs any one step asks for, of its one flavor."""
    wanted = gpus_by_flavor(spec)
    if len(wanted) > 1:
        raise Invalid(f"A run uses one GPU flavor; this version asks for {', '.join(sorted(wanted))}.",
                      field="version")
    return next(iter(wanted.items()), (None, 0))


def max_runtime_seconds(spec: dict) -> int:
    """The longest a run may take: every step's timeout times its attempts."""
    return sum(step_timeout(step) * (1 + int(step.get("retries", 0)))
               for step in spec.get("steps", []))


def _check_run_policy(*, tenant: Tenant, version: WorkflowVersion, stage: str, flavor: str | None, gpus: int) -> None:
    """The run policy: the stage allows this version, production only what was promoted there
    with an attestation that verifies and no revoked artifact, GPUs within the tenant's limits."""
    if version.uses_images:
        raise Invalid("This version has image steps; runs of them wait for a container backend.", field="version",
                      code="images_not_supported")
    inputs = version.spec.get("inputs", [])
    held = held_digests(tenant, [item["digest"] for item in inputs])
    for item in inputs:
        if item["digest"] not in held:  # a version registered before inputs had to be artifacts
            raise Forbidden(f"Input {item['name']} of version {version.number} is not an artifact of {tenant.slug}; "
                            "register a version whose inputs are uploaded artifacts.", code="run_policy_denied")
    if stage == Stage.STAGING and not Promotion.objects.filter(version=version, stage=stage,
                                                               state=PromotionState.PROMOTED).exists():
        raise Forbidden(f"Version {version.number} has not been promoted to staging.", code="run_policy_denied")
    if stage == Stage.PRODUCTION:
        pointer = StagePointer.objects.filter(workflow_id=version.workflow_id, stage=stage).first()
        if pointer is None or pointer.version_id != version.pk:
            raise Forbidden(f"Version {version.number} is not the version promoted to production.",
                            code="run_policy_denied")
        promotion = (Promotion.objects.filter(version=version, stage=stage, state=PromotionState.PROMOTED)
                     .order_by("-promoted_at").first())
        try:
            statement = attestations.verify_attestation(promotion.attestation if promotion else "",
                                                        platform_public_keys())
        except attestations.AttestationInvalid as exc:
            raise Forbidden(f"The production promotion's attestation does not verify: {exc}",
                            code="run_policy_denied") from None
        if statement["subject"][0]["digest"].get("sha256") != version.digest.removeprefix("sha256:"):
            raise Forbidden("The production attestation is for another version.", code="run_policy_denied")
        unverified = [a.digest for a, status in artifacts_with_status(version) if not status.verified]
        if unverified:
            raise Forbidden(f"Artifact {unverified[0]} is no longer verified: it was revoked or must be re-signed.",
                            code="run_policy_denied")
    if gpus:
        quota = TenantQuota.objects.filter(tenant=tenant, flavor__name=flavor).first()
        limit = quota.nominal + quota.borrowing_limit if quota else 0
        if gpus > limit:
            raise Forbidden(f"The run needs {gpus} {flavor} GPU(s); the tenant may hold at most {limit}.",
                            code="run_policy_denied")


def _request_digest(version: WorkflowVersion, stage: str, parameters: dict) -> str:
    body = canonical_json({"version": version.digest, "stage": stage, "parameters": parameters})
    return "sha256:" + hashlib.sha256(body).hexdigest()


def run_request(*, actor, tenant: Tenant, version: WorkflowVersion, stage: str, parameters: dict | None = None,
                idempotency_key: str = "") -> tuple[Run, bool]:
    """Record a pending run after the run policy; return (run, created).

    With an ``idempotency_key`` (scoped to the tenant) a retry returns the stored run
    (created False); the same key with another payload is a 422."""
    parameters = parameters or {}
    if stage not in Stage.values:
        raise Invalid(f"A stage is one of {', '.join(Stage.values)}.", field="stage")
    if not isinstance(parameters, dict):
        raise Invalid("parameters is a JSON object.", field="parameters")
    if len(idempotency_key) > 200:
        raise Invalid("An Idempotency-Key is at most 200 characters.", field="Idempotency-Key")
    digest = _request_digest(version, stage, parameters)
    with transaction.atomic():
        require(actor, tenant, "develop")
        bind_rls(tenant_id=tenant.pk)
        if idempotency_key:
            earlier = Run.objects.filter(tenant=tenant, idempotency_key=idempotency_key).first()
            if earlier is not None:
                if earlier.request_digest != digest:
                    raise Unprocessable("This Idempotency-Key was used for a different request.",
                                        field="Idempotency-Key", code="idempotency_key_reused")
                return earlier, False
        flavor_name, gpus = _flavor_and_gpus(version.spec)
        _check_run_policy(tenant=tenant, version=version, stage=stage, flavor=flavor_name, gpus=gpus)
        try:
            with transaction.atomic():
                run = Run.objects.create(
                    tenant=tenant, version=version, stage=stage, parameters=parameters, requested_by=actor,
                    priority=run_priority_for(version.workflow, tenant),
                    flavor=GpuFlavor.objects.filter(name=flavor_name).first() if flavor_name else None, gpus=gpus,
                    max_runtime_seconds=max_runtime_seconds(version.spec), idempotency_key=idempotency_key,
                    request_digest=digest)
        except IntegrityError:  # the same key, committed by a request running at the same time
            raise Conflict("A request with this Idempotency-Key is being handled; retry to get its answer.",
                           code="idempotency_key_in_flight") from None
        record(action="run.request", actor=actor_for(actor), tenant=tenant.slug, target=Target("run", run.public_id),
               data={"workflow": version.workflow.name, "version": version.number, "version_digest": version.digest,
                     "stage": stage, "flavor": flavor_name or "", "gpus": gpus})
        transaction.on_commit(wake_admission)
    return run, True


def wake_admission() -> None:
    """Ask for an admission cycle now rather than at the next beat; if the broker cannot take
    the message, beat's next cycle admits the run anyway."""
    try:
        celery_app.send_task(ADMISSION_CYCLE, retry=False)
    except Exception:
        logger.warning("could not wake the admission cycle; beat will run it", exc_info=True)


# Admission -------------------------------------------------------------------------------


@dataclass
class CycleResult:
    admitted: int = 0
    waiting: int = 0
    published: int = 0  # outbox rows a dead process had left unsent
    reaped: int = 0


def admission_cycle(*, moment=None) -> CycleResult:
    """Admit what fits, in fair order: priority, then the tenant's decayed usage relative to its
    share (nominal quota), then age. Each (tenant, flavor, priority) slice of the queue is one
    transaction; a run that fits is admitted even if one ahead of it does not (backfill), until
    the one ahead has waited ADMISSION_BACKFILL_LIMIT_SECONDS: then its pool takes nothing
    new behind it until it fits, so a large run does not starve."""
    moment = moment or timezone.now()
    result = CycleResult()
    result.published = outbox_sweep()
    result.reaped = reap_expired(moment=moment)
    budgets.enforce(moment=moment)
    slices = list(Run.objects.using(PLATFORM_ALIAS).filter(state__in=WAITING_STATES).order_by()
                  .values("tenant_id", "flavor_id", "priority").annotate(oldest=Min("created_at")))
    usage = fair_share_usage(moment=moment)
    slices.sort(key=lambda s: (-s["priority"], usage.get((s["tenant_id"], s["flavor_id"]), 0.0), s["oldest"]))
    held_pools: dict = {}
    for found in slices:
        admitted, waiting = _admit_group(found["tenant_id"], found["flavor_id"], priority=found["priority"],
                                         moment=moment, held_pools=held_pools)
        result.admitted += admitted
        result.waiting += waiting
    return result


def fair_share_usage(*, moment) -> dict[tuple[int, int], float]:
    """Each tenant's recent GPU use per flavor, decayed with a half-life of
    FAIR_SHARE_HALF_LIFE_HOURS, divided by its nominal quota (its share): lower goes first."""
    half_life = settings.FAIR_SHARE_HALF_LIFE_HOURS * 3600
    used: dict[tuple[int, int], float] = {}
    for tenant_id, flavor_id, gpu_seconds, recorded_at in (
            UsageEntry.objects.using(PLATFORM_ALIAS).filter(recorded_at__gte=moment - timedelta(seconds=8 * half_life))
            .values_list("tenant_id", "flavor_id", "gpu_seconds", "recorded_at")):
        age = max(0.0, (moment - recorded_at).total_seconds())
        used[(tenant_id, flavor_id)] = used.get((tenant_id, flavor_id), 0.0) + float(gpu_seconds) * 0.5 ** (
            age / half_life)
    for tenant_id, flavor_id, gpus, started_at in (Run.objects.using(PLATFORM_ALIAS).filter(state=RunState.RUNNING)
                                                   .exclude(flavor_id=None)
                                                   .values_list("tenant_id", "flavor_id", "gpus", "started_at")):
        used[(tenant_id, flavor_id)] = used.get((tenant_id, flavor_id), 0.0) + gpus * max(
            0.0, (moment - started_at).total_seconds())
    shares = dict(((q.tenant_id, q.flavor_id), q.nominal)
                  for q in TenantQuota.objects.using(PLATFORM_ALIAS).only("tenant_id", "flavor_id", "nominal"))
    return {key: value / max(shares.get(key, 0), 1) for key, value in used.items()}


def _admit_group(tenant_id: int, flavor_id: int | None, *, priority: int, moment,
                 held_pools: dict | None = None) -> tuple[int, int]:
    """One transaction: lock, in the fixed order, the tenant's quota row for the flavor, the
    pool's nodes by id, then the slice's waiting runs; admit them in order while they fit."""
    held_pools = {} if held_pools is None else held_pools
    with transaction.atomic(using=PLATFORM_ALIAS):
        tenant = Tenant.objects.using(PLATFORM_ALIAS).get(pk=tenant_id)
        quota = nodes = None
        if flavor_id is not None:
            quota = (TenantQuota.objects.using(PLATFORM_ALIAS).select_for_update(of=("self",))
                     .filter(tenant_id=tenant_id, flavor_id=flavor_id).order_by("id").first())
            nodes = list(RunnerNode.objects.using(PLATFORM_ALIAS).select_for_update(of=("self",))
                         .filter(flavor_id=flavor_id, jurisdiction=tenant.jurisdiction, state=NodeState.READY)
                         .order_by("id"))
        runs = list(Run.objects.using(PLATFORM_ALIAS).select_for_update(of=("self",)).select_related("flavor")
                    .filter(tenant_id=tenant_id, flavor_id=flavor_id, priority=priority, state__in=WAITING_STATES)
                    .order_by("created_at", "id"))
        if flavor_id is None:  # no GPU: nothing to reserve, but it still runs on a node in the jurisdiction
            return _admit_without_gpus(runs, tenant=tenant, moment=moment)
        limit = quota.nominal + quota.borrowing_limit if quota else 0
        held = (Run.objects.using(PLATFORM_ALIAS)
                .filter(tenant_id=tenant_id, flavor_id=flavor_id, state__in=HOLDING_STATES)
                .aggregate(total=Sum("gpus"))["total"] or 0)
        live = [n for n in nodes if n.is_live(moment)]
        taken = _devices_taken(live)
        budget_left = None  # GPU-seconds a hard-mode budget still covers
        if quota and quota.gpu_hours_budget is not None and quota.budget_mode == BudgetMode.HARD:
            budget_left = Decimal(quota.gpu_hours_budget * 3600) - budgets.committed_gpu_seconds(
                tenant_id=tenant_id, flavor_id=flavor_id, moment=moment)
        admitted = 0
        for run in runs:
            if held + run.gpus > limit:
                _wait(run, tenant=tenant, reason=f"The tenant holds {held} of its {limit} {run.flavor.name} "
                                                 f"GPU(s); this run needs {run.gpus} more.")
                continue
            need = Decimal(run.gpus * run.max_runtime_seconds)
            if budget_left is not None and need > budget_left:
                _wait(run, tenant=tenant, reason=f"The month's {run.flavor.name} GPU-hour budget has "
                      f"{max(budget_left, Decimal(0)) / 3600:.2f} GPU-hour(s) left; this run may take "
                      f"{need / 3600:.2f} ({run.gpus} GPU(s) x its maximum runtime).")
                continue
            pool = (flavor_id, tenant.jurisdiction)
            if pool in held_pools:
                ahead = held_pools[pool]
                _wait(run, tenant=tenant, reason=f"Held back: a {ahead.gpus}-GPU run ahead of it in the "
                      f"{run.flavor.name} pool has waited since {ahead.created_at:%Y-%m-%d %H:%M} UTC and goes first.")
                continue
            node, devices = _place(run, live, taken)
            if node is None and held + run.gpus <= quota.nominal:  # its own share, lent out: take it back
                reclaiming = _reclaim(run, tenant=tenant, nodes=live, taken=taken, moment=moment)
                if reclaiming:
                    _wait(run, tenant=tenant, reason=reclaiming)
                    continue
            if node is None:
                _wait(run, tenant=tenant, reason=f"No live {run.flavor.name} node in {tenant.jurisdiction} has "
                                                 f"{run.gpus} free device(s) on one machine.")
                waited = (moment - run.created_at).total_seconds()
                if waited >= settings.ADMISSION_BACKFILL_LIMIT_SECONDS and any(
                        len(n.device_ids) >= run.gpus for n in live):  # it fits once a node frees up
                    held_pools[pool] = run
                continue
            _admit(run, tenant=tenant, node=node, devices=devices, moment=moment)
            held += run.gpus
            if budget_left is not None:
                budget_left -= need
            taken.setdefault(node.pk, set()).update(devices)
            admitted += 1
        return admitted, len(runs) - admitted


def _admit_without_gpus(runs: list[Run], *, tenant: Tenant, moment) -> tuple[int, int]:
    nodes = [n for n in RunnerNode.objects.using(PLATFORM_ALIAS).select_for_update(of=("self",))
             .filter(jurisdiction=tenant.jurisdiction, state=NodeState.READY).order_by("id") if n.is_live(moment)]
    if not nodes:
        for run in runs:
            _wait(run, tenant=tenant, reason=f"No live runner node in {tenant.jurisdiction}.")
        return 0, len(runs)
    load = dict(Run.objects.using(PLATFORM_ALIAS).filter(node__in=nodes, state__in=HOLDING_STATES).order_by()
                .values("node_id").annotate(count=Count("id")).values_list("node_id", "count"))
    for run in runs:
        node = min(nodes, key=lambda n: (load.get(n.pk, 0), n.pk))
        _admit(run, tenant=tenant, node=node, devices=[], moment=moment)
        load[node.pk] = load.get(node.pk, 0) + 1
    return len(runs), 0


def _reclaim(run: Run, *, tenant: Tenant, nodes: list[RunnerNode], taken: dict, moment) -> str | None:
    """The run is within its tenant's nominal quota but no node has room: preempt runs of
    tenants that hold more than their own nominal quota (they borrow), on the one node where
    the fewest GPUs must be returned. Order: lowest priority first, then the most recently
    admitted (the least work lost). A borrower keeps what is within its nominal quota.
    Returns why the run waits, or None when reclaiming cannot make it fit."""
    holding = list(Run.objects.using(PLATFORM_ALIAS).select_for_update(of=("self",)).select_related("tenant", "node")
                   .filter(node__in=nodes, state__in=HOLDING_STATES).exclude(tenant_id=tenant.pk).order_by("id"))
    if not holding:
        return None
    nominal = dict(TenantQuota.objects.using(PLATFORM_ALIAS).filter(flavor_id=run.flavor_id, tenant_id__in={
        r.tenant_id for r in holding}).values_list("tenant_id", "nominal"))
    held_by: dict[int, int] = {}
    for other in holding:
        held_by[other.tenant_id] = held_by.get(other.tenant_id, 0) + other.gpus
    order = sorted(holding, key=lambda r: (r.priority, -(r.admitted_at or moment).timestamp(), -r.pk))
    best = None
    for node in nodes:
        free = len(node.device_ids) - len(taken.get(node.pk, set()))
        free += sum(r.gpus for r in holding if r.node_id == node.pk and r.preempt_requested_at)  # on their way out
        borrowed = {tenant_id: held_by[tenant_id] - nominal.get(tenant_id, 0) for tenant_id in held_by}
        chosen = []
        for other in order:
            if free >= run.gpus:
                break
            if other.node_id == node.pk and not other.preempt_requested_at and borrowed[other.tenant_id] > 0:
                chosen.append(other)
                free += other.gpus
                borrowed[other.tenant_id] -= other.gpus
        if free >= run.gpus and (best is None or sum(r.gpus for r in chosen) < sum(r.gpus for r in best[1])):
            best = (node, chosen)
    if best is None:
        return None
    node, chosen = best
    for other in chosen:
        _preempt(other, for_tenant=tenant, moment=moment)
    return (f"Reclaiming its nominal {run.flavor.name} quota: borrowed device(s) on {node.hostname} are being "
            f"returned (at most {settings.RUN_PREEMPTION_GRACE_SECONDS:g} s of grace).")


def _preempt(run: Run, *, for_tenant: Tenant, moment) -> None:
    """A running run is asked to stop (its worker gives the steps the grace period); one not
    yet started gives its devices back at once."""
    reason = f"Preempted: {for_tenant.slug} reclaims its nominal {run.flavor.name if run.flavor_id else ''} quota."
    record(action="run.preempt", actor=Actor.system("admission"), tenant=run.tenant.slug,
           target=Target("run", run.public_id), using=PLATFORM_ALIAS,
           data={"for_tenant": for_tenant.slug, "node": run.node.hostname, "devices": run.device_ids,
                 "fencing_token": run.fencing_token, "was": run.state})
    if run.state == RunState.RUNNING:
        run.preempt_requested_at = moment
        run.save(using=PLATFORM_ALIAS, update_fields=["preempt_requested_at"])
    else:
        requeue_preempted(run, reason=reason, using=PLATFORM_ALIAS)


def requeue_preempted(run: Run, *, reason: str, using: str) -> None:
    """Back to the queue without counting as a failure; its next admission has a new token."""
    run.state, run.reason, run.preemptions = RunState.QUEUED, f"{reason} Queued again.", run.preemptions + 1
    run.node, run.device_ids, run.lease_expires_at, run.preempt_requested_at = None, [], None, None
    run.save(using=using, update_fields=["state", "reason", "preemptions", "node", "device_ids",
                                         "lease_expires_at", "preempt_requested_at"])


def _devices_taken(nodes: list[RunnerNode]) -> dict[int, set]:
    taken = {}
    for node_id, device_ids in (Run.objects.using(PLATFORM_ALIAS).filter(node__in=nodes, state__in=HOLDING_STATES)
                                .values_list("node_id", "device_ids")):
        taken.setdefault(node_id, set()).update(device_ids)
    return taken


def _place(run: Run, nodes: list[RunnerNode], taken: dict) -> tuple[RunnerNode | None, list[str]]:
    """The node where the run fits best (fewest devices left over), and which devices."""
    best = None
    for node in nodes:
        free = [d for d in node.device_ids if d not in taken.get(node.pk, set())]
        if len(free) >= run.gpus and (best is None or len(free) < len(best[1])):
            best = (node, free)
    if best is None:
        return None, []
    return best[0], best[1][: run.gpus]


def _wait(run: Run, *, tenant: Tenant, reason: str) -> None:
    """Queue the run with why it waits. Entering the queue is audited; a reason that changes
    while it waits (the tenant's holdings move) is only an explanation and is not."""
    if run.state != RunState.QUEUED:
        record(action="run.queue", actor=Actor.system("admission"), tenant=tenant.slug,
               target=Target("run", run.public_id), using=PLATFORM_ALIAS, data={"reason": reason})
    if (run.state, run.reason) != (RunState.QUEUED, reason):
        run.state, run.reason = RunState.QUEUED, reason
        run.save(using=PLATFORM_ALIAS, update_fields=["state", "reason"])


def _admit(run: Run, *, tenant: Tenant, node, devices, moment) -> None:
    """Reserve the devices and write the dispatch message in the same transaction; the run
    must be claimed within RUN_CLAIM_TIMEOUT_SECONDS or the reaper takes it back."""
    run.state, run.reason = RunState.ADMITTED, ""
    run.node, run.device_ids, run.admitted_at = node, devices, moment
    run.lease_expires_at = moment + timedelta(seconds=settings.RUN_CLAIM_TIMEOUT_SECONDS)
    run.fencing_token += 1
    run.save(using=PLATFORM_ALIAS, update_fields=["state", "reason", "node", "device_ids", "admitted_at",
                                                  "fencing_token", "lease_expires_at"])
    outbox_add(run)
    record(action="run.admit", actor=Actor.system("admission"), tenant=tenant.slug,
           target=Target("run", run.public_id), using=PLATFORM_ALIAS,
           data={"node": node.hostname if node else "", "devices": devices, "gpus": run.gpus,
                 "flavor": run.flavor.name if run.flavor else "", "fencing_token": run.fencing_token})
