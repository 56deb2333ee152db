"""TOTP codes for the personas' devices, computed as their authenticator apps would.

No test waits for the wall clock to reach the next 30-second step: when both codes a
device would accept now are spent, fresh_totp moves that device's clock on instead
(its t0, through the owner connection), which is what the passing of time would do."""

import time


def _device(user):
    from django_otp.plugins.otp_totp.models import TOTPDevice

    return TOTPDevice.objects.using("owner").get(user=user, confirmed=True)


def _code(device, at_step, drift=0):
    from django_otp.oath import TOTP

    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, drift)
    totp.time = device.t0 + at_step * device.step + 0.5
    return f"{totp.token():06d}"


def current_totp(user, *, steps_ahead=0):
    """The user's TOTP code now, or ``steps_ahead`` periods later (within the device's
    tolerance of one), for a second code inside the same 30 seconds."""
    from django_otp.oath import TOTP

    device = _device(user)
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time() + steps_ahead * device.step
    return f"{totp.token():06d}"


def fresh_totp(user):
    """A code the user's device has not accepted yet: the current period's, or the next one's
    (inside the tolerance) when the current one is spent. When both are spent, the device's
    clock is moved on to the first unspent period."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = _device(user)
    now_step = int((time.time() - device.t0) // device.step)
    wanted = max(now_step, device.last_t + 1)
    if wanted > now_step + 1:
        moved = device.t0 - (wanted - now_step) * device.step
        TOTPDevice.objects.using("owner").filter(pk=device.pk).update(t0=moved)
        device.t0 = moved
    return _code(device, wanted)
