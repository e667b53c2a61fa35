"""Start the engine as a real subprocess (``python -m inference_worker serve``, or under torchrun)
on 127.0.0.1 and wait for it to be healthy."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
from _iw_dist import free_port

REPO = Path(__file__).resolve().parents[2]
SECRET = "engine-test-secret"


class EngineProcess:
    def __init__(self, checkpoint: Path, *args: str, secret_file: Path | None = None, nproc: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "inference_worker", "serve", str(checkpoint), "--port", str(self.port)]
        if nproc > 1:
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
            command = [*torchrun, "--master-port", str(free_port()), "-m", "inference_worker", *command[3:]]
        if secret_file is not None:
            command += ["--secret-file", str(secret_file)]
        command += ["--threads", "1", "--log-level", "warning", *args]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"engine-{self.port}.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 90.0) -> EngineProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"engine exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"engine not healthy after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


def metric(text: str, name: str) -> float:
    """A sample's value from a Prometheus exposition (the first series with that name)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)
