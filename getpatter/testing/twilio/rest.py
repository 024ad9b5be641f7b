"""The REST side of the fake Twilio: `/2010-04-01/Accounts/{AccountSid}/...` with Basic auth.

Every failure is Twilio's error JSON (`code`, `message`, `more_info`, `status`) with the matching
HTTP status, never a traceback. Choices where Twilio's behaviour is not pinned down:
- a valid login used on another account's path is 401/20003;
- `Status=completed` on a call that was not answered yet ends it as `canceled`; `Status=canceled`
  on a live call is a no-op (200); a status update on an ended call is a no-op (200);
- a redirect (`Url`/`Twiml`) or recording on a call that is not in progress is 400/21220;
- `ApplicationSid` is refused (400/21218): the fake has no TwiML Apps;
- `From` must be a number on the account (`add_number`), else 400/21210, as for an
  unverified caller id; `To` must be E.164, `client:` or `sip:` (else 400/21211);
- recordings are metadata only (no media), finished when the call ends;
- codes for bad parameter values (20001, 21207, 21218) are approximate.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .media import FakeCall
from .util import (
    API_VERSION,
    FakeRecording,
    Outbound,
    PhoneNumber,
    RestRequest,
    error_body,
    rfc2822,
)

if TYPE_CHECKING:
    from .calls import CallRunner

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_STATUS_EVENTS = {"initiated", "ringing", "answered", "completed"}


class ApiError(Exception):
    """Becomes Twilio's error JSON."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def build_rest_app(tw: CallRunner) -> web.Application:
    api = _Api(tw)
    app = web.Application(middlewares=[api.middleware])
    acct = f"/{API_VERSION}/Accounts/{{account}}"
    r = app.router
    r.add_get(acct + ".json", api.account)
    r.add_route("*", acct + "/Calls.json", api.calls)
    r.add_route("*", acct + "/Calls/{call}.json", api.call)
    r.add_route("*", acct + "/Calls/{call}/Recordings.json", api.call_recordings)
    r.add_route("*", acct + "/Calls/{call}/Recordings/{rec}.json", api.call_recording)
    r.add_get(acct + "/Recordings.json", api.recordings)
    r.add_get(acct + "/Recordings/{rec}.json", api.recording)
    r.add_route("*", acct + "/IncomingPhoneNumbers.json", api.numbers)
    r.add_route("*", acct + "/IncomingPhoneNumbers/{pn}.json", api.number)
    return app


async def _form(request: web.Request) -> dict[str, list[str]]:
    """The form body as name -> every value (aiohttp caches the parsed body)."""
    multi: dict[str, list[str]] = {}
    if request.method not in ("POST", "PUT"):
        return multi
    try:
        for key, value in (await request.post()).items():
            if isinstance(value, str):
                multi.setdefault(key, []).append(value)
    except Exception:  # malformed body: treat as empty, the handler complains
        return {}
    return multi


def _get(data: dict[str, list[str]], key: str, default: str = "") -> str:
    values = data.get(key)
    return values[-1] if values else default


