from django.urls import path

from provisioning.live.consumers import AuditConsumer, TenantDetailConsumer, TenantListConsumer

websocket_urlpatterns = [
    path("ws/tenants/", TenantListConsumer.as_asgi()),
    path("ws/tenants/<str:slug>/", TenantDetailConsumer.as_asgi()),
    path("ws/audit/", AuditConsumer.as_asgi()),
]
