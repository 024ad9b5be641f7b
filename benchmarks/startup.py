"""Start-up cost: `import getpatter`, the public names, and the CLI, against their baselines.

Targets (issue "Foundation"): `import getpatter` adds ≤ 60 ms over importing its core
dependencies; `getpatter --help` and `getpatter plugins` answer within 150 ms of a bare Python.
Each figure is the median of fresh interpreter runs, all measured in this one run.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time

RUNS = 9


def median_ms(cmd: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> int:
    py = sys.executable
    deps = "import aiohttp, numpy, soxr, pluggy, webrtcvad"
    exe = shutil.which("getpatter") or ""
    cli = [exe] if exe else [py, "-m", "getpatter.cli"]
    rows = {
        "bare python": median_ms([py, "-c", "pass"]),
        "core deps (aiohttp numpy soxr pluggy webrtcvad)": median_ms([py, "-c", deps]),
        "import getpatter": median_ms([py, "-c", "import getpatter"]),
        "core deps + from getpatter import Patter": median_ms(
            [py, "-c", f"{deps}; from getpatter import Patter, Agent, Twilio"]
        ),
        "getpatter --help": median_ms([*cli, "--help"]),
        "getpatter plugins": median_ms([*cli, "plugins"]),
    }
    print(f"getpatter start-up, median of {RUNS} fresh processes (ms)\n")
    for name, ms in rows.items():
        print(f"  {name:<50} {ms:7.1f}")
    bare, deps_ms = rows["bare python"], rows["core deps (aiohttp numpy soxr pluggy webrtcvad)"]
    checks = [
        ("import getpatter over core deps", rows["import getpatter"] - bare, 60.0),
        (
            "Patter over core deps",
            rows["core deps + from getpatter import Patter"] - deps_ms,
            60.0,
        ),
        ("getpatter --help over bare python", rows["getpatter --help"] - bare, 150.0),
        ("getpatter plugins over bare python", rows["getpatter plugins"] - bare, 150.0),
    ]
    print()
    ok = True
    for name, extra, limit in checks:
        verdict = "PASS" if extra <= limit else "FAIL"
        ok &= extra <= limit
        print(f"{verdict}  {name}: +{extra:.1f} ms (limit {limit:.0f} ms)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