class _Api:
    def __init__(self, tw: CallRunner) -> None:
        self.tw = tw

    # --- plumbing ------------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        multi = await _form(request)
        rec = RestRequest(
            method=request.method,
            path=request.path,
            form={k: v[-1] for k, v in multi.items()},
            form_multi=multi,
            query=dict(request.query),
            time=asyncio.get_running_loop().time(),
        )
        self.tw.requests.append(rec)
        try:
            self._authenticate(request)
            resp = await handler(request)
        except ApiError as e:
            resp = self._error(e.status, e.code, e.message)
        except web.HTTPNotFound:
            resp = self._error(404, 20404, f"The requested resource {request.path} was not found")
        except web.HTTPMethodNotAllowed:
            resp = self._error(405, 20004, "Method not allowed")
        except web.HTTPException as e:
            resp = self._error(e.status, 20001, e.reason)
        except Exception:
            log.exception("fake Twilio REST handler crashed on %s %s", request.method, request.path)
            resp = self._error(500, 20500, "Internal Server Error")
        rec.status = resp.status
        return resp

    @staticmethod
    def _error(status: int, code: int, message: str) -> web.Response:
        headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if status == 401 else None
        return web.json_response(error_body(code, message, status), status=status, headers=headers)

    def _authenticate(self, request: web.Request) -> None:
        """HTTP Basic AccountSid:AuthToken, for the account in the path."""
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        ok = (
            scheme.lower() == "basic"
            and hmac.compare_digest(user, self.tw.account_sid)
            and hmac.compare_digest(password, self.tw.auth_token)
        )
        if not ok:
            raise ApiError(401, 20003, "Authenticate")
        account = request.match_info.get("account")
        if account is not None and account != self.tw.account_sid:
            raise ApiError(401, 20003, "Authenticate")

    def _call(self, request: web.Request) -> FakeCall:
        call = self.tw.calls.get(request.match_info["call"])
        if call is None:
            raise ApiError(404, 20404, f"The requested resource {request.path} was not found")
        return call

    def _base(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.tw.account_sid}"

    def _page(self, key: str, items: list[dict[str, Any]], uri: str) -> dict[str, Any]:
        """Twilio's paged list shape (one page holds everything)."""
        return {
            key: items,
            "start": 0,
            "end": max(len(items) - 1, 0),
            "page": 0,
            "page_size": max(50, len(items)),
            "uri": uri,
            "first_page_uri": uri,
            "next_page_uri": None,
            "previous_page_uri": None,
        }

    @staticmethod
    def _wall(loop_time: float | None) -> str | None:
        """RFC 2822 wall time of a loop timestamp."""
        if loop_time is None:
            return None
        now = asyncio.get_running_loop().time()
        return rfc2822(time.time() - (now - loop_time))

    @staticmethod
    def _method(value: str, field_name: str) -> str:
        method = (value or "POST").upper()
        if method not in ("GET", "POST"):
            raise ApiError(400, 21207, f"{field_name} must be GET or POST")
        return method

    # --- resources -----------------------------------------------------------------------------

    def call_json(self, call: FakeCall) -> dict[str, Any]:
        uri = f"{self._base()}/Calls/{call.call_sid}"
        duration = None
        if call.ended_at is not None:
            answered = call.answered_at
            duration = str(round(call.ended_at - answered)) if answered is not None else "0"
        number = self.tw.number(call.to) if call.direction == "inbound" else None
        return {
            "sid": call.call_sid,
            "account_sid": self.tw.account_sid,
            "parent_call_sid": None,
            "to": call.to,
            "to_formatted": call.to,
            "from": call.from_,
            "from_formatted": call.from_,
            "phone_number_sid": number.sid if number else None,
            "status": call.status,
            "direction": call.direction,
            "answered_by": call.answered_by,
            "api_version": API_VERSION,
            "date_created": self._wall(call.created_at),
            "date_updated": rfc2822(),
            "start_time": self._wall(call.answered_at),
            "end_time": self._wall(call.ended_at),
            "duration": duration,
            "price": None,
            "price_unit": "USD",
            "forwarded_from": None,
            "caller_name": None,
            "group_sid": None,
            "queue_time": "0",
            "trunk_sid": None,
            "uri": uri + ".json",
            "subresource_uris": {
                "recordings": uri + "/Recordings.json",
                "notifications": uri + "/Notifications.json",
                "streams": uri + "/Streams.json",
                "events": uri + "/Events.json",
            },
        }

    def recording_json(self, rec: FakeRecording) -> dict[str, Any]:
        return {
            "sid": rec.sid,
            "account_sid": self.tw.account_sid,
            "call_sid": rec.call_sid,
            "conference_sid": None,
            "api_version": API_VERSION,
            "date_created": rfc2822(rec.started_wall),
            "date_updated": rfc2822(),
            "start_time": rfc2822(rec.started_wall),
            "duration": "-1" if rec.duration is None else str(rec.duration),
            "status": rec.status,
            "channels": rec.channels,
            "source": rec.source,
            "track": rec.track,
            "error_code": None,
            "price": None,
            "price_unit": "USD",
            "encryption_details": None,
            "uri": f"{self._base()}/Recordings/{rec.sid}.json",
        }

    def number_json(self, n: PhoneNumber) -> dict[str, Any]:
        return {
            "sid": n.sid,
            "account_sid": self.tw.account_sid,
            "phone_number": n.phone_number,
            "friendly_name": n.friendly_name or n.phone_number,
            "voice_url": n.voice_url or None,
            "voice_method": n.voice_method,
            "voice_fallback_url": None,
            "voice_fallback_method": "POST",
            "status_callback": n.status_callback or None,
            "status_callback_method": n.status_callback_method,
            "voice_application_sid": None,
            "capabilities": {"voice": True, "sms": True, "mms": True, "fax": False},
            "api_version": API_VERSION,
            "date_created": rfc2822(n.date_created),
            "date_updated": rfc2822(n.date_updated),
            "status": "in-use",
            "uri": f"{self._base()}/IncomingPhoneNumbers/{n.sid}.json",
        }

    # --- handlers ------------------------------------------------------------------------------

    async def account(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "sid": self.tw.account_sid,
                "friendly_name": "CallRunner",
                "status": "active",
                "type": "Full",
                "uri": f"{self._base()}.json",
            }
        )

    async def calls(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            q = request.query
            items = [
                self.call_json(c)
                for c in self.tw.calls.values()
                if all(q.get(k) in (None, v) for k, v in (("To", c.to), ("From", c.from_)))
                and q.get("Status") in (None, c.status)
            ]
            return web.json_response(self._page("calls", items, f"{self._base()}/Calls.json"))
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        call = self.tw.create_outbound(*self._outbound(await _form(request)))
        return web.json_response(self.call_json(call), status=201)

    def _outbound(self, f: dict[str, list[str]]) -> tuple[str, str, Outbound]:
        """Validate `POST Calls.json` the way Twilio does, into (To, From, options)."""
        to, from_ = _get(f, "To"), _get(f, "From")
        if not to:
            raise ApiError(400, 21201, "No 'To' number is specified")
        if not from_:
            raise ApiError(400, 21213, "No 'From' number is specified")
        sources = [k for k in ("Url", "Twiml", "ApplicationSid") if _get(f, k)]
        if len(sources) != 1:
            raise ApiError(400, 21205, "Exactly one of Url, Twiml or ApplicationSid is required")
        if sources == ["ApplicationSid"]:
            raise ApiError(400, 21218, "ApplicationSid is not supported by the fake Twilio")
        url = _get(f, "Url")
        if url and not url.startswith(("http://", "https://")):
            raise ApiError(400, 21205, f"Url is not a valid URL: {url}")
        if not _E164.match(to) and not to.startswith(("client:", "sip:")):
            raise ApiError(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if self.tw.number(from_) is None and not from_.startswith("client:"):
            raise ApiError(
                400,
                21210,
                f"The source phone number provided, {from_}, is not yet verified for your "
                "account. You may only make calls from phone numbers that you've verified or "
                "purchased from Twilio.",
            )
        try:
            timeout = float(_get(f, "Timeout", "60"))
        except ValueError:
            raise ApiError(400, 20001, "Timeout must be an integer") from None
        timeout = min(max(timeout, 1), 600)  # Twilio clamps rather than refuses
        amd = _get(f, "MachineDetection")
        if amd and amd not in ("Enable", "DetectMessageEnd"):
            raise ApiError(400, 20001, "MachineDetection must be Enable or DetectMessageEnd")
        events = {e.lower() for v in f.get("StatusCallbackEvent", []) for e in v.split()}
        if events - _STATUS_EVENTS:
            raise ApiError(400, 20001, f"Invalid StatusCallbackEvent: {sorted(events)}")
        recording = {k: " ".join(v) for k, v in f.items() if k.startswith("Recording")}
        opts = Outbound(
            url=url,
            method=self._method(_get(f, "Method"), "Method"),
            twiml=_get(f, "Twiml"),
            timeout=timeout,
            status_callback=_get(f, "StatusCallback"),
            status_callback_method=self._method(
                _get(f, "StatusCallbackMethod"), "StatusCallbackMethod"
            ),
            events=frozenset(events or {"completed"}),
            machine_detection=amd,
            async_amd=_get(f, "AsyncAmd").lower() == "true",
            amd_callback=_get(f, "AsyncAmdStatusCallback"),
            amd_method=self._method(
                _get(f, "AsyncAmdStatusCallbackMethod"), "AsyncAmdStatusCallbackMethod"
            ),
            record=_get(f, "Record").lower() == "true",
            recording=recording,
        )
        return to, from_, opts

    async def call(self, request: web.Request) -> web.Response:
        call = self._call(request)
        if request.method == "GET":
            return web.json_response(self.call_json(call))
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        f: dict[str, list[str]] = await _form(request)
        status, url, twiml = _get(f, "Status"), _get(f, "Url"), _get(f, "Twiml")
        if status and status not in ("completed", "canceled"):
            raise ApiError(400, 21218, f"Status must be completed or canceled, got {status!r}")
        if (url or twiml) and call.status != "in-progress":
            raise ApiError(400, 21220, "Call is not in-progress. Cannot redirect.")
        if url and not url.startswith(("http://", "https://")):
            raise ApiError(400, 21205, f"Url is not a valid URL: {url}")
        ctl = self.tw._ctl[call.call_sid]
        if _get(f, "StatusCallback"):
            ctl.status_callback = _get(f, "StatusCallback")
            ctl.status_callback_method = self._method(
                _get(f, "StatusCallbackMethod"), "StatusCallbackMethod"
            )
        if status == "completed" or (status == "canceled" and call.status in ("queued", "ringing")):
            call._request_end(status)
            try:
                await call.wait_for(lambda: call.ended, 5.0)
            except TimeoutError:
                pass
        elif twiml:
            call._redirect = ("twiml", twiml, "")
        elif url:
            call._redirect = ("url", url, self._method(_get(f, "Method"), "Method"))
        if call._redirect is not None and call._exec_task is not None:
            call._exec_task.cancel()
        return web.json_response(self.call_json(call))

    async def call_recordings(self, request: web.Request) -> web.Response:
        call = self._call(request)
        if request.method == "GET":
            items = [
                self.recording_json(r)
                for r in self.tw.recordings.values()
                if r.call_sid == call.call_sid
            ]
            uri = f"{self._base()}/Calls/{call.call_sid}/Recordings.json"
            return web.json_response(self._page("recordings", items, uri))
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        if call.status != "in-progress":
            raise ApiError(400, 21220, "Requested resource is not eligible for recording")
        f: dict[str, list[str]] = await _form(request)
        opts = {k: " ".join(v) for k, v in f.items()}
        rec = self.tw.start_recording(call, "StartCallRecordingAPI", opts)
        return web.json_response(self.recording_json(rec), status=201)

    async def call_recording(self, request: web.Request) -> web.Response:
        call = self._call(request)
        rec = self.tw.recordings.get(request.match_info["rec"])
        if rec is None or rec.call_sid != call.call_sid:
            raise ApiError(404, 20404, f"The requested resource {request.path} was not found")
        if request.method == "POST":
            status = _get(await _form(request), "Status")
            if status not in ("stopped", "paused", "in-progress"):
                raise ApiError(400, 21218, "Status must be stopped, paused or in-progress")
            if rec.status in ("in-progress", "paused"):
                if status == "stopped":
                    self.tw.finish_recording(rec)  # processed at once: completed + callback
                    return web.json_response({**self.recording_json(rec), "status": "stopped"})
                rec.status = status
        elif request.method != "GET":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        return web.json_response(self.recording_json(rec))

    async def recordings(self, request: web.Request) -> web.Response:
        call_sid = request.query.get("CallSid")
        items = [
            self.recording_json(r)
            for r in self.tw.recordings.values()
            if call_sid in (None, r.call_sid)
        ]
        uri = f"{self._base()}/Recordings.json"
        return web.json_response(self._page("recordings", items, uri))

    async def recording(self, request: web.Request) -> web.Response:
        rec = self.tw.recordings.get(request.match_info["rec"])
        if rec is None:
            raise ApiError(404, 20404, f"The requested resource {request.path} was not found")
        return web.json_response(self.recording_json(rec))

    async def numbers(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            want = request.query.get("PhoneNumber")
            items = [
                self.number_json(n)
                for n in self.tw.numbers.values()
                if want in (None, n.phone_number)
            ]
            uri = f"{self._base()}/IncomingPhoneNumbers.json"
            return web.json_response(self._page("incoming_phone_numbers", items, uri))
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        f: dict[str, list[str]] = await _form(request)
        phone = _get(f, "PhoneNumber")
        if not phone:
            raise ApiError(400, 21421, "PhoneNumber is required")
        if self.tw.number(phone) is not None:
            raise ApiError(400, 21422, f"{phone} is already on this account")
        sid = self.tw.add_number(phone)
        number = self.tw.numbers[sid]
        self._update_number(number, f)
        return web.json_response(self.number_json(number), status=201)

    async def number(self, request: web.Request) -> web.StreamResponse:
        number = self.tw.numbers.get(request.match_info["pn"])
        if number is None:
            raise ApiError(404, 20404, f"The requested resource {request.path} was not found")
        if request.method == "POST":
            self._update_number(number, await _form(request))
        elif request.method == "DELETE":
            del self.tw.numbers[number.sid]
            return web.Response(status=204)
        elif request.method != "GET":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST", "DELETE"])
        return web.json_response(self.number_json(number))

    def _update_number(self, n: PhoneNumber, f: dict[str, list[str]]) -> None:
        if "VoiceUrl" in f:
            n.voice_url = _get(f, "VoiceUrl")
        if "VoiceMethod" in f:
            n.voice_method = self._method(_get(f, "VoiceMethod"), "VoiceMethod")
        if "StatusCallback" in f:
            n.status_callback = _get(f, "StatusCallback")
        if "StatusCallbackMethod" in f:
            n.status_callback_method = self._method(
                _get(f, "StatusCallbackMethod"), "StatusCallbackMethod"
            )
        if "FriendlyName" in f:
            n.friendly_name = _get(f, "FriendlyName")
        n.date_updated = time.time()
