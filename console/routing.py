from channels.generic.websocket import AsyncWebsocketConsumer
from django.urls import path, re_path

from console.live.consumers import AuditConsumer, TenantDetailConsumer, TenantListConsumer


class NoSuchSocket(AsyncWebsocketConsumer):
    """Any other path: refused at the handshake. Without it, URLRouter raises
    ValueError, daphne logs a traceback and answers 500 (a slug holding "%2F" does it)."""

    async def connect(self) -> None:
        await self.close(code=4404)


websocket_urlpatterns = [
    path("ws/tenants/", TenantListConsumer.as_asgi()),
    path("ws/tenants/<str:slug>/", TenantDetailConsumer.as_asgi()),
    path("ws/audit/", AuditConsumer.as_asgi()),
    re_path(r"", NoSuchSocket.as_asgi()),  # last: matches every path
]
