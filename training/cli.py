"""``python -m training {train,tokenize,logbook,export}``.

    torchrun --nproc-per-node P -m training train --model PATH_OR_CONFIG_NAME --data FILE.tokens \\
        --out RUN_DIR --tp T --steps N --batch-size B --seq-len L --lr X --save-every K [--seed S] ...
    python -m training tokenize INPUT --tokenizer DIR --out FILE.tokens
    python -m training logbook RUN_DIR [--peak-tflops F] [--json]
    python -m training export RUN_DIR [--step N] [--out DIR] [--tp T] [--dtype D]

``train`` derives dp = world / tp (world = nodes x nproc-per-node under torchrun, 1 without
it) and checks every flag before any work: a bad combination exits with status 2 and a message
naming the flag. It is safe to run again with the same --out at any time: it continues from
the newest committed checkpoint, or does nothing when the run is complete. With
``torchrun --max-restarts R`` a dead worker restarts the group, which resumes the same way.

Multi-node: run the same torchrun command on every node with ``--nnodes N --rdzv-backend c10d
--rdzv-endpoint HOST:PORT --rdzv-id RUN``; RUN_DIR must be on a file system every node sees
(each rank writes its own part of each checkpoint there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

EXIT_USAGE = 2
EXIT_ERROR = 1


def _floats(text: str) -> tuple[float, float]:
    parts = [float(x) for x in text.split(",")]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError("expected two numbers, e.g. 0.9,0.95")
    return parts[0], parts[1]


def _steps(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train or fine-tune (run under torchrun for more than one process)")
    t.add_argument("--model", required=True, help="checkpoint directory (fine-tune), config .json or config name")
    t.add_argument("--data", required=True, help="token file from `python -m training tokenize`")
    t.add_argument("--out", required=True, help="run directory: checkpoints, logbook.jsonl, export/")
    t.add_argument("--tp", type=int, default=1, help="tensor-parallel size; dp = world / tp")
    t.add_argument("--steps", type=int, required=True, help="optimizer steps in the whole run")
    t.add_argument("--batch-size", type=int, required=True, help="global batch in sequences per step")
    t.add_argument("--seq-len", type=int, required=True)
    t.add_argument("--lr", type=float, required=True, help="peak learning rate")
    t.add_argument("--save-every", type=int, required=True, help="commit a checkpoint every K steps")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step on each dp rank")
    t.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    t.add_argument("--betas", type=_floats, default=(0.9, 0.95))
    t.add_argument("--eps", type=float, default=1e-8)
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--momentum", type=float, default=0.0, help="SGD momentum")
    t.add_argument("--warmup-steps", type=int, default=0)
    t.add_argument("--decay", default="linear", help="linear (OPT), cosine or constant")
    t.add_argument("--min-lr-ratio", type=float, default=0.1, help="decay floor as a fraction of --lr")
    t.add_argument("--clip-grad", type=float, default=1.0, help="global gradient-norm limit; 0 turns it off")
    t.add_argument("--aux-loss-coef", type=float, default=None, help="MoE aux loss coefficient (default: config)")
    t.add_argument("--activation-checkpointing", action="store_true")
    t.add_argument("--precision", default="auto", help="auto (bf16 autocast on GPU, fp32 on CPU), fp32, bf16")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda")
    t.add_argument("--keep-last", type=int, default=3, help="committed checkpoints to keep")
    t.add_argument("--log-every", type=int, default=1)
    t.add_argument("--no-shuffle", action="store_true", help="read sequences in file order")
    t.add_argument("--export-tp", type=int, default=None, help="tp of the exported checkpoint (default: --tp)")
    t.add_argument("--export-dtype", default="auto", help="auto (the base checkpoint's), fp32, bf16, fp16")
    t.add_argument("--resume-from", type=int, default=None, help="resume from this committed step (operator)")
    t.add_argument("--spike-factor", type=float, default=4.0)
    t.add_argument("--spike-window", type=int, default=50)
    t.add_argument("--spike-min-history", type=int, default=10)
    t.add_argument("--max-consecutive-spikes", type=int, default=3)
    t.add_argument("--lr-backoff", type=float, default=0.5)
    t.add_argument("--inject-fault", action="append", default=[], help=argparse.SUPPRESS)
    t.add_argument("--inject-spikes", type=_steps, default=(), help=argparse.SUPPRESS)

    k = sub.add_parser("tokenize", help="JSONL or plain text -> token file")
    k.add_argument("input")
    k.add_argument("--tokenizer", required=True, help="directory with tokenizer.json (or vocab.json + merges.txt)")
    k.add_argument("--out", required=True)
    k.add_argument("--format", default="auto", help="auto (by extension), jsonl or text")
    k.add_argument("--no-progress", action="store_true")

    b = sub.add_parser("logbook", help="summary of a run's logbook.jsonl")
    b.add_argument("run_dir")
    b.add_argument("--peak-tflops", type=float, default=None, help="per-device peak, for MFU")
    b.add_argument("--json", action="store_true")

    e = sub.add_parser("export", help="export a committed checkpoint to the native format")
    e.add_argument("run_dir")
    e.add_argument("--step", type=int, default=None, help="default: the newest committed")
    e.add_argument("--out", default=None, help="default: RUN_DIR/export/step_N")
    e.add_argument("--tp", type=int, default=None, help="default: the run's tp")
    e.add_argument("--dtype", default="float32")
    return parser


def _absolute_if_path(value: str) -> str:
    """Paths recorded absolute, so a rerun from another directory is the same run; a config
    name stays a name."""
    return str(Path(value).absolute()) if Path(value).exists() else value


def _train(args: argparse.Namespace) -> int:
    from training.trainer import SpikePolicy, TrainConfig, UsageError, train, validate

    config = TrainConfig(
        model=_absolute_if_path(args.model),
        data=_absolute_if_path(args.data),
        out=str(Path(args.out).absolute()),
        tp=args.tp,
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        save_every=args.save_every,
        seed=args.seed,
        grad_accum=args.grad_accum,
        optimizer=args.optimizer,
        betas=args.betas,
        eps=args.eps,
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        warmup_steps=args.warmup_steps,
        decay=args.decay,
        min_lr_ratio=args.min_lr_ratio,
        clip_grad=args.clip_grad,
        aux_loss_coef=args.aux_loss_coef,
        activation_checkpointing=args.activation_checkpointing,
        precision=args.precision,
        device=args.device,
        keep_last=args.keep_last,
        log_every=args.log_every,
        shuffle=not args.no_shuffle,
        export_tp=args.export_tp,
        export_dtype=args.export_dtype,
        resume_from=args.resume_from,
        spike=SpikePolicy(
            factor=args.spike_factor,
            window=args.spike_window,
            min_history=args.spike_min_history,
            max_consecutive=args.max_consecutive_spikes,
            lr_backoff=args.lr_backoff,
        ),
        inject_faults=tuple(args.inject_fault),
        inject_spikes=tuple(args.inject_spikes),
    )
    try:
        plan = validate(config)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = train(config, plan=plan)
    if result.get("already_done"):
        print(f"{args.out} is already complete at step {result['step']}; export in {result['export']}")
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from training.tokenize import TokenizeError, tokenize_file

    try:
        header = tokenize_file(
            args.input, tokenizer=args.tokenizer, out=args.out, input_format=args.format, progress=not args.no_progress
        )
    except TokenizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.out}: {header['num_docs']:,} documents, {header['num_tokens']:,} tokens ({header['dtype']})")
    return 0


def _logbook(args: argparse.Namespace) -> int:
    from training.logbook import format_summary, read_logbook, summarize

    try:
        events = read_logbook(args.run_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    summary = summarize(events, peak_tflops=args.peak_tflops)
    print(json.dumps(summary.to_json(), indent=2) if args.json else format_summary(summary))
    return 0


def _export(args: argparse.Namespace) -> int:
    from training.checkpoint import committed_checkpoints, load_full_state
    from training.logbook import Logbook
    from training.trainer import EXPORTS, RUN_FILE, export_native, resolve_model

    run_dir = Path(args.run_dir)
    committed = committed_checkpoints(run_dir)
    chosen = [c for c in committed if args.step is None or c.step == args.step]
    if not chosen:
        have = [c.step for c in committed]
        print(f"error: --step: no committed checkpoint {args.step or ''} in {run_dir} (have {have})", file=sys.stderr)
        return EXIT_USAGE
    checkpoint = chosen[-1]
    started = time.monotonic()
    config, state, meta = load_full_state(checkpoint.path)
    tp = args.tp or int(meta.get("tp", 1))
    try:
        config.check_tp(tp)
    except ValueError as exc:
        print(f"error: --tp: {exc}", file=sys.stderr)
        return EXIT_USAGE
    tokenizer_files: tuple[Path, ...] = ()
    run_file = run_dir / RUN_FILE
    if run_file.is_file():
        model_arg = json.loads(run_file.read_text()).get("model", "")
        if Path(model_arg).is_dir():
            tokenizer_files = resolve_model(model_arg).tokenizer_files
    dst = Path(args.out) if args.out else run_dir / EXPORTS / f"step_{checkpoint.step}"
    export_native(state, config, dst, tp=tp, dtype=args.dtype, extra_files=tokenizer_files)
    Logbook(run_dir).write(
        "export",
        step=checkpoint.step,
        path=str(dst),
        format="native",
        tp=tp,
        seconds=round(time.monotonic() - started, 4),
        on_demand=True,
    )
    print(f"exported step {checkpoint.step} to {dst} (native, tp={tp})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"train": _train, "tokenize": _tokenize, "logbook": _logbook, "export": _export}[args.command]
    return handler(args)


__all__ = ["main"]
