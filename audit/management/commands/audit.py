from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.sequencer import sequence_pending
from audit.verify import verify_log


class Command(BaseCommand):
    help = "Audit log tools: 'verify' re-checks every hash and position; 'sequence' sequences pending events now."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="subcommand", required=True)
        verify = sub.add_parser("verify", help="Recompute every hash and check the sequence for gaps.")
        verify.add_argument("--max-unsequenced", type=int, default=None,
                            help="Seconds an event may stay unsequenced (default AUDIT_MAX_UNSEQUENCED_SECONDS).")
        sub.add_parser("sequence", help="Sequence every committed event that is still pending.")

    def handle(self, *args, subcommand, **options):
        if subcommand == "sequence":
            total = 0
            while done := sequence_pending(batch=settings.AUDIT_SEQUENCER_BATCH):
                total += done
            self.stdout.write(f"Sequenced {total} event(s).")
            return
        bound = options["max_unsequenced"]
        if bound is None:
            bound = settings.AUDIT_MAX_UNSEQUENCED_SECONDS
        report = verify_log(max_unsequenced=timedelta(seconds=bound))
        if not report.ok:
            raise CommandError(f"Audit log is not intact at {report.problems[0].sentence()}.")
        self.stdout.write(
            f"Audit log intact: {report.leaves} sequenced event(s), {report.unsequenced} awaiting the sequencer."
        )
