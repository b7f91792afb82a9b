"""``copml --help`` start-up time: heavy libraries must be imported lazily.

Target (issue 2): under 0.5 s. Median of 7 runs of a fresh process.
Run: .venv/bin/python benchmarks/cli_startup.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time


def main(runs: int = 7) -> dict[str, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "copml", "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"copml --help: median {median:.3f} s over {runs} runs (target < 0.5 s)")
    return {"help_median_s": median, "help_max_s": max(times)}


if __name__ == "__main__":
    print(json.dumps(main()))
