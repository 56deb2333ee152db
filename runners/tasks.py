from celery import shared_task

from .admission import ADMISSION_CYCLE, admission_cycle
from .dispatch import EXECUTE_RUN
from .executor import execute

# Set by `manage.py runner start`: the node this worker process executes runs for. A worker
# that is not a runner (the platform's own) refuses run messages outright.
THIS_NODE: dict = {"hostname": None}


@shared_task(name=ADMISSION_CYCLE, ignore_result=True)
def admission_cycle_task():
    """Beat runs this every ADMISSION_INTERVAL_SECONDS, and each new run wakes it; idempotent.
    It also publishes outbox rows a dead process left unsent and reaps expired leases."""
    result = admission_cycle()
    return {"admitted": result.admitted, "waiting": result.waiting, "published": result.published,
            "reaped": result.reaped}


# Acknowledged on receipt (acks_late off): the database is the recovery path, through the
# run's lease and the reaper, because broker redelivery comes too late for long runs or
# kills them. No Celery time limit: each step has its own timeout.
@shared_task(name=EXECUTE_RUN, ignore_result=True, acks_late=False, time_limit=None,
             soft_time_limit=None)
def execute_run_task(*, run: str, fencing_token: int, hostname: str):
    this_node = THIS_NODE["hostname"]
    return execute(run_id=run, fencing_token=fencing_token, hostname=this_node or f"(not a runner: {hostname})")
