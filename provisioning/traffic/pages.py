"""The short pages the proxy answers with when it cannot forward."""

from __future__ import annotations

import html

PAGES = {
    400: ("Bad request", "The request to {host} could not be forwarded."),
    404: ("Not found", "No tenant is served at {host}."),
    413: ("Request too large", "The request to {host} is larger than this server accepts."),
    502: ("Bad gateway", "The tenant at {host} is not answering right now. Try again shortly."),
    503: (
        "Being provisioned",
        "The tenant at {host} is being provisioned. This page will work once it is active.",
    ),
    504: ("Gateway timeout", "The tenant at {host} took too long to answer."),
}

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1>{title}</h1><p>{text}</p></body></html>
"""


async def send_page(send, status: int, host: str, extra_headers=()) -> None:
    title, text = PAGES[status]
    body = TEMPLATE.format(title=title, text=html.escape(text.format(host=host or "this host")))
    data = body.encode()
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(data)).encode()),
        (b"cache-control", b"no-store"),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
