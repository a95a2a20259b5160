import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
# Build the Django app first: it sets up the app registry that consumers need.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.sessions import SessionMiddlewareStack  # noqa: E402

from console.routing import websocket_urlpatterns  # noqa: E402
from console.ws_security import ConsoleOriginValidator  # noqa: E402
from provisioning.traffic.proxy import TenantTrafficRouter  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Tenant hosts (<slug>-<org>.<BASE_DOMAIN>) are proxied to the tenant's
        # replicas before Django sees them (websockets to them are refused);
        # every other host is the console. A console websocket must come from
        # one of the console's own pages (Origin), and carry a session the
        # consumer checks itself (on connect and before each push), so only
        # the session, not channels' user, is put in the scope.
        "http": TenantTrafficRouter(django_asgi_app),
        "websocket": TenantTrafficRouter(
            ConsoleOriginValidator(SessionMiddlewareStack(URLRouter(websocket_urlpatterns)))
        ),
    }
)
