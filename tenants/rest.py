"""API foundations: the error format and pagination (imported by DRF settings, so this
module must not import rest_framework.generics).

Every error is JSON: ``{"code": "...", "detail": "...", "fields": {...}}``.
"""

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import set_rollback

from audit.log import Target, record_denial

from .access import actor_for
from .errors import DomainError

logger = logging.getLogger(__name__)


class Pagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500


def error_body(code: str, detail: str, fields: dict | None = None) -> dict:
    body = {"code": code, "detail": detail}
    if fields:
        body["fields"] = fields
    return body


def _flatten(detail, prefix=""):
    """DRF validation detail -> {"field.path": ["message", ...]}."""
    if isinstance(detail, dict):
        out = {}
        for key, value in detail.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            return {prefix or "non_field_errors": [str(item) for item in detail]}
        out = {}
        for index, item in enumerate(detail):
            out.update(_flatten(item, f"{prefix}[{index}]"))
        return out
    return {prefix or "non_field_errors": [str(detail)]}


_CODES = {
    exceptions.NotAuthenticated: ("not_authenticated", "Authentication credentials were not provided."),
    exceptions.MethodNotAllowed: ("method_not_allowed", None),
    exceptions.UnsupportedMediaType: ("unsupported_media_type", None),
    exceptions.NotAcceptable: ("not_acceptable", None),
    exceptions.Throttled: ("throttled", None),
    exceptions.ParseError: ("malformed_request", None),
    exceptions.NotFound: ("not_found", "Not found."),
    exceptions.PermissionDenied: ("permission_denied", None),
}


def _response_for(exc):
    if isinstance(exc, DomainError):
        return exc.status, error_body(exc.code, exc.detail, exc.fields)
    if isinstance(exc, RequestDataTooBig):
        return 413, error_body("body_too_large", "The request body is larger than this API accepts.")
    if isinstance(exc, (Http404, exceptions.NotFound)):
        return 404, error_body("not_found", "Not found.")
    if isinstance(exc, DjangoPermissionDenied):
        return 403, error_body("permission_denied", "You do not have permission to do this.")
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first = next(iter(fields.items()))
        return 400, error_body("invalid", f"{first[0]}: {first[1][0]}", fields)
    if isinstance(exc, exceptions.AuthenticationFailed):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "authentication_failed"
        return 401, error_body(code, str(exc.detail))
    if isinstance(exc, exceptions.APIException):
        for klass, (code, default_detail) in _CODES.items():
            if isinstance(exc, klass):
                return exc.status_code, error_body(code, default_detail or str(exc.detail))
        return exc.status_code, error_body(str(exc.default_code), str(exc.detail))
    return None


def exception_handler(exc, context):
    mapped = _response_for(exc)
    if mapped is None:
        logger.exception("unhandled API error", exc_info=exc)
        mapped = 500, error_body("server_error", "Something went wrong on our side; it has been logged.")
    status_code, body = mapped
    set_rollback()
    request = context.get("request")
    if request is not None and _is_denial_worth_recording(request, status_code):
        view = context.get("view")
        tenant_slug = (getattr(view, "kwargs", {}) or {}).get("tenant", "")
        record_denial(
            actor=actor_for(getattr(request, "user", None)),
            tenant=tenant_slug if getattr(view, "tenant", None) is not None else "",
            target=Target("route", request.path[:150]),
            data={"method": request.method, "status": status_code, "code": body["code"],
                  "requested_tenant": tenant_slug},
        )
    response = Response(body, status=status_code)
    if isinstance(exc, exceptions.Throttled) and exc.wait:
        response["Retry-After"] = str(int(exc.wait))
    if status_code == 401:
        response["WWW-Authenticate"] = "Bearer"
    return response


def _is_denial_worth_recording(request, status_code) -> bool:
    # Every refused write, and every refused read of a tenant's resources; a throttled call is
    # not (its rate limit says so, and a caller past the refusal caps is recorded once per window).
    if status_code == 429:
        return False
    if status_code in (401, 403, 404):
        return True
    return request.method not in ("GET", "HEAD", "OPTIONS") and status_code >= 400


def json_error(status_code: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse(error_body(code, detail), status=status_code)
