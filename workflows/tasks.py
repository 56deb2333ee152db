from celery import shared_task

from .promotions import promotions_expire


@shared_task(name="workflows.expire_promotions", ignore_result=True)
def expire_promotions():
    """Beat runs this every PROMOTION_EXPIRY_INTERVAL_SECONDS; it is idempotent."""
    return promotions_expire()
