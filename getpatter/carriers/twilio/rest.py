"""The few Twilio REST calls a voice agent needs, over aiohttp.

Not the official `twilio` SDK: its async client is a thin layer over the same form posts, its
import alone costs more than our whole package, and it can only be pointed at a loopback fake
by patching `client.api.base_url`. Five form-encoded endpoints are simpler to own.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable
from typing import Any

import aiohttp

from getpatter.errors import CallError, PatterConnectionError

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"


class TwilioREST:
    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        base_url: str = "https://api.twilio.com",
        *,
        timeout: float = 15.0,
    ) -> None:
        self.account_sid = account_sid
        basic = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._headers = {"Authorization": f"Basic {basic}"}
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"TwilioREST(account_sid={self.account_sid!r}, base_url={self.base_url!r})"

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{API_VERSION}/Accounts/{self.account_sid}/{path}"

    async def _request(
        self, method: str, path: str, form: Iterable[tuple[str, str]] | None = None
    ) -> dict[str, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(
                method, self._url(path), data=list(form) if form else None, headers=self._headers
            ) as resp:
                try:
                    body: Any = await resp.json(content_type=None)
                except ValueError:
                    body = {}
                if resp.status >= 400:
                    message = body.get("message", "") if isinstance(body, dict) else ""
                    code = body.get("code", "") if isinstance(body, dict) else ""
                    detail = f"HTTP {resp.status} {code} {message}".strip()
                    raise CallError(f"Twilio {method} {path} failed: {detail}")
                return body if isinstance(body, dict) else {}
        except aiohttp.ClientError as exc:
            raise PatterConnectionError(
                f"Twilio API unreachable at {self.base_url}: {exc}"
            ) from None

    async def create_call(
        self,
        *,
        to: str,
        from_: str,
        twiml: str,
        status_callback: str = "",
        status_events: Iterable[str] = ("initiated", "ringing", "answered", "completed"),
        ring_timeout: int | None = 25,
        machine_detection: bool = False,
        amd_callback: str = "",
    ) -> dict[str, Any]:
        form: list[tuple[str, str]] = [("To", to), ("From", from_), ("Twiml", twiml)]
        if status_callback:
            form.append(("StatusCallback", status_callback))
            form += [("StatusCallbackEvent", e) for e in status_events]
        if ring_timeout is not None:
            form.append(("Timeout", str(ring_timeout)))
        if machine_detection:
            form += [("MachineDetection", "DetectMessageEnd"), ("AsyncAmd", "true")]
            if amd_callback:
                form.append(("AsyncAmdStatusCallback", amd_callback))
        return await self._request("POST", "Calls.json", form)

    async def update_call(self, call_sid: str, **fields: str) -> dict[str, Any]:
        return await self._request("POST", f"Calls/{call_sid}.json", list(fields.items()))

    async def hangup(self, call_sid: str) -> None:
        await self.update_call(call_sid, Status="completed")

    async def redirect(self, call_sid: str, twiml: str) -> None:
        await self.update_call(call_sid, Twiml=twiml)

    async def start_recording(self, call_sid: str, status_callback: str = "") -> dict[str, Any]:
        form = [("RecordingStatusCallback", status_callback)] if status_callback else []
        return await self._request("POST", f"Calls/{call_sid}/Recordings.json", form)

    async def find_number(self, phone_number: str) -> dict[str, Any] | None:
        from urllib.parse import quote

        page = await self._request(
            "GET", f"IncomingPhoneNumbers.json?PhoneNumber={quote(phone_number)}"
        )
        numbers = page.get("incoming_phone_numbers") or []
        return numbers[0] if numbers else None

    async def update_number(self, number_sid: str, **fields: str) -> dict[str, Any]:
        return await self._request(
            "POST", f"IncomingPhoneNumbers/{number_sid}.json", list(fields.items())
        )

    @property
    def closed(self) -> bool:
        """No HTTP session is open (one opens on the next request)."""
        return self._session is None or self._session.closed

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
