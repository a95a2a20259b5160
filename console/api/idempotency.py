"""Idempotency-Key: a repeated request gets the first answer and changes nothing.

The key is claimed (a row inserted) before the request acts, in its own
transaction, so of two requests with one key only the first acts; the second
finds the claim and gets the stored answer, or 409 while the first is still
being answered. The same key with another method, path or body is a 409: the
client has mixed up its keys, and guessing which request it meant would be
wrong either way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone

from console.models import ApiToken, IdempotentRequest

HEADER = "Idempotency-Key"
MAX_KEY = 255


def key_error(key: str) -> str | None:
    if not key or len(key) > MAX_KEY or not key.isascii() or not key.isprintable():
        return f"{HEADER} must be 1 to {MAX_KEY} printable ASCII characters."
    return None


def fingerprint(request: HttpRequest) -> str:
    """The request's method, path and body; a JSON body compares by value, not spelling."""
    try:
        body = json.dumps(json.loads(request.body), sort_keys=True, separators=(",", ":"))
    except ValueError:
        body = request.body.decode("utf-8", "backslashreplace")
    text = f"{request.method} {request.path}\n{body}"
    return hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()


def replayed(record: IdempotentRequest) -> JsonResponse:
    response = JsonResponse(record.body, status=record.status, safe=False)
    if record.location:
        response["Location"] = record.location
    response["Idempotent-Replayed"] = "true"
    return response


def conflict(message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=409)


def answer_once(
    request: HttpRequest, token: ApiToken, act: Callable[[], JsonResponse]
) -> JsonResponse:
    """``act()``'s answer; with an Idempotency-Key, only the first request with it acts."""
    key = request.headers.get(HEADER)
    if key is None:
        return act()
    if message := key_error(key):
        return JsonResponse({"errors": {HEADER: [message]}}, status=400)
    print_ = fingerprint(request)
    expired = timezone.now() - timedelta(hours=settings.API_IDEMPOTENCY_HOURS)
    # The token's expired keys go (this one too, if it expired: then it is new again).
    IdempotentRequest.objects.filter(token=token, created_at__lt=expired).delete()
    try:
        with transaction.atomic():
            record = IdempotentRequest.objects.create(token=token, key=key, fingerprint=print_)
    except IntegrityError:
        record = IdempotentRequest.objects.filter(token=token, key=key).first()
        if record is None:  # expired and removed between the two statements
            return conflict(f"{HEADER} {key!r} is being reused; send the request again")
        if record.fingerprint != print_:
            return conflict(
                f"{HEADER} {key!r} was already used for a different request; "
                "use a new key for a new request"
            )
        if record.status is None:
            return conflict(f"the request with {HEADER} {key!r} is still being answered")
        return replayed(record)
    try:
        response = act()
    except BaseException:
        record.delete()  # nothing was answered: the client may try again with the key
        raise
    record.status = response.status_code
    record.body = json.loads(response.content)
    record.location = response.get("Location", "")
    record.save(update_fields=["status", "body", "location"])
    return response
