"""The plugin registry: built-ins through entry points, a real third-party package, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from getpatter.core.registry import ProviderSpec, Registry, hookimpl, resolve
from getpatter.errors import PatterConfigError, PluginNotFoundError

FIXTURE = Path(__file__).parent / "fixtures" / "thirdparty_plugin"


def test_builtins_are_discovered_through_entry_points() -> None:
    reg = Registry()
    names = {(s.kind, s.name) for s in reg.specs()}
    assert ("carrier", "twilio") in names
    assert ("vad", "webrtc") in names
    spec = reg.get("vad", "webrtc")
    assert spec.source == "getpatter" and spec.installed
    from getpatter.core.vad import WebRTCVAD

    assert reg.load("vad", "webrtc") is WebRTCVAD  # a VAD provider: create() makes a detector


def test_unknown_name_lists_what_is_available() -> None:
    reg = Registry()
    with pytest.raises(PluginNotFoundError) as err:
        reg.get("vad", "nope")
    assert "webrtc" in str(err.value) and "'nope'" in str(err.value)
    with pytest.raises(PatterConfigError, match="unknown provider kind"):
        reg.get("speaker", "x")


class _Inline:
    @hookimpl
    def getpatter_providers(self) -> list[ProviderSpec]:
        return [
            ProviderSpec("stt", "needs-sdk", "x.y:Z", extra="fancy", requires=("no_such_sdk_mod",)),
            ProviderSpec("tts", "inline", dict),
        ]


def test_missing_extra_is_named_in_the_error() -> None:
    reg = Registry(discover=False)
    reg.register(_Inline())
    spec = reg.get("stt", "needs-sdk")
    assert not spec.installed
    with pytest.raises(PatterConfigError, match=r"getpatter\[fancy\]"):
        reg.load("stt", "needs-sdk")
    assert resolve("tts", "inline", reg) == {}
    instance = object()
    assert resolve("tts", instance, reg) is instance


def test_bad_spec_is_refused() -> None:
    with pytest.raises(PatterConfigError):
        ProviderSpec("stt", "x", "no-colon")
    with pytest.raises(PatterConfigError):
        ProviderSpec("mixer", "x", "a:b")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build and install the fixture package the way a user would, into its own site dir."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("src")
    subprocess.run(["cp", "-r", str(FIXTURE), str(build / "pkg")], check=True, capture_output=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(build / "pkg"),
        ],
        check=True,
        capture_output=True,
    )
    return target


def _run(site: Path, code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout


def test_third_party_package_is_discovered_without_touching_getpatter(plugin_site: Path) -> None:
    out = _run(
        plugin_site,
        """
        from getpatter.core.registry import Registry
        reg = Registry()
        spec = reg.get("tts", "acme")
        print(spec.source, spec.installed, type(reg.create("tts", "acme", voice="x")).__name__)
        print(reg.get("stt", "acme-cloud").installed)
        """,
    )
    assert out.split() == ["getpatter-acme", "True", "AcmeTTS", "False"]


def test_cli_lists_the_plugin(plugin_site: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    out = subprocess.run(
        [sys.executable, "-m", "getpatter.cli", "plugins"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["KIND", "NAME", "FROM", "ENV", "STATUS", "DESCRIPTION"]
    assert any(r[:3] == ["tts", "acme", "getpatter-acme"] and "installed" in r for r in rows)
    assert any(r[:3] == ["stt", "acme-cloud", "getpatter-acme"] and "missing:" in r for r in rows)
    twilio = next(line for line in out.splitlines() if line.startswith("carrier  twilio"))
    assert "TWILIO_ACCOUNT_SID" in twilio and "Twilio Programmable Voice" in twilio
    deepgram = next(line for line in out.splitlines() if line.split()[:2] == ["stt", "deepgram"])
    assert "DEEPGRAM_API_KEY" in deepgram and "Deepgram live STT" in deepgram


def test_example_plugin_package_is_used_by_name(tmp_path: Path) -> None:
    """examples/third_party_plugin installs like any package and speaks through the registry."""
    example = Path(__file__).parent.parent / "examples" / "third_party_plugin"
    subprocess.run(["cp", "-r", str(example), str(tmp_path / "pkg")], check=True)
    site = tmp_path / "site"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--target", str(site), str(tmp_path / "pkg")),
        ],
        check=True,
        capture_output=True,
    )
    out = _run(
        site,
        """
        import asyncio
        from getpatter.core.pipeline import PipelineEngine
        from getpatter.agent import Agent
        from getpatter.testing.providers import ScriptedSTT

        async def main():
            engine = PipelineEngine.for_agent(Agent(stt=ScriptedSTT(), tts="beep"))
            stream = await engine.tts.open()
            audio = b"".join([c async for c in stream.synthesize("one two three")])
            print(type(engine.tts).__name__, engine.tts.encoding, len(audio))

        asyncio.run(main())
        """,
    )
    assert out.split() == ["BeepTTS", "mulaw", str(3 * 2000)]
