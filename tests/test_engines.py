"""Distributed batch scoring (issue 14.1): the engine seam, Spark and Ray on real local
clusters and on real standalone processes, the one-step header commit and the sweep of
what failed or killed runs leave behind."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from batches import month
from copml import audit, partitioned, prediction_log, registry
from copml.engines.job import ScoringJob, job_for, score_partition
from copml.engines.partitions import plan
from copml.errors import DataValidationError
from copml.project import Project
from copml.score import score
from copml.store import open_store, predictions
from store_state import assert_unchanged, capture

AT = datetime(2026, 3, 1, 6, tzinfo=UTC)


def _parquet(csv: Path, path: Path, row_group_size: int) -> Path:
    """The CSV batch as one Parquet file of several row groups (text columns, as read)."""
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    pq.write_table(pa.Table.from_pandas(frame), path, row_group_size=row_group_size)
    return path


@pytest.fixture
def batch(churn: Project) -> Path:
    csv, _ = month(churn.root / "in", size=500)
    return csv


def _single(project: Project, csv: Path) -> pd.DataFrame:
    out = project.root / "single.csv"
    score(project, csv, out, at=AT)
    return pd.read_csv(out, dtype={"prediction_id": str})


def _rows(project: Project) -> int:
    with open_store(project.db_url).connect() as conn:
        return conn.execute(select(func.count()).select_from(predictions)).scalar_one()


# ------------------------------------------------------------------ no cluster: seconds


def test_plan_splits_a_parquet_file_by_row_groups(batch: Path, tmp_path: Path) -> None:
    path = _parquet(batch, tmp_path / "in.parquet", row_group_size=64)
    parts = plan([path], rows=100)
    assert [p.n_rows for p in parts] == [128, 128, 128, 116]
    assert [p.first_row for p in parts] == [0, 128, 256, 384]
    assert [p.row_groups for p in parts] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    with pytest.raises(DataValidationError, match="partition rows"):
        plan([path], rows=0)


def _job(project: Project, folder: Path) -> ScoringJob:
    return job_for(project, registry.required_champion(project), "00112233445566ff", folder)


def test_a_worker_scores_a_partition_as_the_single_process_path(
    churn: Project, batch: Path, tmp_path: Path
) -> None:
    """The worker's function alone (no engine): scores bit-equal, ids from its first row,
    PII as keyed hashes in its input part, every file's sha256 as reported."""
    single = _single(churn, batch)
    parts = plan([_parquet(batch, tmp_path / "in.parquet", row_group_size=100)], rows=200)
    job = _job(churn, tmp_path / "b")
    written = score_partition(job, parts[1])
    assert written.error is None and (written.first_row, written.n_rows) == (200, 200)
    log = pq.read_table(written.path).to_pandas()
    assert log["row"].tolist() == list(range(200, 400))
    assert (log["score"].to_numpy() == single["score"].to_numpy()[200:400]).all()
    out = pq.read_table(written.output_path).to_pandas()
    assert out["prediction_id"].tolist() == [f"{job.key}{r:08x}" for r in range(200, 400)]
    assert (out["customerID"] == single["customerID"][200:400].to_numpy()).all()
    inputs = pq.read_table(written.input_path).to_pandas()
    assert not set(inputs["customerID"]) & set(single["customerID"])  # hashed
    assert partitioned.snapshots.file_sha256(Path(written.path)) == written.sha256


def test_a_worker_refuses_an_artifact_that_does_not_match_its_sha256(
    churn: Project, batch: Path, tmp_path: Path
) -> None:
    job = _job(churn, tmp_path / "b")
    name = next(iter(job.artifact))
    tampered = replace(job, artifact={**job.artifact, name: job.artifact[name] + b" "})
    written = score_partition(tampered, plan([batch])[0])
    assert written.error is not None and "does not match" in written.error
    assert not (tmp_path / "b").exists()  # nothing written


