"""Read-side views of runner nodes: pools and their capacity."""

from dataclasses import dataclass, field

from django.utils import timezone

from .models import RunnerNode


@dataclass
class Pool:
    """The nodes sharing a flavor and a jurisdiction; capacity counts live nodes only."""

    flavor: str
    jurisdiction: str
    capacity: int = 0
    live_nodes: list = field(default_factory=list)
    other_nodes: list = field(default_factory=list)


def pools(moment=None) -> list[Pool]:
    moment = moment or timezone.now()
    found: dict[tuple[str, str], Pool] = {}
    for node in RunnerNode.objects.select_related("flavor"):
        pool = found.setdefault((node.flavor.name, node.jurisdiction), Pool(node.flavor.name, node.jurisdiction))
        if node.is_live(moment):
            pool.capacity += len(node.device_ids)
            pool.live_nodes.append(node.hostname)
        else:
            pool.other_nodes.append(node.hostname)
    return sorted(found.values(), key=lambda p: (p.flavor, p.jurisdiction))
