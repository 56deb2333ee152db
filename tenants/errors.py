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


class Unprocessable(DomainError):
    """Well-formed, but it contradicts what was sent before (an Idempotency-Key reused)."""

    status = 422
    code = "unprocessable"


class Invalid(DomainError):
    status = 400
    code = "invalid"


class TooLarge(DomainError):
    status = 413
    code = "too_large"


def clean_or_invalid(instance, *, exclude=()) -> None:
    """Run a model's field validation; the first problem becomes an Invalid naming its field."""
    from django.core.exceptions import ValidationError

    try:
        instance.clean_fields(exclude=list(exclude))
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        raise Invalid(messages[0], field=field) from None
