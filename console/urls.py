from django.conf import settings
from django.contrib import admin
from django.contrib.auth import urls as auth_urls
from django.urls import include, path

from console.api.v1 import api as api_v1
from console.views import api, audit, metrics, signin, tenants

# Sign in and out, and password change; the password-reset pages only where
# a reset mail can reach the user (settings.PASSWORD_RESET_ENABLED).
account_urls = [
    pattern
    for pattern in auth_urls.urlpatterns
    if settings.PASSWORD_RESET_ENABLED or not pattern.name.startswith("password_reset")
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include(account_urls)),
    path("healthz", api.healthz, name="healthz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("api/v1/", api_v1.urls),
    path("api/v1/<path:rest>", api.api_v1_not_found, name="api-v1-not-found"),
    path("api/tenants/<str:slug>", api.tenant_status_api, name="api-tenant-status"),
    path("api/provisioning/recent-failures", api.recent_failures_api, name="api-recent-failures"),
    path("failures/<int:run_id>/dismiss/", tenants.dismiss_failure_view, name="dismiss-failure"),
    path("audit/", audit.audit_feed, name="audit-feed"),
    path("", tenants.tenant_list, name="tenant-list"),
    path("tenants/new/", tenants.tenant_new, name="tenant-new"),
    path("tenants/<str:slug>/", tenants.tenant_detail, name="tenant-detail"),
    path(
        "tenants/<str:slug>/diagnostics.json",
        tenants.tenant_diagnostics,
        name="tenant-diagnostics",
    ),
    path("tenants/<str:slug>/cancel/", tenants.tenant_cancel, name="tenant-cancel"),
    path("tenants/<str:slug>/retry/", tenants.tenant_retry, name="tenant-retry"),
    path("tenants/<str:slug>/repair/", tenants.tenant_repair, name="tenant-repair"),
    path("tenants/<str:slug>/reset/", tenants.tenant_reset, name="tenant-reset"),
    path(
        "tenants/<str:slug>/decommission/", tenants.tenant_decommission, name="tenant-decommission"
    ),
    path("signin/<str:nonce>/", signin.signin_page, name="signin"),
]
