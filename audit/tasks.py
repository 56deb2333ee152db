from celery import shared_task
from django.conf import settings

from .checkpointing import checkpoint_due, checkpoint_write
from .sequencer import PLATFORM_ALIAS
from .sequencer import sequence_pending as sequence_pending_events


@shared_task(name="audit.sequence_pending", ignore_result=True)
def sequence_pending():
    """Beat runs this every AUDIT_SEQUENCER_INTERVAL_SECONDS; it is idempotent. A checkpoint
    follows when one is due."""
    total = 0
    while True:
        done = sequence_pending_events(batch=settings.AUDIT_SEQUENCER_BATCH)
        total += done
        if done < settings.AUDIT_SEQUENCER_BATCH:
            break
    if checkpoint_due(using=PLATFORM_ALIAS):
        checkpoint_write(using=PLATFORM_ALIAS)
    return total
