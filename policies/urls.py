from django.urls import path

from . import api, console, tenant_api

api_urlpatterns = [
    path("policies/bundle", api.PolicyBundleView.as_view(), name="api-policy-bundle"),
    path("policies/evaluate", api.PolicyEvaluateView.as_view(), name="api-policy-evaluate"),
    *tenant_api.api_urlpatterns,
]

console_urlpatterns = console.console_urlpatterns
