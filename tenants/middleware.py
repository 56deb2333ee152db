from django.conf import settings
from django.shortcuts import redirect
from django.urls import reverse

from audit.denials import throttled_for
from audit.log import denials_recorded


class AuditDenialsMiddleware:
    """Opens the scope in which refusals wait for the request's transaction to end."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with denials_recorded(source=request.META.get("REMOTE_ADDR", "")):
            return self.get_response(request)


class DenialThrottleMiddleware:
    """429 for a person or a source address that met too many distinct refusals in this
    window (audit/denials.py); API tokens are throttled by tenants.throttling.DenialCapThrottle."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = request.user
        wait = throttled_for(caller=f"user:{user.pk}" if user.is_authenticated else None,
                             source=request.META.get("REMOTE_ADDR", ""))
        if not wait:
            return self.get_response(request)
        from .rest import json_error

        response = json_error(429, "throttled", THROTTLED_DETAIL.format(wait=wait))
        response["Retry-After"] = str(wait)
        return response


THROTTLED_DETAIL = ("Too many refused requests in a short time; try again in {wait} seconds.")


class ApiBodyLimitMiddleware:
    """413 with a JSON error for API bodies over API_MAX_BODY_BYTES, before they are read.

    A view marked ``streams_body = True`` (artifact uploads) enforces its own limit while
    it streams."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        if not request.path.startswith("/api/") or getattr(view_func, "streams_body", False):
            return None
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > settings.API_MAX_BODY_BYTES:
            from .rest import json_error

            return json_error(413, "body_too_large",
                              f"The request body is larger than {settings.API_MAX_BODY_BYTES} bytes.")
        return None


OTP_OPEN_PATHS = ("login", "login-verify", "login-enrol", "logout")


class RequireVerifiedOTPMiddleware:
    """Until a confirmed OTP device has been verified in this session, a person reaches
    only enrolment, verification and sign-out."""

    def __init__(self, get_response):
        self.get_response = get_response
        self._open = None

    def __call__(self, request):
        if self._open is None:
            self._open = {reverse(name) for name in OTP_OPEN_PATHS}
        user = request.user
        if (
            user.is_authenticated
            and not user.is_verified()
            and request.path not in self._open
            and not request.path.startswith(("/api/", f"/{settings.STATIC_URL}"))
        ):
            has_device = user.totpdevice_set.filter(confirmed=True).exists()
            return redirect("login-verify" if has_device else "login-enrol")
        return self.get_response(request)
