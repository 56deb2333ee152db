"""Runner nodes: the GPU machines runs execute on. Platform-wide, not tenant data."""

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants.models import GpuFlavor


class NodeState(models.TextChoices):
    READY = "ready"  # takes new runs while its heartbeat is fresh
    DRAINING = "draining"  # finishes what it holds, takes nothing new
    DOWN = "down"  # taken out by an operator


class RunnerNode(models.Model):
    """One GPU machine, its devices of one flavor, and where it is. A pool is the nodes that
    share a flavor and a jurisdiction; its capacity is the devices of its live nodes."""

    hostname = models.CharField(max_length=253, unique=True)
    flavor = models.ForeignKey(GpuFlavor, on_delete=models.PROTECT, related_name="nodes")
    device_ids = models.JSONField(default=list)  # what CUDA_VISIBLE_DEVICES will name
    device_names = models.JSONField(default=list)  # for operators: model and memory per device
    discovered_by = models.CharField(max_length=16)  # nvml or declared
    region = models.CharField(max_length=16)
    jurisdiction = models.CharField(max_length=16)
    state = models.CharField(max_length=16, choices=NodeState.choices, default=NodeState.READY)
    registered_at = models.DateTimeField(default=timezone.now)
    last_heartbeat_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["flavor__name", "jurisdiction", "hostname"]
        indexes = [models.Index(fields=["flavor", "jurisdiction", "state"])]

    def __str__(self):
        return f"{self.hostname} ({len(self.device_ids)}x {self.flavor})"

    @property
    def queue(self) -> str:
        """The Celery queue this node's worker listens on."""
        return f"runner.{self.hostname}"

    def is_live(self, moment=None) -> bool:
        moment = moment or timezone.now()
        fresh = moment - timedelta(seconds=settings.RUNNER_HEARTBEAT_TIMEOUT_SECONDS)
        return self.state == NodeState.READY and self.last_heartbeat_at > fresh
