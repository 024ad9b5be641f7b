"""The few Telnyx Call Control v2 commands a voice agent needs, over aiohttp.

Not the official `telnyx` SDK: a handful of JSON posts with a bearer token, and a client we can
point at a loopback fake with a plain `base_url`. Errors become `CallError` carrying Telnyx's
own title and detail — never the API key.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from getpatter.errors import CallError, PatterConnectionError

log = logging.getLogger(__name__)


CALL_ENDED = "90018"  # Telnyx: "Call has already ended"


class TelnyxAPIError(CallError):
    """A Telnyx error response; `codes` are Telnyx's error codes (e.g. "90018")."""

    def __init__(self, message: str, status: int, codes: tuple[str, ...]) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes

    @property
    def call_ended(self) -> bool:
        return CALL_ENDED in self.codes


def _error_codes(body: object) -> tuple[str, ...]:
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return ()
    return tuple(str(e.get("code")) for e in errors if isinstance(e, dict) and e.get("code"))


def _describe_errors(body: object) -> str:
    """`{"errors":[{"code","title","detail"}]}` → "90018 Call has already ended: …"."""
    if not isinstance(body, dict):
        return ""
    errors = body.get("errors")
    if not isinstance(errors, list):
        return ""
    parts = []
    for err in errors[:3]:
        if not isinstance(err, dict):
            continue
        code, title, detail = (str(err.get(k) or "") for k in ("code", "title", "detail"))
        text = " ".join(x for x in (code, title) if x)
        if detail and detail != title:
            text = f"{text}: {detail}" if text else detail
        parts.append(text)
    return "; ".join(p for p in parts if p)


class TelnyxREST:
    def __init__(
        self, api_key: str, base_url: str = "https://api.telnyx.com/v2", *, timeout: float = 15.0
    ) -> None:
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
        }
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"TelnyxREST(base_url={self.base_url!r})"

    async def _request(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        payload = {k: v for k, v in body.items() if v is not None}
        try:
            async with self._session.request(
                method, self.base_url + path, json=payload, headers=self._headers
            ) as resp:
                try:
                    data: Any = await resp.json(content_type=None)
                except ValueError:
                    data = {}
                if resp.status >= 400:
                    detail = _describe_errors(data) or (resp.reason or "")
                    raise TelnyxAPIError(
                        f"Telnyx {method} {path} failed: HTTP {resp.status} {detail}".rstrip(),
                        resp.status,
                        _error_codes(data),
                    )
                return data if isinstance(data, dict) else {}
        except aiohttp.ClientError as exc:
            raise PatterConnectionError(
                f"Telnyx API unreachable at {self.base_url}: {exc}"
            ) from None

    async def action(self, call_control_id: str, name: str, **body: Any) -> dict[str, Any]:
        """`POST /calls/{call_control_id}/actions/{name}`; fields set to None are left out."""
        path = f"/calls/{quote(call_control_id, safe=':')}/actions/{name}"
        return await self._request("POST", path, body)

    async def dial(
        self, *, connection_id: str, to: str, from_: str, **fields: Any
    ) -> dict[str, Any]:
        """`POST /calls`; returns the `data` object (`call_control_id`, `call_leg_id`, …)."""
        body = {"connection_id": connection_id, "to": to, "from": from_, **fields}
        result = await self._request("POST", "/calls", body)
        data = result.get("data")
        return data if isinstance(data, dict) else {}

    async def answer(self, call_control_id: str, **fields: Any) -> None:
        await self.action(call_control_id, "answer", **fields)

    async def hangup(self, call_control_id: str, *, command_id: str | None = None) -> None:
        await self.action(call_control_id, "hangup", command_id=command_id)

    async def transfer(self, call_control_id: str, to: str, **fields: Any) -> None:
        await self.action(call_control_id, "transfer", to=to, **fields)

    async def streaming_start(self, call_control_id: str, **fields: Any) -> None:
        await self.action(call_control_id, "streaming_start", **fields)

    async def streaming_stop(self, call_control_id: str, stream_id: str | None = None) -> None:
        await self.action(call_control_id, "streaming_stop", stream_id=stream_id)

    async def speak(
        self,
        call_control_id: str,
        text: str,
        *,
        voice: str = "female",
        language: str = "en-US",
        command_id: str | None = None,
    ) -> None:
        await self.action(
            call_control_id,
            "speak",
            payload=text,
            payload_type="text",
            voice=voice,
            language=language,
            command_id=command_id,
        )

    async def record_start(
        self,
        call_control_id: str,
        *,
        format: str = "mp3",
        channels: str = "single",
        command_id: str | None = None,
    ) -> None:
        await self.action(
            call_control_id, "record_start", format=format, channels=channels, command_id=command_id
        )

    async def get_application(self, application_id: str) -> dict[str, Any]:
        """A Call Control application (its id is the connection id calls are placed on)."""
        data = await self._request("GET", f"/call_control_applications/{application_id}", {})
        return dict(data.get("data") or {})

    async def update_application(self, application_id: str, **fields: Any) -> dict[str, Any]:
        path = f"/call_control_applications/{application_id}"
        data = await self._request("PATCH", path, fields)
        return dict(data.get("data") or {})

    @property
    def closed(self) -> bool:
        """No HTTP session is open (one opens on the next request)."""
        return self._session is None or self._session.closed

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
