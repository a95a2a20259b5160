"""Refuse what no view can use, before any view runs."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponseBadRequest


def refuse_nul_in_path(get_response):
    """A NUL in the path is a 400, for every route.

    PostgreSQL refuses NUL in text, so a path argument holding one raises in
    whatever query it reaches. The console's own lookups check their values
    first (tenants.lookup.find_tenant), but the admin looks objects up by the
    raw path (django_q's tasks have text primary keys), and a route added
    later should not have to remember. No real URL contains a NUL.
    """

    def middleware(request: HttpRequest):
        if "\x00" in request.path:
            return HttpResponseBadRequest("Bad request: the URL contains a NUL byte.")
        return get_response(request)

    return middleware
