from django.urls import path

from . import api, console

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

console_urlpatterns = [
    path("t/<slug:tenant>/workflows/", console.WorkflowListPage.as_view(), name="workflows"),
    path("t/<slug:tenant>/workflows/<str:workflow>/", console.WorkflowPage.as_view(), name="workflow"),
    path("t/<slug:tenant>/workflows/<str:workflow>/v<int:number>/", console.VersionPage.as_view(),
         name="workflow-version"),
]
