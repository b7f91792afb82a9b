"""Regenerate docs/screenshots/*.png: the dashboard on a fresh ``copml demo churn``.

    .venv/bin/python scripts/screenshots.py [--months 12] [--project DIR] [--out DIR]

Runs the demo into a temporary folder (or uses ``--project``), opens a few human-review
items through the real-time API, creates one key per role, starts ``copml ui`` on a free
loopback port, logs in with Debian's Chromium through Playwright and captures each page
at 1280x800. The PNGs are reduced to a 128-colour palette to keep them small.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}


def run_demo(folder: Path, months: int) -> None:
    command = [sys.executable, "-m", "copml", "demo", "churn", "--months", str(months)]
    subprocess.run([*command, "--dir", str(folder)], check=True, stdout=subprocess.DEVNULL)


def open_reviews(root: Path, n: int = 120) -> None:
    """Send customers through ``POST /v1/predict`` with a review band, so some wait for a
    person: the churn spec scores in batch, which opens no reviews."""
    import pandas as pd
    from fastapi.testclient import TestClient

    from copml import keys
    from copml.project import load_project
    from copml.serve.app import create_app
    from copml.store import open_store

    spec = root / "copml.yaml"
    text = spec.read_text()
    if "review_band" not in text:
        text = re.sub(r"serving: \{(.*?)\}", r"serving: {\1, review_band: [0.4, 0.6]}", text)
        spec.write_text(text)
    project = load_project(root)
    key = keys.create(open_store(project.db_url), "service", name="screenshots")
    batch = sorted((root / "batches").glob("*.csv"))[-1]
    rows = pd.read_csv(batch).head(n)
    rows["TotalCharges"] = pd.to_numeric(rows["TotalCharges"], errors="coerce")
    instances = json.loads(rows.drop(columns=["Churn"], errors="ignore").to_json(orient="records"))
    app = create_app(project, poll_seconds=0, heartbeat_seconds=0)
    with TestClient(app) as client:
        answer = client.post(
            "/v1/predict",
            json={"instances": instances},
            headers={"Authorization": f"Bearer {key}"},
        )
        answer.raise_for_status()


def make_keys(root: Path) -> dict[str, str]:
    from copml import keys
    from copml.project import load_project
    from copml.store import open_store

    engine = open_store(load_project(root).db_url)
    return {
        role: keys.create(engine, role, name=name)
        for role, name in (("operator", "olivia"), ("auditor", "arjun"), ("viewer", "vera"))
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_ui(root: Path, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "copml", "ui", "--project", str(root), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"copml ui exited: {server.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("copml ui did not answer /healthz within 60 s")


def shrink(png: bytes) -> bytes:
    """A 128-colour palette PNG: a third of the size, no visible loss on flat UI colours."""
    try:
        from PIL import Image
    except ImportError:
        return png
    image = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, format="PNG", optimize=True
    )
    return out.getvalue()


def capture(base: str, slug: str, keys_by_role: dict[str, str], out: Path) -> dict[str, int]:
    from playwright.sync_api import sync_playwright

    sizes: dict[str, int] = {}
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)

        def session(role: str) -> object:
            page = browser.new_page(viewport=VIEWPORT)  # type: ignore[attr-defined]
            page.goto(f"{base}/login")
            page.fill("#key", keys_by_role[role])
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/")
            return page

        def shot(page: object, name: str, url: str, full: bool = False) -> None:
            page.goto(url)  # type: ignore[attr-defined]
            data = page.screenshot(full_page=full)  # type: ignore[attr-defined]
            path = out / f"{name}.png"
            path.write_bytes(shrink(data))
            sizes[path.name] = path.stat().st_size

        operator = session("operator")
        p = f"{base}/p/{slug}"
        shot(operator, "overview", f"{base}/")
        shot(operator, "project", p)
        shot(operator, "models", f"{p}/models")
        champion = operator.locator("span.lifecycle.champion").first  # type: ignore[attr-defined]
        version = champion.locator("xpath=../..").locator("a").first.inner_text().lstrip("v")
        shot(operator, "model", f"{p}/models/{version}")
        shot(operator, "reviews", f"{p}/reviews")
        shot(operator, "events", f"{p}/events?actor=policy:retrain-on-decay")
        auditor = session("auditor")
        shot(auditor, "predictions", f"{p}/predictions")
        first = auditor.locator("table.predictions a").first.get_attribute("href")  # type: ignore[attr-defined]
        shot(auditor, "prediction", f"{base}{first}")
        browser.close()
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--project", type=Path, help="an existing demo project (no new demo)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    for var in ("COPML_HOME", "COPML_DB_URL", "MLFLOW_TRACKING_URI"):
        os.environ.pop(var, None)
    work = Path(tempfile.mkdtemp(prefix="copml-screens-"))
    try:
        root = args.project
        if root is None:
            root = work / "demo-churn"
            run_demo(root, args.months)
            open_reviews(root)
        keys_by_role = make_keys(root)
        port = free_port()
        server = start_ui(root, port)
        try:
            from copml.project import load_project

            slug = re.sub(r"[^a-z0-9-]+", "-", load_project(root).spec.project.lower())
            sizes = capture(f"http://127.0.0.1:{port}", slug, keys_by_role, args.out)
        finally:
            server.terminate()
            server.wait(timeout=10)
        for name, size in sorted(sizes.items()):
            print(f"{args.out / name}: {size / 1024:.0f} KB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
