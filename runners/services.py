"""Domain functions for runner nodes: registration, heartbeats, and operator state changes."""

from django.db import transaction
from django.utils import timezone

from audit.log import Actor, Target, record
from tenants.access import actor_for, is_platform_admin
from tenants.errors import Forbidden, Invalid, NotFound, clean_or_invalid
from tenants.models import GpuFlavor, region_in_jurisdiction

from .discovery import Discovery
from .models import NodeState, RunnerNode


def runner_register(*, hostname: str, flavor_name: str, discovery: Discovery, region: str,
                    jurisdiction: str) -> RunnerNode:
    """A node announces itself with the devices it found; a known node updates its record.
    The node's own process calls this (actor: the system), so it is audited as such."""
    if not discovery.devices:
        raise Invalid(f"No GPU to offer: {discovery.detail or 'nothing was found'}. Set RUNNER_GPU_DEVICES "
                      "on a machine without NVML.", field="devices")
    if not region_in_jurisdiction(region, jurisdiction):
        raise Invalid(f"Region {region} is not inside jurisdiction {jurisdiction}.", field="region")
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
