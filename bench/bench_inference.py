"""The inference engine against transformers' ``generate`` on the same random weights, in one run.

Model: a random OPT-125M-shape checkpoint (transformers layout + a word-level tokenizer), written
once under ``var/bench/inference``. Sections:

1. batch-1 decode tokens/s, float32 and bfloat16, ours (the engine, in-process) and transformers'
   ``generate``; also the memory-bandwidth limit (measured here: streaming read of a large tensor)
   divided by the weight bytes, and the fraction of it each reaches. Targets: >= 1.5x
   transformers, >= 70% of the bandwidth limit.
2. N requests (default 64) arriving together, prompt lengths uniform in [16, 512], output lengths
   in [16, 256]: generated tokens/s, p50/p99 latency, p50 time to first token; transformers with
   static batches of 8, left-padded, as the peer. Targets: >= 3x its throughput, lower p99.
3. Overload over HTTP: an engine subprocess with ``--max-waiting W`` receives 4W concurrent
   requests: the number of 429s (there must be some) and that every accepted request completed
   (target: none lost).
4. ``gateway``: the same N requests through the portal's ``/v1/completions``. One engine subprocess
   (``python -m inference_worker serve`` with a secret file) and the portal under uvicorn
   (``portal.asgi``) on a throwaway database (SQLite under ``var/bench/gateway``, or with
   ``--portal-db postgres`` a database created for the run on DATABASE_URL's server and dropped
   after; counters in Redis when REDIS_URL is set), seeded through the services: a gated release, a
   researcher with an approved application (active grant) and an API key, a ready checkpoint row,
   and the engine registered with ``manage.py deployment_add``. The N requests go all at once, at
   the engine directly and through the portal, alternately (D P, P D, ...: ``--gateway-rounds``
   pairs); throughput is generated tokens over wall time per path. Per-request gateway overhead:
   ``--overhead-requests`` sequential pairs of a 16-token prompt with ``max_tokens=1`` (direct and
   through the portal, alternating which goes first), portal latency minus direct latency, p50/p99.
   Every portal request must leave one usage row. Targets: >= 0.9x the engine direct, overhead p50
   < 5 ms.

    .venv/bin/python bench/bench_inference.py [--requests 64] [--threads 2] [--sections 1,2,3,gateway]
        [--dtypes float32,bfloat16] [--scale 1.0] [--gateway-rounds 2] [--overhead-requests 100]
        [--portal-db sqlite|postgres]

``--scale`` shrinks prompt and output lengths (and the batch-1 run) for a quick look on a busy machine.
Section 4 is also ``--sections gateway``; the default runs 1, 2 and 3. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inference_worker import Engine, EngineConfig, SamplingParams, inspect_checkpoint, load_model  # noqa: E402

WORK = REPO / "var" / "bench" / "inference"
VOCAB = 50272


def make_checkpoint(path: Path) -> Path:
    """A random OPT-125M-shape checkpoint with a word-level tokenizer ("w0".."w50271")."""
    if (path / "model.safetensors").exists() and (path / "tokenizer.json").exists():
        return path
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    path.mkdir(parents=True, exist_ok=True)
    config = transformers.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=768,
        num_hidden_layers=12,
        ffn_dim=3072,
        num_attention_heads=12,
        max_position_embeddings=2048,
        word_embed_proj_dim=768,
    )
    torch.manual_seed(0)
    transformers.OPTForCausalLM(config).save_pretrained(path)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3} | {f"w{i}": i for i in range(4, VOCAB)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path / "tokenizer.json"))
    return path


def hf_model(path: Path, dtype: torch.dtype) -> Any:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    model.generation_config.eos_token_id = None  # fixed lengths, as ignore_eos on our side
    return model


def our_engine(path: Path, dtype: torch.dtype, **config: Any) -> Engine:
    info = inspect_checkpoint(path, tp_size=1)
    return Engine(load_model(info, dtype=str(dtype).removeprefix("torch.")), info.tokenizer, EngineConfig(**config))


def bandwidth_gbs() -> float:
    """Streaming read bandwidth (GB/s): sum over a 1 GiB tensor, best of 5."""
    x = torch.ones(256 * 1024 * 1024, dtype=torch.float32)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return best


# --------------------------------------------------------------------------------------------
# 1. batch-1 decode
# --------------------------------------------------------------------------------------------


def batch1(path: Path, dtype: torch.dtype, new_tokens: int, bandwidth: float) -> dict[str, float]:
    prompt = list(range(10, 26))
    engine = our_engine(path, dtype, max_batch_tokens=512)
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    weight_bytes -= engine.model.pos_embed.weight.numel() * engine.model.pos_embed.weight.element_size()  # read 1 row
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)

    def ours() -> float:
        engine.add("r", prompt, params)
        engine.step()  # prefill + first token
        start = time.perf_counter()
        while engine.has_work:
            engine.step()
        return (new_tokens - 1) / (time.perf_counter() - start)

    hf = hf_model(path, dtype)
    ids = torch.tensor([prompt])

    def theirs() -> float:
        with torch.no_grad():
            hf.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=1)
            start = time.perf_counter()
            hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=1)
            elapsed = time.perf_counter() - start
        first = time.perf_counter()
        with torch.no_grad():
            hf.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=1)
        prefill = time.perf_counter() - first
        return (new_tokens - 1) / max(elapsed - prefill, 1e-9)

    ours()  # warm-up
    theirs()
    runs: dict[str, list[float]] = {"ours": [], "transformers": []}
    for rep in range(3):  # interleaved, so both see the same machine load
        for name, fn in (
            (("ours", ours), ("transformers", theirs)) if rep % 2 == 0 else (("transformers", theirs), ("ours", ours))
        ):
            runs[name].append(fn())
    limit = bandwidth * 1e9 / weight_bytes
    result = {name: statistics.median(v) for name, v in runs.items()}
    return {
        "ours_tok_s": result["ours"],
        "transformers_tok_s": result["transformers"],
        "ratio": result["ours"] / result["transformers"],
        "bandwidth_limit_tok_s": limit,
        "fraction_of_limit": result["ours"] / limit,
        "weight_mb": weight_bytes / 1e6,
    }


# --------------------------------------------------------------------------------------------
# 2. many requests arriving together
# --------------------------------------------------------------------------------------------


def workload(count: int, scale: float, seed: int = 0) -> list[tuple[list[int], int]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        prompt_len = int(torch.randint(16, 513, (), generator=gen)) * scale
        out_len = int(torch.randint(16, 257, (), generator=gen)) * scale
        prompt = torch.randint(4, VOCAB, (max(4, int(prompt_len)),), generator=gen).tolist()
        out.append((prompt, max(2, int(out_len))))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def many_ours(path: Path, requests: list[tuple[list[int], int]], dtype: torch.dtype) -> dict[str, float]:
    engine = our_engine(path, dtype, max_batch_tokens=512, max_running=256, kv_memory=4 << 30)
    start = time.perf_counter()
    for i, (prompt, out_len) in enumerate(requests):
        engine.add(str(i), prompt, SamplingParams(max_tokens=out_len, temperature=0.0, ignore_eos=True))
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    while engine.has_work:
        for report in engine.step():
            now = time.perf_counter() - start
            if any(s.token_ids for s in report.samples):
                first.setdefault(report.request_id, now)
            if report.finished:
                done[report.request_id] = now
    elapsed = time.perf_counter() - start
    generated = sum(out for _, out in requests)
    latencies = list(done.values())
    return {
        "tok_s": generated / elapsed,
        "seconds": elapsed,
        "p50_latency": percentile(latencies, 0.5),
        "p99_latency": percentile(latencies, 0.99),
        "p50_ttft": percentile(list(first.values()), 0.5),
        "preemptions": engine.scheduler.preemptions,
    }


def many_transformers(path: Path, requests: list[tuple[list[int], int]], dtype: torch.dtype) -> dict[str, float]:
    hf = hf_model(path, dtype)
    start = time.perf_counter()
    latencies: list[float] = []
    for b in range(0, len(requests), 8):
        batch = requests[b : b + 8]
        width = max(len(p) for p, _ in batch)
        ids = torch.ones(len(batch), width, dtype=torch.long)  # left padding with <pad>=1
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, (prompt, _) in enumerate(batch):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        new = max(out for _, out in batch)
        with torch.no_grad():
            hf.generate(
                ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=1
            )
        latencies += [time.perf_counter() - start] * len(batch)
    elapsed = time.perf_counter() - start
    generated = sum(out for _, out in requests)  # the tokens asked for; padding rows' extra work is its cost
    return {
        "tok_s": generated / elapsed,
        "seconds": elapsed,
        "p50_latency": percentile(latencies, 0.5),
        "p99_latency": percentile(latencies, 0.99),
    }


# --------------------------------------------------------------------------------------------
# 3. overload over HTTP
# --------------------------------------------------------------------------------------------


def overload(path: Path, max_waiting: int, threads: int) -> dict[str, Any]:
    import socket

    import httpx2 as httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "inference_worker", "serve", str(path), "--port", str(port), "--insecure-no-secret",
        "--max-waiting", str(max_waiting), "--max-running", "8", "--threads", str(threads), "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        body = {"model": path.name, "prompt": list(range(10, 42)), "max_tokens": 16, "ignore_eos": True}
        results: list[httpx.Response] = []
        lock = threading.Lock()

        def send() -> None:
            response = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
            with lock:
                results.append(response)

        workers = [threading.Thread(target=send) for _ in range(4 * max_waiting)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        process.terminate()
        process.wait(timeout=30)
    accepted = [r for r in results if r.status_code == 200]
    complete = [r for r in accepted if r.json()["usage"]["completion_tokens"] == 16]
    return {
        "sent": len(results),
        "accepted": len(accepted),
        "rejected_429": sum(r.status_code == 429 for r in results),
        "other": sum(r.status_code not in (200, 429) for r in results),
        "accepted_lost": len(accepted) - len(complete),
    }


# --------------------------------------------------------------------------------------------
# 4. the same requests through the portal
# --------------------------------------------------------------------------------------------

PORTAL_RELEASE = "opt-175b"  # the release the seeded researcher holds a grant to


def seed_portal(root: Path) -> None:
    """Runs in a child process configured for the throwaway portal (``--seed-portal``): the rows a
    grant holder's API call needs, made through the services (and the tests' factories, which call
    them). Prints the raw API key and the checkpoint id as JSON."""
    import django

    django.setup()
    from access.services.api_keys import api_key_create
    from tests import factories
    from tests.artifacts.conftest import grant_access, make_checkpoint

    release = factories.make_release(slug=PORTAL_RELEASE, name="OPT-175B", gated=True)
    reviewer = factories.make_reviewer("reviewer@bench.local", full_name="Bench Reviewer")
    user = factories.make_user("researcher@bench.local", full_name="Bench Researcher", affiliation="Bench University")
    grant_access(user, release, reviewer)
    # The row the deployment points at; the engine serves the bench checkpoint (the gateway never reads
    # a checkpoint's files, it only names which one a deployment serves).
    checkpoint = make_checkpoint(release, root / "checkpoint-source")
    _, raw = api_key_create(user=user, name="bench")
    print(json.dumps({"api_key": raw, "checkpoint_id": checkpoint.pk}))


def portal_usage() -> None:
    """Child process (``--portal-usage``): the usage rows the portal wrote, per status, as JSON."""
    import django

    django.setup()
    from django.db.models import Count, Sum

    from gateway.models import UsageRecord

    rows = UsageRecord.objects.values("status").annotate(n=Count("id"), tokens=Sum("completion_tokens"))
    print(json.dumps({row["status"]: [row["n"], row["tokens"]] for row in rows}))


class PortalDatabase:
    """The throwaway database: a fresh SQLite file under ``root``, or a PostgreSQL database created
    on DATABASE_URL's server for this run and dropped afterwards."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.url = ""
        self.name = f"bench_gateway_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        if kind == "sqlite":
            for name in ("portal.sqlite3", "portal.sqlite3-wal", "portal.sqlite3-shm"):
                (root / name).unlink(missing_ok=True)
            return
        from urllib.parse import urlsplit, urlunsplit

        import psycopg

        base = os.environ.get("DATABASE_URL", "")
        if not base.startswith("postgres"):
            raise SystemExit("--portal-db postgres needs DATABASE_URL (source var/services.env)")
        self.admin = base
        with psycopg.connect(base, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.name}"')
        self.url = urlunsplit(urlsplit(base)._replace(path="/" + self.name))

    def drop(self) -> None:
        if self.kind != "postgres":
            return
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def portal_env(root: Path, port: int, database_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "DJANGO_SETTINGS_MODULE"}}
    env.update(
        PYTHONPATH=str(REPO),
        DJANGO_SETTINGS_MODULE="portal.settings",
        PORTAL_ENV="development",
        DEBUG="0",
        PORTAL_VAR_DIR=str(root),
        SITE_URL=f"http://127.0.0.1:{port}",
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        ARTIFACTS_STORAGE="local",
        ARTIFACTS_IMPORT_ROOTS="",
        LOG_LEVEL="WARNING",
        # Quotas out of the way: this measures the gateway's work, not its refusals.
        GATEWAY_TOKENS_PER_DAY=str(10**9),
        GATEWAY_REQUESTS_PER_MINUTE="1000000",
        GATEWAY_MAX_CONCURRENT="4096",
        GATEWAY_REDIS_PREFIX=f"bench-gw:{uuid.uuid4().hex[:10]}:",
    )
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