def test_a_worker_names_the_field_of_bad_data(churn: Project, batch: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(batch, dtype=str, keep_default_na=False)
    frame.loc[3, "tenure"] = "many"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    written = score_partition(_job(churn, tmp_path / "b"), plan([bad])[0])
    assert written.error is not None and "tenure" in written.error and "bad.csv" in written.error


def _hold_lock(folder: Path) -> subprocess.Popen[bytes]:
    """A real other process holding ``folder``'s lock, as a running scorer does."""
    code = (
        "import fcntl,sys,time\n"
        f"fh=open({str(folder / '.lock')!r},'wb'); fcntl.flock(fh, fcntl.LOCK_EX)\n"
        "print('locked', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
    return proc


def test_sweep_removes_what_dead_runs_left_and_keeps_running_ones(churn: Project) -> None:
    root = partitioned.batches_dir(churn)
    dead, running = root / "aaaaaaaaaaaaaaaa", root / "bbbbbbbbbbbbbbbb"
    for folder in (dead, running):
        (folder / "log").mkdir(parents=True)
        (folder / "log" / "part-00000.parquet").write_bytes(b"x")
        (folder / ".lock").touch()
    half_made = root / f".cccccccccccccccc.{2**22 + 12345}"  # its maker's pid is not alive
    half_made.mkdir()
    holder = _hold_lock(running)
    try:
        assert partitioned.sweep(churn) == [half_made.name, dead.name]
        assert running.exists() and not dead.exists() and not half_made.exists()
    finally:
        holder.communicate(b"")
    assert partitioned.sweep(churn) == [running.name]  # its run is gone now


def test_engine_options_are_checked(churn: Project, batch: Path) -> None:
    from typer.testing import CliRunner

    from copml.cli import app

    runner = CliRunner()
    args = ["score", str(batch), "-o", str(churn.root / "o.csv"), "--project", str(churn.root)]
    bad = runner.invoke(app, [*args, "--engine", "dask"])
    assert bad.exit_code == 2 and "--engine" in bad.output
    lone = runner.invoke(app, [*args, "--cluster", "spark://127.0.0.1:7077"])
    assert lone.exit_code == 2 and "--cluster" in lone.output
    assert _rows(churn) == 0


def test_serving_engine_sets_the_default_and_the_option_wins(fresh_churn: Project) -> None:
    assert partitioned.engine_for(fresh_churn, None) == "local"
    serving = fresh_churn.spec.serving.model_copy(update={"engine": "ray"})
    on_ray = Project(fresh_churn.root, fresh_churn.spec.model_copy(update={"serving": serving}))
    assert partitioned.engine_for(on_ray, None) == "ray"
    assert partitioned.engine_for(on_ray, "spark") == "spark"
    from copml.spec import Serving

    with pytest.raises(ValueError, match="engine"):
        Serving.model_validate({"engine": "dask"})


# ------------------------------------------------------- local clusters (JVM, Ray): cluster


def _folder_of_parquet(csv: Path, folder: Path) -> Path:
    """The batch as a folder of two Parquet files of row groups of 100 rows."""
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    folder.mkdir(parents=True)
    for name, part in (("a.parquet", frame.iloc[:300]), ("b.parquet", frame.iloc[300:])):
        table = pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False)
        pq.write_table(table, folder / name, row_group_size=100)
    return folder


def _output(folder: Path) -> pd.DataFrame:
    files = sorted(folder.glob("part-*.parquet"))
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def _assert_same_as_single(
    project: Project, result: partitioned.ScoreResult, single: pd.DataFrame
) -> None:
    """Every row's score bit-equal to the single-process path's, the same ids but the batch
    key, the batch visible once with every part's sha256 recorded and matching."""
    out = _output(result.output)
    assert len(out) == len(single) == result.rows
    assert (out["customerID"].to_numpy() == single["customerID"].to_numpy()).all()
    assert (out["score"].to_numpy() == single["score"].to_numpy()).all()  # bit-equal
    assert (out["label"].to_numpy() == single["label"].to_numpy()).all()
    key = result.prediction_batch
    assert (out["prediction_id"].str[:16] == key).all()
    assert (out["prediction_id"].str[16:] == single["prediction_id"].str[16:]).all()
    engine = open_store(project.db_url)
    (batch,) = [
        b
        for b in prediction_log.batches_between(engine, None, datetime(2030, 1, 1, tzinfo=UTC))
        if b.key == key
    ]
    logged = prediction_log.read(engine, batch)
    assert (logged["prediction_id"].to_numpy() == out["prediction_id"].to_numpy()).all()
    assert (logged["score"].to_numpy() == single["score"].to_numpy()).all()
    parts = partitioned.parts_of(project, key)
    assert [p["first_row"] for p in parts] == [0, 100, 200, 300, 400]
    for p in parts:
        assert partitioned.snapshots.file_sha256(Path(str(p["path"]))) == p["sha256"]


def _no_runaway(pattern: str) -> None:
    """No process matching ``pattern`` started by this test outlives it."""
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    mine = [pid for pid in found.stdout.split() if _child_of_test(int(pid))]
    assert not mine, f"left running: {pattern} {mine}"


def _child_of_test(pid: int) -> bool:
    """Whether ``pid`` descends from this test process."""
    me = os.getpid()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == me:
            return True
    return False


@pytest.mark.cluster
def test_spark_local_scores_bit_equal_and_a_decision_audits_and_replays(
    churn: Project, batch: Path
) -> None:
    folder = _folder_of_parquet(batch, churn.root / "in-parts")
    single = _single(churn, folder)
    result = partitioned.score(
        churn, folder, churn.root / "out", engine="spark", partition_rows=100, at=AT
    )
    _assert_same_as_single(churn, result, single)
    _no_runaway("org.apache.spark")
    # audit and replay one decision of the partitioned batch (row 437, in the last part)
    pid = f"{result.prediction_batch}{437:08x}"
    found = audit.record(churn, pid, explanation=False)
    assert found["score"] == single["score"][437] and found["snapshot_row"] == 437
    assert found["input"]["tenure"] == int(single_input(batch)["tenure"][437])
    assert found["input"]["customerID"] != single["customerID"][437]  # a keyed hash
    assert audit.replay(churn, pid, actor="user:test").identical


def single_input(csv: Path) -> pd.DataFrame:
    return pd.read_csv(csv)


@pytest.mark.cluster
def test_ray_local_fails_whole_then_scores_and_the_log_serves_feedback_monitor_retention(
    churn: Project, batch: Path, tmp_path: Path
) -> None:
    from copml.feedback import load
    from copml.monitor.window import compute
    from copml.retention import purge

    # a bad value in the last partition: refused naming the field, nothing left behind
    frame = pd.read_csv(batch, dtype=str, keep_default_na=False)
    frame.loc[450, "tenure"] = "many"
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.Table.from_pandas(frame), bad / "in.parquet", row_group_size=100)
    registry.local_copy(churn, registry.champion(churn))  # made once by any scoring, and
    assert churn.pii_key  # the key too: neither is the run's
    before = capture(churn)
    with pytest.raises(DataValidationError, match="tenure"):
        partitioned.score(churn, bad, tmp_path / "o", engine="ray", partition_rows=100, at=AT)
    assert_unchanged(before, churn)
    assert not (tmp_path / "o").exists()
    _no_runaway("raylet")

    folder = _folder_of_parquet(batch, churn.root / "in-parts")
    single = _single(churn, folder)  # logged too, a month earlier
    engine = open_store(churn.db_url)
    with engine.begin() as conn:  # move the single-process batch out of March's window
        conn.execute(
            prediction_log.batches.update()
            .where(prediction_log.batches.c.key == single["prediction_id"][0][:16])
            .values(created_at=datetime(2026, 2, 1, tzinfo=UTC))
        )
    result = partitioned.score(
        churn, folder, tmp_path / "out", engine="ray", partition_rows=100, at=AT
    )
    _assert_same_as_single(churn, result, single)
    _no_runaway("raylet")

    # feedback: half by prediction id, half by entity (matched through the input parts)
    _, outcome = month(tmp_path / "truth", size=500)
    out = _output(result.output)
    by_id = pd.DataFrame(
        {"prediction_id": out["prediction_id"][:250], "actual": outcome["Churn"][:250]}
    )
    by_entity = outcome.iloc[250:][["customerID", "Churn"]]
    by_id.to_csv(tmp_path / "by_id.csv", index=False)
    by_entity.to_csv(tmp_path / "by_entity.csv", index=False)
    load(churn, tmp_path / "by_id.csv", at=datetime(2026, 3, 31, tzinfo=UTC))
    loaded = load(churn, tmp_path / "by_entity.csv", at=datetime(2026, 3, 31, tzinfo=UTC))
    assert loaded.loaded == 250 and loaded.unknown == 0
    (march,) = prediction_log.batches_between(engine, AT, AT + timedelta(days=1))
    logged = prediction_log.read(engine, march)
    truth = (outcome["Churn"] == "Yes").astype(float).to_numpy()
    assert (logged["actual"].to_numpy() == truth).all()  # each row's own truth, both ways

    # the March window reads the partitioned batch: every prediction, labelled, accurate
    window = compute(churn, end=datetime(2026, 3, 31, tzinfo=UTC))
    assert (window.n_predictions, window.n_labelled) == (500, 500)
    expected = float(((out["label"] == "Yes").to_numpy() == (truth == 1)).mean())
    assert window.metrics["accuracy"] == pytest.approx(expected)

    # retention: past 400 days the batch, its rows, its parts and their rows are gone
    parts_folder = partitioned.batches_dir(churn) / result.prediction_batch
    assert parts_folder.exists()
    done = purge(churn, actor="user:test", at=datetime(2027, 6, 1, tzinfo=UTC))
    assert done.batches == 2 and done.predictions == 1000
    assert not parts_folder.exists() and partitioned.parts_of(churn, result.prediction_batch) == []
    assert _rows(churn) == 0


# ------------------------------------- real clusters: standalone Spark, Ray head + worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(what: str, check: Callable[[], object], seconds: float = 120) -> object:
    """Poll ``check`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A cluster process in its own process group (so it and all it starts can be
    stopped together), its output in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each group, then SIGKILL what is left after a deadline; reap them."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group: executors, raylets, workers
        proc.wait()


def _descendants(root: int, pattern: str) -> list[int]:
    """Pids of live processes below ``root`` whose command line contains ``pattern``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if pattern not in cmdline or " Z " in stat:
            continue
        pid = int(entry.name)
        while pid > 1:
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                break
            if pid == root:
                found.append(int(entry.name))
                break
    return found


def _alive(pid: int) -> bool:
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False


def _env() -> dict[str, str]:
    return {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}


@pytest.fixture
def spark_cluster(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real Spark standalone master and one worker (2 cores) on loopback; the master's
    URL and the worker's process."""
    spark_class = str(Path(sys.executable).parent / "spark-class")
    port, ui = _free_port(), _free_port()
    master = _start(
        [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
         "--port", str(port), "--webui-port", str(ui)],
        tmp_path / "master.log",
        _env(),
    )  # fmt: skip
    procs = [master]
    url = f"spark://127.0.0.1:{port}"
    try:
        worker = _start(
            [spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
             "--port", str(_free_port()), "--webui-port", str(_free_port()), "--cores", "2",
             "--memory", "2G", "--work-dir", str(tmp_path / "spark-work")],
            tmp_path / "worker.log",
            _env(),
        )  # fmt: skip
        procs.append(worker)

        def alive_workers() -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2) as r:
                    return int(json.load(r)["aliveworkers"])
            except (OSError, ValueError, KeyError):
                return 0

        _until("a Spark worker registered with the master", alive_workers)
        yield url, worker
    finally:
        _stop(procs)


