"""``migrate`` runs as the owner role: the schema belongs to it, and the app role only
uses it. Running it against another alias would record migrations without applying them."""

from django.core.management.base import CommandError
from django.core.management.commands.migrate import Command as DjangoMigrate

from tenants.db import OWNER_ALIAS


class Command(DjangoMigrate):
    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.set_defaults(database=OWNER_ALIAS)

    def handle(self, *args, **options):
        if options["database"] != OWNER_ALIAS:
            raise CommandError(f"Migrations run as the owner role, on the '{OWNER_ALIAS}' database alias only.")
        return super().handle(*args, **options)
