"""The engine as a service: backpressure (429 past the waiting bound, nothing accepted is lost),
/health while loading, the CLI's refusals at start, tp=2 under torchrun, and schema fuzzing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
from _engine_helpers import hf_greedy, make_engine
from _server import REPO, SECRET, EngineProcess, free_port, metric, schema_fuzz_failures
from _tiny import hf_model

from inference_worker.async_engine import AsyncEngine, QueueFull, Submission
from inference_worker.metrics import Metrics
from inference_worker.sampling import SamplingParams
from inference_worker.server import ServerState, build_app
from inference_worker.tokenizer import Tokenizer

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture(scope="module")
def narrow_server(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """One sequence runs at a time and three requests may wait: easy to overflow."""
    secret_file = tmp_path_factory.mktemp("secret") / "s"
    secret_file.write_text(SECRET)
    engine = EngineProcess(
        checkpoints["opt"], "--max-running", "1", "--max-waiting", "3", "--served-model-name", "opt",
        secret_file=secret_file,
    )  # fmt: skip
    try:
        yield engine.wait_ready()
    finally:
        engine.stop()


def test_flood_past_the_queue_bound_gets_429_and_every_accepted_request_completes(narrow_server: EngineProcess) -> None:
    body = {"model": "opt", "prompt": "the quick brown fox", "max_tokens": 100, "ignore_eos": True, "temperature": 0}

    def send(_: int) -> httpx.Response:
        return httpx.post(f"{narrow_server.url}/v1/completions", json=body, headers=AUTH, timeout=120)

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(send, range(16)))
    accepted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(accepted) + len(refused) == 16, [r.status_code for r in responses]
    assert refused, "16 at once against 1 running + 3 waiting must overflow"
    assert len(accepted) >= 4
    for response in refused:
        assert int(response.headers["Retry-After"]) >= 1
        assert response.json()["error"]["type"] == "rate_limit_error"
    texts = {r.json()["choices"][0]["text"] for r in accepted}
    for response in accepted:
        assert response.json()["usage"]["completion_tokens"] == 100
        assert response.json()["choices"][0]["finish_reason"] == "length"
    assert len(texts) == 1, "greedy: the same text whatever the queueing"
    scrape = httpx.get(f"{narrow_server.url}/metrics", headers=AUTH).text
    assert metric(scrape, "inference_requests_rejected_total") == len(refused)


def test_the_waiting_bound_counts_prompt_tokens_too(checkpoints: dict[str, Path]) -> None:
    engine = AsyncEngine(make_engine(checkpoints["opt"]), max_waiting=10, max_waiting_tokens=20)  # thread not started

    async def submit() -> None:
        params = SamplingParams(max_tokens=1)
        engine.submit([Submission("a", list(range(3, 33)), params)])  # 30 tokens: an empty queue takes it
        with pytest.raises(QueueFull, match="30 prompt tokens"):
            engine.submit([Submission("b", [5], params)])
        engine.abort(["a"])
        engine.submit([Submission("c", list(range(3, 13)), params), Submission("d", list(range(3, 13)), params)])
        with pytest.raises(QueueFull):
            engine.submit([Submission("e", [5], params)])
        assert engine.waiting == (2, 20)

    asyncio.run(submit())


def test_health_is_503_while_loading(checkpoints: dict[str, Path]) -> None:
    import uvicorn

    tokenizer = Tokenizer.from_dir(checkpoints["opt"])
    state = ServerState("opt", tokenizer, 128, 128, Metrics("opt"), secret=SECRET)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                response = httpx.get(f"{url}/health")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert response.status_code == 503 and response.json()["status"] == "loading"
        response = httpx.post(f"{url}/v1/completions", json={"model": "opt", "prompt": "hi"}, headers=AUTH)
        assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inference_worker", "serve", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def test_cli_refuses_to_start_without_tokenizer_or_secret(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((checkpoints["opt"] / name).read_bytes())
    failed = _run_cli(str(bare), "--insecure-no-secret", "--port", str(free_port()))
    assert failed.returncode == 2 and "bare/tokenizer.json not found" in failed.stderr
    failed = _run_cli(str(checkpoints["opt"]), "--port", str(free_port()))
    assert failed.returncode == 2 and "--secret-file" in failed.stderr


def test_torchrun_tp2_serves_the_same_greedy_tokens(checkpoints: dict[str, Path]) -> None:
    engine = EngineProcess(checkpoints["llama"], "--insecure-no-secret", "--served-model-name", "llama", nproc=2)
    try:
        engine.wait_ready()
        client = openai.OpenAI(base_url=f"{engine.url}/v1", api_key="unused", max_retries=0)
        prompts = [[5, 6, 7, 8, 9], [10, 11, 12], list(range(20, 50))]
        done = client.completions.create(
            model="llama", prompt=prompts, max_tokens=10, temperature=0, extra_body={"return_token_ids": True}
        )
        hf = hf_model("llama")
        for choice, prompt in zip(done.choices, prompts, strict=True):
            assert choice.model_extra["token_ids"] == hf_greedy(hf, prompt, 10)
        streamed = list(
            client.completions.create(model="llama", prompt="hello world", max_tokens=6, stream=True, seed=3)
        )
        assert streamed[-1].choices[0].finish_reason is not None
    finally:
        engine.stop()


def test_fuzzing_the_openapi_schema_never_gives_a_500(narrow_server: EngineProcess) -> None:
    import schemathesis
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{narrow_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/tokenize", "/v1/models", "/health", "/metrics"}
    # GET routes take no input: there is nothing negative to generate for them.
    runs = [
        (op, m) for op in operations for m in GenerationMode if op.method.upper() == "POST" or m.value == "positive"
    ]
    # The served model: past the 404, into tokenizing, validation and generation.
    failures = schema_fuzz_failures(runs, headers=AUTH, models=st.just("opt"), examples=30)
    assert not failures, "\n\n".join(failures)
    scrape = httpx.get(f"{narrow_server.url}/metrics", headers=AUTH).text
    assert metric(scrape, "inference_generation_tokens_total") > 0, "the fuzzer must reach generation too"
