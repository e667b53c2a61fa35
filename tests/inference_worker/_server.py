"""Start a server as a real subprocess on 127.0.0.1 and wait for it to be healthy: the engine
(``python -m inference_worker serve``, or under torchrun) here, and the portal under uvicorn in
the gateway tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

import httpx2 as httpx

REPO = Path(__file__).resolve().parents[2]
SECRET = "engine-test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``command`` run from the repository root, its output in ``log``; ready once GET ``health``
    answers 200."""

    def __init__(self, command: list[str], *, env: dict[str, str], port: int, log: Path, health: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.health = health
        self._log_file = log.open("w")
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> Self:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.log.name} exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + self.health, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"not ready after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


class EngineProcess(ServerProcess):
    def __init__(
        self, checkpoint: Path, *args: str, secret_file: Path | None = None, nproc: int = 1, log: Path | None = None
    ) -> None:
        self.checkpoint_dir = checkpoint
        self.secret_file = secret_file
        port = free_port()
        command = [sys.executable, "-m", "inference_worker", "serve", str(checkpoint), "--port", str(port)]
        if nproc > 1:
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
            command = [*torchrun, "--master-port", str(free_port()), "-m", "inference_worker", *command[3:]]
        if secret_file is not None:
            command += ["--secret-file", str(secret_file)]
        command += ["--threads", "1", "--log-level", "warning", *args]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        log = log or Path(os.environ.get("TMPDIR", "/tmp")) / f"engine-{port}.log"
        super().__init__(command, env=env, port=port, log=log, health="/health")


def metric(text: str, name: str) -> float:
    """A sample's value from a Prometheus exposition (the first series with that name)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def schema_fuzz_failures(
    runs: list[tuple[Any, Any]], *, headers: dict[str, str], models: Any, examples: int
) -> list[str]:
    """Drive each (schemathesis operation, generation mode) with ``examples`` derandomized cases;
    one line per operation that answered with a server error. A body with a prompt gets its
    ``model`` drawn from ``models`` and at most 8 tokens to generate."""
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    failures: list[str] = []
    for operation, mode in runs:

        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(mode), model=models)
        def check(case: Any, model: str) -> None:
            if isinstance(case.body, dict) and "prompt" in case.body:
                case.body["model"] = model
                if isinstance(case.body.get("max_tokens"), int):
                    case.body["max_tokens"] = min(case.body["max_tokens"], 8)  # keep each generation short
            response = case.call(headers=headers, timeout=60)
            case.validate_response(response, checks=[not_a_server_error])

        try:
            check()
        except Exception as exc:  # report every failing operation, not just the first
            failures.append(f"{operation.label} ({mode.value}): {exc}")
    return failures
