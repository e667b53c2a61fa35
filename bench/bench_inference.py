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
   requests: the number of 429s and that every accepted request completed.

    .venv/bin/python bench/bench_inference.py [--requests 64] [--threads 2] [--sections 1,2,3]
        [--dtypes float32,bfloat16] [--scale 1.0]

``--scale`` shrinks prompt and output lengths (and the batch-1 run) for a quick look on a busy machine.
Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
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
    runs = {"ours": [], "transformers": []}
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sections", default="1,2,3")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink prompt/output lengths (quick runs)")
    parser.add_argument("--max-waiting", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = make_checkpoint(WORK / "opt-125m-random")
    sections = set(args.sections.split(","))
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
        if row["accepted_lost"] or row["other"]:
            missed.append("overload")

    print(json.dumps(report, indent=2))
    if missed:
        print("targets missed: " + ", ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
