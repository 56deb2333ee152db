from django.urls import path

from tenants.api import committing

from . import api, console, tenant_api

api_urlpatterns = [
    path("policies/bundle", api.PolicyBundleView.as_view(), name="api-policy-bundle"),
    path("policies/evaluate", api.PolicyEvaluateView.as_view(), name="api-policy-evaluate"),
    path("policies/baseline", api.BaselineView.as_view(), name="api-policy-baseline"),
    path("policies/baseline/accept", committing(api.BaselineAcceptView),
         name="api-policy-baseline-accept"),
    *tenant_api.api_urlpatterns,
]

console_urlpatterns = console.console_urlpatterns
