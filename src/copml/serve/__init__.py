"""Real-time serving: ``copml serve`` answers predictions over HTTP and logs every one.

Several workers are several single-worker processes listening on one port with
``SO_REUSEPORT`` (the kernel spreads connections), each with one BLAS/OpenMP thread so
they do not fight over the cores, all writing to the same store and drawing on one rate
budget per key (shared memory created by the supervisor). A supervising process
starts them, restarts one that dies, and takes them with it when it dies: each worker
watches its parent's sentinel pipe, which the kernel closes whatever kills the parent.

``SO_REUSEPORT`` would also let a second server bind beside the first, so every server
first claims its address and port with an abstract Unix socket (Linux: per network namespace, like
ports, and released by the kernel when the last process holding it ends); the supervisor
hands the claim to its workers, so it lasts as long as any of them serves.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
from ctypes import c_byte
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from copml.errors import CopmlError

_log = logging.getLogger(__name__)


_WILDCARDS = ("", "0.0.0.0", "::")


def _claimed(port: int) -> list[str]:
    """The addresses that copml servers hold on ``port`` (abstract sockets are listed in
    /proc/net/unix with an ``@``)."""
    suffix = f"|{port}"
    try:
        names = Path("/proc/net/unix").read_text().split()
    except OSError:  # no /proc (a sandbox): the claim on the address itself still holds
        return []
    return [
        n[len("@copml-serve:") : -len(suffix)]
        for n in names
        if n.startswith("@copml-serve:") and n.endswith(suffix)
    ]


def _claim(host: str, port: int) -> socket.socket | None:
    """Refuse an address and port that another copml server holds; the claim lives as long
    as its holders.

    ``SO_REUSEPORT`` (several workers) would let a second server bind beside the first, so
    each server claims its address and port. Replicas on other addresses of one machine
    (127.0.0.2:8000, 127.0.0.3:8000) do not overlap; a wildcard address overlaps them all.
    """
    if not sys.platform.startswith("linux"):
        return None  # abstract sockets are Linux's; elsewhere the bind itself is the check
    address = "*" if host in _WILDCARDS else host
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0copml-serve:{address}|{port}")
    except OSError:
        claim.close()
        raise CopmlError(
            f"port {port} is already served by another copml serve on {host}; stop it "
            "first (or choose another --port)"
        ) from None
    # Checked after claiming, so of two servers starting at once, neither is missed.
    others = [a for a in _claimed(port) if a != address]  # one entry is ours
    if overlap := [a for a in others if "*" in (a, address)]:
        claim.close()
        raise CopmlError(
            f"port {port} is already served by another copml serve on {overlap[0]}; "
            "stop it first (or choose another --port)"
        )
    return claim


def _listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Accepted connections inherit TCP_NODELAY on Linux: without it a response written in
    # two segments waits for the client's delayed ACK (~40 ms per request).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CopmlError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    return sock


def _serve(
    root: str, host: str, port: int, options: dict[str, Any], reuse_port: bool, ready: Any = None
) -> None:
    """Load the champion, then listen and answer until a signal stops uvicorn."""
    # One BLAS/OpenMP thread, set before the numeric libraries load (OpenMP reads it once,
    # and a limit set at run time binds only the calling thread, not the scoring thread):
    # requests are scored in small groups, where threads cost more in start-up and
    # spinning than they save (measured: p50 36 -> 24 ms at concurrency 1).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import uvicorn

    from copml.project import load_project
    from copml.serve.app import create_app

    # The replica's name in its heartbeats: the address it serves (the machine's name for a
    # wildcard address, as in a container).
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    address = f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"
    app = create_app(load_project(root), replica=address, **options)
    # What start-up loaded (MLflow, pandas, the model) lives as long as the process: out
    # of the collector's sight, full collections stop pausing requests (p99 230 -> 50 ms).
    gc.collect()
    gc.freeze()
    sock = _listen(host, port, reuse_port)  # only a ready worker takes connections
    if ready is not None:
        ready.value = 1
    config = uvicorn.Config(app, log_level="warning", lifespan="on", loop="auto", http="auto")
    server = uvicorn.Server(config)
    server.run(sockets=[sock])


def _die_with_parent() -> None:
    """Stop (as on SIGTERM) as soon as the supervisor is gone, however it ended."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])  # readable once the parent's end of the pipe closes
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="copml-parent-watch", daemon=True).start()


def _worker(
    root: str,
    host: str,
    port: int,
    options: dict[str, Any],
    claim: socket.socket | None,
    ready: c_byte,
) -> None:
    """One supervised server process; ``claim`` is held (not used) so the port stays ours."""
    _die_with_parent()
    try:
        _serve(root, host, port, options, reuse_port=True, ready=ready)
    except CopmlError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)


def _ended(process: BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class _Supervisor:
    """Keeps ``workers`` server processes running until it is told to stop."""

    def __init__(self, args: tuple[Any, ...], workers: int) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._args = args
        self._stopping = False
        self._failed: str | None = None
        self._slots = [self._start(i) for i in range(workers)]

    def _start(self, index: int) -> tuple[BaseProcess, c_byte]:
        ready = self._context.Value("b", 0, lock=False)
        process = self._context.Process(
            target=_worker, args=(*self._args, ready), name=f"copml-serve-{index}", daemon=True
        )
        process.start()
        return process, ready

    def stop(self, *_: Any) -> None:
        self._stopping = True
        for process, _ready in self._slots:
            if process.exitcode is None:
                process.terminate()

    def run(self) -> None:
        """Wait on the workers: restart one that ends unasked; return when all have stopped."""
        while True:
            # One reading of the exit codes decides both what to restart and what to wait
            # on. Read twice, a worker that dies in between is neither restarted nor
            # waited on (its pipe closes a moment before it becomes a zombie).
            codes = [process.exitcode for process, _ in self._slots]
            if self._stopping and all(code is not None for code in codes):
                break
            for index, code in enumerate(codes):
                if code is None or self._stopping:
                    continue
                process, ready = self._slots[index]
                if not ready.value and code > 0:
                    # it failed before serving (no champion, port taken): so would a restart
                    self._failed = f"worker {index} (pid {process.pid}) failed to start"
                    _log.error("copml serve: %s (%s); stopping", self._failed, _ended(process))
                    self.stop()
                    break
                _log.warning(
                    "copml serve: worker %d (pid %d) ended (%s); restarting it",
                    index,
                    process.pid,
                    _ended(process),
                )
                self._slots[index] = self._start(index)
                codes[index] = None
            wait([self._slots[i][0].sentinel for i, code in enumerate(codes) if code is None])
        if self._failed:
            raise CopmlError(f"{self._failed}: see the lines above")


def run(root: Path, host: str, port: int, *, workers: int = 1, **options: Any) -> None:
    """Serve until interrupted; with ``workers > 1``, supervise that many processes."""
    claim = _claim(host, port)
    if workers <= 1:
        _serve(str(root), host, port, options, reuse_port=False)
        return
    from copml.serve.limits import SharedBuckets

    # One rate budget per key for all the workers (inherited shared memory, not the store);
    # a restarted worker gets the same budget.
    options = {**options, "rate_buckets": SharedBuckets()}
    supervisor = _Supervisor((str(root), host, port, options, claim), workers)
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, supervisor.stop)
    supervisor.run()
