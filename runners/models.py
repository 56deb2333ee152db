"""Runner nodes (platform-wide) and runs (tenant data): what executes where."""

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants.models import GpuFlavor, Tenant
from tenants.querysets import TenantOwnedQuerySet


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


class RunState(models.TextChoices):
    PENDING = "pending"  # recorded; the admission cycle has not looked at it yet
    QUEUED = "queued"  # waiting for quota or capacity
    ADMITTED = "admitted"  # holds devices on one node
    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


WAITING_STATES = (RunState.PENDING, RunState.QUEUED)
UNCLAIMED_STATES = (RunState.ADMITTED, RunState.DISPATCHED)  # hold devices; no worker has claimed them yet
HOLDING_STATES = (*UNCLAIMED_STATES, RunState.RUNNING)  # these hold devices


class Run(models.Model):
    """One execution of a workflow version in a stage. Only the admission cycle (platform
    role) moves it from waiting to admitted, reserving ``device_ids`` on ``node``."""

    public_id = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey("workflows.WorkflowVersion", on_delete=models.PROTECT, related_name="runs")
    stage = models.CharField(max_length=16)
    parameters = models.JSONField(default=dict)
    priority = models.IntegerField(default=0)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    flavor = models.ForeignKey(GpuFlavor, on_delete=models.PROTECT, related_name="+", null=True, blank=True)
    gpus = models.PositiveIntegerField(default=0)
    max_runtime_seconds = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=RunState.choices, default=RunState.PENDING)
    reason = models.CharField(max_length=1000, blank=True, default="")  # why it waits, or how it ended
    node = models.ForeignKey(RunnerNode, on_delete=models.PROTECT, related_name="runs", null=True, blank=True)
    device_ids = models.JSONField(default=list)
    fencing_token = models.PositiveBigIntegerField(default=0)
    idempotency_key = models.CharField(max_length=200, blank=True, default="")
    request_digest = models.CharField(max_length=71, blank=True, default="")
    requeues = models.PositiveIntegerField(default=0)  # times a dead or silent worker gave it back
    lease_expires_at = models.DateTimeField(null=True, blank=True)  # the holder renews it; the reaper ends it
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    preempt_requested_at = models.DateTimeField(null=True, blank=True)  # borrowed devices are being reclaimed
    preemptions = models.PositiveIntegerField(default=0)  # not counted against RUN_MAX_REQUEUES
    log_bytes = models.PositiveBigIntegerField(default=0)  # kept in RunLogChunk, up to RUN_LOG_MAX_BYTES
    log_dropped_bytes = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    admitted_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "priority", "created_at"]),
                   models.Index(fields=["node", "state"])]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "idempotency_key"], condition=~models.Q(idempotency_key=""),
                                    name="one_run_per_idempotency_key"),
        ]

    def __str__(self):
        return f"run {self.public_id} ({self.state})"

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_STATES


FINISHED_STATES = (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.LOST)


class StepState(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # an earlier step failed, or the run was cancelled first
    CANCELLED = "cancelled"


class RunStep(models.Model):
    """One step of one attempt at a run (a requeued run starts its steps again)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    fencing_token = models.PositiveBigIntegerField()  # which admission of the run this belongs to
    position = models.PositiveIntegerField()  # dependency order
    name = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=StepState.choices, default=StepState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    exit_code = models.IntegerField(null=True, blank=True)
    reason = models.CharField(max_length=1000, blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["run", "fencing_token", "position"]
        constraints = [models.UniqueConstraint(fields=["run", "fencing_token", "name"], name="one_step_per_attempt")]


class RunLogChunk(models.Model):
    """A piece of a run's combined step output, in order; the API streams these."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="log_chunks")
    step = models.CharField(max_length=64, blank=True, default="")  # empty: the run's own lines (inputs, outputs)
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["run", "id"]


class DispatchOutbox(models.Model):
    """Transactional outbox: written in the transaction that admits a run, published to the
    node's queue after commit, and published again by the sweeper if the process died first."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="+")
    fencing_token = models.PositiveBigIntegerField()
    queue = models.CharField(max_length=300)
    created_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["published_at", "created_at"])]
        constraints = [models.UniqueConstraint(fields=["run", "fencing_token"], name="one_dispatch_per_admission")]


class UsageEntry(models.Model):
    """The append-only usage ledger: one row per admission of a run that held GPUs, written
    once when that admission ends (finished, cancelled, or reaped). GPU-seconds x the flavor's
    billing weight is what chargeback bills."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    flavor = models.ForeignKey(GpuFlavor, on_delete=models.PROTECT, related_name="+")
    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="usage")
    fencing_token = models.PositiveBigIntegerField()
    month = models.DateField()  # the first day of the calendar month (UTC) the usage ended in
    gpus = models.PositiveIntegerField()
    seconds = models.DecimalField(max_digits=14, decimal_places=3)
    gpu_seconds = models.DecimalField(max_digits=16, decimal_places=3)
    weight = models.DecimalField(max_digits=8, decimal_places=3)
    weighted_gpu_seconds = models.DecimalField(max_digits=18, decimal_places=3)
    recorded_at = models.DateTimeField(default=timezone.now)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-recorded_at", "-id"]
        indexes = [models.Index(fields=["tenant", "flavor", "month"])]
        constraints = [models.UniqueConstraint(fields=["run", "fencing_token"], name="one_usage_entry_per_admission")]


class BudgetAlert(models.Model):
    """A soft-mode budget crossed a threshold (80 or 100 percent) in a month: recorded once,
    audited, and shown on the quota page."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    flavor = models.ForeignKey(GpuFlavor, on_delete=models.PROTECT, related_name="+")
    month = models.DateField()
    threshold = models.PositiveSmallIntegerField()  # percent of the budget
    gpu_hours_used = models.DecimalField(max_digits=14, decimal_places=3)
    gpu_hours_budget = models.PositiveIntegerField()
    raised_at = models.DateTimeField(default=timezone.now)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-raised_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "flavor", "month", "threshold"],
                                               name="one_budget_alert_per_threshold_and_month")]
