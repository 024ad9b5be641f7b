"""`import getpatter` stays light: no provider SDK, no server stack until a name is used."""

from __future__ import annotations

import json
import subprocess
import sys

SDKS = (
    "openai",
    "deepgram",
    "elevenlabs",
    "cartesia",
    "assemblyai",
    "speechmatics",
    "anthropic",
    "twilio",
    "pocketsphinx",
    "telnyx",
)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_import_getpatter_is_lazy() -> None:
    mods = _modules_after("import getpatter")
    assert not {m.split(".")[0] for m in mods} & {*SDKS, "aiohttp", "numpy", "soxr"}


def test_public_names_import_no_provider_sdk() -> None:
    mods = _modules_after("from getpatter import Patter, Agent, Tool, Guardrail, Twilio")
    assert not {m.split(".")[0] for m in mods} & set(SDKS)


def test_cli_plugins_imports_no_audio_or_server_stack() -> None:
    code = (
        "import contextlib, io\nfrom getpatter.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    main(['plugins'])"
    )
    mods = _modules_after(code)
    assert not {m.split(".")[0] for m in mods} & {*SDKS, "aiohttp", "numpy", "soxr", "webrtcvad"}
