"""Print the current one-time password of a person's confirmed device (development only)."""

import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice


class Command(BaseCommand):
    help = "Print the current TOTP code for a demo user (development only)."

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, username, **options):
        if settings.PRODUCTION:
            raise CommandError("totp_code is for development only; it is refused in production.")
        device = TOTPDevice.objects.filter(user__username=username, confirmed=True).first()
        if device is None:
            raise CommandError(f"{username} has no confirmed TOTP device.")
        self.stdout.write(current_code(device))


def current_code(device: TOTPDevice) -> str:
    """What the person's authenticator shows now (the demo seed confirms with it too)."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time()
    return f"{totp.token():0{device.digits}d}"


def unspent_code(device: TOTPDevice) -> str:
    """The code of the first period from now that the device has not accepted yet: the current
    one, or the next when the current one is spent (a device accepts one period ahead). The demo
    seed confirms with it when one person confirms twice within 30 seconds."""
    now = int((time.time() - device.t0) // device.step)
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, 0)
    totp.time = device.t0 + max(now, device.last_t + 1) * device.step
    return f"{totp.token():0{device.digits}d}"
