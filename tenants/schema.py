"""The published OpenAPI schema: our authentication classes, and every error an operation can answer.

Every API error has one shape (tenants.rest.error_body): ``code``, ``detail`` and, for a 400,
``fields``. The ``document_errors`` hook adds that shape once, as the ``Error`` component, and
the error statuses to each operation that can answer them, so a client (or a fuzzer holding
the API to its schema) knows every status before it meets one.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse

class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.authentication.BearerTokenAuthentication"
    name = "bearerToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "nct_<id>_<secret>",
                "description": "A tenant-scoped API token, issued once and stored hashed."}


class VerifiedSessionScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.authentication.VerifiedSessionAuthentication"
    name = "consoleSession"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "sessionid",
                "description": "A console session whose one-time password has been verified."}


ERROR = {
    "type": "object",
    "required": ["code", "detail"],
    "properties": {
        "code": {"type": "string", "description": "Stable machine-readable reason, e.g. not_found."},
        "detail": {"type": "string", "description": "One plain sentence."},
        "fields": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}},
                   "description": "For a 400: each refused field (a dotted or JSON path) and why."},
    },
}
EVERY = {
    "400": "The request is invalid: a field, a query parameter or the body; ``fields`` says which.",
    "401": "No credentials, or a token that is unknown, revoked or expired.",
    "403": "Your role here does not allow it (or the tenant is suspended).",
    "404": "It does not exist, or you may not see it (another tenant's objects are always 404).",
    "429": "Too many requests; see Retry-After.",
}
WRITES = {
    "409": "It conflicts with what is stored (a duplicate, a state that moved on).",
    "413": "The body is over the size limit.",
    "415": "The body is not of a media type the operation takes.",
}


def document_errors(result, generator, request, public):
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            statuses = {**EVERY, **(WRITES if method in ("post", "put", "patch", "delete") else {})}
            responses = operation.setdefault("responses", {})
            for status, description in statuses.items():
                responses.setdefault(status, {"description": description, "content": error})
            for status, response in responses.items():
                if int(status) >= 400 and "content" not in response:  # declared by its view: an Error body
                    response["content"] = error
    return result


# Error statuses that only some operations answer; a view lists them in its responses.
ATTESTATION_UNAVAILABLE = {503: OpenApiResponse(description=(
    "The platform's signing keys cannot be read, so the promotion cannot be checked or attested "
    "now; nothing changed. An operator restores the keys (docs/operators.md)."))}
IDEMPOTENCY_KEY_REUSED = {422: OpenApiResponse(description="This Idempotency-Key was used for a different request.")}
