from django.urls import path

from . import console, views
from .api import committing

api_urlpatterns = [
    path("me", views.MeView.as_view(), name="api-me"),
    path("tenants/", views.TenantListView.as_view(), name="api-tenant-list"),
    path("tenants/<slug:tenant>/", views.TenantDetailView.as_view(), name="api-tenant-detail"),
    path("tenants/<slug:tenant>/members/", views.MemberListView.as_view(), name="api-member-list"),
    path("tenants/<slug:tenant>/members/<str:username>/", views.MemberDetailView.as_view(), name="api-member-detail"),
    path("tenants/<slug:tenant>/service-accounts/", views.ServiceAccountListView.as_view(),
         name="api-service-account-list"),
    path("tenants/<slug:tenant>/service-accounts/<slug:account>/", views.ServiceAccountDetailView.as_view(),
         name="api-service-account-detail"),
    path("tenants/<slug:tenant>/tokens/", views.TokenListView.as_view(), name="api-token-list"),
    path("tenants/<slug:tenant>/tokens/<str:token_id>/", views.TokenDetailView.as_view(), name="api-token-detail"),
    path("gpu-flavors/", views.GpuFlavorList.as_view(), name="api-gpu-flavor-list"),
    path("gpu-flavors/<str:flavor>/", views.GpuFlavorDetail.as_view(), name="api-gpu-flavor-detail"),
    path("jurisdictions/", views.JurisdictionList.as_view(), name="api-jurisdiction-list"),
    path("regions/", views.RegionList.as_view(), name="api-region-list"),
    path("regions/<str:code>/accept/", committing(views.RegionAccept),
         name="api-region-accept"),
]

console_urlpatterns = [
    path("", console.HomeView.as_view(), name="home"),
    path("login/", console.SignInView.as_view(), name="login"),
    path("login/verify/", console.VerifyView.as_view(), name="login-verify"),
    path("login/enrol/", console.EnrolView.as_view(), name="login-enrol"),
    path("logout/", console.SignOutView.as_view(), name="logout"),
    path("t/<slug:tenant>/", console.TenantView.as_view(), name="tenant"),
    path("t/<slug:tenant>/members/", console.MemberAddView.as_view(), name="tenant-member-add"),
    path("t/<slug:tenant>/members/<str:username>/role/", console.MemberRoleView.as_view(), name="tenant-member-role"),
    path("t/<slug:tenant>/members/<str:username>/remove/", console.MemberRemoveView.as_view(),
         name="tenant-member-remove"),
    path("t/<slug:tenant>/service-accounts/", console.ServiceAccountCreateView.as_view(),
         name="tenant-service-account-add"),
    path("t/<slug:tenant>/tokens/", console.TokenIssueView.as_view(), name="tenant-token-issue"),
    path("t/<slug:tenant>/tokens/<str:token_id>/revoke/", console.TokenRevokeView.as_view(),
         name="tenant-token-revoke"),
]
