import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "neocloud.settings")

app = Celery("neocloud")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def schedule_platform_jobs(sender, **kwargs):
    from django.conf import settings

    sender.add_periodic_task(
        settings.AUDIT_SEQUENCER_INTERVAL_SECONDS,
        sender.signature("audit.sequence_pending"),
        name="audit sequencer",
    )
    sender.add_periodic_task(
        settings.PROMOTION_EXPIRY_INTERVAL_SECONDS,
        sender.signature("workflows.expire_promotions"),
        name="promotion expiry",
    )
    sender.add_periodic_task(
        settings.ADMISSION_INTERVAL_SECONDS,
        sender.signature("runners.admission_cycle"),
        name="admission cycle",
    )
