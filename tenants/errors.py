"""Domain errors: each has a stable code, an HTTP status for the API, and a plain sentence."""


class DomainError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, detail: str, *, field: str | None = None, code: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.field = field
        if code:
            self.code = code

    @property
    def fields(self):
        return {self.field: [self.detail]} if self.field else {}


class NotFound(DomainError):
    """Missing and forbidden-to-see look the same: another tenant's object is simply not found."""

    status = 404
    code = "not_found"


class Forbidden(DomainError):
    status = 403
    code = "permission_denied"


class TenantSuspended(DomainError):
    status = 403
    code = "tenant_suspended"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class Invalid(DomainError):
    status = 400
    code = "invalid"
