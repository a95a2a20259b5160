from django.conf import settings


def live(request) -> dict:
    """What a live page's script needs from the settings: the heartbeat it should hear."""
    return {"live_heartbeat_seconds": settings.LIVE_HEARTBEAT_SECONDS}
