"""`manage.py runner discover|register|heartbeat|start`: a GPU node finds its devices, announces
itself, and (start) executes the runs admitted to it, listening on its own queue."""

import json
import logging
import socket
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.log import denials_recorded
from runners.discovery import DeclarationInvalid, discover
from runners.sandbox import SandboxUnavailable
from runners.services import runner_heartbeat, runner_register
from tenants.errors import DomainError


class Command(BaseCommand):
    help = "Discover this node's GPUs, register the node, or send one heartbeat."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="subcommand", required=True)
        sub.add_parser("discover", help="Print the GPUs this machine offers, as JSON.")
        sub.add_parser("register", help="Register (or update) this node with its GPUs.")
        sub.add_parser("heartbeat", help="Tell the platform this node is alive.")
        start = sub.add_parser("start", help="Register, then execute the runs admitted to this node until stopped.")
        start.add_argument("--loglevel", default="INFO")

    def handle(self, *args, subcommand, **options):
        try:
            with denials_recorded():
                getattr(self, f"_{subcommand}")(**options)
        except (DeclarationInvalid, DomainError, SandboxUnavailable) as exc:
            raise CommandError(str(getattr(exc, "detail", exc))) from None

    @staticmethod
    def _hostname() -> str:
        return settings.RUNNER_HOSTNAME or socket.getfqdn()

    def _discover(self, **options):
        found = discover(settings.RUNNER_GPU_DEVICES)
        self.stdout.write(json.dumps({"source": found.source, "detail": found.detail,
                                      "devices": [d.__dict__ for d in found.devices]}, indent=2))

    def _register(self, **options):
        for name in ("RUNNER_FLAVOR", "RUNNER_REGION", "RUNNER_JURISDICTION"):
            if not getattr(settings, name):
                raise CommandError(f"Set {name} to register this node (see docs/operators.md, 'Runner nodes').")
        node = runner_register(hostname=self._hostname(), flavor_name=settings.RUNNER_FLAVOR,
                               discovery=discover(settings.RUNNER_GPU_DEVICES), region=settings.RUNNER_REGION,
                               jurisdiction=settings.RUNNER_JURISDICTION)
        self.stdout.write(f"Registered {node.hostname}: {len(node.device_ids)} x {node.flavor.name} "
                          f"({node.discovered_by}: {', '.join(node.device_ids)}), queue {node.queue}.")
        return node

    def _start(self, *, loglevel, **options):
        """Register, keep the node's heartbeat, and run a Celery worker on the node's queue
        only. One thread per device (and one more for runs without GPUs): a run's steps are
        subprocesses, so threads are enough."""
        from neocloud.celery import app
        from runners.sandbox import bwrap_path
        from runners.tasks import THIS_NODE

        bwrap_path()  # no sandbox, no runner
        node = self._register()
        THIS_NODE["hostname"] = node.hostname
        threading.Thread(target=self._keep_heartbeat, args=(node.hostname,), daemon=True,
                         name="runner-heartbeat").start()
        app.worker_main(["worker", "--queues", node.queue, "--pool", "threads",
                         "--concurrency", str(len(node.device_ids) + 1), "--hostname", f"runner@{node.hostname}",
                         "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", loglevel])

    @staticmethod
    def _keep_heartbeat(hostname: str) -> None:
        from django.db import close_old_connections

        interval = max(1.0, settings.RUNNER_HEARTBEAT_TIMEOUT_SECONDS / 3)
        stop = threading.Event()
        while not stop.wait(interval):
            try:
                runner_heartbeat(hostname=hostname)
            except Exception:  # the database is away for a moment: the next beat tries again
                logging.getLogger(__name__).warning("heartbeat failed", exc_info=True)
            finally:
                close_old_connections()

    def _heartbeat(self, **options):
        runner_heartbeat(hostname=self._hostname())
        self.stdout.write("ok")
