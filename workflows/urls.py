from django.urls import path

from . import api

api_urlpatterns = [
    path("tenants/<slug:tenant>/workflows/", api.WorkflowList.as_view(), name="api-workflow-list"),
    path("tenants/<slug:tenant>/workflows/<str:workflow>/", api.WorkflowDetail.as_view(), name="api-workflow-detail"),
    path("tenants/<slug:tenant>/workflows/<str:workflow>/versions/", api.VersionList.as_view(),
         name="api-version-list"),
    path("tenants/<slug:tenant>/workflows/<str:workflow>/versions/<int:number>/", api.VersionDetail.as_view(),
         name="api-version-detail"),
    path("tenants/<slug:tenant>/workflows/<str:workflow>/versions/<int:number>/diff/", api.VersionDiff.as_view(),
         name="api-version-diff"),
]
