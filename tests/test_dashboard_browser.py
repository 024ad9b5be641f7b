"""The dashboard in a real browser (Chromium, driven by Playwright) while a call runs through the
fake phone network: the call appears live, its transcript opens, the latency chart draws; the
layout holds at 1280 and 420 px, the axes have round ticks, and live rows go when the server
does.

Needs Playwright for Python and a Chromium binary from the system's packages (Debian:
`apt-get install chromium`); Playwright's own browser download is never used. Skipped, saying
why, only when either is missing.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from getpatter.testing.providers import ScriptedLLM, ScriptedSTT, ScriptedTTS
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, NUMBER, speech

TOKEN = "browser-test-token-42"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", "chromium"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async_api = pytest.importorskip(
        "playwright.async_api", reason="Playwright is not installed (pip install playwright)"
    )
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set CHROMIUM=/path)")
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def test_a_live_call_in_the_dashboard(
    browser: Any, serve: Callable[..., Any], net: FakeTwilio
) -> None:
    stt = ScriptedSTT(["what are your hours", "thank you"])
    llm = ScriptedLLM(["We are open nine to five.", "You're welcome, goodbye."])
    s = await serve(
        {"stt": stt, "tts": ScriptedTTS(), "llm": llm, "first_message": "Acme, how can I help?"},
        dashboard_token=TOKEN,
    )
    base = f"http://127.0.0.1:{s.phone.port}"

    # without the token: nothing
    context = await browser.new_context()
    page = await context.new_page()
    response = await page.goto(base + "/dashboard")
    assert response is not None and response.status == 401
    await context.close()

    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await page.goto(base + f"/dashboard?token={TOKEN}")
    assert page.url == base + "/dashboard"  # the token is gone from the address bar
    await page.wait_for_selector("#live-status.on", timeout=5000)
    assert await page.locator("#active-empty").is_visible()

    # a call comes in: it shows up live
    audio = np.concatenate([speech(lead=2.5, tail=2.5), speech(lead=0.0, tail=3.0)])
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=audio)
    row = page.locator(f'#active-calls tr[data-call-id="{call.call_sid}"]')
    await row.wait_for(timeout=8000)
    assert CALLER in await row.inner_text()

    # its transcript, live
    await row.click()
    await page.locator("#detail").wait_for(state="visible", timeout=5000)
    assert await page.locator("#detail-id").inner_text() == call.call_sid
    await page.locator("#transcript li", has_text="Acme, how can I help?").wait_for(timeout=8000)
    await page.locator("#transcript li", has_text="We are open nine to five.").wait_for(
        timeout=15000
    )

    # the call ends: it leaves the live list and joins the history, chart drawn
    await call.wait_for(lambda: len(stt.streams) > 0 and stt.streams[0].utterances >= 2, 15)
    await page.locator("#transcript li", has_text="goodbye").wait_for(timeout=10000)
    await call.hangup()
    await page.locator(f'#calls tr[data-call-id="{call.call_sid}"]').wait_for(timeout=8000)
    await row.wait_for(state="detached", timeout=8000)
    await page.locator("#detail-state", has_text="hangup").wait_for(timeout=5000)
    path = page.locator("#turn-chart path.series").first
    await path.wait_for(state="attached", timeout=5000)  # a flat line has no height
    d = await path.get_attribute("d")
    assert d is not None and d.startswith("M") and d.count("L") >= 1  # two answered turns
    assert await page.locator("#turn-chart circle.point").count() >= 2
    assert await page.locator("#turns tbody tr").count() == 3  # greeting + two answers
    assert await page.locator("#calls-chart path.series").count() >= 1
    assert "ms" in await page.locator("#detail-meta").inner_text()
    # search narrows the list to calls whose words match
    await page.fill("#search", "no such words anywhere")
    await page.locator("#calls-empty").wait_for(state="visible", timeout=5000)
    await page.fill("#search", "nine to five")
    await page.locator(f'#calls tr[data-call-id="{call.call_sid}"]').wait_for(timeout=5000)
    assert not errors, errors
    await context.close()


LAYOUT = """() => {
  const doc = document.documentElement;
  const out = { overflow: doc.scrollWidth - doc.clientWidth, width: innerWidth, tables: {} };
  for (const id of ["active-calls", "calls", "turns"]) {
    const table = document.getElementById(id);
    const wrap = table.parentElement;
    const section = table.closest("section").getBoundingClientRect();
    const last = table.tHead.rows[0].lastElementChild.getBoundingClientRect();
    const box = wrap.getBoundingClientRect();
    out.tables[id] = {
      sectionRight: section.right, wrapRight: box.right, lastRight: last.right,
      scrolls: wrap.scrollWidth > wrap.clientWidth + 1, overflowX: getComputedStyle(wrap).overflowX,
    };
  }
  out.ticks = {};
  for (const id of ["calls-chart", "turn-chart"]) {
    const ticks = document.querySelectorAll(`#${id} text.tick`);
    out.ticks[id] = [...ticks].map((t) => Number(t.textContent));
  }
  return out;
}"""


def _nice(ticks: list[float]) -> bool:
    """0, s, 2s, … with s = 1, 2, 2.5 or 5 × 10^n."""
    if len(ticks) < 2 or ticks[0] != 0:
        return False
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** int(np.floor(np.log10(step)))
    steps_ok = all(abs(b - a - step) < 1e-6 for a, b in itertools.pairwise(ticks))
    return steps_ok and any(abs(mantissa - m) < 1e-9 for m in (1, 2, 2.5, 5))


async def test_the_layout_at_1280_and_420_px_and_after_the_server_stops(
    browser: Any, serve: Callable[..., Any], net: FakeTwilio
) -> None:
    stt = ScriptedSTT(["what are your hours", "thank you"])
    llm = ScriptedLLM(
        [
            "We are open from nine in the morning to five in the evening, Monday to Friday.",
            "You're welcome, goodbye.",
        ]
    )
    s = await serve(
        {"stt": stt, "tts": ScriptedTTS(), "llm": llm, "first_message": "Acme, how can I help?"},
        dashboard_token=TOKEN,
    )
    base = f"http://127.0.0.1:{s.phone.port}"
    # a finished call with turns (for the charts and the turns table) …
    audio = np.concatenate([speech(lead=2.5, tail=2.5), speech(lead=0.0, tail=3.0)])
    done = await net.place_call(from_=CALLER, to=NUMBER, audio=audio)
    await done.wait_for(lambda: len(stt.streams) > 0 and stt.streams[0].utterances >= 2, 15)
    await asyncio.sleep(2.0)
    await done.hangup()
    await done.wait_ended()
    # … and one that stays live
    live = await net.place_call(from_="+15550007777", to=NUMBER, audio=speech(lead=60, tail=0))
    pages = []
    for width in (1280, 420):
        context = await browser.new_context(viewport={"width": width, "height": 900})
        page = await context.new_page()
        await page.goto(base + f"/dashboard?token={TOKEN}")
        await page.locator(f'#active-calls tr[data-call-id="{live.call_sid}"]').wait_for(
            timeout=8000
        )
        await page.locator(f'#calls tr[data-call-id="{done.call_sid}"]').click()
        await page.locator("#turn-chart circle.point").first.wait_for(
            state="attached", timeout=5000
        )
        await page.wait_for_timeout(200)  # let the layout settle
        layout = await page.evaluate(LAYOUT)
        assert layout["overflow"] <= 0, (width, layout)  # the page never scrolls sideways
        for name, t in layout["tables"].items():
            assert t["wrapRight"] <= t["sectionRight"] + 0.5 <= width + 0.5, (width, name, t)
            if width == 1280 and name != "turns":
                # every column shows, the last one (Cost) included, without scrolling
                assert not t["scrolls"] and t["lastRight"] <= t["wrapRight"] + 0.5, (name, t)
            else:  # narrow: a table scrolls inside its own box
                assert t["overflowX"] == "auto", (width, name, t)
        for chart, ticks in layout["ticks"].items():
            assert _nice(ticks), (width, chart, ticks)
        pages.append((context, page))
    # the server stops: no call stays listed as live in an open dashboard
    await s.phone.disconnect()
    for context, page in pages:
        await page.locator("#live-status.off").wait_for(timeout=8000)
        await page.locator("#active-calls tbody tr").first.wait_for(state="detached", timeout=8000)
        assert await page.locator("#active-count").inner_text() == "0"
        assert "not reachable" in await page.locator("#active-empty").inner_text()
        await context.close()
