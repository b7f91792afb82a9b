"""Peak memory and wall time of ``copml score`` on a large batch (issue 14.1): scoring
streams, so 10,000,000 rows must stay under 2 GB of peak RSS, against bare pandas (read
the whole Parquet file, ``predict_proba`` in chunks, write a Parquet output) on the same
rows and the same fitted pipeline.

Each contender runs as its own fresh process (so its peak RSS is its own: imports, model
and data), one after the other, and reports its wall time (from the call, imports and
model loading excluded) and its peak RSS (``VmHWM``: ``ru_maxrss`` would count the RSS
the child inherits at fork from this parent). The batch is generated here (not committed):
the benchmark's 1,000,000 simulated customers, repeated with new ids up to ``ROWS``,
written in 1,048,576-row groups as pandas writes them.

``--before SRC`` also times the same ``copml score`` with another tree's ``src`` (e.g. a
worktree of main) on 1,000,000 rows, alternating the two ``REPEAT`` times on batches that
differ by their ids (each run freezes a new snapshot), and compares the medians.

``--monitor`` then gives every logged prediction an outcome and times ``copml monitor``
over them (fresh process, peak RSS too).

``0 --monitor`` monitors what an earlier run logged, without scoring again.

Run: .venv/bin/python benchmarks/score_memory.py [ROWS=10000000] [--monitor]
     [--before SRC [REPEAT=3]]
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from workload import WORK, batch, hgb_project

SRC = Path(__file__).resolve().parents[1] / "src"

_COPML = """
import json, sys, time
from copml.project import load_project
from copml.score import score
project = load_project(sys.argv[1])
start = time.perf_counter()
result = score(project, sys.argv[2], sys.argv[3])
print(json.dumps({"wall_s": time.perf_counter() - start, "rows": result.rows,
                  "peak_rss_mb": int(next(l for l in open("/proc/self/status")
                                       if l.startswith("VmHWM")).split()[1]) / 1024}))
"""

_BARE = """
import json, sys, time
import numpy as np, pandas as pd, pyarrow as pa, pyarrow.parquet as pq
from copml import registry
from copml.project import load_project
from copml.score import CHUNK_ROWS
project = load_project(sys.argv[1])
model = registry.load(project, registry.champion(project))
features = project.spec.data.features
start = time.perf_counter()
frame = pd.read_parquet(sys.argv[2])
parts = [model.predict_proba(frame.iloc[i : i + CHUNK_ROWS][features])[:, 1]
         for i in range(0, len(frame), CHUNK_ROWS)]
out = pd.DataFrame({"customerID": frame["customerID"], "score": np.concatenate(parts)})
pq.write_table(pa.Table.from_pandas(out), sys.argv[3])
print(json.dumps({"wall_s": time.perf_counter() - start, "rows": len(out),
                  "peak_rss_mb": int(next(l for l in open("/proc/self/status")
                                       if l.startswith("VmHWM")).split()[1]) / 1024}))
