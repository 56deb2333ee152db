import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.keys import KeyringError
from audit.sequencer import PLATFORM_ALIAS, sequence_all
from audit.witnessing import witness_latest
from audit.verify import verify_log


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = ("Audit log tools: 'verify' re-checks every hash, position and checkpoint; 'sequence' sequences "
            "pending events now; 'checkpoint' signs one now; 'public-key' prints the checkpoint key.")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="subcommand", required=True)
        verify = sub.add_parser("verify", help="Recompute every hash and check the sequence for gaps.")
        verify.add_argument("--max-unsequenced", type=int, default=None,
                            help="Seconds an event may stay unsequenced (default AUDIT_MAX_UNSEQUENCED_SECONDS).")
        verify.add_argument("--witness-key", action="append", default=[], metavar="NAME=PUBLIC_KEY_FILE",
                            help="A witness whose cosignature on the latest checkpoint is checked; may be given more "
                                 "than once.")
        verify.add_argument("--require-witness", action="store_true",
                            help="Fail unless every witness given co-signed the latest checkpoint.")
        verify.add_argument("--checkpoint", action="append", type=Path, default=[], metavar="FILE",
                            help="A signed checkpoint kept outside the platform (a file, or a folder of them) that "
                                 "the log must still match; may be given more than once.")
        sub.add_parser("sequence", help="Sequence every committed event that is still pending.")
        sub.add_parser("checkpoint", help="Sequence what is pending and sign a checkpoint now.")
        public_key = sub.add_parser("public-key", help="Print the checkpoint public key (PEM) with its key id.")
        public_key.add_argument("--all", action="store_true",
                                help="Print every platform key, retired ones included (older checkpoints' keys).")
        export = sub.add_parser("export", help="Write a tenant's verifiable audit export to a folder.")
        export.add_argument("--tenant", required=True)
        export.add_argument("--since", type=_moment, help="ISO date or time: leave out earlier events")
        export.add_argument("--until", type=_moment, help="ISO date or time: end at the last checkpoint by then")
        export.add_argument("-o", "--output", required=True, type=Path)

    def handle(self, *args, subcommand, **options):
        try:
            self._handle(subcommand, **options)
        except KeyringError as exc:  # no keys yet: say which file is missing and how to make it
            raise CommandError(str(exc)) from None

    def _handle(self, subcommand, **options):
        if subcommand == "public-key":
            from audit.checkpointing import checkpoint_public_keys

            key = checkpoint_public_keys()
            for each in key["keys"] if options["all"] else [key]:
                state = f", retired {each['retired_at']}" if each.get("retired_at") else ""
                self.stdout.write(f"# key id {each['key_id']}, key hint {each['key_hint']}, "
                                  f"origin {key['origin']}{state}")
                self.stdout.write(each["public_key_pem"].rstrip("\n"))
            return
        if subcommand == "export":
            from audit.export import NothingToExport, export_files, write_folder

            try:
                files = export_files(tenant=options["tenant"], since=options["since"], until=options["until"],
                                     using=PLATFORM_ALIAS)
            except NothingToExport as exc:
                raise CommandError(str(exc)) from None
            write_folder(files, options["output"])
            manifest = json.loads(files["manifest.json"])
            self.stdout.write(f"Exported {manifest['events']} event(s) of {options['tenant']} up to checkpoint "
                              f"{manifest['tree_size']} to {options['output']}.")
            return
        if subcommand == "checkpoint":
            from audit.checkpointing import checkpoint_write

            sequence_all()
            checkpoint = checkpoint_write(using=PLATFORM_ALIAS)
            if checkpoint is None:
                self.stdout.write("Nothing new since the last checkpoint.")
            else:
                self.stdout.write(f"Checkpoint {checkpoint.tree_size}: root {checkpoint.root_hash}.")
            for witness, outcome in witness_latest(using=PLATFORM_ALIAS).items():
                self.stdout.write(f"Witness {witness}: {outcome}.")
            return
        if subcommand == "sequence":
            self.stdout.write(f"Sequenced {sequence_all()} event(s).")
            return
        bound = options["max_unsequenced"]
        if bound is None:
            bound = settings.AUDIT_MAX_UNSEQUENCED_SECONDS
        kept = kept_notes(options["checkpoint"])
        report = verify_log(max_unsequenced=timedelta(seconds=bound), kept=kept)
        if not report.ok:
            raise CommandError(f"Audit log is not intact at {report.problems[0].sentence()}.")
        matched = f"; it matches the {len(kept)} checkpoint(s) kept outside" if kept else ""
        witnessed = self._witnessed(options["witness_key"], required=options["require_witness"])
        self.stdout.write(f"Audit log intact: {report.leaves} sequenced event(s), {report.unsequenced} awaiting "
                          f"the sequencer{matched}; {witnessed}.")

    def _witnessed(self, keys: list[str], *, required: bool) -> str:
        from audit.models import AuditCheckpoint
        from audit.verify_export import InputUnreadable, witness_keys_of
        from audit.witness import witness_statement
        from audit.witnessing import cosigned_note

        try:
            witness_keys = witness_keys_of(keys)
        except InputUnreadable as exc:
            raise CommandError(str(exc)) from None
        latest = AuditCheckpoint.objects.using(PLATFORM_ALIAS).order_by("-tree_size").first()
        if latest is None:
            if required:
                raise CommandError("No checkpoint has been signed yet, so none is witnessed.")
            return "no checkpoint yet, so not witnessed"
        sentence, ok = witness_statement(cosigned_note(latest, using=PLATFORM_ALIAS), witness_keys)
        if required and not ok:
            raise CommandError(f"Audit log intact, but {sentence}.")
        return sentence


def kept_notes(paths: list[Path]) -> list[str]:
    """The signed notes in ``paths``: each a file holding one, or a folder of such files."""
    from audit.verify_export import InputUnreadable, read_input

    files = []
    for path in paths:
        files += sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    try:
        return [read_input(file, "kept checkpoint") for file in files]
    except InputUnreadable as exc:
        raise CommandError(str(exc)) from None
