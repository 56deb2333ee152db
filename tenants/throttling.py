"""API throttling beyond DRF's rates. Its own module: DRF imports the throttle classes while
it builds APIView, so this must not import DRF's views (tenants.rest does)."""

from rest_framework.throttling import BaseThrottle

from audit.denials import throttled_for

from .access import token_of


class DenialCapThrottle(BaseThrottle):
    """429 for an API caller (a token, a person, or their address) that met too many distinct
    refusals in this window (audit/denials.py)."""

    def allow_request(self, request, view):
        user, token = request.user, token_of(request.user)
        caller = f"token:{token.public_id}" if token else (f"user:{user.pk}" if user.is_authenticated else None)
        self.seconds = throttled_for(caller=caller, source=request.META.get("REMOTE_ADDR", ""))
        return not self.seconds

    def wait(self):
        return self.seconds
