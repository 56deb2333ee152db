from celery import shared_task
from django.conf import settings

from .sequencer import sequence_pending as sequence_pending_events


@shared_task(name="audit.sequence_pending", ignore_result=True)
def sequence_pending():
    """Beat runs this every AUDIT_SEQUENCER_INTERVAL_SECONDS; it is idempotent."""
    total = 0
    while True:
        done = sequence_pending_events(batch=settings.AUDIT_SEQUENCER_BATCH)
        total += done
        if done < settings.AUDIT_SEQUENCER_BATCH:
            return total
