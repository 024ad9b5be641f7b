"""Public URLs for a server on a laptop: a Cloudflare quick tunnel, or a hostname you run.

`CloudflareTunnel` spawns `cloudflared` from PATH, reads the hostname it announces, restarts
it if it dies (a quick tunnel gets a new hostname then, so the carrier is re-pointed), and
stops it on `disconnect()`. `Static(hostname)` is for a tunnel you run yourself (ngrok, …).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import shutil
from collections.abc import Awaitable, Callable

from getpatter.errors import PatterConfigError, PatterConnectionError

log = logging.getLogger(__name__)

_HOSTNAME = re.compile(r"https://([a-z0-9][a-z0-9-]*\.trycloudflare\.com)")
INSTALL_HINT = (
    "cloudflared is not on PATH. Install it (Debian/Ubuntu: the cloudflared .deb from "
    "Cloudflare's package repository; macOS: `brew install cloudflared`), or run your own "
    "tunnel and pass its hostname as webhook_url= instead of tunnel=True."
)

HostnameChanged = Callable[[str], Awaitable[None]]


def check_public_host(host: str) -> str:
    """Refuse to point a carrier at an address it could never reach."""
    name = host.split(":")[0].strip("[]").lower()
    if name in ("localhost", "") or name.endswith((".local", ".localhost", ".internal")):
        raise PatterConfigError(
            f"{host!r} is not reachable from the carrier: use a public hostname (a tunnel)"
        )
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return host  # a hostname
    if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_unspecified:
        raise PatterConfigError(
            f"{host!r} is a private or loopback address the carrier cannot reach: "
            "use a tunnel (tunnel=True) or a public hostname"
        )
    return host


class Static:
    """A tunnel you run yourself: its hostname, given up front."""

    def __init__(self, hostname: str) -> None:
        from getpatter.config import normalize_webhook_host

        self.hostname = normalize_webhook_host(hostname)

    def __repr__(self) -> str:
        return f"Static({self.hostname!r})"

    async def start(self, port: int, on_change: HostnameChanged | None = None) -> str:
        return self.hostname

    async def stop(self) -> None:
        return None


class CloudflareTunnel:
    """A Cloudflare quick tunnel to the local server (`cloudflared tunnel --url ...`)."""

    def __init__(
        self,
        binary: str = "cloudflared",
        *,
        restart: bool = True,
        startup_timeout: float = 30.0,
        max_restarts: int = 5,
    ) -> None:
        self.binary = binary
        self.restart = restart
        self.startup_timeout = startup_timeout
        self.max_restarts = max_restarts
        self.hostname: str | None = None
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Future[None] | None = None
        self._drainer: asyncio.Future[None] | None = None
        self._stopping = False

    def __repr__(self) -> str:
        return f"CloudflareTunnel(binary={self.binary!r}, hostname={self.hostname!r})"

    def _path(self) -> str:
        path = shutil.which(self.binary)
        if path is None:
            raise PatterConfigError(INSTALL_HINT)
        return path

    async def start(self, port: int, on_change: HostnameChanged | None = None) -> str:
        """Spawn cloudflared and return the public hostname it announces."""
        self._stopping = False
        self.hostname = await self._spawn(port)
        self._watcher = asyncio.ensure_future(self._watch(port, on_change))
        return self.hostname

    async def _spawn(self, port: int) -> str:
        self._process = process = await asyncio.create_subprocess_exec(
            self._path(),
            "tunnel",
            "--no-autoupdate",
            "--url",
            f"http://127.0.0.1:{port}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stderr is not None
        try:
            hostname = await asyncio.wait_for(self._read_hostname(process), self.startup_timeout)
        except (TimeoutError, EOFError) as exc:
            await self._kill(process)
            raise PatterConnectionError(
                "cloudflared did not announce a tunnel hostname "
                f"within {self.startup_timeout:.0f} s"
            ) from exc
        log.info("tunnel up: https://%s → 127.0.0.1:%d", hostname, port)
        self._drainer = asyncio.ensure_future(self._drain(process))
        return hostname

    @staticmethod
    async def _read_hostname(process: asyncio.subprocess.Process) -> str:
        assert process.stderr is not None
        while True:
            line = await process.stderr.readline()
            if not line:
                raise EOFError("cloudflared exited")
            match = _HOSTNAME.search(line.decode(errors="replace"))
            if match:
                return match.group(1)

    @staticmethod
    async def _drain(process: asyncio.subprocess.Process) -> None:
        """Keep reading cloudflared's log so its pipe never fills and blocks it."""
        assert process.stderr is not None
        with contextlib.suppress(Exception):
            while await process.stderr.readline():
                pass

    async def _watch(self, port: int, on_change: HostnameChanged | None) -> None:
        while not self._stopping:
            process = self._process
            if process is None:
                return
            code = await process.wait()
            if self._stopping:
                return
            log.warning("cloudflared exited (code %s)", code)
            if not self.restart or self.restarts >= self.max_restarts:
                log.error("tunnel down and not restarting: the carrier cannot reach us")
                return
            self.restarts += 1
            try:
                hostname = await self._spawn(port)
            except Exception as exc:
                log.error("tunnel restart failed: %s", exc)
                return
            if hostname != self.hostname:
                self.hostname = hostname
                if on_change is not None:
                    try:
                        await on_change(hostname)
                    except Exception:
                        log.exception("re-pointing the carrier at the new tunnel failed")

    @staticmethod
    async def _kill(process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._process is not None:
            await self._kill(self._process)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self._process = self._watcher = None


Tunnel = CloudflareTunnel | Static


def as_tunnel(value: object) -> Tunnel | None:
    """`tunnel=True` → a CloudflareTunnel; an instance → itself; falsy → None."""
    if value is None or value is False:
        return None
    if value is True:
        return CloudflareTunnel()
    if isinstance(value, CloudflareTunnel | Static):
        return value
    raise PatterConfigError(
        f"tunnel must be True, CloudflareTunnel() or Static('host'), got {type(value).__name__}"
    )
