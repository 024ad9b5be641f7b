"""The REST side of the fake Telnyx: Call Control v2 under `/v2` with Bearer auth.

Every failure is Telnyx's error JSON (`{"errors":[{code,title,detail,meta,source?}]}`) with
the matching HTTP status, never a traceback. Choices where Telnyx's behaviour is not pinned
down:
- an unknown call_control_id is 404/10005; any action on an ended call is 422/90018;
- an action in the wrong state (answer/reject on an answered or outbound call, speak or
  streaming on an unanswered call) is 422/10015 with a detail saying why (code approximate);
- validation failures are 422 with 10004 (missing), 10016 (not E.164), 10003 (bad URL),
  10017 (unknown connection_id) or 10015 (bad value), with `source.pointer`;
- the fake streams and plays PCMU at 8 kHz only: asking for another codec or rate is a 422
  saying so, rather than a stream that silently means something else;
- a repeated `command_id` within 60 s (per call; per account for dial) returns the normal
  success body and does nothing (dial returns the call it created the first time);
- supported actions: answer, hangup, reject, streaming_start, streaming_stop, transfer,
  speak, record_start, record_stop, send_dtmf. Others are 404/10005 (loud, not ignored).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .media import FakeCall
from .util import (
    AMD_MODES,
    BIDI_MODES,
    ERR_ASSOCIATED,
    ERR_AUTH,
    ERR_BAD_REQUEST,
    ERR_CALL_ENDED,
    ERR_E164,
    ERR_INVALID_URL,
    ERR_MISSING_PARAM,
    ERR_NOT_FOUND,
    STREAM_CODECS,
    STREAM_TRACKS,
    ApiError,
    RestRequest,
    StreamParams,
    error_body,
    iso_now,
    valid_base64,
)

if TYPE_CHECKING:
    from .calls import CallRunner

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Apply = Callable[[], None]
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_DTMF = re.compile(r"^[0-9A-D*#wW]+$")
_OK = {"data": {"result": "ok"}}


def build_rest_app(tx: CallRunner) -> web.Application:
    api = _Api(tx)
    app = web.Application(middlewares=[api.middleware])
    app.router.add_post("/v2/calls", api.dial)
    app.router.add_get("/v2/calls/{call}", api.get_call)
    app.router.add_post("/v2/calls/{call}/actions/{action}", api.action)
    app.router.add_get("/v2/call_control_applications/{app}", api.application)
    app.router.add_patch("/v2/call_control_applications/{app}", api.application)
    return app


# --- field validation ----------------------------------------------------------------------------


def _str(body: dict[str, Any], key: str, required: bool = False) -> str:
    value = body.get(key)
    if value is None or value == "":
        if required:
            raise ApiError(422, ERR_MISSING_PARAM, f"{key} is required", f"/{key}")
        return ""
    if not isinstance(value, str):
        raise ApiError(422, ERR_BAD_REQUEST, f"{key} must be a string", f"/{key}")
    return value


def _number(body: dict[str, Any], key: str, required: bool = False) -> str:
    value = _str(body, key, required)
    if value and not (_E164.match(value) or value.startswith("sip:")):
        raise ApiError(422, ERR_E164, f"{key} must be in +E.164 format (or a SIP URI)", f"/{key}")
    return value


def _url(body: dict[str, Any], key: str, schemes: tuple[str, ...], required: bool = False) -> str:
    value = _str(body, key, required)
    if value and not value.startswith(tuple(s + "://" for s in schemes)):
        allowed = "/".join(schemes)
        raise ApiError(422, ERR_INVALID_URL, f"{key} must be a {allowed} URL", f"/{key}")
    return value


def _int(body: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ApiError(422, ERR_BAD_REQUEST, f"{key} must be an integer {lo}..{hi}", f"/{key}")
    return value


def _choice(body: dict[str, Any], key: str, allowed: frozenset[str], default: str = "") -> str:
    value = _str(body, key) or default
    if value and value not in allowed:
        raise ApiError(422, ERR_BAD_REQUEST, f"{key} must be one of {sorted(allowed)}", f"/{key}")
    return value


def _unsupported(key: str, value: object, supported: str) -> ApiError:
    detail = f"{key}={value!r} is valid for Telnyx but the fake only supports {supported}"
    return ApiError(422, ERR_BAD_REQUEST, detail, f"/{key}")


def stream_params(body: dict[str, Any], required: bool = False) -> StreamParams | None:
    """The streaming fields shared by dial, answer and streaming_start."""
    url = _url(body, "stream_url", ("wss", "ws"), required)
    if not url:
        return None
    params = StreamParams(url=url)
    params.track = _choice(body, "stream_track", STREAM_TRACKS, "inbound_track")
    codec = _choice(body, "stream_codec", STREAM_CODECS, "default")
    if codec not in ("PCMU", "default"):
        raise _unsupported("stream_codec", codec, "PCMU")
    params.bidirectional_mode = _choice(body, "stream_bidirectional_mode", BIDI_MODES)
    bidi_codec = _choice(body, "stream_bidirectional_codec", STREAM_CODECS - {"default"}, "PCMU")
    if bidi_codec != "PCMU":
        raise _unsupported("stream_bidirectional_codec", bidi_codec, "PCMU")
    rate = body.get("stream_bidirectional_sampling_rate", 8000)
    if rate not in (8000, 16000, 22050, 24000, 48000):
        msg = "stream_bidirectional_sampling_rate must be 8000, 16000, 22050, 24000 or 48000"
        raise ApiError(422, ERR_BAD_REQUEST, msg, "/stream_bidirectional_sampling_rate")
    if rate != 8000:
        raise _unsupported("stream_bidirectional_sampling_rate", rate, "8000")
    params.auth_token = _str(body, "stream_auth_token")
    custom = body.get("custom_parameters", [])
    if not isinstance(custom, list) or not all(
        isinstance(p, dict) and isinstance(p.get("name"), str) for p in custom
    ):
        msg = 'custom_parameters must be a list of {"name", "value"}'
        raise ApiError(422, ERR_BAD_REQUEST, msg, "/custom_parameters")
    params.custom_parameters = {p["name"]: str(p.get("value", "")) for p in custom}
    return params


def _client_state(body: dict[str, Any]) -> str:
    value = _str(body, "client_state")
    if value and not valid_base64(value):
        msg = "client_state must be a valid Base-64 encoded string"
        raise ApiError(422, ERR_BAD_REQUEST, msg, "/client_state")
    return value


class _Api:
    def __init__(self, tx: CallRunner) -> None:
        self.tx = tx
        self.dials: dict[str, FakeCall] = {}  # by command_id
        self.actions: dict[str, Callable[[FakeCall, dict[str, Any]], Apply]] = {
            "answer": self.answer,
            "hangup": self.hangup,
            "reject": self.reject,
            "streaming_start": self.streaming_start,
            "streaming_stop": self.streaming_stop,
            "transfer": self.transfer,
            "speak": self.speak,
            "record_start": self.record_start,
            "record_stop": self.record_stop,
            "send_dtmf": self.send_dtmf,
        }

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
        self.tx.requests.append(rec)
        try:
            self._authenticate(request)
            rec.body = self._parse(raw)
            resp = await handler(request)
        except ApiError as e:
            resp = web.json_response(error_body(e.code, e.detail, e.pointer), status=e.status)
        except web.HTTPNotFound:
            detail = f"The requested resource or URL could not be found: {request.path}"
            resp = web.json_response(error_body(ERR_NOT_FOUND, detail), status=404)
        except web.HTTPException as e:
            resp = web.json_response(error_body(ERR_BAD_REQUEST, e.reason), status=e.status)
        except Exception:
            log.exception("fake Telnyx REST handler crashed on %s %s", request.method, request.path)
            resp = web.json_response(
                error_body("10007", "An unexpected error occured."), status=500
            )
        rec.status = resp.status
        return resp

    def _authenticate(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.tx.api_key.encode()
        ):
            detail = (
                "The required authentication headers were either invalid or not included "
                "in the request."
            )
            raise ApiError(401, ERR_AUTH, detail)

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any]:
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise ApiError(400, ERR_BAD_REQUEST, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise ApiError(400, ERR_BAD_REQUEST, "The request body must be a JSON object.")
        return body

    def _call(self, request: web.Request) -> FakeCall:
        call = self.tx.calls.get(request.match_info["call"])
        if call is None:
            raise ApiError(404, ERR_NOT_FOUND, "The requested resource or URL could not be found.")
        return call

    # --- resources -----------------------------------------------------------------------------

    async def dial(self, request: web.Request) -> web.Response:
        tx, body = self.tx, self._parse(await request.read())
        command_id = _str(body, "command_id")
        if command_id and tx.seen_command("dial", command_id) and command_id in self.dials:
            return web.json_response(self._dial_json(self.dials[command_id]))
        connection_id = _str(body, "connection_id", required=True)
        if connection_id != tx.connection_id:
            detail = f"connection_id {connection_id} does not exist"
            raise ApiError(422, ERR_ASSOCIATED, detail, "/connection_id")
        to = _number(body, "to", required=True)
        from_ = _number(body, "from", required=True)
        webhook_url = _url(body, "webhook_url", ("https", "http"))
        client_state = _client_state(body)
        timeout = _int(body, "timeout_secs", 30, 1, 600)
        time_limit = _int(body, "time_limit_secs", 14400, 30, 14400)
        amd = _choice(body, "answering_machine_detection", AMD_MODES, "disabled")
        record = _choice(body, "record", frozenset({"record-from-answer"}))
        params = stream_params(body)
        if not webhook_url:
            number = tx.numbers.get(from_)
            webhook_url = (number.webhook_url if number else "") or tx.webhook_url
        call = tx.new_call("outgoing", from_, to, None, webhook_url)
        call.client_state = client_state or None
        call.commands.append((asyncio.get_running_loop().time(), "dial", body))
        ctl = tx.ctl(call)
        ctl.callee = tx.callee(to)
        ctl.amd = amd
        ctl.timeout_secs = float(timeout)
        ctl.time_limit_secs = float(time_limit)
        ctl.record_on_answer = bool(record)
        ctl.stream_params = params
        if command_id:
            tx.remember_command("dial", command_id)
            self.dials[command_id] = call
        tx.spawn(call, tx.run_outbound(call))
        return web.json_response(self._dial_json(call))

    @staticmethod
    def _dial_json(call: FakeCall) -> dict[str, Any]:
        return {
            "data": {
                "call_control_id": call.call_control_id,
                "call_leg_id": call.call_leg_id,
                "call_session_id": call.call_session_id,
                "is_alive": False,
                "record_type": "call",
            }
        }

    async def application(self, request: web.Request) -> web.Response:
        """The Call Control application (id = the connection id): its webhook URL is where
        inbound calls on numbers without their own webhook are announced."""
        tx = self.tx
        if request.match_info["app"] != tx.connection_id:
            raise ApiError(404, ERR_NOT_FOUND, "Resource not found")
        if request.method == "PATCH":
            body = self._parse(await request.read())
            if "webhook_event_url" in body:
                tx.webhook_url = _url(body, "webhook_event_url", ("https", "http"))
        data = {
            "record_type": "call_control_application",
            "id": tx.connection_id,
            "application_name": "getpatter-fake",
            "webhook_event_url": tx.webhook_url,
            "webhook_api_version": "2",
            "active": True,
        }
        return web.json_response({"data": data})

    async def get_call(self, request: web.Request) -> web.Response:
        call = self._call(request)
        now = asyncio.get_running_loop().time()
        end = call.ended_at if call.ended_at is not None else now
        duration = round(end - call.answered_at) if call.answered_at is not None else 0
        data = {
            "record_type": "call",
            "call_control_id": call.call_control_id,
            "call_leg_id": call.call_leg_id,
            "call_session_id": call.call_session_id,
            "client_state": call.client_state,
            "is_alive": not call.ended,
            "call_duration": duration,
            "start_time": iso_now(self.tx.wall(call.created_at)),
            "end_time": iso_now(self.tx.wall(call.ended_at)) if call.ended_at else None,
        }
        return web.json_response({"data": data})

    async def action(self, request: web.Request) -> web.Response:
        tx, body = self.tx, self._parse(await request.read())
        call = self._call(request)
        name = request.match_info["action"]
        handler = self.actions.get(name)
        if handler is None:
            detail = f"action {name!r} is unknown or not supported by the fake Telnyx"
            raise ApiError(404, ERR_NOT_FOUND, detail)
        if call.ended or tx.ctl(call).finishing:
            detail = "This call is no longer active and can't receive commands."
            raise ApiError(422, ERR_CALL_ENDED, detail)
        client_state = _client_state(body)
        command_id = _str(body, "command_id")
        if command_id and tx.seen_command(call.call_control_id, command_id):
            return web.json_response(_OK)  # Telnyx ignores the repeat
        apply = handler(call, body)  # validates; raises ApiError before any effect
        if client_state:
            call.client_state = client_state
        if command_id:
            tx.remember_command(call.call_control_id, command_id)
        call.commands.append((asyncio.get_running_loop().time(), name, body))
        apply()
        call._notify()
        return web.json_response(_OK)

    # --- actions: validate, then return the effect ---------------------------------------------

    @staticmethod
    def _need_answered(call: FakeCall, name: str) -> None:
        if call.state != "answered":
            detail = f"{name}: the call is not answered yet (state {call.state})"
            raise ApiError(422, ERR_BAD_REQUEST, detail)

    def answer(self, call: FakeCall, body: dict[str, Any]) -> Apply:
        tx = self.tx
        if call.direction != "incoming" or call.state != "parked" or tx.ctl(call).settled.is_set():
            detail = f"answer: only a parked incoming call can be answered (state {call.state})"
            raise ApiError(422, ERR_BAD_REQUEST, detail)
        params = stream_params(body)
        webhook_url = _url(body, "webhook_url", ("https", "http"))

        def apply() -> None:
            ctl = tx.ctl(call)
            if webhook_url:
                ctl.webhook_url = webhook_url
            ctl.settled.set()
            ctl.stream_pending = params is not None
            tx.spawn(call, tx.answer(call, params))

        return apply

    def hangup(self, call: FakeCall, body: dict[str, Any]) -> Apply:
        tx = self.tx
        if call.answered:
            cause, source = "normal_clearing", tx.app_side(call)
        elif call.direction == "outgoing":
            cause, source = "originator_cancel", "caller"
        else:
            cause, source = "normal_clearing", "callee"

        def apply() -> None:
            tx.ctl(call).settled.set()
            tx.spawn(call, tx.finish(call, cause, source))

        return apply

    def reject(self, call: FakeCall, body: dict[str, Any]) -> Apply:
        tx = self.tx
        if call.direction != "incoming" or call.state != "parked":
            detail = f"reject: only a parked incoming call can be rejected (state {call.state})"
            raise ApiError(422, ERR_BAD_REQUEST, detail)
        cause = _choice(body, "cause", frozenset({"CALL_REJECTED", "USER_BUSY"}))
        if not cause:
            raise ApiError(422, ERR_MISSING_PARAM, "cause is required", "/cause")
        hangup_cause = "user_busy" if cause == "USER_BUSY" else "call_rejected"

        def apply() -> None:
            tx.ctl(call).settled.set()
            tx.spawn(call, tx.finish(call, hangup_cause, "callee"))

        return apply

    def streaming_start(self, call: FakeCall, body: dict[str, Any]) -> Apply:
        tx = self.tx
        self._need_answered(call, "streaming_start")
        params = stream_params(body, required=True)
        assert params is not None

        def apply() -> None:
            tx.ctl(call).stream_pending = True
            tx.spawn(call, tx.start_stream(call, params))

        return apply

    def streaming_stop(self, call: FakeCall, body: dict[str, Any]) -> Apply:
        tx = self.tx
        self._need_answered(call, "streaming_stop")
        _str(body, "stream_id")

        def apply() -> None:
            tx.spawn(call, tx.stop_stream(call))

        return apply

    def transfer(self, call: FakeCall, body: dict[str, Any]) -> Apply:
        tx = self.tx
        if call.state not in ("answered", "parked"):
            detail = f"transfer: the call cannot be transferred (state {call.state})"
            raise ApiError(422, ERR_BAD_REQUEST, detail)
        to = _number(body, "to", required=True)
        from_ = _number(body, "from")
        timeout = _int(body, "timeout_secs", 30, 1, 600)
        webhook_url = _url(body, "webhook_url", ("https", "http"))

        def apply() -> None:
            if webhook_url:
                tx.ctl(call).webhook_url = webhook_url
            call.transfers.append(to)
            tx.spawn(call, tx.run_transfer(call, to, from_ or call.from_, float(timeout)))

        return apply

    def speak(self, call: FakeCall, body: dict[str, Any]) -> Apply:
        tx = self.tx
        self._need_answered(call, "speak")
        text = _str(body, "payload", required=True)
        _str(body, "voice", required=True)
        _choice(body, "payload_type", frozenset({"text", "ssml"}))

        def apply() -> None:
            call.said.append(text)
            tx.emit(call, "call.speak.started", {})
            tx.spawn(call, tx.run_speak(call, text))

        return apply

    def record_start(self, call: FakeCall, body: dict[str, Any]) -> Apply:
        tx = self.tx
        self._need_answered(call, "record_start")
        fmt = _choice(body, "format", frozenset({"wav", "mp3"}))
        channels = _choice(body, "channels", frozenset({"single", "dual"}))
        for key, value in (("format", fmt), ("channels", channels)):
            if not value:
                raise ApiError(422, ERR_MISSING_PARAM, f"{key} is required", f"/{key}")
        return lambda: tx.start_recording(call, fmt, channels)

    def record_stop(self, call: FakeCall, body: dict[str, Any]) -> Apply:
        tx = self.tx
        self._need_answered(call, "record_stop")
        return lambda: tx.save_recording(call)

    def send_dtmf(self, call: FakeCall, body: dict[str, Any]) -> Apply:
        self._need_answered(call, "send_dtmf")
        digits = _str(body, "digits", required=True)
        if not _DTMF.match(digits):
            raise ApiError(422, ERR_BAD_REQUEST, "digits may hold 0-9, A-D, *, #, w, W", "/digits")
        return lambda: call.app_dtmf.extend(d for d in digits if d not in "wW")
