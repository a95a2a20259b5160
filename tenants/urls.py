from django.urls import path

from tenants import signin_views, views

urlpatterns = [
    path("", views.tenant_list, name="tenant-list"),
    path("tenants/new/", views.tenant_new, name="tenant-new"),
    path("tenants/<str:slug>/", views.tenant_detail, name="tenant-detail"),
    path(
        "tenants/<str:slug>/diagnostics.json",
        views.tenant_diagnostics,
        name="tenant-diagnostics",
    ),
    path("tenants/<str:slug>/cancel/", views.tenant_cancel, name="tenant-cancel"),
    path("tenants/<str:slug>/retry/", views.tenant_retry, name="tenant-retry"),
    path("tenants/<str:slug>/reset/", views.tenant_reset, name="tenant-reset"),
    path("tenants/<str:slug>/decommission/", views.tenant_decommission, name="tenant-decommission"),
    path("signin/<str:nonce>/", signin_views.signin_page, name="signin"),
]
