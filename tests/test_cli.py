"""The `getpatter` command as a user meets it: serve, dashboard, simulate, plugins — real
processes where exit codes, signals and stderr matter, the fake phone network for the calls."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from getpatter import cli
from getpatter.core.store_sqlite import SQLiteStore
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, DATA, HOST, NUMBER, speech

APP = str(Path(__file__).parent / "fixtures" / "apps" / "scripted.py")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "OPENAI_API_KEY"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(autouse=True)
def _ctrl_c_reaches_children() -> Iterator[None]:
    """A suite started in the background by a non-interactive shell (`make test &`) runs with
    SIGINT ignored, and children inherit an ignored signal: the CLI would never see the
    Ctrl-C these tests send, and wait forever. A handler, unlike an ignore, is reset to the
    default across exec, so the children get Python's own Ctrl-C."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


async def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "getpatter.cli",
        *args,
        env=env or _env(),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _line(stream: asyncio.StreamReader, pattern: str, seen: list[str], limit: float) -> str:
    """The first line matching `pattern` (every line read goes into `seen`)."""
    async with asyncio.timeout(limit):
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError(f"ended before {pattern!r}:\n" + "".join(seen))
            line = raw.decode()
            seen.append(line)
            if re.search(pattern, line):
                return line


async def _finish(proc: Any, seen: list[str]) -> tuple[int, str]:
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, "".join(seen) + out.decode() + err.decode()


def _run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- mistakes: one line, exit 2 -------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        (APP, "APP must say which object in"),
        ("no_such_file.py:app", "no such file: no_such_file.py"),
        (APP + ":ap", "has no 'ap': did you mean 'app'?"),
        ("no_such_module_xyz:app", "no module named 'no_such_module_xyz'"),
    ],
)
async def test_a_wrong_app_is_one_line_and_exit_2(app: str, expected: str) -> None:
    proc = await _cli("simulate", app, "--say", "hi")
    code, text = await _finish(proc, [])
    assert code == 2, text
    assert expected in text and "Traceback" not in text
    assert text.strip().count("\n") == 0 and text.startswith("getpatter simulate: error: ")


async def test_an_unknown_provider_name_and_a_missing_key_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "typo.py").write_text(
        "from getpatter import Patter, Twilio\n"
        "phone = Patter(carrier=Twilio(), phone_number='+15550001234', persist=False)\n"
        "app = (phone, phone.agent(stt='deepgramm'), {'on_message': lambda m: 'ok'})\n"
    )
    (tmp_path / "nokey.py").write_text(
        "from getpatter import OpenAIRealtime, Patter, Twilio\n"
        "phone = Patter(carrier=Twilio(), phone_number='+15550001234', persist=False)\n"
        "app = (phone, phone.agent(engine=OpenAIRealtime()))\n"
    )
    proc = await _cli("simulate", "typo.py:app", "--no-record", cwd=tmp_path)
    code, text = await _finish(proc, [])
    assert code == 2 and "Traceback" not in text, text
    assert "no stt provider named 'deepgramm': did you mean 'deepgram'?" in text
    proc = await _cli("serve", "nokey.py:app", cwd=tmp_path)  # no Twilio keys here
    code, text = await _finish(proc, [])
    assert code == 2 and "Traceback" not in text, text
    assert "Twilio account SID is missing" in text and "set TWILIO_ACCOUNT_SID" in text
    proc = await _cli("simulate", "nokey.py:app", cwd=tmp_path)  # Twilio is simulated
    code, text = await _finish(proc, [])
    assert code == 2 and "Traceback" not in text, text
    assert "OpenAI API key is missing" in text and "--fake-realtime" in text


def test_every_option_of_every_command_says_what_it_does() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) >= {"serve", "dashboard", "simulate", "demo", "plugins", "bench"}
    for name, command in sub.choices.items():
        assert command.description or name in ("plugins",), name
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"getpatter {name} {action.option_strings or action.dest}"
    simulate = sub.choices["simulate"].format_help()
    assert "call.wav" in simulate and "--no-record" in simulate


