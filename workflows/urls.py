from django.urls import path

from tenants.api import committing, streaming

from . import api, console

PROMOTION = "tenants/<slug:tenant>/promotions/<uuid:promotion>/"

api_urlpatterns = [
    path("tenants/<slug:tenant>/workflows/", api.WorkflowList.as_view(), name="api-workflow-list"),
    path("tenants/<slug:tenant>/workflows/<str:workflow>/", api.WorkflowDetail.as_view(), name="api-workflow-detail"),
    path("tenants/<slug:tenant>/workflows/<str:workflow>/versions/", api.VersionList.as_view(),
         name="api-version-list"),
    path("tenants/<slug:tenant>/workflows/<str:workflow>/versions/<int:number>/", api.VersionDetail.as_view(),
         name="api-version-detail"),
    path("tenants/<slug:tenant>/workflows/<str:workflow>/versions/<int:number>/diff/", api.VersionDiff.as_view(),
         name="api-version-diff"),
    path("tenants/<slug:tenant>/artifacts/", api.ArtifactList.as_view(), name="api-artifact-list"),
    path("tenants/<slug:tenant>/artifacts/<slug:name>/", streaming(api.ArtifactUpload), name="api-artifact-upload"),
    path("tenants/<slug:tenant>/artifacts/<slug:name>/<str:digest>/", api.ArtifactDetail.as_view(),
         name="api-artifact-detail"),
    path("tenants/<slug:tenant>/artifacts/<slug:name>/<str:digest>/content", api.ArtifactContent.as_view(),
         name="api-artifact-content"),
    path("tenants/<slug:tenant>/artifacts/<slug:name>/<str:digest>/signatures/", streaming(api.SignatureList),
         name="api-artifact-signatures"),
    path("tenants/<slug:tenant>/artifacts/<slug:name>/<str:digest>/verify/", streaming(api.ArtifactVerify),
         name="api-artifact-verify"),
    path("tenants/<slug:tenant>/trust/", api.TrustConfigurationView.as_view(), name="api-trust"),
    path("tenants/<slug:tenant>/blobs/<str:digest>", streaming(api.BlobUpload), name="api-blob-upload"),
    path("tenants/<slug:tenant>/promotions/", api.PromotionList.as_view(), name="api-promotion-list"),
    path(PROMOTION, api.PromotionDetail.as_view(), name="api-promotion-detail"),
    path(PROMOTION + "approve/", committing(api.PromotionApprove), name="api-promotion-approve"),
    path(PROMOTION + "reject/", committing(api.PromotionReject), name="api-promotion-reject"),
    path(PROMOTION + "withdraw/", api.PromotionWithdraw.as_view(), name="api-promotion-withdraw"),
    path(PROMOTION + "recheck/", committing(api.PromotionRecheck), name="api-promotion-recheck"),
    path(PROMOTION + "overrides/", committing(api.PromotionOverrideList), name="api-promotion-overrides"),
    path(PROMOTION + "overrides/<int:override>/confirm/", committing(api.PromotionOverrideConfirm),
         name="api-promotion-override-confirm"),
    path(PROMOTION + "attestation", api.PromotionAttestation.as_view(), name="api-promotion-attestation"),
    path("platform/keys/", api.PlatformKeys.as_view(), name="api-platform-keys"),
]

console_urlpatterns = [
    path("t/<slug:tenant>/workflows/", console.WorkflowListPage.as_view(), name="workflows"),
    path("t/<slug:tenant>/workflows/<str:workflow>/", console.WorkflowPage.as_view(), name="workflow"),
    path("t/<slug:tenant>/workflows/<str:workflow>/v<int:number>/", console.VersionPage.as_view(),
         name="workflow-version"),
    path("t/<slug:tenant>/artifacts/", console.ArtifactListPage.as_view(), name="artifacts"),
    path("t/<slug:tenant>/trust/", console.TrustPage.as_view(), name="trust"),
    path("t/<slug:tenant>/promotions/", console.PromotionQueuePage.as_view(), name="promotions"),
    path("t/<slug:tenant>/promotions/<uuid:promotion>/", committing(console.PromotionPage), name="promotion"),
]
