"""Give a person a new username (audited as done by manage.py).

The person is named by id, not by username: this is how a pair of lookalike usernames is told
apart, and typing one of them could reach the other."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from tenants import services
from tenants.errors import DomainError


class Command(BaseCommand):
    help = "Rename a person's account, under the username rule. The person is named by their user id."

    def add_arguments(self, parser):
        parser.add_argument("user_id", type=int)
        parser.add_argument("username")

    def handle(self, *args, user_id, username, **options):
        user = get_user_model().objects.filter(pk=user_id).first()
        if user is None:
            raise CommandError(f"There is no user with id {user_id}.")
        previous = user.username
        try:
            services.user_rename(actor=None, user=user, username=username)
        except DomainError as exc:
            raise CommandError(exc.detail)
        self.stdout.write(f"User {user_id} is now {username} (was {ascii(previous)}); they sign in with the new name.")
