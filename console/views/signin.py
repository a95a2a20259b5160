"""The page a tenant's first admin opens from the welcome email (docs/SIGNIN.md).

GET shows who the link signs in and a button; only the button's POST, which
carries the token read from the link's fragment, uses the link up. A mail
scanner that fetches the link therefore never burns it, and the token never
appears in a URL the console, its proxy or a Referer could log.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from provisioning import signin

# The session remembers which link this browser used, so that the redirect
# after the POST (and a reload) shows "signed in" rather than "already used".
SESSION_KEY = "signin_identity"


def _page(request: HttpRequest, template: str, context: dict, status: int = 200) -> HttpResponse:
    response = render(request, template, context, status=status)
    # The page's address names the link: keep it out of the Referer sent to
    # other sites (the tenant's own among them). Not "no-referrer": the
    # browser would then send "Origin: null" with the form, which CSRF refuses.
    response["Referrer-Policy"] = "same-origin"
    return response


def _refused(request: HttpRequest, reason: signin.Reason) -> HttpResponse:
    return _page(request, "signin/refused.html", {"reason": reason}, status=reason.status)


@login_not_required
@never_cache
@sensitive_post_parameters("token")
@require_http_methods(["GET", "POST"])
def signin_page(request: HttpRequest, nonce: str) -> HttpResponse:
    if request.method == "POST":
        try:
            identity = signin.redeem(nonce, request.POST.get("token", ""))
        except signin.Refused as refused:
            return _refused(request, refused.reason)
        # A new session key: whoever planted a session id in this browser
        # does not share the signed-in session.
        request.session.cycle_key()
        request.session[SESSION_KEY] = identity.pk
        return redirect(request.path)
    try:
        identity = signin.find(nonce)
    except signin.Refused as refused:
        return _refused(request, refused.reason)
    if identity.token_used_at and request.session.get(SESSION_KEY) == identity.pk:
        return _page(request, "signin/signed_in.html", {"identity": identity})
    reason = signin.refusal(identity)
    if reason is not None:
        return _refused(request, reason)
    context = {"identity": identity, "expires_at": signin.expires_at(identity)}
    return _page(request, "signin/confirm.html", context)
