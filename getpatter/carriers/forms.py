"""Form-encoded webhooks (Twilio, Plivo): read and verified the same way, signed differently.

Both carriers post `application/x-www-form-urlencoded` and nothing else, so any other body
(multipart included) is refused unread. What differs is only the signature check, which the
carrier passes in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from getpatter.core.throttle import LogThrottle

FORM = "application/x-www-form-urlencoded"
Genuine = Callable[[list[tuple[str, str]]], bool]  # the form's fields → is the signature right


async def verified_form(
    request: web.Request,
    carrier: str,
    *,
    signed: bool,
    require_signature: bool,
    genuine: Genuine,
    warn: LogThrottle,
) -> MultiDictProxy[Any] | web.Response:
    """The form of a genuine request from `carrier`, or the refusal to send back.
    `signed`: an auth token is configured to check signatures with."""
    if not signed and require_signature:
        warn.logger.error("%s webhook refused: no auth token configured to verify it", carrier)
        return web.Response(status=503, text="webhook verification not configured")
    if request.content_type != FORM:
        warn.warning(
            "type", "%s webhook refused (415): body is %s", carrier, request.content_type[:60]
        )
        return web.Response(status=415, text=f"expected {FORM}")
    try:
        form = await request.post()
    except (ValueError, LookupError, UnicodeError) as exc:  # LookupError: unknown charset
        warn.warning("form", "%s webhook refused (400): bad form body (%s)", carrier, exc)
        return web.Response(status=400, text="bad form body")
    if not signed:
        return form  # require_signature=False, and nothing to check with
    if not genuine([(k, str(v)) for k, v in form.items()]):
        warn.warning(
            "signature",
            "%s webhook %s refused (403): bad or missing signature",
            carrier,
            request.path,
        )
        return web.Response(status=403, text="invalid signature")
    return form
