"""The REST side of the fake Plivo: `/v1/Account/{auth_id}/…/` with Basic auth, JSON bodies.

Every failure is Plivo's error JSON (`{"api_id": …, "error": "…"}`) with the HTTP status its
docs list (400 bad parameter, 401 authentication, 404 not found, 405 method), never a
traceback. Choices where Plivo's behaviour is not pinned down:
- the error texts are the fake's own;
- a path without its trailing slash is 404, as is another account's path (after a 401 for bad
  credentials);
- `from` must be a number on the account (`add_number`); numbers may carry a leading `+`;
- hanging up (`DELETE Call/{uuid}/`) a call that is over, or cancelling (`DELETE
  Request/{uuid}/`) one that was answered or is over, is 404;
- a transfer or a recording of a call that is not in progress is 404.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .media import FakeCall
from .util import ApiError, Outbound, RestRequest, error_body, new_uuid

if TYPE_CHECKING:
    from .calls import CallRunner

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BODY: web.RequestKey[dict[str, Any]] = web.RequestKey("body", dict)
_NUMBER = re.compile(r"\+?[1-9][0-9]{6,14}")
_ACCOUNT = "/v1/Account/{auth_id}"


def build_rest_app(pl: CallRunner) -> web.Application:
    api = _Api(pl)
    app = web.Application(middlewares=[api.middleware])
    base = _ACCOUNT
    app.router.add_post(f"{base}/Call/", api.create_call)
    app.router.add_get(f"{base}/Call/{{uuid}}/", api.get_call)
    app.router.add_post(f"{base}/Call/{{uuid}}/", api.transfer)
    app.router.add_delete(f"{base}/Call/{{uuid}}/", api.hangup)
    app.router.add_delete(f"{base}/Request/{{uuid}}/", api.cancel)
    app.router.add_post(f"{base}/Call/{{uuid}}/Record/", api.record)
    app.router.add_delete(f"{base}/Call/{{uuid}}/Record/", api.stop_recording)
    app.router.add_get(f"{base}/Number/{{number}}/", api.number)
    app.router.add_get(f"{base}/Application/{{app_id}}/", api.application)
    app.router.add_post(f"{base}/Application/{{app_id}}/", api.update_application)
    return app


def _str(body: dict[str, Any], key: str, required: bool = False) -> str:
    value = body.get(key)
    if value is None or value == "":
        if required:
            raise ApiError(400, f"{key} is required")
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"{key} must be a string")
    return value


def _url(body: dict[str, Any], key: str, required: bool = False) -> str:
    value = _str(body, key, required)
    if value and not value.startswith(("http://", "https://")):
        raise ApiError(400, f"{key} is not a valid URL")
    return value


def _method(body: dict[str, Any], key: str) -> str:
    value = _str(body, key) or "POST"
    if value.upper() not in ("GET", "POST"):
        raise ApiError(400, f"{key} must be GET or POST")
    return value.upper()


def _int(body: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = body.get(key, default)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ApiError(400, f"{key} must be an integer {lo}..{hi}")
    return value


class _Api:
    def __init__(self, pl: CallRunner) -> None:
        self.pl = pl

    # --- plumbing ------------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        rec = RestRequest(
            method=request.method,
            path=request.path,
            body={},
            headers=dict(request.headers),
            time=asyncio.get_running_loop().time(),
        )
        self.pl.requests.append(rec)
        try:
            self._authenticate(request)
            if request.match_info.get("auth_id") not in (None, self.pl.auth_id):
                raise ApiError(404, "not found")
            rec.body = self._parse(raw)
            request[BODY] = rec.body
            resp = await handler(request)
        except ApiError as e:
            resp = web.json_response(error_body(e.message), status=e.status)
        except web.HTTPMethodNotAllowed:
            resp = web.json_response(error_body("method not allowed"), status=405)
        except web.HTTPNotFound:
            resp = web.json_response(error_body("not found"), status=404)
        rec.status = resp.status
        return resp

    def _authenticate(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            user = password = ""
        ok = scheme.lower() == "basic" and hmac.compare_digest(
            f"{user}:{password}".encode(), f"{self.pl.auth_id}:{self.pl.auth_token}".encode()
        )
        if not ok:
            raise ApiError(401, "Authentication failed")

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any]:
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    def _live(self, request: web.Request) -> FakeCall:
        call = self.pl.calls.get(request.match_info["uuid"])
        if call is None or call.ended or not call.answered:
            raise ApiError(404, "call not found")
        return call

    @staticmethod
    def _ok(status: int, **fields: Any) -> web.Response:
        return web.json_response({"api_id": new_uuid(), **fields}, status=status)

    # --- calls ---------------------------------------------------------------------------------

    async def create_call(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = request[BODY]
        from_ = _str(body, "from", True)
        to = _str(body, "to", True)
        if not _NUMBER.fullmatch(from_):
            raise ApiError(400, "from is not a valid phone number")
        if self.pl.number(from_) is None:
            raise ApiError(400, f"from {from_} is not a number on this account")
        if "<" in to:
            raise ApiError(400, "the fake dials one destination at a time")
        if not (_NUMBER.fullmatch(to) or to.startswith("sip:")):
            raise ApiError(400, "to is not a valid phone number or SIP URI")
        machine_detection = body.get("machine_detection")
        if machine_detection is True:
            machine_detection = "true"
        if machine_detection not in (None, "", "true", "hangup"):
            raise ApiError(400, "machine_detection must be true or hangup")
        opts = Outbound(
            answer_url=_url(body, "answer_url", True),
            answer_method=_method(body, "answer_method"),
            hangup_url=_url(body, "hangup_url"),
            hangup_method=_method(body, "hangup_method"),
            ring_timeout=_int(body, "ring_timeout", 60, 1, 3600),
            machine_detection=machine_detection or "",
            machine_detection_url=_url(body, "machine_detection_url"),
            machine_detection_method=_method(body, "machine_detection_method"),
            fields=dict(body),
        )
        call = self.pl.create_outbound(from_.lstrip("+"), to.lstrip("+"), opts)
        return self._ok(201, message="call fired", request_uuid=call.request_uuid)

    async def get_call(self, request: web.Request) -> web.Response:
        call = self._live(request)
        return self._ok(
            200,
            call_uuid=call.call_uuid,
            call_status=call.status,
            direction=call.direction,
            **{"from": call.from_, "to": call.to},
        )

    async def transfer(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = request[BODY]
        legs = _str(body, "legs", True)
        if legs not in ("aleg", "bleg", "both"):
            raise ApiError(400, "legs must be aleg, bleg or both")
        url = _url(body, "aleg_url", required=legs in ("aleg", "both"))
        call = self._live(request)
        if legs == "bleg":
            raise ApiError(400, "this call has no b leg")
        self.pl.redirect(call, url, _method(body, "aleg_method"))
        return self._ok(202, message="call transferred")

    async def hangup(self, request: web.Request) -> web.Response:
        call = self.pl.calls.get(request.match_info["uuid"])
        if call is None or call.ended:
            raise ApiError(404, "call not found")
        self.pl.request_end(call, "completed", "NORMAL_CLEARING", "API Request")
        return web.Response(status=204)

    async def cancel(self, request: web.Request) -> web.Response:
        call = self.pl.by_request.get(request.match_info["uuid"])
        if call is None or call.ended or call.answered:
            raise ApiError(404, "request not found")
        self.pl.request_end(call, "cancel", "ORIGINATOR_CANCEL", "API Request")
        return web.Response(status=204)

    async def record(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = request[BODY]
        call = self._live(request)
        fmt = _str(body, "file_format") or "mp3"
        if fmt not in ("mp3", "wav"):
            raise ApiError(400, "file_format must be mp3 or wav")
        rec = self.pl.start_recording(
            call,
            time_limit=_int(body, "time_limit", 60, 1, 86400),
            callback_url=_url(body, "callback_url"),
            callback_method=_method(body, "callback_method"),
        )
        return self._ok(
            202, url=rec.url, message="call recording started", recording_id=rec.recording_id
        )

    async def stop_recording(self, request: web.Request) -> web.Response:
        call = self._live(request)
        for rec in self.pl.recordings.values():
            if rec.call_uuid == call.call_uuid:
                self.pl.end_recording(call, rec)
        return web.Response(status=204)

    # --- numbers and applications ------------------------------------------------------------

    async def number(self, request: web.Request) -> web.Response:
        number = self.pl.number(request.match_info["number"])
        if number is None:
            raise ApiError(404, "number not found")
        app = f"/v1/Account/{self.pl.auth_id}/Application/{number.app_id}/"
        return self._ok(
            200,
            number=number.number,
            application=app,
            voice_enabled=True,
            resource_uri=f"/v1/Account/{self.pl.auth_id}/Number/{number.number}/",
        )

    def _application(self, request: web.Request) -> Any:
        app = self.pl.applications.get(request.match_info["app_id"])
        if app is None:
            raise ApiError(404, "application not found")
        return app

    async def application(self, request: web.Request) -> web.Response:
        app = self._application(request)
        return self._ok(
            200,
            app_id=app.app_id,
            app_name=app.app_name,
            answer_url=app.answer_url,
            answer_method=app.answer_method,
            hangup_url=app.hangup_url,
            hangup_method=app.hangup_method,
        )

    async def update_application(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = request[BODY]
        app = self._application(request)
        for key in ("answer_url", "hangup_url"):
            if key in body:
                setattr(app, key, _url(body, key))
        for key in ("answer_method", "hangup_method"):
            if key in body:
                setattr(app, key, _method(body, key))
        return self._ok(202, message="changed")
