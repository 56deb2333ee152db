"""Domain functions for runner nodes (registration, heartbeats, operator state changes) and
run priorities (the tenant's range, each workflow's priority)."""

from django.db import transaction
from django.utils import timezone

from audit.log import Actor, Target, record
from tenants.access import actor_for, is_platform_admin, require
from tenants.db import bind_rls
from tenants.errors import Forbidden, Invalid, NotFound, clean_or_invalid
from tenants.catalogue import jurisdiction_problem, residency_problem
from tenants.models import GpuFlavor, Tenant
from workflows.models import Workflow

from .discovery import Discovery
from .models import NodeState, RunnerNode


def runner_register(*, hostname: str, flavor_name: str, discovery: Discovery, region: str,
                    jurisdiction: str) -> RunnerNode:
    """A node announces itself with the devices it found; a known node updates its record.
    The node's own process calls this (actor: the system), so it is audited as such."""
    if not discovery.devices:
        raise Invalid(f"No GPU to offer: {discovery.detail or 'nothing was found'}. Set RUNNER_GPU_DEVICES "
                      "on a machine without NVML.", field="devices")
    problem = jurisdiction_problem(jurisdiction)
    if problem:
        raise Invalid(problem, field="jurisdiction")
    problem = residency_problem(region, jurisdiction, whose="the node's")
    if problem:
        raise Invalid(problem, field="region")
    flavor = GpuFlavor.objects.filter(name=flavor_name, is_active=True).first()
    if flavor is None:
        raise Invalid(f"There is no active GPU flavor {flavor_name}.", field="flavor")
    values = {"flavor": flavor, "device_ids": [d.id for d in discovery.devices],
              "device_names": [f"{d.name} {d.memory_mb} MiB".strip() if d.name else "" for d in discovery.devices],
              "discovered_by": discovery.source, "region": region, "jurisdiction": jurisdiction}
    probe = RunnerNode(hostname=hostname, **values)
    clean_or_invalid(probe, exclude=["flavor"])
    with transaction.atomic():
        node = RunnerNode.objects.select_for_update().filter(hostname=hostname).first()
        now = timezone.now()
        if node is None:
            node = RunnerNode.objects.create(hostname=hostname, registered_at=now, last_heartbeat_at=now, **values)
        else:
            for field, value in values.items():
                setattr(node, field, value)
            node.last_heartbeat_at = now
            node.save()
        record(action="runner.register", actor=Actor.system("runner"), target=Target("runner_node", hostname),
               data={"flavor": flavor.name, "devices": node.device_ids, "discovered_by": discovery.source,
                     "region": region, "jurisdiction": jurisdiction, "state": node.state})
    return node


def runner_heartbeat(*, hostname: str) -> None:
    """One conditional UPDATE: a node nobody registered has nothing to refresh. Not audited: a
    heartbeat is liveness, not a change anyone decided."""
    if not RunnerNode.objects.filter(hostname=hostname).update(last_heartbeat_at=timezone.now()):
        raise NotFound(f"No runner node {hostname} is registered.")


def runner_set_state(*, actor, node: RunnerNode, state: str) -> RunnerNode:
    """Platform admins drain a node or take it down (and bring it back)."""
    if not is_platform_admin(actor):
        raise Forbidden("Only a platform admin may change a runner node's state.")
    if state not in NodeState.values:
        raise Invalid(f"A node state is one of {', '.join(NodeState.values)}.", field="state")
    with transaction.atomic():
        node = RunnerNode.objects.select_for_update().get(pk=node.pk)
        before, node.state = node.state, state
        node.save(update_fields=["state"])
        record(action="runner.state_change", actor=actor_for(actor), target=Target("runner_node", node.hostname),
               data={"from": before, "to": state})
    return node


PRIORITY_LIMIT = 1000  # priorities are small integers; this bounds what a range may span


def _whole(value, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not -PRIORITY_LIMIT <= value <= PRIORITY_LIMIT:
        raise Invalid(f"{field} is a whole number from {-PRIORITY_LIMIT} to {PRIORITY_LIMIT}.", field=field)
    return value


def tenant_run_priority_range_set(*, actor, tenant: Tenant, minimum: int, maximum: int) -> Tenant:
    """Platform admins bound the run priorities a tenant's admins may give its workflows.
    Workflows set outside a new range are clamped into it when their runs are requested."""
    if not is_platform_admin(actor):
        raise Forbidden("Only a platform admin may set a tenant's run priority range.")
    minimum, maximum = _whole(minimum, "minimum"), _whole(maximum, "maximum")
    if minimum > maximum:
        raise Invalid("minimum may not be above maximum.", field="minimum")
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        before = [tenant.run_priority_min, tenant.run_priority_max]
        tenant.run_priority_min, tenant.run_priority_max = minimum, maximum
        tenant.save(update_fields=["run_priority_min", "run_priority_max"])
        record(action="tenant.run_priority_range_set", actor=actor_for(actor), tenant=tenant.slug,
               target=Target("tenant", tenant.slug), data={"from": before, "to": [minimum, maximum]})
    return tenant


def workflow_run_priority_set(*, actor, workflow: Workflow, priority: int | None) -> Workflow:
    """A tenant admin gives a workflow's runs a priority inside the tenant's range (None: the
    range's lowest). Requesters never choose a run's priority themselves."""
    if priority is not None:
        priority = _whole(priority, "priority")
    with transaction.atomic():
        tenant = Tenant.objects.get(pk=workflow.tenant_id)
        require(actor, tenant, "admin")
        bind_rls(tenant_id=tenant.pk)
        if priority is not None and not tenant.run_priority_min <= priority <= tenant.run_priority_max:
            raise Invalid(f"priority must be within the tenant's range, {tenant.run_priority_min} to "
                          f"{tenant.run_priority_max}; a platform admin sets the range.", field="priority")
        workflow = Workflow.objects.select_for_update().get(pk=workflow.pk)
        before, workflow.run_priority = workflow.run_priority, priority
        workflow.save(update_fields=["run_priority"])
        record(action="workflow.run_priority_set", actor=actor_for(actor), tenant=tenant.slug,
               target=Target("workflow", workflow.name), data={"from": before, "to": priority})
    return workflow


def run_priority_for(workflow: Workflow, tenant: Tenant) -> int:
    """What a new run of the workflow gets: its priority, clamped into the tenant's range now."""
    wanted = tenant.run_priority_min if workflow.run_priority is None else workflow.run_priority
    return min(max(wanted, tenant.run_priority_min), tenant.run_priority_max)
