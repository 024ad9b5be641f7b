"""Real PostgreSQL and real nginx, started for a test or a benchmark and thrown away after.

Not fakes: the system's own binaries (Debian's `postgresql` and `nginx` packages), each in a
temporary directory of its own with a free port, its socket and logs inside it, stopped and
removed at the end. Both refuse to run as root (initdb) or should not (nginx workers), so as
root they run as an unprivileged user (`postgres` if it exists, else `nobody`) that owns the
directory.

    with LocalPostgres() as pg, LocalNginx(config_for(pg...)) as web: ...

`missing()` says which binaries are not installed (for a loud skip).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.05)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    # Debian keeps the server binaries out of PATH, one directory per major version
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def _nginx_bin() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )


def missing() -> list[str]:
    """The binaries these services need that are not installed (names apt knows them by)."""
    out = []
    if not (_pg_bin("initdb") and _pg_bin("pg_ctl")):
        out.append("postgresql (initdb, pg_ctl)")
    if not _nginx_bin():
        out.append("nginx")
    return out


def _service_user() -> str | None:
    """Whom to run a server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to use")


def _as_user(user: str | None) -> dict[str, Any]:
    """subprocess arguments that run a command as `user` (None: as ourselves)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "cwd": "/"}


def _own_dir(prefix: str, user: str | None) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    return root


class LocalPostgres:
    """A throwaway PostgreSQL server: `url` for asyncpg, `restart()` for outage tests."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.user = _service_user()
        self.root: Path | None = None
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")

    @property
    def url(self) -> str:
        return f"postgresql://getpatter@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            list(args),
            **_as_user(self.user),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )

    def start(self) -> None:
        if not (self.initdb and self.pg_ctl):
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        if self.root is None:
            self.root = _own_dir("getpatter-pg-", self.user)
            self._run(
                self.initdb, "-D", str(self.data), "-A", "trust", "-U", "getpatter",
                "-E", "UTF8", "--no-sync", "--no-instructions",
            )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
            "-w", "-t", "30", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        if self.root is not None and (self.data / "postmaster.pid").exists():
            assert self.pg_ctl is not None
            self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def restart(self, down_for: float = 0.0) -> None:
        """Stop (dropping every connection, as a crash or a failover would) and start again."""
        self.stop("fast")
        time.sleep(down_for)
        self.start()

    def log(self) -> str:
        path = self.root / "log" if self.root else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LocalNginx:
    """nginx with a given config (see getpatter/nginx.py `runtime_dir`: this one's `root`)."""

    def __init__(self) -> None:
        self.user = _service_user()
        self.root = _own_dir("getpatter-nginx-", self.user)
        self.binary = _nginx_bin()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.root / "nginx.conf"

    def write(self, config: str) -> None:
        self.conf.write_text(config)
        os.chmod(self.conf, 0o644)

    def start(self, config: str, port: int) -> None:
        if self.binary is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx)")
        self.write(config)
        cmd = [
            self.binary, "-p", str(self.root), "-c", str(self.conf), "-e",
            str(self.root / "error.log"), "-g", "daemon off;",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, **_as_user(self.user), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_port(port)
        except TimeoutError:
            self.close()
            raise RuntimeError("nginx did not start:\n" + self.error_log()) from None

    def reload(self, config: str) -> None:
        self.write(config)
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # fast shutdown: the test is over
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)