def test_say_wav_and_barge_repeat_and_keep_their_order() -> None:
    args = cli.build_parser().parse_args(
        ["simulate", "a.py:app", "--wav", "x.wav", "--say", "hi", "--barge", "stop", "--say", "bye"]
    )
    assert args.turns == [("wav", "x.wav"), ("say", "hi"), ("barge", "stop"), ("say", "bye")]
    assert cli.build_parser().parse_args(["simulate", "a.py:app"]).turns == []


# --- simulate --------------------------------------------------------------------------------


def test_simulate_with_only_a_wav_and_no_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Used to crash: `'Namespace' object has no attribute 'turns'`."""
    monkeypatch.chdir(tmp_path)
    code, out, err = _run_cli(
        ["simulate", APP + ":app", "--wav", str(DATA / "hello.wav"), "--no-record"], capsys
    )
    assert code == 0, out + err
    assert "[caller] when do you open" in out and "[agent ] We open at nine." in out
    assert "[tool]   lookup() → opens='nine'" in out
    assert "<hello.wav>" in out  # the latency table names the WAV turn
    assert not list(tmp_path.glob("*.wav"))


def test_a_simulated_call_stays_out_of_the_apps_history_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    history = tmp_path / "history"
    monkeypatch.setenv("APP_HISTORY", str(history))

    def stored() -> int:
        db = history / "calls.db"
        if not db.exists():
            return 0
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM calls").fetchone()[0])

    code, _out, _ = _run_cli(["simulate", APP + ":app", "--say", "hello"], capsys)
    assert code == 0 and stored() == 0
    assert (tmp_path / "call.wav").stat().st_size > 8000  # the default recording
    code, _out, _ = _run_cli(
        ["simulate", APP + ":app", "--say", "hello", "--keep-history", "--no-record"], capsys
    )
    assert code == 0 and stored() == 1


async def test_keep_open_leaves_the_dashboard_up_until_ctrl_c(tmp_path: Path) -> None:
    proc = await _cli("simulate", APP + ":app", "--no-record", "--keep-open", cwd=tmp_path)
    seen: list[str] = []
    await _line(proc.stdout, r"Ctrl-C to stop", seen, 60)
    url = next(m[0] for line in seen if (m := re.search(r"http://\S+/dashboard", line)))
    async with aiohttp.ClientSession() as http:
        async with http.get(url.replace("/dashboard", "/api/calls")) as resp:
            assert resp.status == 200 and (await resp.json())["total"] == 1
    proc.send_signal(signal.SIGINT)
    code, text = await _finish(proc, seen)
    assert code == 0 and "Traceback" not in text, text


def test_fake_realtime_runs_the_readme_example_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (tmp_path / "readme.py").write_text(
        "from getpatter import OpenAIRealtime, Patter, Twilio\n"
        "phone = Patter(carrier=Twilio(), phone_number='+15550001234', webhook_url='x.test')\n"
        "agent = phone.agent(engine=OpenAIRealtime(voice='marin'),\n"
        "    system_prompt='You are a receptionist.', first_message='Thanks for calling Acme!')\n"
        "app = (phone, agent)\n"
    )
    code, out, err = _run_cli(
        ["simulate", "readme.py:app", "--fake-realtime", "--say", "Are you open?", "--no-record"],
        capsys,
    )
    assert code == 0, out + err
    assert "[agent ] Thanks for calling Acme!" in out
    assert "[caller] Are you open?" in out
    assert "You said: Are you open?" in out


# --- serve -----------------------------------------------------------------------------------


async def test_serve_shows_the_banner_takes_a_call_and_stops_politely_on_ctrl_c(
    tmp_path: Path, net: FakeTwilio
) -> None:
    env = _env(
        APP_TWILIO_SID=net.account_sid,
        APP_TWILIO_TOKEN=net.auth_token,
        APP_TWILIO_BASE=net.base_url,
        APP_HOST=HOST,
        APP_HISTORY=str(tmp_path / "history"),
    )
    proc = await _cli(
        "serve", APP + ":app", "--port", "0", "--host", "127.0.0.1", "--log-format", "json",
        env=env,
    )  # fmt: skip
    seen: list[str] = []
    line = await _line(proc.stderr, r'"banner"', seen, 30)
    banner = json.loads(line)["banner"]
    assert banner["webhooks"][0] == f"https://{HOST}/webhooks/twilio/voice"
    assert banner["dashboard_guard"] == "open" and banner["carrier"] == "twilio"
    assert "A call comes in" in json.loads(line)["message"]
    port = int(banner["listening"].rsplit(":", 1)[1])
    net.route(HOST, f"127.0.0.1:{port}")
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=0.5, tail=30))
    await call.wait_for(lambda: call.stream_open and call.heard_audio().size > 8000, 20)
    proc.send_signal(signal.SIGINT)  # mid-call
    code, text = await _finish(proc, seen)
    assert code == 0 and "Traceback" not in text, text
    assert call.ended  # hung up by us, not left hanging
    with sqlite3.connect(tmp_path / "history" / "calls.db") as db:
        rows = db.execute("SELECT call_id, end_reason FROM calls").fetchall()
    assert rows == [(call.call_sid, "server_stopped")]
    for raw in text.splitlines():  # --log-format json: every log line is one JSON object
        if raw.startswith("{"):
            json.loads(raw)


# --- dashboard -------------------------------------------------------------------------------


async def test_dashboard_serves_stored_history_without_an_agent(tmp_path: Path) -> None:
    store = await SQLiteStore(tmp_path / "calls.db").open()
    await store.write(
        {
            "call_id": "CA-stored-1",
            "caller": CALLER,
            "callee": NUMBER,
            "direction": "inbound",
            "started_at": 1_700_000_000.0,
            "end_reason": "hangup",
            "transcript": [{"role": "user", "text": "when do you open"}],
            "metrics": {},
        }
    )
    await store.close()
    proc = await _cli("dashboard", "--db", str(tmp_path), "--port", "0")
    seen: list[str] = []
    line = await _line(proc.stderr, r"dashboard\s+http://", seen, 30)
    assert "1 calls" in "".join(seen)
    url = re.search(r"http://\S+/dashboard", line)[0]  # type: ignore[index]
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200 and "getpatter" in await resp.text()
        async with http.get(url.replace("/dashboard", "/api/calls?q=open")) as resp:
            data = await resp.json()
        assert [c["call_id"] for c in data["calls"]] == ["CA-stored-1"]
        async with http.get(url.replace("/dashboard", "/api/calls/active")) as resp:
            assert (await resp.json())["calls"] == []
    proc.send_signal(signal.SIGINT)
    code, text = await _finish(proc, seen)
    assert code == 0 and "Traceback" not in text, text


async def test_dashboard_without_history_says_so(tmp_path: Path) -> None:
    proc = await _cli("dashboard", "--db", str(tmp_path / "nothing"))
    code, text = await _finish(proc, [])
    assert code == 2 and "no call history at" in text and "Traceback" not in text, text


# --- plugins ---------------------------------------------------------------------------------


def test_plugins_shows_each_providers_env_var_and_description(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-test")
    monkeypatch.delenv("ELEVENLABS_API_KEY", raising=False)
    code, out, _ = _run_cli(["plugins"], capsys)
    assert code == 0
    lines = {tuple(line.split()[:2]): line for line in out.splitlines()}
    assert "DEEPGRAM_API_KEY✓" in lines["stt", "deepgram"]  # set here
    assert "ELEVENLABS_API_KEY " in lines["tts", "elevenlabs"] + " "
    assert "nova-3" in lines["stt", "deepgram"] and "offline" in lines["stt", "local"]


def test_a_telnyx_app_is_simulated_over_twilios_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tx.py").write_text(
        "from getpatter import Patter, Telnyx\n"
        "from getpatter.testing.providers import ScriptedSTT, ScriptedTTS\n"
        "phone = Patter(carrier=Telnyx('KEY0123456789', 'conn-1'), phone_number='+15550001234',"
        " persist=False)\n"
        "agent = phone.agent(stt=ScriptedSTT(['hello']), tts=ScriptedTTS(), first_message='Hi')\n"
        "app = (phone, agent, {'on_message': lambda m: 'Telnyx says hello.'})\n"
    )
    code, out, err = _run_cli(["simulate", "tx.py:app", "--say", "hello", "--no-record"], capsys)
    assert code == 0, out + err
    assert "a Telnyx app: simulated over Twilio's path" in out
    assert "[agent ] Telnyx says hello." in out
