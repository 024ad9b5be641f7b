"""`getpatter nginx-config`: a config real nginx accepts, for the nodes asked for."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from getpatter.cli import main
from getpatter.nginx import Node, nginx_config, upstream_block, workers
from getpatter.testing import services

NGINX = services._nginx_bin()


def test_the_config_names_every_node_and_retries_on_503(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nginx.conf"
    code = main(["nginx-config", "--node", "a=10.0.0.1:8000", "--node", "b=10.0.0.2:8000",
                 "--server-name", "calls.acme.test", "-o", str(out)])  # fmt: skip
    assert code == 0
    text = out.read_text()
    for needle in (
        "server 10.0.0.1:8000 max_fails=0;",
        "location /n/a/ {",
        "proxy_pass http://getpatter_b;",
        "proxy_next_upstream error timeout http_502 http_503 non_idempotent;",
        "error_page 502 503 504 = @all_busy;",
        "proxy_set_header X-Getpatter-Overflow all-busy;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_read_timeout 4h;",
        "server_name calls.acme.test;",
    ):
        assert needle in text, needle
    assert main(["nginx-config", "--node", "A=x"]) == 2
    assert "name=host:port" in capsys.readouterr().err
    assert main(["nginx-config"]) == 2


def test_the_workers_upstream_block() -> None:
    block = upstream_block(workers(3, 8001))
    assert "server 127.0.0.1:8003 max_fails=0;  # w3" in block
    assert "upstream getpatter_w2 {" in block
    with pytest.raises(Exception, match="unique"):
        upstream_block([Node("a", "h:1"), Node("a", "h:2")])


@pytest.mark.skipif(NGINX is None, reason="NGINX TEST SKIPPED: nginx not installed")
def test_real_nginx_accepts_it(tmp_path: Path) -> None:
    assert NGINX is not None
    text = nginx_config(workers(2, 8001), listen="8080", runtime_dir=str(tmp_path))
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    result = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "e.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_deploy_holds_what_the_generator_writes() -> None:
    shipped = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"
    assert shipped.read_text() == nginx_config(workers(3, 8001)), (
        "regenerate: getpatter nginx-config --workers 3 --port 8001 -o deploy/nginx.conf"
    )
