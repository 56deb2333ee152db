"""API authentication: bearer tokens for machines and people, and OTP-verified sessions."""

from django.db import transaction
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, SessionAuthentication

from .db import bind_rls
from .models import TOKEN_PREFIX, ApiToken, Membership, hash_token_secret


class BearerTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer nct_...``. A revoked or expired token, or one whose holder
    no longer holds its role, is refused with 401."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != self.keyword.lower():
            return None
        credentials = credentials.strip()
        if not credentials.startswith(f"{TOKEN_PREFIX}_") or len(credentials) > 200:
            raise exceptions.AuthenticationFailed("That is not a Neocloud API token.", code="invalid_token")
        key_hash = hash_token_secret(credentials)
        # The lookup and its row-level security context share one transaction, even in a
        # view that streams its body outside the request's transaction.
        with transaction.atomic(savepoint=False):
            bind_rls(token_hash=key_hash)
            token = ApiToken.objects.select_related("user", "tenant").filter(key_hash=key_hash).first()
            if token is not None:
                bind_rls(user_id=token.user_id, tenant_id=token.tenant_id)
                entitled = self._holder_still_entitled(token)
        if token is None:
            raise exceptions.AuthenticationFailed("Unknown API token.", code="invalid_token")
        if token.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This API token has been revoked.", code="token_revoked")
        if token.expires_at <= timezone.now():
            raise exceptions.AuthenticationFailed("This API token has expired.", code="token_expired")
        user = token.user
        if not user.is_active:
            raise exceptions.AuthenticationFailed("The token's owner is no longer active.", code="invalid_token")
        if not entitled:
            raise exceptions.AuthenticationFailed("The token's holder no longer holds its role.", code="invalid_token")
        user.api_token = token
        return user, token

    @staticmethod
    def _holder_still_entitled(token) -> bool:
        held = Membership.objects.filter(tenant_id=token.tenant_id, user_id=token.user_id).values_list("role", flat=True).first()
        if held is None:
            return False
        if token.service_account_id is None:
            return held == token.role
        account = token.service_account
        return account.is_active and account.owner_id == token.user_id

    def authenticate_header(self, request):
        return self.keyword


class VerifiedSessionAuthentication(SessionAuthentication):
    """A console session counts for the API only once its OTP device has been verified."""

    def authenticate(self, request):
        result = super().authenticate(request)
        if result is None:
            return None
        user, auth = result
        is_verified = getattr(request._request.user, "is_verified", None)
        if not (is_verified and is_verified()):
            return None
        return user, auth
