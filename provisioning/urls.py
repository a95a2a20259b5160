from django.urls import path

from provisioning import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("api/tenants/<str:slug>", views.tenant_status_api, name="api-tenant-status"),
    path(
        "api/provisioning/recent-failures",
        views.recent_failures_api,
        name="api-recent-failures",
    ),
    path("failures/<int:run_id>/dismiss/", views.dismiss_failure_view, name="dismiss-failure"),
    path("audit/", views.audit_feed, name="audit-feed"),
]
