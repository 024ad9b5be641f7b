"""`run(BenchOptions(...))`: build the chosen providers, run each bench, return the report."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from getpatter.bench import corpus as corpora
from getpatter.bench.machine import describe
from getpatter.bench.progress import Progress
from getpatter.bench.providers import (
    Built,
    ProviderChoice,
    base_url_for,
    build,
    check_spec,
    versions,
)
from getpatter.bench.results import KINDS, Report, Result, Skipped
from getpatter.errors import PatterConfigError

__all__ = ["BenchOptions", "run"]


@dataclass
class BenchOptions:
    """What to bench and how. Providers are registered names or `module:attr`.

    - `turn`: also run whole calls through the simulated phone network with the first-given
      (else the offline) STT and TTS, and each LLM (else a fixed `on_message`).
    - `only`: run just these benches (`stt`, `llm`, `tts`, `turn`).
    - `limit`: use only the first N utterances, prompts and sentences (a quick run).
    - `base_urls`: `{name or kind.name: URL}`, passed as the provider's `base_url`/`ws_url`.
    - `end_silence`: seconds of silence streamed after the speech before `finalize()`; None:
      the pipeline VAD's own end-of-speech wait (`VADOptions.end_silence_ms`, 600 ms).
    - `hints`: give an STT that takes `phrases=` (LocalSTT) the corpus's sentences.
    """

    stt: Sequence[str] = ()
    llm: Sequence[str] = ()
    tts: Sequence[str] = ()
    turn: bool = False
    only: Sequence[str] = ()
    runs: int = 3
    concurrency: int = 1
    warmup: int = 1
    limit: int | None = None
    corpus: str | None = None
    base_urls: dict[str, str] = field(default_factory=dict)
    end_silence: float | None = None
    hints: bool = True
    timeout: float = 20.0
    progress: bool = False

    def validate(self) -> None:
        for name, value, least in (
            ("runs", self.runs, 1),
            ("concurrency", self.concurrency, 1),
            ("warmup", self.warmup, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise PatterConfigError(f"{name} must be an integer >= {least}, got {value!r}")
        if self.limit is not None and self.limit < 1:
            raise PatterConfigError(f"limit must be >= 1, got {self.limit!r}")
        if self.end_silence is not None and not 0 <= self.end_silence <= 5:
            raise PatterConfigError(f"end silence must be 0-5 s, got {self.end_silence!r}")
        if self.timeout <= 0:
            raise PatterConfigError(f"timeout must be positive, got {self.timeout!r}")
        for kind in self.only:
            if kind not in KINDS:
                raise PatterConfigError(f"only: {kind!r} is not one of {', '.join(KINDS)}")
        for kind, specs in (("stt", self.stt), ("llm", self.llm), ("tts", self.tts)):
            for spec in specs:
                check_spec(kind, spec)

    def wants(self, kind: str) -> bool:
        if self.only:
            return kind in self.only
        return kind != "turn" or self.turn


@dataclass(frozen=True)
class Common:
    """The knobs every bench takes."""

    runs: int
    concurrency: int
    warmup: int
    max_wait: float

    def kwargs(self) -> dict[str, Any]:
        return asdict(self)


def _cut(items: Sequence[Any], limit: int | None) -> list[Any]:
    return list(items[:limit] if limit else items)


async def run(options: BenchOptions, *, say: Callable[[str], None] | None = None) -> Report:
    """Run every bench `options` asks for. `say` gets a line for each provider skipped (the
    CLI prints them to stderr as they happen; the report lists them too)."""
    options.validate()
    tell = say or (lambda _line: None)
    report = Report(meta=describe())  # the machine as it was when the bench started
    modules: set[str] = set()
    report.meta["options"] = asdict(options)

    stt_specs = list(options.stt) if options.wants("stt") else []
    llm_specs = list(options.llm) if options.wants("llm") else []
    tts_specs = list(options.tts) if options.wants("tts") else []
    want_turn = options.wants("turn")
    utterances: list[corpora.Utterance] = []
    if stt_specs or want_turn:
        utterances = _cut(await _load_corpus(options), options.limit)
        if not options.corpus:
            modules.add("espeakng_loader")  # it speaks the built-in corpus
    hints = [u.text for u in utterances] if options.hints else []

    made: dict[tuple[str, str], Built | None] = {}

    def make(kind: str, spec: str) -> Built | None:
        """Each provider is built once: the turn bench reuses the STT and TTS benches' ones."""
        if (kind, spec) in made:
            return made[kind, spec]
        choice = ProviderChoice(
            kind, spec, base_url_for(kind, spec, options.base_urls), hints=hints
        )
        built = build(choice)
        if isinstance(built, Skipped):
            report.skipped.append(built)
            tell(f"  skipped {kind} {spec}: {built.reason}")
            made[kind, spec] = None
            return None
        modules.update(built.modules)
        made[kind, spec] = built
        return built

    def progress(label: str, total: int) -> Progress:
        return Progress(label, total, enabled=options.progress)

    async def each(
        kind: str, specs: Sequence[str], items: Sequence[Any], bench: Any, **extra: Any
    ) -> None:
        """Build each provider of `kind` (skipping those without keys) and bench it."""
        for spec in specs:
            built = make(kind, spec)
            if built is None:
                continue
            bar = progress(f"{kind} {built.label}", options.runs * len(items))
            async with bar.ticking():
                result = await bench(
                    built.provider,
                    items,
                    label=built.label,
                    progress=bar.update,
                    **extra,
                    **common.kwargs(),
                )
            _finish(result, built, report)

    common = Common(options.runs, options.concurrency, options.warmup, options.timeout)
    sections = report.meta.setdefault("sections", {})

    if stt_specs:
        from getpatter.bench.stt import bench_stt, vad_end_silence

        end_silence = vad_end_silence() if options.end_silence is None else options.end_silence
        source = options.corpus or "built-in, spoken by LocalTTS (espeak-ng)"
        sections["stt"] = (
            f"{len(utterances)} utterances ({source}) streamed at real time in 20 ms frames; "
            "the carrier's 8 kHz μ-law, converted once to each STT's format; finalize() "
            f"{end_silence * 1000:.0f} ms after the end of speech, as the VAD would"
        )
        await each("stt", stt_specs, utterances, bench_stt, end_silence=end_silence)

    if llm_specs:
        from getpatter.bench.llm import bench_llm

        prompts = _cut(corpora.PROMPTS, options.limit)
        sections["llm"] = (
            f"{len(prompts)} short caller turns, each with the receptionist system prompt and "
            "a booking tool's schema; streamed"
        )
        await each("llm", llm_specs, prompts, bench_llm)

    if tts_specs:
        from getpatter.bench.tts import bench_tts

        sentences = _cut(corpora.SENTENCES, options.limit)
        sections["tts"] = (
            f"{len(sentences)} sentences, one after another on one stream per run; in the "
            "carrier's 8 kHz μ-law where the provider can"
        )
        await each("tts", tts_specs, sentences, bench_tts)

    if want_turn:
        await _turns(options, utterances, make, progress, report, common)

    report.meta["versions"].update(sorted(versions(sorted(modules)).items()))
    return report


