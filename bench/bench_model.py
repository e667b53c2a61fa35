"""Throughput of our decoder against transformers on the same random weights, in one run.

CPU (default): OPT-125M shape, float32, B=2, T=128; our model at tp=1 and tp=2 (two gloo
processes) and transformers' OPTForCausalLM; forward and forward+backward tokens/s and ratios.
GPU: ``--device cuda --size opt-1.3b --dtype bfloat16 --peak-tflops 989`` also reports MFU
(6 * N * tokens/s / peak for forward+backward, 2 * N * tokens/s / peak for forward).

    .venv/bin/python bench/bench_model.py [--size opt-125m] [--dtype float32] [--iters 15] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import training  # noqa: E402

Step = Callable[[], None]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _step_fns(model: torch.nn.Module, ids: torch.Tensor, targets: torch.Tensor, *, hf: bool) -> dict[str, Step]:
    """The two timed steps for one model: forward (no grad) and forward+backward of the LM loss."""

    def logits_of() -> torch.Tensor:
        out = model(ids)
        return out.logits if hf else out

    def fwd() -> None:
        with torch.no_grad():
            logits_of()

    def fwd_bwd() -> None:
        logits = logits_of()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        loss.backward()
        model.zero_grad(set_to_none=True)

    return {"fwd": fwd, "fwd_bwd": fwd_bwd}


def measure(
    candidates: dict[str, dict[str, Step]], *, iters: int, warmup: int, device: str
) -> dict[str, dict[str, float]]:
    """Median seconds per step for every candidate, repetitions interleaved.

    On a shared machine the load drifts over a run; timing all of one model and then all of the
    other would charge that drift to whichever went second. Here each repetition runs every
    candidate once, in alternating order (A B, B A, ...), so both see the same conditions.
    """
    result: dict[str, dict[str, float]] = {label: {} for label in candidates}
    for phase in ("fwd", "fwd_bwd"):
        for steps in candidates.values():
            for _ in range(warmup):
                steps[phase]()
        times: dict[str, list[float]] = {label: [] for label in candidates}
        labels = list(candidates)
        for rep in range(iters):
            for label in labels if rep % 2 == 0 else reversed(labels):
                _sync(device)
                start = time.perf_counter()
                candidates[label][phase]()
                _sync(device)
                times[label].append(time.perf_counter() - start)
        for label, samples in times.items():
            result[label][phase] = statistics.median(samples)
    return result


def _tp_worker(
    rank: int, world: int, port: int, ckpt: str, batch: dict[str, torch.Tensor], opts: dict[str, Any], out: str
) -> None:
    import torch.distributed as dist

    torch.set_num_threads(opts["threads_per_rank"])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = training.load_pretrained(ckpt, dtype=getattr(torch, opts["dtype"]))
        model.train()
        steps = _step_fns(model, batch["ids"], batch["targets"], hf=False)
        result = measure({"ours": steps}, iters=opts["iters"], warmup=opts["warmup"], device="cpu")["ours"]
        # The step is as slow as the slowest rank.
        for key in list(result):
            value = torch.tensor([result[key]])
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
            result[key] = value.item()
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def run_tp(world: int, ckpt: str, batch: dict[str, torch.Tensor], opts: dict[str, Any]) -> dict[str, float]:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.start_processes(
            _tp_worker, args=(world, port, ckpt, batch, opts, out), nprocs=world, join=True, start_method="spawn"
        )
        return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--size", default=None, help="name in training.CONFIGS (default opt-125m on CPU, opt-1.3b on CUDA)"
    )
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--tp", default="1,2", help="comma-separated tp sizes to run on CPU (gloo processes)")
    parser.add_argument("--no-hf", action="store_true", help="skip transformers")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="device peak for MFU, e.g. 989 for H100 bf16 dense"
    )
    args = parser.parse_args()

    cuda = args.device.startswith("cuda")
    size = args.size or ("opt-1.3b" if cuda else "opt-125m")
    dtype_name = args.dtype or ("bfloat16" if cuda else "float32")
    dtype = getattr(torch, dtype_name)
    config = training.get_config(size)
    n_params = config.num_parameters(active=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(
        f"{size}: {n_params / 1e6:.1f}M params (active), {dtype_name}, device={args.device}, "
        f"B={args.batch} T={args.seq}, iters={args.iters} (median, ours and transformers interleaved), torch threads={threads}"
    )

    gen = torch.Generator().manual_seed(0)
    batch = {
        "ids": torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=gen),
        "targets": torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=gen),
    }
    tokens = args.batch * args.seq
    rows: dict[str, dict[str, float]] = {}

    with tempfile.TemporaryDirectory() as ckpt:
        # One set of random weights, written once in transformers format, read by everybody.
        model = training.build_model(config, dtype=dtype, seed=0)
        training.save_pretrained(model, ckpt)
        del model

        dev_batch = {k: v.to(args.device) for k, v in batch.items()}
        ours = training.load_pretrained(ckpt, dtype=dtype, device=args.device).train()
        candidates = {"ours tp=1": _step_fns(ours, dev_batch["ids"], dev_batch["targets"], hf=False)}
        hf = None
        if not args.no_hf:
            import transformers

            hf_cls = getattr(transformers, training.ModelConfig.to_hf(config)["architectures"][0])
            hf = hf_cls.from_pretrained(ckpt, dtype=dtype).to(args.device).train()
            hf.config.use_cache = False
            for module in hf.modules():  # compare compute, not dropout RNG
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
            if hasattr(hf.model, "decoder"):
                hf.model.decoder.dropout = 0.0
                for layer in hf.model.decoder.layers:
                    layer.dropout = 0.0
            print(f"transformers attention: {hf.config._attn_implementation}")
            candidates["transformers"] = _step_fns(hf, dev_batch["ids"], dev_batch["targets"], hf=True)
        rows.update(measure(candidates, iters=args.iters, warmup=args.warmup, device=args.device))
        del ours, hf, candidates

        if not cuda:
            for world in (int(t) for t in args.tp.split(",") if t.strip()):
                if world == 1:
                    continue
                opts = {
                    "dtype": dtype_name,
                    "iters": args.iters,
                    "warmup": args.warmup,
                    "threads_per_rank": max(1, threads // world),
                }
                rows[f"ours tp={world}"] = run_tp(world, ckpt, batch, opts)

    print(f"\n{'':16s} {'fwd tok/s':>12s} {'fwd+bwd tok/s':>14s} {'fwd ms':>9s} {'fwd+bwd ms':>11s}")
    for label, r in rows.items():
        print(
            f"{label:16s} {tokens / r['fwd']:12.0f} {tokens / r['fwd_bwd']:14.0f} {r['fwd'] * 1e3:9.1f} {r['fwd_bwd'] * 1e3:11.1f}"
        )
    if "transformers" in rows:
        ref = rows["transformers"]
        for label, r in rows.items():
            if label != "transformers":
                print(
                    f"{label} / transformers: fwd {ref['fwd'] / r['fwd']:.2f}x, fwd+bwd {ref['fwd_bwd'] / r['fwd_bwd']:.2f}x"
                )
    if args.peak_tflops:
        for label, r in rows.items():
            fwd_mfu = 2 * n_params * tokens / r["fwd"] / (args.peak_tflops * 1e12)
            train_mfu = 6 * n_params * tokens / r["fwd_bwd"] / (args.peak_tflops * 1e12)
            print(f"{label} MFU: fwd {fwd_mfu:.1%}, fwd+bwd {train_mfu:.1%} (peak {args.peak_tflops} TFLOP/s)")


if __name__ == "__main__":
    main()