async def fire(url: str, headers: dict[str, str], bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """All bodies at once; per-request latency (to the last byte), wall time, and what came back."""
    import httpx2 as httpx

    limits = httpx.Limits(max_connections=len(bodies) + 8, max_keepalive_connections=len(bodies) + 8)
    async with httpx.AsyncClient(timeout=1800, limits=limits, trust_env=False) as client:

        async def one(body: dict[str, Any]) -> tuple[float, httpx.Response]:
            start = time.perf_counter()
            response = await client.post(url, json=body, headers=headers)
            return time.perf_counter() - start, response

        start = time.perf_counter()
        results = await asyncio.gather(*(one(body) for body in bodies))
        elapsed = time.perf_counter() - start
    complete = [
        r.status_code == 200 and r.json()["usage"]["completion_tokens"] == body["max_tokens"]
        for (_, r), body in zip(results, bodies, strict=True)
    ]
    return {
        "seconds": elapsed,
        "latencies": [latency for latency, _ in results],
        "tokens": sum(body["max_tokens"] for body, ok in zip(bodies, complete, strict=True) if ok),
        "failed": [f"{r.status_code} {r.text[:160]}" for (_, r), ok in zip(results, complete, strict=True) if not ok],
    }


def sequential_overhead(
    direct: tuple[str, dict[str, str], str], portal: tuple[str, dict[str, str], str], pairs: int
) -> dict[str, Any]:
    """Pairs of requests sent one at a time, direct and through the portal (alternating which goes
    first); the per-pair latency difference is what the gateway adds. Two kinds: a one-token
    completion of a 4-token prompt (the target), and one the engine refuses before any forward
    (``max_tokens=0`` without ``echo``: a 400 passed through), whose difference is the gateway's own
    path (key, grant, quota, counters, proxy, usage row) with almost no engine time to blur it."""
    import httpx2 as httpx

    kinds = {"one_token": ({"max_tokens": 1, "temperature": 0}, 200), "no_compute": ({"max_tokens": 0}, 400)}
    times: dict[tuple[str, str], list[float]] = {(kind, name): [] for kind in kinds for name in ("direct", "portal")}
    targets = {"direct": direct, "portal": portal}
    with httpx.Client(timeout=120, trust_env=False) as client:

        def send(kind: str, name: str) -> float:
            url, headers, model = targets[name]
            fields, expected = kinds[kind]
            body = {"model": model, "prompt": [10, 11, 12, 13], **fields}
            start = time.perf_counter()
            response = client.post(url, json=body, headers=headers)
            latency = time.perf_counter() - start
            if response.status_code != expected:
                raise RuntimeError(f"{kind} {name}: {response.status_code} {response.text[:300]}")
            return latency

        for _ in range(5):  # warm-up: connections, first-request paths
            for kind in kinds:
                send(kind, "direct"), send(kind, "portal")
        for pair in range(pairs):
            for kind in kinds:
                for name in ("direct", "portal") if pair % 2 == 0 else ("portal", "direct"):
                    times[kind, name].append(send(kind, name))
    out: dict[str, Any] = {"pairs": pairs}
    for kind in kinds:
        diffs = [p - d for p, d in zip(times[kind, "portal"], times[kind, "direct"], strict=True)]
        out[kind] = {
            "direct_p50_ms": 1000 * statistics.median(times[kind, "direct"]),
            "portal_p50_ms": 1000 * statistics.median(times[kind, "portal"]),
            "overhead_p50_ms": 1000 * statistics.median(diffs),
            "overhead_p99_ms": 1000 * percentile(diffs, 0.99),
        }
    return out


@contextlib.contextmanager
def gateway_stack(path: Path, threads: int, database: str) -> Iterator[dict[str, Any]]:
    """The engine and the portal in front of it, seeded and registered; yields the two ways in,
    each as (URL of /v1/completions, headers, model), and the portal's environment."""
    import secrets

    from tests.inference_worker._server import ServerProcess, free_port

    root = REPO / "var" / "bench" / "gateway"
    root.mkdir(parents=True, exist_ok=True)
    secret_file = root / "engine.secret"
    secret_file.write_text(secrets.token_urlsafe(24) + "\n")
    secret_file.chmod(0o600)
    engine_port, portal_port = free_port(), free_port()
    engine_url, portal_url = f"http://127.0.0.1:{engine_port}", f"http://127.0.0.1:{portal_port}"
    servers: list[ServerProcess] = []

    db = PortalDatabase(database, root)
    env = portal_env(root, portal_port, db.url)
    try:
        setup = time.perf_counter()
        # The engine of section 2, as a service.
        engine_command = [
            sys.executable, "-m", "inference_worker", "serve", str(path), "--port", str(engine_port),
            "--secret-file", str(secret_file), "--threads", str(threads), "--max-batch-tokens", "512",
            "--max-running", "256", "--max-waiting", "1024", "--kv-memory", "4GiB", "--log-level", "warning",
        ]  # fmt: skip
        engine_env = {**os.environ, "PYTHONPATH": str(REPO)}
        engine = ServerProcess(
            engine_command, env=engine_env, port=engine_port, log=root / "engine.log", health="/health"
        )
        servers.append(engine)
        manage = [sys.executable, "manage.py"]
        subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], cwd=REPO, env=env, check=True)
        seeded = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--seed-portal", str(root)],
            cwd=REPO, env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        seed = json.loads(seeded.stdout.strip().splitlines()[-1])
        portal = ServerProcess(
            [sys.executable, "-m", "uvicorn", "portal.asgi:application", "--host", "127.0.0.1", "--port",
             str(portal_port), "--log-level", "warning", "--no-access-log"],
            env=env, port=portal_port, log=root / "portal.log", health="/healthz",
        )  # fmt: skip
        servers.append(portal)
        engine.wait_ready(timeout=300)
        subprocess.run(
            [*manage, "deployment_add", PORTAL_RELEASE, engine_url, "--checkpoint", str(seed["checkpoint_id"]),
             "--secret-file", str(secret_file)],
            cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        portal.wait_ready(timeout=300)
        print(f"gateway: engine and portal ready in {time.perf_counter() - setup:.0f}s", flush=True)
        yield {
            "direct": (
                f"{engine_url}/v1/completions",
                {"Authorization": f"Bearer {secret_file.read_text().strip()}"},
                path.name,
            ),
            "portal": (f"{portal_url}/v1/completions", {"Authorization": f"Bearer {seed['api_key']}"}, PORTAL_RELEASE),
            "portal_url": portal_url,
            "env": env,
        }
    finally:
        for server in reversed(servers):
            server.stop()
        db.drop()
        if env.get("REDIS_URL"):
            import redis

            client = redis.Redis.from_url(env["REDIS_URL"])
            keys = list(client.scan_iter(env["GATEWAY_REDIS_PREFIX"] + "*"))
            if keys:
                client.delete(*keys)
            client.close()


def through_portal(
    path: Path,
    requests: list[tuple[list[int], int]],
    threads: int,
    rounds: int,
    overhead_pairs: int,
    database: str,
) -> dict[str, Any]:
    with gateway_stack(path, threads, database) as stack:
        direct, via, env = stack["direct"], stack["portal"], stack["env"]

        def bodies(model: str) -> list[dict[str, Any]]:
            return [
                {"model": model, "prompt": prompt, "max_tokens": out, "temperature": 0, "ignore_eos": True}
                for prompt, out in requests
            ]

        overhead = sequential_overhead(direct, via, overhead_pairs)  # also warms both paths up
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "portal": []}
        targets = {"direct": direct, "portal": via}
        for round_ in range(rounds):
            for name in ("direct", "portal") if round_ % 2 == 0 else ("portal", "direct"):
                url, headers, model = targets[name]
                run = asyncio.run(fire(url, headers, bodies(model)))
                runs[name].append(run)
                print(
                    f"  round {round_ + 1} {name}: {run['tokens'] / run['seconds']:.1f} tok/s in {run['seconds']:.1f}s"
                    + (f", FAILED {run['failed']}" if run["failed"] else ""),
                    flush=True,
                )
        usage = json.loads(
            subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--portal-usage"],
                cwd=REPO, env=env, check=True, capture_output=True, text=True,
            ).stdout.strip().splitlines()[-1]
        )  # fmt: skip

    def totals(name: str) -> dict[str, float]:
        latencies = [latency for run in runs[name] for latency in run["latencies"]]
        seconds = sum(run["seconds"] for run in runs[name])
        return {
            "tok_s": sum(run["tokens"] for run in runs[name]) / seconds,
            "seconds": seconds,
            "p50_latency": percentile(latencies, 0.5),
            "p99_latency": percentile(latencies, 0.99),
            "failed": sum(len(run["failed"]) for run in runs[name]),
        }

    ours, theirs = totals("portal"), totals("direct")
    portal_requests = rounds * len(requests) + 2 * (overhead_pairs + 5)
    return {
        "database": database,
        "counters": "redis" if env.get("REDIS_URL") else "local",
        "direct": theirs,
        "portal": ours,
        "ratio": ours["tok_s"] / theirs["tok_s"],
        "overhead": overhead,
        "portal_requests": portal_requests,
        "usage_rows": usage,
        "usage_rows_total": sum(n for n, _ in usage.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sections", default="1,2,3")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink prompt/output lengths (quick runs)")
    parser.add_argument("--max-waiting", type=int, default=16)
    parser.add_argument("--gateway-rounds", type=int, default=2, help="direct/portal pairs of the N-request run")
    parser.add_argument("--overhead-requests", type=int, default=100, help="sequential one-token request pairs")
    parser.add_argument("--portal-db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--seed-portal", type=Path, help=argparse.SUPPRESS)  # child process of section 4
    parser.add_argument("--portal-usage", action="store_true", help=argparse.SUPPRESS)  # idem
    args = parser.parse_args()
    if args.seed_portal:
        seed_portal(args.seed_portal)
        return 0
    if args.portal_usage:
        portal_usage()
        return 0
    torch.set_num_threads(args.threads)
    path = make_checkpoint(WORK / "opt-125m-random")
    sections = set(args.sections.replace("gateway", "4").split(","))
    report: dict[str, Any] = {"threads": args.threads, "scale": args.scale}
    missed: list[str] = []

    if "1" in sections:
        bandwidth = bandwidth_gbs()
        report["bandwidth_gb_s"] = bandwidth
        for name in args.dtypes.split(","):
            dtype = getattr(torch, name)
            row = batch1(path, dtype, max(8, int(64 * args.scale)), bandwidth)
            report[f"batch1_{name}"] = row
            print(
                f"batch-1 decode {name}: ours {row['ours_tok_s']:.1f} tok/s, transformers {row['transformers_tok_s']:.1f} "
                f"tok/s, ratio {row['ratio']:.2f}x (target 1.5x); bandwidth limit {row['bandwidth_limit_tok_s']:.1f} "
                f"tok/s ({bandwidth:.1f} GB/s / {row['weight_mb']:.0f} MB), ours at {100 * row['fraction_of_limit']:.0f}% "
                f"(target 70%)",
                flush=True,
            )
            if row["ratio"] < 1.5:
                missed.append(f"batch-1 {name} ratio")
            if row["fraction_of_limit"] < 0.7:
                missed.append(f"batch-1 {name} bandwidth fraction")

    if "2" in sections:
        requests = workload(args.requests, args.scale)
        ours = many_ours(path, requests, torch.float32)
        theirs = many_transformers(path, requests, torch.float32)
        report["many"] = {"ours": ours, "transformers": theirs, "ratio": ours["tok_s"] / theirs["tok_s"]}
        print(
            f"{args.requests} requests together (float32): ours {ours['tok_s']:.1f} tok/s in {ours['seconds']:.1f}s, "
            f"p50/p99 latency {ours['p50_latency']:.1f}/{ours['p99_latency']:.1f}s, p50 TTFT {ours['p50_ttft']:.2f}s, "
            f"{ours['preemptions']} preemptions; transformers (static batches of 8) {theirs['tok_s']:.1f} tok/s, "
            f"p50/p99 {theirs['p50_latency']:.1f}/{theirs['p99_latency']:.1f}s; ratio {ours['tok_s'] / theirs['tok_s']:.2f}x "
            f"(target 3x), p99 {'lower' if ours['p99_latency'] < theirs['p99_latency'] else 'NOT lower'}",
            flush=True,
        )
        if ours["tok_s"] < 3 * theirs["tok_s"]:
            missed.append("many-requests throughput ratio")
        if ours["p99_latency"] >= theirs["p99_latency"]:
            missed.append("many-requests p99")

    if "3" in sections:
        row = overload(path, args.max_waiting, args.threads)
        report["overload"] = row
        print(
            f"overload: {row['sent']} requests at 4x the queue bound ({args.max_waiting}): {row['accepted']} accepted, "
            f"{row['rejected_429']} got 429, {row['other']} other, {row['accepted_lost']} accepted but lost (target 0)",
            flush=True,
        )
        if row["accepted_lost"] or row["other"] or not row["rejected_429"]:
            missed.append("overload")  # also when nothing got a 429: then it was no overload

    if "4" in sections:
        requests = workload(args.requests, args.scale)
        gw = through_portal(path, requests, args.threads, args.gateway_rounds, args.overhead_requests, args.portal_db)
        report["gateway"] = gw
        direct, portal, overhead = gw["direct"], gw["portal"], gw["overhead"]
        print(
            f"gateway ({args.requests} requests at once, {args.gateway_rounds} rounds alternating, "
            f"{gw['database']} database, {gw['counters']} counters): engine direct {direct['tok_s']:.1f} tok/s, "
            f"through the portal {portal['tok_s']:.1f} tok/s, ratio {gw['ratio']:.3f}x (target 0.9x); "
            f"p50/p99 latency direct {direct['p50_latency']:.2f}/{direct['p99_latency']:.2f}s, portal "
            f"{portal['p50_latency']:.2f}/{portal['p99_latency']:.2f}s; failed direct {direct['failed']}, portal "
            f"{portal['failed']}",
            flush=True,
        )
        one, floor = overhead["one_token"], overhead["no_compute"]
        print(
            f"gateway overhead per request ({overhead['pairs']} sequential pairs): 4-token prompt, max_tokens=1: "
            f"p50 {one['overhead_p50_ms']:.2f} ms, p99 {one['overhead_p99_ms']:.2f} ms (target p50 < 5 ms; latency "
            f"p50 direct {one['direct_p50_ms']:.1f} ms, portal {one['portal_p50_ms']:.1f} ms); refused by the engine "
            f"before any forward (max_tokens=0): p50 {floor['overhead_p50_ms']:.2f} ms, p99 "
            f"{floor['overhead_p99_ms']:.2f} ms (direct {floor['direct_p50_ms']:.1f} ms, portal "
            f"{floor['portal_p50_ms']:.1f} ms); usage rows {gw['usage_rows_total']} for {gw['portal_requests']} "
            f"portal requests ({', '.join(f'{k} {n}' for k, (n, _) in gw['usage_rows'].items())})",
            flush=True,
        )
        if gw["ratio"] < 0.9:
            missed.append("gateway throughput ratio")
        if one["overhead_p50_ms"] >= 5:
            missed.append("gateway overhead p50")
        if direct["failed"] or portal["failed"] or gw["usage_rows_total"] != gw["portal_requests"]:
            missed.append("gateway requests failed or unrecorded")

    print(json.dumps(report, indent=2))
    if missed:
        print("targets missed: " + ", ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
