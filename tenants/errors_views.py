"""Site-wide 403, 404 and 500: JSON under /api/, a console page elsewhere."""

from django.shortcuts import render

from .rest import json_error


def _error(request, status, code, title, message):
    if request.path.startswith("/api/"):
        return json_error(status, code, message)
    return render(request, "errors/error.html", {"title": title, "message": message}, status=status)


def handler403(request, exception=None):
    reason = str(exception or "") or "Your role does not allow this."
    return _error(request, 403, "permission_denied", "Not allowed", reason)


def handler404(request, exception=None):
    return _error(request, 404, "not_found", "Not found", "There is nothing here, or nothing you may see.")


def handler500(request):
    return _error(request, 500, "server_error", "Something went wrong",
                  "Something went wrong on our side; it has been logged.")
