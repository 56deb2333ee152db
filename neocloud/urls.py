from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from compliance import urls as compliance_urls
from policies import urls as policy_urls
from runners import api as runner_api
from runners import console as runner_console
from tenants import urls as tenant_urls
from workflows import urls as workflow_urls
from tenants.errors_views import handler403, handler404, handler500  # noqa: F401  (Django looks them up here)

api_v1 = [
    *tenant_urls.api_urlpatterns,
    *workflow_urls.api_urlpatterns,
    *policy_urls.api_urlpatterns,
    *compliance_urls.api_urlpatterns,
    *runner_api.api_urlpatterns,
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    *tenant_urls.console_urlpatterns,
    *workflow_urls.console_urlpatterns,
    *policy_urls.console_urlpatterns,
    *compliance_urls.console_urlpatterns,
    *runner_console.console_urlpatterns,
]
