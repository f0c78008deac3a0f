"""A real Dask cluster on this machine's loopback: ``dask scheduler`` and ``dask worker``
processes started as a cluster admin starts them (for the cluster tests and
``make cluster-demo``). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def dask_env() -> dict[str, str]:
    """The environment of the processes: the backend importable from this checkout, and
    workers that may start processes of their own (the engine's reader threads do not
    need it, but a local cluster inside a task would)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}


class LocalDask:
    """A scheduler and ``workers`` single-threaded workers; a context manager that stops them.

    ``logs``: a folder for the processes' output (None: discarded). ``dashboard``: serve the
    scheduler's and workers' dashboards on free ports. ``nanny``: without one a killed
    worker stays dead, so its tasks must run elsewhere (what the fault tests need).
    """

    def __init__(
        self,
        folder: Path,
        workers: int = 2,
        logs: Path | None = None,
        dashboard: bool = False,
        nanny: bool = False,
        timeout: float = 60.0,
    ) -> None:
        self.folder, self.logs, self.dashboard, self.nanny = folder, logs, dashboard, nanny
        self.file = folder / "scheduler.json"
        self.procs: list[subprocess.Popen[bytes]] = []
        board = ["--dashboard-address", "127.0.0.1:0"] if dashboard else ["--no-dashboard"]
        scheduler = self._start(
            ["scheduler", "--host", "127.0.0.1", "--port", "0", *board, "--scheduler-file", str(self.file)],
            "scheduler",
        )
        deadline = time.monotonic() + timeout
        while not self.file.exists():
            if time.monotonic() > deadline or scheduler.poll() is not None:
                self.stop()
                where = f"; see {self.logs / 'scheduler.log'}" if self.logs else ""
                raise RuntimeError(f"the dask scheduler did not start within {timeout:.0f} s{where}")
            time.sleep(0.2)
        self.address: str = json.loads(self.file.read_text())["address"]
        self.workers = [self.start_worker() for _ in range(workers)]

    def _start(self, args: list[str], name: str) -> subprocess.Popen[bytes]:
        out = (self.logs / f"{name}.log").open("w") if self.logs else subprocess.DEVNULL
        p = subprocess.Popen(
            [str(BIN / "dask"), *args],
            env=dask_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
        )
        self.procs.append(p)
        return p

    def start_worker(self) -> subprocess.Popen[bytes]:
        """One more worker process (one thread)."""
        board = ["--dashboard-address", "127.0.0.1:0"] if self.dashboard else ["--no-dashboard"]
        nanny = [] if self.nanny else ["--no-nanny"]
        args = ["worker", self.address, "--nthreads", "1", *nanny, "--host", "127.0.0.1", *board]
        return self._start(args, f"worker{len(self.procs)}")

    def wait_for_workers(self, n: int, timeout: float = 90.0) -> None:
        from distributed import Client

        client = Client(self.address, timeout=30)  # type: ignore[no-untyped-call]
        try:
            client.wait_for_workers(n, timeout=timeout)
        finally:
            client.close()  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        """Terminate every process (workers first), killing those that do not stop in 20 s."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self) -> LocalDask:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
