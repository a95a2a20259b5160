from django.urls import path

from provisioning import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("api/tenants/<str:slug>", views.tenant_status_api, name="api-tenant-status"),
]
