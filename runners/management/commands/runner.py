"""`manage.py runner discover|register|heartbeat`: a GPU node finds its devices and announces
itself. The worker that executes runs on this node comes with the runners' dispatch."""

import json
import socket

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.log import denials_recorded
from runners.discovery import DeclarationInvalid, discover
from runners.services import runner_heartbeat, runner_register
from tenants.errors import DomainError


class Command(BaseCommand):
    help = "Discover this node's GPUs, register the node, or send one heartbeat."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="subcommand", required=True)
        sub.add_parser("discover", help="Print the GPUs this machine offers, as JSON.")
        sub.add_parser("register", help="Register (or update) this node with its GPUs.")
        sub.add_parser("heartbeat", help="Tell the platform this node is alive.")

    def handle(self, *args, subcommand, **options):
        try:
            with denials_recorded():
                getattr(self, f"_{subcommand}")()
        except (DeclarationInvalid, DomainError) as exc:
            raise CommandError(str(getattr(exc, "detail", exc))) from None

    @staticmethod
    def _hostname() -> str:
        return settings.RUNNER_HOSTNAME or socket.getfqdn()

    def _discover(self):
        found = discover(settings.RUNNER_GPU_DEVICES)
        self.stdout.write(json.dumps({"source": found.source, "detail": found.detail,
                                      "devices": [d.__dict__ for d in found.devices]}, indent=2))

    def _register(self):
        for name in ("RUNNER_FLAVOR", "RUNNER_REGION", "RUNNER_JURISDICTION"):
            if not getattr(settings, name):
                raise CommandError(f"Set {name} to register this node (see docs/operators.md, 'Runner nodes').")
        node = runner_register(hostname=self._hostname(), flavor_name=settings.RUNNER_FLAVOR,
                               discovery=discover(settings.RUNNER_GPU_DEVICES), region=settings.RUNNER_REGION,
                               jurisdiction=settings.RUNNER_JURISDICTION)
        self.stdout.write(f"Registered {node.hostname}: {len(node.device_ids)} x {node.flavor.name} "
                          f"({node.discovered_by}: {', '.join(node.device_ids)}), queue {node.queue}.")

    def _heartbeat(self):
        runner_heartbeat(hostname=self._hostname())
        self.stdout.write("ok")
