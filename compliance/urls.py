from django.urls import path

from tenants.api import committing

from . import api, views

api_urlpatterns = [
    path("audit/events/", api.AuditEventList.as_view(), name="api-audit-events"),
    path("audit/checkpoint/", api.LatestCheckpoint.as_view(), name="api-audit-checkpoint"),
    path("audit/check/", api.LogCheck.as_view(), name="api-audit-check"),
    path("audit/proofs/inclusion/", api.InclusionProof.as_view(), name="api-audit-inclusion"),
    path("audit/proofs/consistency/", api.ConsistencyProof.as_view(), name="api-audit-consistency"),
    path("audit/public-key/", api.CheckpointPublicKey.as_view(), name="api-audit-public-key"),
    path("tenants/<slug:tenant>/audit/events/", api.TenantAuditEventList.as_view(), name="api-tenant-audit-events"),
    # Outside the request's transaction: the export signs a checkpoint through the platform role first.
    path("tenants/<slug:tenant>/audit/export/", committing(api.TenantAuditExport), name="api-tenant-audit-export"),
    path("tenants/<slug:tenant>/promotions/<uuid:promotion>/evidence/", committing(api.PromotionEvidencePack),
         name="api-promotion-evidence"),
]

console_urlpatterns = [
    path("audit/", views.AuditView.as_view(), name="audit"),
    path("audit/events/<int:event>/", views.AuditEventView.as_view(), name="audit-event"),
    path("t/<slug:tenant>/audit/", views.TenantAuditView.as_view(), name="tenant-audit"),
]
