"""Performance estimated before the truth lands: quality against NannyML's CBPE, and speed.

Issue 15, item 4. In one run:

1. Quality. The churn example (the demo's model) is trained by copml; the churn simulation
   runs 12 months of 4,000 customers, the market shifting in month 7, without retention
   offers (an offer changes who churns among the flagged: a concept shift of its own).
   Each month is scored by ``copml score``, its window computed before the truth (the
   estimate) and again after it (the realised figures, the error, the concept-shift flag).
   NannyML's CBPE, in its own virtualenv, is fitted on exactly the version's holdout (the
   same rows, scores and decisions copml calibrated on) and estimates the same monthly
   rows. Targets: on the months before the shift, copml's estimated accuracy and ROC AUC
   within 0.02 of the realised on average and at least as close as NannyML's; the shift
   flagged (``concept_shift`` = 1) in its first labelled window.
2. Speed. ``copml monitor`` over 1,000,000 predictions (the HGB project of
   ``workload.py``) with and without estimation, before and after the truth (target: it
   adds < 0.5 s); copml's drift + estimation over the same 1,000,000-row frame against
   Evidently's ``DataDriftPreset`` (its own virtualenv; target: >= 10x faster).

Run: .venv/bin/python benchmarks/estimation.py [ROWS] [--quality] [--speed]   (both parts
by default; the virtualenvs are made under benchmarks/.work/ on the first run, from the
package registry)
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
import time
import venv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from workload import WORK, batch, hgb_project

from copml import registry, snapshots
from copml.apps.churn.simulation import AFTER_SHIFT, Population, as_source_csv
from copml.evaluation import split_holdout
from copml.feedback import load
from copml.kinds import kind_for
from copml.monitor import window as windows
from copml.monitor.drift import feature_drift
from copml.project import Project, load_project
from copml.scaffold import init
from copml.score import score
from copml.store import open_store
from copml.train import train

START = datetime(2026, 1, 1, tzinfo=UTC)
MONTHS, SHIFT, CUSTOMERS = 12, 6, 4000
METRICS = ("accuracy", "roc_auc")

NANNYML = """
import json, sys, pandas as pd, nannyml as nml
reference = pd.read_parquet(sys.argv[1]); analysis = pd.read_parquet(sys.argv[2])
estimator = nml.CBPE(
    y_pred_proba="score", y_pred="pred", y_true="actual", timestamp_column_name="at",
    metrics=["accuracy", "roc_auc"], chunk_period="M", problem_type="classification_binary",
)
estimator.fit(reference)
found = estimator.estimate(analysis).filter(period="analysis").to_df()
out = {}
for _, row in found.iterrows():
    key = str(row[("chunk", "start_date")])[:7]
    out[key] = {m: float(row[(m, "value")]) for m in ("accuracy", "roc_auc")}
print(json.dumps({"version": nml.__version__, "windows": out}))
"""

EVIDENTLY = """
import json, sys, time, pandas as pd
reference = pd.read_parquet(sys.argv[1]); current = pd.read_parquet(sys.argv[2])
import evidently
try:  # evidently >= 0.7
    from evidently import Report
    from evidently.presets import DataDriftPreset
    legacy = False
except ImportError:
    from evidently.report import Report
    from evidently.metric_preset import DataDriftPreset
    legacy = True
times = []
for _ in range(int(sys.argv[3])):
    start = time.perf_counter()
    report = Report([DataDriftPreset()]) if not legacy else Report(metrics=[DataDriftPreset()])
    result = report.run(reference_data=reference, current_data=current)
    times.append(time.perf_counter() - start)
