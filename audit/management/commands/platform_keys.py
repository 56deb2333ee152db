"""Manage the platform's signing keys: create them, rotate, list."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.keys import Keyring, KeyringError, platform_keyring, read_kek, write_new_kek


class Command(BaseCommand):
    help = "The platform's signing keys: 'init' creates them (and, in development, the KEK), 'rotate', 'list'."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="subcommand", required=True)
        sub.add_parser("init", help="Create the keyring (and in development a KEK) if they do not exist.")
        sub.add_parser("rotate", help="Retire the active key and make a new one; old signatures keep verifying.")
        sub.add_parser("list", help="List key ids and when they were created and retired.")

    def handle(self, *args, subcommand, **options):
        try:
            getattr(self, f"_{subcommand}")()
        except KeyringError as exc:
            raise CommandError(str(exc)) from None

    def _init(self):
        kek_path, keyring_path = settings.PLATFORM_KEK_FILE, settings.PLATFORM_KEYRING_FILE
        if not kek_path.exists():
            if settings.PRODUCTION:
                raise CommandError(f"In production the key-encryption key must be provided at {kek_path}.")
            write_new_kek(kek_path)
            self.stdout.write(f"Created a key-encryption key at {kek_path}.")
        kek = read_kek(kek_path)
        if keyring_path.exists():
            key = Keyring.load(keyring_path, kek).active()
            self.stdout.write(f"Platform keyring ready; active key {key.kid}.")
            return
        key = Keyring.create(keyring_path, kek).active()
        self.stdout.write(f"Created the platform keyring at {keyring_path}; active key {key.kid}.")

    def _rotate(self):
        key = platform_keyring().rotate()
        self.stdout.write(f"Active platform key is now {key.kid}; earlier keys are retired and still verify.")

    def _list(self):
        for key in platform_keyring().keys():
            state = f"retired {key.retired_at}" if key.retired_at else "active"
            self.stdout.write(f"{key.kid}  created {key.created_at}  {state}")
