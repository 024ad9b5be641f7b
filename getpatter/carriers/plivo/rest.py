"""The few Plivo Voice API calls a voice agent needs, over aiohttp.

Not the official `plivo` SDK: it is synchronous (`requests`), so every call would need a thread,
and its API root is a module constant rather than an argument, so it cannot be pointed at a
loopback fake. Plivo's API is JSON over HTTP with Basic auth (auth ID : auth token); every
path is `/v1/Account/{auth_id}/…/` with the trailing slash. Errors become `CallError` with
Plivo's own `error` text — never the token.
"""

from __future__ import annotations

import base64
import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from getpatter.errors import CallError, PatterConnectionError

log = logging.getLogger(__name__)


class PlivoAPIError(CallError):
    """A Plivo error response; `status` is its HTTP status (404: no such call or request)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class PlivoREST:
    def __init__(
        self,
        auth_id: str,
        auth_token: str,
        base_url: str = "https://api.plivo.com",
        *,
        timeout: float = 15.0,
    ) -> None:
        self.auth_id = auth_id
        basic = base64.b64encode(f"{auth_id}:{auth_token}".encode()).decode()
        self._headers = {"Authorization": f"Basic {basic}", "Accept": "application/json"}
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"PlivoREST(auth_id={self.auth_id[:4]!r}…, base_url={self.base_url!r})"

    def _url(self, *path: str) -> str:
        parts = "/".join(quote(p, safe="") for p in path)
        return f"{self.base_url}/v1/Account/{quote(self.auth_id, safe='')}/{parts}/"

    async def _request(
        self, method: str, *path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        what = "/".join(path)
        payload = None if body is None else {k: v for k, v in body.items() if v is not None}
        try:
            async with self._session.request(
                method, self._url(*path), json=payload, headers=self._headers
            ) as resp:
                try:
                    data: Any = await resp.json(content_type=None)
                except ValueError:
                    data = {}
                if resp.status >= 400:
                    error = data.get("error", "") if isinstance(data, dict) else ""
                    detail = str(error or resp.reason or "")
                    raise PlivoAPIError(
                        f"Plivo {method} {what} failed: HTTP {resp.status} {detail}".rstrip(),
                        resp.status,
                    )
                return data if isinstance(data, dict) else {}
        except aiohttp.ClientError as exc:
            raise PatterConnectionError(
                f"Plivo API unreachable at {self.base_url}: {exc}"
            ) from None

    async def create_call(self, **fields: Any) -> dict[str, Any]:
        """`POST Call/`: returns `{"message": "call fired", "request_uuid": …}` — the call's own
        CallUUID arrives with its answer (or hang-up) webhook."""
        return await self._request("POST", "Call", body=fields)

    async def hangup(self, call_uuid: str) -> None:
        await self._request("DELETE", "Call", call_uuid)

    async def cancel(self, request_uuid: str) -> None:
        """Hang up a call that has not been answered yet (known by its request_uuid)."""
        await self._request("DELETE", "Request", request_uuid)

    async def transfer(self, call_uuid: str, xml_url: str) -> None:
        """The call leaves the XML it is running for the XML at `xml_url`."""
        body = {"legs": "aleg", "aleg_url": xml_url, "aleg_method": "POST"}
        await self._request("POST", "Call", call_uuid, body=body)

    async def record(
        self, call_uuid: str, *, callback_url: str, time_limit: int = 14400
    ) -> dict[str, Any]:
        """Record the call until it ends (Plivo's default stops after 60 s)."""
        body = {
            "time_limit": time_limit,
            "file_format": "mp3",
            "callback_url": callback_url,
            "callback_method": "POST",
        }
        return await self._request("POST", "Call", call_uuid, "Record", body=body)

    async def get_number(self, number: str) -> dict[str, Any]:
        """A number on the account (Plivo writes numbers without the `+`)."""
        return await self._request("GET", "Number", number.lstrip("+"))

    async def get_application(self, app_id: str) -> dict[str, Any]:
        return await self._request("GET", "Application", app_id)

    async def update_application(self, app_id: str, **fields: Any) -> dict[str, Any]:
        return await self._request("POST", "Application", app_id, body=fields)

    @property
    def closed(self) -> bool:
        """No HTTP session is open (one opens on the next request)."""
        return self._session is None or self._session.closed

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
