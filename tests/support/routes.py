"""The URL conf as (route, pattern) pairs, for tests that try every route."""

from django.urls import URLPattern, URLResolver, get_resolver


def walk_routes(resolver=None, prefix=""):
    """Every URL pattern with its full route as written, e.g. "api/v1/tenants/<slug:tenant>/"."""
    for entry in (resolver or get_resolver()).url_patterns:
        if isinstance(entry, URLResolver):
            yield from walk_routes(entry, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry
