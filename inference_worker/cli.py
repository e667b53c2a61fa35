"""``python -m inference_worker serve CHECKPOINT_DIR`` (and the same under ``torchrun`` for tp=N).

Rank 0 answers HTTP at once (``/health`` says 503 while the weights load), schedules and samples;
every other rank loads its shard and runs the forwards rank 0 plans. The metadata checks (format,
tokenizer, tp against the heads) run before anything heavy, so a bad checkpoint fails at start.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import threading
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from inference_worker.async_engine import AsyncEngine
from inference_worker.engine import Engine, EngineConfig, PlanChannel, make_runner, worker_loop
from inference_worker.loading import CheckpointInfo, StartupError, inspect_checkpoint, load_model
from inference_worker.metrics import Metrics
from inference_worker.server import ServerState, build_app

log = logging.getLogger("inference_worker")

EXIT_USAGE = 2
EXIT_LOAD_FAILED = 3

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from "1073741824", "1GiB", "512MiB", "2G" (decimal without the i)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; use e.g. 512MiB, 4GiB or a byte count")
    number, unit, binary = match.groups()
    base = 1024 if binary or not unit else 1000
    return int(float(number) * base ** " kmgt".index(unit.lower() or " "))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference_worker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a checkpoint over an OpenAI-compatible HTTP API")
    serve.add_argument("checkpoint", type=Path, help="checkpoint directory (transformers or native layout)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: the portal only)")
    serve.add_argument("--port", type=int, default=9000)
    serve.add_argument("--served-model-name", default=None, help="model id in the API (default: directory name)")
    serve.add_argument("--max-batch-tokens", type=int, default=2048, help="tokens per forward (prefill + decode)")
    serve.add_argument("--max-running", type=int, default=256, help="sequences in the running batch")
    serve.add_argument("--kv-memory", type=parse_size, default=parse_size("1GiB"), help="KV cache bytes per rank")
    serve.add_argument("--block-size", type=int, default=16, help="tokens per KV cache block")
    serve.add_argument("--max-waiting", type=int, default=256, help="requests waiting for admission before 429")
    serve.add_argument(
        "--max-waiting-tokens", type=int, default=262144, help="prompt tokens waiting for admission before 429"
    )
    serve.add_argument("--secret-file", type=Path, default=None, help="file holding the shared engine secret")
    serve.add_argument(
        "--insecure-no-secret",
        action="store_true",
        help="serve without a secret (local experiments only; anyone who reaches the port can use it)",
    )
    serve.add_argument("--dtype", default="auto", help="auto (the checkpoint's), fp32, bf16 or fp16")
    serve.add_argument("--device", default="auto", help="auto, cpu or cuda")
    serve.add_argument("--threads", type=int, default=0, help="torch CPU threads per rank (0: torch's default)")
    serve.add_argument("--log-level", default="info")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return serve(args)
    except StartupError as exc:
        print(f"inference_worker: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _read_secret(args: argparse.Namespace) -> str | None:
    if args.secret_file is None:
        if args.insecure_no_secret:
            return None
        raise StartupError(
            "no --secret-file: the engine requires a shared secret (Authorization: Bearer <secret>); "
            "pass --secret-file FILE, or --insecure-no-secret for a local experiment"
        )
    try:
        secret = args.secret_file.read_text().strip()
    except OSError as exc:
        raise StartupError(f"--secret-file {args.secret_file}: unreadable ({exc.strerror})") from None
    if not secret:
        raise StartupError(f"--secret-file {args.secret_file} is empty")
    return secret


def serve(args: argparse.Namespace) -> int:
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    secret = _read_secret(args) if rank == 0 else None
    for name in ("max_batch_tokens", "max_running", "block_size", "max_waiting", "max_waiting_tokens"):
        if getattr(args, name) < 1:
            raise StartupError(f"--{name.replace('_', '-')} must be at least 1")
    info = inspect_checkpoint(args.checkpoint, tp_size=world)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    channel = None
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
        channel = PlanChannel(dist.new_group(backend="gloo"))
    config = EngineConfig(
        block_size=args.block_size,
        kv_memory=args.kv_memory,
        max_batch_tokens=args.max_batch_tokens,
        max_running=args.max_running,
    )
    try:
        if rank != 0:
            return _serve_worker(info, args, device, config, channel)
        return _serve_rank0(info, args, device, config, channel, secret)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _device(choice: str) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    if choice != "cpu":
        raise StartupError(f"--device {choice!r}: use auto, cpu or cuda")
    return torch.device("cpu")


def _all_loaded(ok: bool, channel: PlanChannel | None) -> bool:
    """Every rank reports whether its load worked, so no rank waits for a peer that failed."""
    if channel is None:
        return ok
    flag = torch.tensor([1 if ok else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=channel.group)
    return bool(flag.item())


def _serve_worker(
    info: CheckpointInfo,
    args: argparse.Namespace,
    device: torch.device,
    config: EngineConfig,
    channel: PlanChannel | None,
) -> int:
    assert channel is not None
    try:
        model = load_model(info, dtype=args.dtype, device=device)
        runner = make_runner(model, config)
        ok = True
    except Exception:
        log.exception("loading %s failed", info.path)
        ok = False
    if not _all_loaded(ok, channel):
        return EXIT_LOAD_FAILED
    worker_loop(runner, channel)
    return 0


def _serve_rank0(
    info: CheckpointInfo,
    args: argparse.Namespace,
    device: torch.device,
    config: EngineConfig,
    channel: PlanChannel | None,
    secret: str | None,
) -> int:
    import uvicorn

    name = args.served_model_name or info.path.resolve().name
    metrics = Metrics(name)
    state = ServerState(
        model_name=name,
        tokenizer=info.tokenizer,
        vocab_size=info.config.vocab_size,
        max_context=info.config.max_seq_len,
        metrics=metrics,
        secret=secret,
    )
    server = uvicorn.Server(
        uvicorn.Config(build_app(state), host=args.host, port=args.port, log_level=args.log_level.lower())
    )

    def load() -> None:
        ok = False
        try:
            model = load_model(info, dtype=args.dtype, device=device)
            engine = Engine(model, info.tokenizer, config, channel=channel, metrics=metrics)
            ok = True
        except Exception as exc:
            log.exception("loading %s failed", info.path)
            state.load_error = f"loading {info.path} failed: {exc}"
        if not _all_loaded(ok, channel):
            state.load_error = state.load_error or "another rank failed to load its shard"
            server.should_exit = True
            return
        metrics.kv_blocks_total.set(engine.pool.num_blocks)
        async_engine = AsyncEngine(engine, max_waiting=args.max_waiting, max_waiting_tokens=args.max_waiting_tokens)
        async_engine.start()
        state.engine = async_engine
        log.info(
            "serving %s (tp=%d, %d KV blocks of %d tokens) on http://%s:%d",
            name, engine.model.tp.world_size, engine.pool.num_blocks, config.block_size, args.host, args.port,
        )  # fmt: skip

    loader = threading.Thread(target=load, name="loader", daemon=True)
    loader.start()
    try:
        server.run()
    except SystemExit:  # uvicorn exits this way when it cannot bind
        server.should_exit = True
    finally:
        loader.join()
        if state.engine is not None:
            state.engine.stop()
    return EXIT_LOAD_FAILED if state.load_error else 0