async def _turns(
    options: BenchOptions,
    utterances: list[corpora.Utterance],
    make: Callable[[str, str], Built | None],
    progress: Callable[[str, int], Progress],
    report: Report,
    common: Common,
) -> None:
    from getpatter.bench.turn import bench_turn

    report.meta.setdefault("sections", {})["turn"] = (
        "whole calls through the simulated phone network (fake Twilio, μ-law at real time); "
        "caller stops → the agent's first audio at the phone, per caller turn"
    )
    stts = [b for b in (make("stt", s) for s in options.stt or ["local"]) if b]
    ttss = [b for b in (make("tts", s) for s in options.tts or ["local"]) if b]
    llms: list[Built | None] = [b for b in (make("llm", s) for s in options.llm) if b]
    if not options.llm:
        llms = [None]
    if not stts or not ttss or not llms:
        missing = "an STT" if not stts else "a TTS" if not ttss else "an LLM"
        report.skipped.append(Skipped("turn", "pipeline", f"no call without {missing} (above)"))
    for stt, tts, llm in itertools.product(stts, ttss, llms):
        label = f"stt={stt.label} llm={llm.label if llm else 'on_message'} tts={tts.label}"
        bar = progress(f"turn {label}", options.runs * len(utterances))
        async with bar.ticking():
            result = await bench_turn(
                stt.provider,
                tts.provider,
                llm.provider if llm else None,
                utterances,
                label=label,
                progress=bar.update,
                **common.kwargs(),
            )
        report.results.append(result)


def _finish(result: Result, built: Built, report: Report) -> None:
    result.notes[:0] = built.notes
    report.results.append(result)


async def _load_corpus(options: BenchOptions) -> list[corpora.Utterance]:
    if options.corpus:
        return corpora.load_corpus(options.corpus)
    from getpatter.core.registry import default_registry

    spec = default_registry().get("tts", "local")
    if not spec.installed:
        raise PatterConfigError(
            "the built-in corpus is spoken by LocalTTS, which is not installed: "
            f"{spec.install_hint}, or pass --corpus DIR (name.wav + name.txt)"
        )
    return await corpora.builtin_corpus(_cut(corpora.UTTERANCES, options.limit))
