from django.conf import settings
from django.shortcuts import redirect
from django.urls import reverse

from audit.log import denials_recorded


class AuditDenialsMiddleware:
    """Opens the scope in which refusals wait for the request's transaction to end."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with denials_recorded():
            return self.get_response(request)


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
