from django.db import transaction
from django.urls import path

from . import api, console, tenant_api

api_urlpatterns = [
    path("policies/bundle", api.PolicyBundleView.as_view(), name="api-policy-bundle"),
    path("policies/evaluate", api.PolicyEvaluateView.as_view(), name="api-policy-evaluate"),
    path("policies/baseline", api.BaselineView.as_view(), name="api-policy-baseline"),
    # Non-atomic: the one-time password is spent in a transaction of its own.
    path("policies/baseline/accept", transaction.non_atomic_requests(api.BaselineAcceptView.as_view()),
         name="api-policy-baseline-accept"),
    *tenant_api.api_urlpatterns,
]

console_urlpatterns = console.console_urlpatterns
