"""django-axes, kept to what its columns hold: its handler and username.

Axes copies the User-Agent and Accept headers and the path into its rows as
they were sent, and PostgreSQL refuses a NUL in text: a header with one
would turn a failed sign-in into a 500 (and, at the row's lookup, skip the
count). Axes already replaces a NUL in the query and form data it keeps the
same way.

Axes also stores the username as sent, in a 255-character column, and the
sign-in form does not enforce its length: a 10k-character username would be
a DataError. No account's name is longer than the user model allows, so the
part past that identifies nobody and is dropped.
"""

from __future__ import annotations

from axes.handlers.database import AxesDatabaseHandler
from django.contrib.auth import get_user_model

_COPIED_FROM_REQUEST = ("axes_user_agent", "axes_http_accept", "axes_path_info")


def _without_nul(request) -> None:
    for name in _COPIED_FROM_REQUEST:
        value = getattr(request, name, None)
        if isinstance(value, str):
            setattr(request, name, value.replace("\0", "0x00"))


def client_username(request, credentials=None) -> str | None:
    """AXES_USERNAME_CALLABLE: the username axes counts failures for, bounded."""
    if credentials:
        value = credentials.get("username")
    else:
        value = getattr(request, "data", request.POST).get("username")
    if not isinstance(value, str):
        return value
    limit = get_user_model()._meta.get_field("username").max_length
    return value[:limit].replace("\0", "0x00")


class AxesHandler(AxesDatabaseHandler):
    def user_login_failed(self, sender, credentials, request=None, **kwargs):
        _without_nul(request)
        return super().user_login_failed(sender, credentials, request, **kwargs)

    def user_logged_in(self, sender, request, user, **kwargs):
        _without_nul(request)
        return super().user_logged_in(sender, request, user, **kwargs)

    def user_logged_out(self, sender, request, user, **kwargs):
        _without_nul(request)
        return super().user_logged_out(sender, request, user, **kwargs)
