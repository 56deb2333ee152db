"""Site-wide 404 and 500: JSON under /api/, a console page elsewhere."""

from django.shortcuts import render

from .rest import json_error


def handler404(request, exception=None):
    if request.path.startswith("/api/"):
        return json_error(404, "not_found", "Not found.")
    return render(request, "errors/404.html", status=404)


def handler500(request):
    if request.path.startswith("/api/"):
        return json_error(500, "server_error", "Something went wrong on our side; it has been logged.")
    return render(request, "errors/500.html", status=500)


def handler403(request, exception=None):
    if request.path.startswith("/api/"):
        return json_error(403, "permission_denied", "You do not have permission to do this.")
    return render(request, "errors/403.html", {"reason": str(exception or "")}, status=403)