"""


def tiled(path: Path, rows: int, tag: str) -> Path:
    """``rows`` customers: the 1,000,000-row benchmark batch repeated, every id new."""
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        return path
    base = pq.read_table(batch(WORK / "batch-1000000-0.parquet", 1_000_000, seed=1))
    i = base.schema.get_field_index("customerID")
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, base.schema) as writer:
        for k, first in enumerate(range(0, rows, base.num_rows)):
            part = base.slice(0, min(base.num_rows, rows - first))
            ids = pc.binary_join_element_wise(f"{tag}{k}-", part.column(i).cast("string"), "")
            ids = ids.cast(base.schema.field(i).type)
            writer.write_table(part.set_column(i, "customerID", ids), row_group_size=1 << 20)
    os.replace(tmp, path)
    return path


def run(code: str, project: Path, source: Path, output: Path, src: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(project), str(source), str(output)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(project: Path, rows: int) -> dict[str, object]:
    source = tiled(WORK / f"tiled-{rows}.parquet", rows, "m")
    print(f"peak memory, {rows:,} rows ({source.stat().st_size >> 20} MiB of Parquet)")
    figures: dict[str, object] = {"rows": rows}
    for name, code in (("copml", _COPML), ("bare", _BARE)):
        figures[name] = found = run(code, project, source, WORK / f"{name}-out.parquet", SRC)
        print(f"  {name}: {found['wall_s']:.1f} s, peak RSS {found['peak_rss_mb']:,.0f} MB")
    return figures


_MONITOR = """
import json, sys, time
from copml.monitor.window import monitor
from copml.project import load_project
project = load_project(sys.argv[1])
start = time.perf_counter()
window = monitor(project)
print(json.dumps({"wall_s": time.perf_counter() - start, "rows": window.n_predictions,
                  "labelled": window.n_labelled,
                  "peak_rss_mb": int(next(l for l in open("/proc/self/status")
                                       if l.startswith("VmHWM")).split()[1]) / 1024}))
"""


def monitored(project: Path) -> dict[str, float]:
    """``copml monitor`` over every logged prediction, each given ground truth first (by
    SQL: loading 10,000,000 outcomes through ``copml feedback`` is not what is measured)."""
    db = sqlite3.connect(project / ".copml" / "copml.db")
    with db:
        db.execute(
            "INSERT OR IGNORE INTO feedback (prediction_seq, actual, observed_at, loaded_at, "
            "source) SELECT seq, abs(random()) % 5 = 0, strftime('%Y-%m-%d %H:%M:%f000', "
            "'now'), strftime('%Y-%m-%d %H:%M:%f000', 'now'), 'benchmark' FROM predictions"
        )
    db.close()
    found = run(_MONITOR, project, project, project, SRC)
    print(
        f"  copml monitor: {found['rows']:,} predictions ({found['labelled']:,} labelled): "
        f"{found['wall_s']:.1f} s, peak RSS {found['peak_rss_mb']:,.0f} MB"
    )
    return found


def speed(project: Path, before: Path, repeat: int) -> dict[str, object]:
    print(f"copml score, 1,000,000 rows: this tree against {before}, {repeat} runs each")
    times: dict[str, list[float]] = {"before": [], "after": []}
    for i in range(repeat):
        order = ("before", "after") if i % 2 == 0 else ("after", "before")
        for side in order:
            source = tiled(WORK / f"speed-{side}-{i}.parquet", 1_000_000, f"{side[0]}{i}")
            src = before if side == "before" else SRC
            found = run(_COPML, project, source, WORK / f"{side}-out.parquet", src)
            times[side].append(found["wall_s"])
            print(f"  run {i + 1} {side}: {found['wall_s']:.2f} s, {found['peak_rss_mb']:,.0f} MB")
    medians = {side: statistics.median(t) for side, t in times.items()}
    print(f"  median after / before: {medians['after'] / medians['before']:.2f}")
    return {"runs": times, "medians": medians}


def main() -> None:
    args = sys.argv[1:]
    before = None
    if "--before" in args:
        at = args.index("--before")
        before = Path(args[at + 1]).resolve()
        repeat = int(args[at + 2]) if len(args) > at + 2 else 3
        args = args[:at]
    args = [a for a in args if a != "--monitor"]
    rows = int(args[0]) if args else 10_000_000
    kept = WORK / "score-memory"
    # ROWS=0 keeps the project an earlier run logged to (building one starts it afresh).
    project = kept if rows == 0 and kept.exists() else hgb_project("score-memory").root
    figures: dict[str, object] = {}
    if rows:
        figures["memory"] = memory(project, rows)
    if "--monitor" in sys.argv:  # ROWS=0: the predictions an earlier run logged
        figures["monitor"] = monitored(project)
    if before is not None:
        figures["speed"] = speed(project, before, repeat)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
