from celery import shared_task

from .checkpointing import checkpoint_due, checkpoint_write
from .denials import flush_denial_counts
from .log import SIDE_ALIAS
from .sequencer import PLATFORM_ALIAS, sequence_all
from .witnessing import witness_latest


@shared_task(name="audit.sequence_pending", ignore_result=True)
def sequence_pending():
    """Beat runs this every AUDIT_SEQUENCER_INTERVAL_SECONDS; it is idempotent. A checkpoint
    follows when one is due."""
    total = sequence_all()
    if checkpoint_due(using=PLATFORM_ALIAS):
        checkpoint_write(using=PLATFORM_ALIAS)
    witness_latest(using=PLATFORM_ALIAS)  # a witness that missed one is asked again on every round
    flush_denial_counts(using=SIDE_ALIAS)  # one summary per refusal repeated in a closed window
    return total