@pytest.fixture
def ray_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real Ray head and one worker node (one CPU each) on loopback, started with
    ``ray start --block``, token authentication on (a token of this test's, which the
    nodes and every driver it starts share); the head's address and the worker node."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    ray = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
              "--block"]  # fmt: skip
    short = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Unix socket paths: <= 107 bytes
    env = {**_env(), "RAY_TMPDIR": short}
    head = _start(
        [ray, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common],
        tmp_path / "head.log",
        env,
    )
    procs = [head]
    address = f"127.0.0.1:{port}"
    try:
        _until("the Ray head", lambda: head.poll() or _descendants(head.pid, "gcs_server"))
        assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
        worker = _start([ray, "start", "--address", address, *common], tmp_path / "worker.log", env)
        procs.append(worker)
        _until("the Ray worker node", lambda: worker.poll() or _descendants(worker.pid, "raylet"))
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        yield address, worker
    finally:
        _stop(procs)
        shutil.rmtree(short, ignore_errors=True)


def _score_cli(project: Project, source: Path, out: Path, engine: str, cluster: str):
    """``copml score`` as a real process on the cluster, 100 rows a partition."""
    return subprocess.Popen(
        [sys.executable, "-m", "copml", "score", str(source), "-o", str(out), "--engine",
         engine, "--cluster", cluster, "--partition-rows", "100", "--project",
         str(project.root), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )  # fmt: skip


def _parts_written(project: Project) -> list[Path]:
    return sorted(partitioned.batches_dir(project).glob("*/log/part-*.parquet"))


def _batch_keys(project: Project) -> list[str]:
    with open_store(project.db_url).connect() as conn:
        return list(conn.execute(select(prediction_log.batches.c.key)).scalars())


def _killed_mid_run(
    project: Project,
    source: Path,
    out: Path,
    engine: str,
    cluster: str,
    victims: Callable[[], list[int]],
) -> subprocess.Popen[bytes]:
    """Start a run, and kill -9 one of ``victims()`` once the first part is written and
    before the last: the run's process, finished."""
    run = _score_cli(project, source, out, engine, cluster)
    try:
        _until("the first part", lambda: _parts_written(project) or run.poll() is not None)
        assert run.poll() is None, run.communicate()
        pid = _until(f"a {engine} worker process to kill", victims)[0]  # type: ignore[index]
        assert len(_parts_written(project)) < 40  # mid-run: parts still to write
        os.kill(pid, signal.SIGKILL)
        run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    return run


def _fails_or_recovers(
    project: Project, run: subprocess.Popen[bytes], out: Path, single: pd.DataFrame
) -> None:
    """Either way, no partial batch: recovered means every row, bit-equal; failed means
    no batch at all and no output."""
    keys = _batch_keys(project)
    if run.returncode == 0:
        (key,) = [k for k in keys if k != single["prediction_id"][0][:16]]
        got = _output(out)
        assert (got["score"].to_numpy() == single["score"].to_numpy()).all()
        assert (got["prediction_id"].str[:16] == key).all()
    else:
        assert keys == [single["prediction_id"][0][:16]] and not out.exists()


@pytest.mark.cluster
def test_spark_standalone_survives_a_killed_executor_and_a_killed_driver(
    churn: Project, tmp_path: Path, spark_cluster: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, worker = spark_cluster
    csv, _ = month(tmp_path / "in", size=4000)
    source = _parquet(csv, tmp_path / "in.parquet", row_group_size=100)  # 40 partitions
    single = _single(churn, source)

    # kill -9 an executor mid-run: the worker starts another, the tasks are retried (or
    # the run fails): no partial batch either way
    out = tmp_path / "out-1"
    run = _killed_mid_run(
        churn, source, out, "spark", url,
        lambda: _descendants(worker.pid, "CoarseGrainedExecutorBackend"),
    )  # fmt: skip
    _fails_or_recovers(churn, run, out, single)
    recovered = run.returncode == 0
    print("killed executor: the run", "recovered" if recovered else "failed")

    # kill -9 the driver mid-run: no batch, its parts left behind, unlocked
    before = set(_batch_keys(churn))
    run = _score_cli(churn, source, tmp_path / "out-2", "spark", url)
    try:
        _until("the first part", lambda: len(_parts_written(churn)) > (40 if recovered else 0))
        jvm = _descendants(run.pid, "java")  # the driver's gateway JVM
        assert jvm
    finally:
        run.kill()
        run.wait()
    # the gateway exits when its Python's end of the pipe closes: no JVM outlives a driver
    _until("the killed driver's JVM to exit", lambda: not any(_alive(p) for p in jvm))
    assert set(_batch_keys(churn)) == before and not (tmp_path / "out-2").exists()
    (orphan,) = {
        f.parent.parent.name for f in _parts_written(churn)
        if f.parent.parent.name not in before
    }  # fmt: skip

    # a re-run sweeps the orphan and commits
    again = _score_cli(churn, source, tmp_path / "out-3", "spark", url)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr.decode()[-3000:]
    assert not (partitioned.batches_dir(churn) / orphan).exists()
    result = json.loads(stdout)
    got = _output(tmp_path / "out-3")
    assert (got["score"].to_numpy() == single["score"].to_numpy()).all()
    assert result["rows"] == 4000 and result["prediction_batch"] in _batch_keys(churn)


@pytest.mark.cluster
def test_ray_cluster_survives_a_killed_worker_and_a_rerun_succeeds(
    churn: Project, tmp_path: Path, ray_cluster: tuple[str, subprocess.Popen[bytes]]
) -> None:
    address, worker = ray_cluster
    csv, _ = month(tmp_path / "in", size=4000)
    source = _parquet(csv, tmp_path / "in.parquet", row_group_size=100)  # 40 partitions
    single = _single(churn, source)

    out = tmp_path / "out-1"
    run = _killed_mid_run(
        churn, source, out, "ray", address, lambda: _descendants(worker.pid, "ray::MapWorker")
    )
    _fails_or_recovers(churn, run, out, single)
    print("killed Ray worker: the run", "recovered" if run.returncode == 0 else "failed")

    again = _score_cli(churn, source, tmp_path / "out-2", "ray", address)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr.decode()[-3000:]
    got = _output(tmp_path / "out-2")
    assert (got["score"].to_numpy() == single["score"].to_numpy()).all()
    assert json.loads(stdout)["rows"] == 4000