print(json.dumps({"version": evidently.__version__, "seconds": min(times)}))
"""


def virtualenv(name: str, packages: list[str]) -> Path:
    """A virtualenv under benchmarks/.work with ``packages`` from the package registry (made
    once): the tool's own pins never meet copml's."""
    folder = WORK / f"venv-{name}"
    python = folder / "bin" / "python"
    marker = folder / "installed.json"
    if not marker.exists() or json.loads(marker.read_text()) != packages:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"  making {folder} with {', '.join(packages)} (once)", flush=True)
        venv.create(folder, with_pip=True)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *packages], capture_output=True, text=True
        )
        if done.returncode:
            raise SystemExit(f"pip install {' '.join(packages)} failed:\n{done.stderr}")
        marker.write_text(json.dumps(packages))
    return python


def run_in(python: Path, script: str, *args: str) -> dict:
    done = subprocess.run(
        [str(python), "-c", script, *args], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _month(offset: int) -> datetime:
    return (pd.Timestamp(START) + pd.DateOffset(months=offset)).to_pydatetime()


# -------------------------------------------------------------------------------- quality


def churn_project() -> Project:
    root = WORK / "estimation-churn"
    shutil.rmtree(root, ignore_errors=True)
    init(root, "churn")
    project = load_project(root)
    project.ensure_home()
    snapshots.create(
        open_store(project.db_url),
        project.spec.data,
        root=root,
        directory=project.snapshots_dir,
    )
    result = train(project, at=START - timedelta(days=1))
    assert result.champion, result.failures
    return project


def holdout(project: Project) -> pd.DataFrame:
    """The champion's holdout as NannyML's reference: the rows, scores and decisions copml
    calibrated on (the same seeded split training made)."""
    spec, kind = project.spec, kind_for(project.spec)
    champion = registry.required_champion(project)
    lineage = registry.recorded(project, champion.version)
    snap = snapshots.get(open_store(project.db_url), lineage.snapshot_id)
    assert snap is not None
    frame = kind.training_frame(project, snap)
    held = split_holdout(frame, spec.data.target, spec.model.holdout, spec.model.seed)
    model = registry.load(project, champion)
    features = frame.loc[held, kind.model_inputs(project, frame)].reset_index(drop=True)
    scores = kind.scores(model, features)
    decided = kind.decide(project, model, scores)
    stamps = pd.date_range(START - timedelta(days=365), periods=len(scores), freq="15min")
    return pd.DataFrame(
        {
            "score": scores,
            "pred": decided.label.astype(int),
            "actual": frame.loc[held, spec.data.target].to_numpy().astype(int),
            "at": stamps,
        }
    )


def quality() -> dict:
    print(f"quality: {MONTHS} months of {CUSTOMERS:,} customers, market shift in month {SHIFT + 1}")
    project = churn_project()
    reference = holdout(project)
    population = Population(seed=8, size=CUSTOMERS, shift_month=SHIFT, after=AFTER_SHIFT)
    folder = WORK / "estimation-months"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rows, analysis = [], []
    for month in range(MONTHS):
        begins, ends = _month(month), _month(month + 1)
        source, scored = folder / f"{begins:%Y-%m}.csv", folder / f"{begins:%Y-%m}-scored.csv"
        as_source_csv(population.customers).to_csv(source, index=False)
        score(project, source, scored, at=begins + timedelta(hours=6))
        before = windows.monitor(project, end=ends).metrics  # no truth yet
        outcome = population.close_month(np.zeros(len(population.customers), dtype=bool))
        truth = folder / f"{begins:%Y-%m}-truth.csv"
        outcome.to_csv(truth, index=False)
        load(project, truth, at=ends - timedelta(days=1))
        after = windows.monitor(project, end=ends).metrics
        decided = pd.read_csv(scored).merge(outcome, on="customerID")
        analysis.append(
            pd.DataFrame(
                {
                    "score": decided["score"],
                    "pred": decided["label"].eq("Yes").astype(int),
                    "actual": decided["Churn"].eq("Yes").astype(int),
                    "at": begins + timedelta(hours=6),
                }
            )
        )
        rows.append((f"{begins:%Y-%m}", month >= SHIFT, before, after))
    reference.to_parquet(WORK / "estimation-reference.parquet")
    pd.concat(analysis, ignore_index=True).to_parquet(WORK / "estimation-analysis.parquet")
    python = virtualenv("nannyml", ["nannyml", "statsmodels"])
    nanny = run_in(
        python,
        NANNYML,
        str(WORK / "estimation-reference.parquet"),
        str(WORK / "estimation-analysis.parquet"),
    )
    print(f"  NannyML {nanny['version']} CBPE on the same reference (holdout) and windows\n")
    head = f"  {'month':<9} " + " ".join(
        f"{m + ' ' + w:>17}" for m in METRICS for w in ("realised", "copml", "nannyml")
    )
    print(head + "   copml flag")
    errors: dict[str, dict[str, list[float]]] = {"copml": {}, "nannyml": {}}
    flagged_first = None
    for label, shifted, before, after in rows:
        theirs = nanny["windows"].get(label, {})
        cells = []
        for m in METRICS:
            realised, ours, other = after[m], before[f"estimated_{m}"], theirs.get(m, math.nan)
            cells += [realised, ours, other]
            if not shifted:
                errors["copml"].setdefault(m, []).append(abs(ours - realised))
                errors["nannyml"].setdefault(m, []).append(abs(other - realised))
        flag = after["concept_shift"]
        if shifted and flagged_first is None:
            flagged_first = flag == 1.0
        mark = " *" if shifted else "  "
        print(
            f"  {label}{mark} "
            + " ".join(f"{v:>17.4f}" for v in cells)
            + f"   {'SHIFT' if flag == 1 else '-':>10}"
        )
    out: dict = {"nannyml_version": nanny["version"]}
    print("\n  mean |estimate - realised| before the shift (target: copml <= 0.02 and <= NannyML)")
    for m in METRICS:
        ours, theirs = statistics.mean(errors["copml"][m]), statistics.mean(errors["nannyml"][m])
        out[f"copml_{m}_mae"], out[f"nannyml_{m}_mae"] = ours, theirs
        print(f"    {m:<9} copml {ours:.4f}   NannyML CBPE {theirs:.4f}")
    out["shift_flagged_in_first_labelled_window"] = bool(flagged_first)
    print(f"  concept shift flagged in the first shifted window: {bool(flagged_first)}\n")
    return out


# ---------------------------------------------------------------------------------- speed


def speed(rows: int) -> dict:
    print(f"speed: one window of {rows:,} predictions (the HGB project)")
    project = hgb_project("estimation-speed")
    source = batch(WORK / f"batch-{rows}.parquet", rows)
    out = WORK / "estimation-scores.parquet"
    at = datetime(2026, 3, 1, 6, tzinfo=UTC)
    end = datetime(2026, 4, 1, tzinfo=UTC)
    score(project, source, out, at=at)
    stub = windows._estimated
    results: dict = {}

    def timed_monitor(label: str) -> None:
        runs = {}
        for name, estimated in (("with", stub), ("without", _no_estimates)):
            windows._estimated = estimated  # type: ignore[assignment]
            seconds = []
            for _ in range(3):
                start = time.perf_counter()
                window = windows.monitor(project, end=end)
                seconds.append(time.perf_counter() - start)
            runs[name] = min(seconds)
        windows._estimated = stub  # type: ignore[assignment]
        assert window.n_predictions == rows
        added = runs["with"] - runs["without"]
        results[f"monitor_{label}_with_s"] = runs["with"]
        results[f"monitor_{label}_without_s"] = runs["without"]
        results[f"estimation_added_{label}_s"] = added
        print(
            f"  monitor {label}: {runs['without']:.2f} s without estimation, "
            f"{runs['with']:.2f} s with: +{added:.2f} s (target < 0.5 s)",
            flush=True,
        )

    timed_monitor("before the truth")
    scored = pd.read_parquet(out, columns=["prediction_id"])
    rng = np.random.default_rng(0)
    truth = WORK / "estimation-truth.parquet"
    pd.DataFrame(
        {
            "prediction_id": scored["prediction_id"],
            "actual": np.where(rng.random(rows) < 0.2, "Yes", "No"),
        }
    ).to_parquet(truth)
    assert load(project, truth, at=datetime(2026, 3, 31, tzinfo=UTC)).loaded == rows
    timed_monitor("after the truth")

    # copml's drift + estimation on the window's frame, against Evidently on the same frame.
    spec = project.spec
    kind = kind_for(spec)
    features = kind.monitored_features(spec.data)
    engine = open_store(project.db_url)
    frame = windows.window_frame(engine, *windows.period(spec.effectiveness.window, end), features)
    version = str(frame["model_version"].mode().iloc[0])
    lineage = registry.recorded(project, version)
    reference = snapshots.get(engine, lineage.reference_snapshot_id)
    assert reference is not None
    profile = reference.profile
    calibrations = {version: lineage.calibration}
    labelled = frame[frame["actual"].notna()]
    realised = kind.window_metrics(project, labelled)
    seconds = []
    for _ in range(5):  # the monitor's timings above vary by more than estimation costs
        start = time.perf_counter()
        windows._estimated(project, frame, labelled, realised, version, lineage)
        seconds.append(time.perf_counter() - start)
    results["estimation_alone_s"] = min(seconds)
    print(f"  estimation alone (estimate and reconcile): {min(seconds):.2f} s (target < 0.5 s)")
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        feature_drift(profile, frame, features, spec.effectiveness.drift_psi)
        kind.estimate(project, frame, calibrations)
        seconds.append(time.perf_counter() - start)
    ours = min(seconds)
    reference_frame = reference.load()[features]
    reference_frame.to_parquet(WORK / "estimation-evidently-reference.parquet")
    current = frame[features].copy()
    for column in current.columns:  # the same frame, as plain columns Evidently reads
        if isinstance(current[column].dtype, pd.CategoricalDtype):
            current[column] = current[column].astype(str)
    current.to_parquet(WORK / "estimation-evidently-current.parquet")
    python = virtualenv("evidently", ["evidently", "pandas<3"])  # evidently reads pandas 2
    theirs = run_in(
        python,
        EVIDENTLY,
        str(WORK / "estimation-evidently-reference.parquet"),
        str(WORK / "estimation-evidently-current.parquet"),
        "2",
    )
    ratio = theirs["seconds"] / ours
    print(
        f"  drift ({len(features)} features) + estimation over {rows:,} rows: copml {ours:.2f} s; "
        f"Evidently {theirs['version']} DataDriftPreset (drift only) {theirs['seconds']:.2f} s: "
        f"{ratio:.0f}x (target >= 10x)"
    )
    results |= {
        "copml_drift_estimation_s": ours,
        "evidently_version": theirs["version"],
        "evidently_data_drift_s": theirs["seconds"],
        "speedup": ratio,
    }
    return results


def _no_estimates(project: Project, *args: object) -> dict[str, float]:
    return {}


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    rows = int(args[0]) if args else 1_000_000
    only = {a[2:] for a in sys.argv[1:] if a.startswith("--")} or {"quality", "speed"}
    found = (quality() if "quality" in only else {}) | (speed(rows) if "speed" in only else {})
    print(json.dumps(found))
