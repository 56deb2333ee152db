from celery import shared_task

from .admission import admission_cycle


@shared_task(name="runners.admission_cycle", ignore_result=True)
def admission_cycle_task():
    """Beat runs this every ADMISSION_INTERVAL_SECONDS, and each new run wakes it; idempotent."""
    result = admission_cycle()
    return {"admitted": result.admitted, "waiting": result.waiting}
