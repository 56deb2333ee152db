"""OpenAPI descriptions of our authentication classes (drf-spectacular)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


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
