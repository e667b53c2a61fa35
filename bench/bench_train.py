"""Training speed, checkpoint cost and time lost per fault, against the peers, in one run.

1. Tokens/s of our training step (the trainer's own ``Session.step``: forward, loss, backward,
   global gradient norm, clipping, AdamW) on a random OPT-125M-shape model at tp=1, against
   transformers' ``OPTForCausalLM`` with ``torch.optim.AdamW`` and ``clip_grad_norm_`` on the same
   weights and the same batches, fp32 on CPU; the two alternate step by step (A B, B A, ...) after
   warm-up and medians are compared. Then ours at tp=2 and at dp=2 (two gloo processes, one
   thread each). Target: ours tp=1 >= 1.0x transformers.
2. Checkpoint save (torch.distributed.checkpoint, each rank's part, commit marker, atomic rename,
   through the trainer's ``save``) and resume (the trainer's ``restore``) of the model + AdamW state
   after those steps, against ``torch.save``/``torch.load`` (+ ``load_state_dict``) of the same
   state; rounds interleaved, page cache warm. The save target compares like with like: DCP
   fsyncs its files, so the peer is ``torch.save`` + fsync (plain ``torch.save`` printed too).
   Target: <= 1.5x.
3. Time lost per fault: ``python -m training train`` on a small model in a subprocess, SIGKILLed
   mid-run after a committed checkpoint and started again at once (what ``torchrun
   --max-restarts`` does); from the logbook: kill -> resume, kill -> next completed step, and kill
   -> back at the step it was killed in (the redone steps included). Reported, no target.

Exits non-zero when a target is missed; when our step is slower, a short torch.profiler table of
both steps is printed (``--profile`` prints it anyway).

    .venv/bin/python bench/bench_train.py [--quick] [--batch 4] [--seq 256] [--iters 5] [--faults 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import training  # noqa: E402
from training.checkpoint import committed_checkpoints  # noqa: E402
from training.data import TokenFileWriter  # noqa: E402
from training.logbook import Logbook, read_logbook  # noqa: E402
from training.mesh import close_mesh, init_mesh  # noqa: E402
from training.trainer import Session, TrainConfig, validate  # noqa: E402

EOS = 2
NEVER = 10**9  # --steps and --save-every of the in-process runs: no save or export while timing

# The small model of the fault drill (and of --quick): OPT layout, the real vocabulary.
SMALL_OPT: dict[str, Any] = {
    "family": "opt",
    "name": "bench-opt-small",
    "vocab_size": 50272,
    "n_layer": 4,
    "n_head": 4,
    "n_embd": 256,
    "ffn_dim": 1024,
    "max_seq_len": 512,
}


def write_tokens(path: Path, *, vocab: int, tokens: int, seed: int = 0) -> Path:
    """Random documents of ids 3..vocab-1 ended by EOS (no id 1: transformers' OPT pads with it)."""
    rng = np.random.default_rng(seed)
    writer = TokenFileWriter(path, dtype="uint16" if vocab <= 2**16 else "uint32", metadata={"eos_token_id": EOS})
    written = 0
    while written < tokens:
        doc = rng.integers(3, vocab, size=int(rng.integers(64, 1024)))
        writer.add([*doc.tolist(), EOS])
        written += doc.size + 1
    writer.close()
    return path


def train_config(model: str, data: Path, out: Path, opts: dict[str, Any], *, tp: int = 1) -> TrainConfig:
    return TrainConfig(
        model=model,
        data=str(data),
        out=str(out),
        steps=NEVER,
        batch_size=opts["batch"],
        seq_len=opts["seq"],
        lr=1e-4,
        save_every=NEVER,
        tp=tp,
        log_every=1,
        keep_last=NEVER,
    )


def session_for(config: TrainConfig, *, world_size: int) -> Session:
    """The trainer's own session, built as ``train`` builds it (random init from the seed)."""
    plan = validate(config, world_size=world_size)
    mesh = init_mesh(config.tp, device="cpu")
    session = Session(plan, mesh, Logbook(config.out, enabled=mesh.is_main))
    session.build(from_checkpoint=False)
    return session


def peer_for(session: Session, hf_dir: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """transformers' model on our session's weights (written once in transformers' layout) and
    torch's AdamW with the trainer's hyperparameters and decay groups."""
    import transformers

    training.save_pretrained(session.model, hf_dir)
    hf = transformers.OPTForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).train()
    hf.config.use_cache = False
    for module in hf.modules():  # compare compute, not dropout RNG (ours has no dropout)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    hf.model.decoder.dropout = 0.0
    for layer in hf.model.decoder.layers:
        layer.dropout = 0.0
    c = session.config
    groups = [
        {"params": [p for p in hf.parameters() if p.ndim >= 2], "weight_decay": c.weight_decay},
        {"params": [p for p in hf.parameters() if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=c.lr, betas=c.betas, eps=c.eps)
    return hf, optimizer


def peer_step_fn(
    hf: torch.nn.Module, optimizer: torch.optim.Optimizer, clip: float
) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """A plain transformers training step: mean next-token CE in fp32 (what its ForCausalLMLoss
    computes), backward, clip_grad_norm_, AdamW step."""
    params = [p for p in hf.parameters() if p.requires_grad]

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> float:
        logits = hf(input_ids=inputs).logits  # (B, T, V)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def step_losses(run_dir: Path) -> list[float]:
    return [e["loss"] for e in read_logbook(run_dir) if e["event"] == "step"]


def profile_steps(session: Session, peer_step: Callable[[torch.Tensor, torch.Tensor], float], rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    for label in ("ours", "transformers"):
        inputs, targets = session.next_batch()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            if label == "ours":
                session.step()
            else:
                peer_step(inputs, targets)
        print(f"\n--- torch.profiler, one {label} step (self CPU time) ---")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48))


# --------------------------------------------------------------------------------------------
# 1 + 2: tp=1 against transformers, then checkpoints, in this process
# --------------------------------------------------------------------------------------------


def bench_tp1(model: str, data: Path, work: Path, opts: dict[str, Any]) -> dict[str, Any]:
    config = train_config(model, data, work / "run_tp1", opts)
    session = session_for(config, world_size=1)
    try:
        hf, hf_optimizer = peer_for(session, work / "hf")
        peer_step = peer_step_fn(hf, hf_optimizer, config.clip_grad)
        times: dict[str, list[float]] = {"ours tp=1": [], "transformers": []}
        peer_losses: list[float] = []
        total = opts["warmup"] + opts["iters"]
        for rep in range(total):
            inputs, targets = session.next_batch()
            order = ("ours tp=1", "transformers") if rep % 2 == 0 else ("transformers", "ours tp=1")
            for label in order:
                start = time.perf_counter()
                if label == "ours tp=1":
                    session.step()
                else:
                    peer_losses.append(peer_step(inputs, targets))
                if rep >= opts["warmup"]:
                    times[label].append(time.perf_counter() - start)
        session.book.close()
        ours_losses = step_losses(Path(config.out))
        result: dict[str, Any] = {label: statistics.median(t) for label, t in times.items()}
        result["spread"] = {label: (min(t), max(t)) for label, t in times.items()}
        result["loss_gap"] = max(abs(a - b) for a, b in zip(ours_losses, peer_losses, strict=True))
        result["first_loss"] = (ours_losses[0], peer_losses[0])
        if opts["profile"] or result["ours tp=1"] > result["transformers"]:
            profile_steps(session, peer_step, opts["profile_rows"])
        del hf, hf_optimizer, peer_step
        result["checkpoint"] = bench_checkpoint(session, work, opts["ckpt_rounds"])
        return result
    finally:
        session.book.close()
        close_mesh()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def bench_checkpoint(session: Session, work: Path, rounds: int) -> dict[str, Any]:
    """Our save (DCP + marker + atomic rename, via the trainer) and restore against torch.save /
    torch.load of the same model + optimizer state; rounds interleaved, outputs removed between."""
    model, optimizer = session.model, session.optimizer
    peer_file = work / "torch_save" / "state.pt"
    peer_file.parent.mkdir(parents=True, exist_ok=True)
    ckpt_root = Path(session.config.out) / "checkpoints"
    times: dict[str, list[float]] = {k: [] for k in ("ours save", "ours resume", "torch.save", "torch.save+fsync")}
    times["torch.load"] = []
    size = {"ours": 0, "peer": 0}
    snapshot = {k: v.clone() for k, v in list(model.state_dict().items())[:2]}

    def ours() -> None:
        shutil.rmtree(ckpt_root, ignore_errors=True)
        os.sync()
        start = time.perf_counter()
        session.save(session.state.step)
        times["ours save"].append(time.perf_counter() - start)
        (committed,) = committed_checkpoints(session.config.out)
        size["ours"] = sum(f.stat().st_size for f in committed.path.rglob("*") if f.is_file())
        start = time.perf_counter()
        session.restore(committed)
        times["ours resume"].append(time.perf_counter() - start)

    def peer(durable: bool) -> None:
        peer_file.unlink(missing_ok=True)
        os.sync()
        start = time.perf_counter()
        tmp = peer_file.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp)
        if durable:  # the same durability as ours: data fsynced, atomic rename, directory fsynced
            _fsync(tmp)
            os.replace(tmp, peer_file)
            _fsync(peer_file.parent)
        else:
            os.replace(tmp, peer_file)
        times["torch.save+fsync" if durable else "torch.save"].append(time.perf_counter() - start)
        size["peer"] = peer_file.stat().st_size
        if durable:
            start = time.perf_counter()
            state = torch.load(peer_file, weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            times["torch.load"].append(time.perf_counter() - start)
            del state

    for rep in range(rounds):
        steps = [ours, lambda: peer(True), lambda: peer(False)]
        for run in steps if rep % 2 == 0 else reversed(steps):
            run()
    for name, value in snapshot.items():  # both round trips gave the weights back
        assert torch.equal(model.state_dict()[name], value), name
    shutil.rmtree(ckpt_root, ignore_errors=True)
    peer_file.unlink(missing_ok=True)
    result: dict[str, Any] = {k: statistics.median(v) for k, v in times.items()}
    result["bytes"] = size
    return result


# --------------------------------------------------------------------------------------------
# 1b: tp=2 and dp=2 (two gloo processes)
# --------------------------------------------------------------------------------------------


def _parallel_worker(
    rank: int, world: int, port: int, model: str, data: str, out: str, opts: dict[str, Any], tp: int, result: str
) -> None:
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1"}
    )
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(opts["threads_per_rank"])
    config = train_config(model, Path(data), Path(out), opts, tp=tp)
    session = session_for(config, world_size=world)
    try:
        times = []
        for rep in range(opts["warmup"] + opts["iters"]):
            torch.distributed.barrier()
            start = time.perf_counter()
            session.step()
            if rep >= opts["warmup"]:
                times.append(time.perf_counter() - start)
        # A step is as slow as the slowest rank.
        slowest = torch.tensor(times)
        torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
        if rank == 0:
            samples = slowest.tolist()
            Path(result).write_text(json.dumps({"median": statistics.median(samples), "spread": samples}))
    finally:
        session.book.close()
        close_mesh()


def bench_parallel(model: str, data: Path, work: Path, opts: dict[str, Any], *, tp: int, world: int) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = work / f"run_tp{tp}_w{world}"
    result = work / f"result_tp{tp}_w{world}.json"
    mp.start_processes(
        _parallel_worker,
        args=(world, port, model, str(data), str(out), opts, tp, str(result)),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    return dict(json.loads(result.read_text()))


# --------------------------------------------------------------------------------------------
# 3: time lost per fault
# --------------------------------------------------------------------------------------------


def _wait_for(run_dir: Path, proc: subprocess.Popen[bytes], predicate: Callable[[list[dict[str, Any]]], bool]) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the training run exited with {proc.returncode} before the fault was injected")
        try:
            if predicate(read_logbook(run_dir)):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.01)


def bench_faults(model: str, data: Path, work: Path, opts: dict[str, Any]) -> list[dict[str, Any]]:
    """SIGKILL the run ``save_every // 2`` steps after a committed checkpoint, restart it at once."""
    run_dir = work / "run_fault"
    save_every = opts["fault_save_every"]
    steps = save_every * (opts["faults"] + 2)
    command = [
        sys.executable,
        "-m",
        "training",
        "train",
        "--model",
        model,
        "--data",
        str(data),
        "--out",
        str(run_dir),
        "--steps",
        str(steps),
        "--batch-size",
        str(opts["fault_batch"]),
        "--seq-len",
        str(opts["fault_seq"]),
        "--lr",
        "1e-4",
        "--save-every",
        str(save_every),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # a world of one of its own, not this process's
    faults = []
    for fault in range(opts["faults"] + 1):
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if fault == opts["faults"]:  # the last session runs to the end
            _, err = proc.communicate()
            if proc.returncode:
                raise RuntimeError(f"the training run failed: {err.decode()[-2000:]}")
            break
        target_ckpt = save_every * (fault + 1)
        kill_after = target_ckpt + max(1, save_every // 2)

        def ready(events: list[dict[str, Any]], ckpt: int = target_ckpt, after: int = kill_after) -> bool:
            done = any(e["event"] == "checkpoint" and e["step"] == ckpt for e in events)
            return done and any(e["event"] == "step" and e["step"] == after for e in events)

        _wait_for(run_dir, proc, ready)
        killed_at = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        faults.append({"killed_at": killed_at, "checkpoint": target_ckpt})
    events = read_logbook(run_dir)
    steps_before = [e for e in events if e["event"] == "step"]
    normal = statistics.median(e["seconds"] for e in steps_before)
    out = []
    for kill in faults:
        t0 = kill["killed_at"]
        before = [e for e in events if e["time"] <= t0]
        after = [e for e in events if e["time"] > t0]
        last_step = max(e["step"] for e in before if e["event"] == "step")
        resume = next(e for e in after if e["event"] == "resume")
        first = next(e for e in after if e["event"] == "step")
        regained = next(e for e in after if e["event"] == "step" and e["step"] == last_step + 1)
        out.append(
            {
                "checkpoint": kill["checkpoint"],
                "killed_after_step": last_step,
                "resumed_from": resume["from_step"],
                "to_resume": resume["time"] - t0,
                "to_first_step": first["time"] - t0,
                "first_step": first["step"],
                "to_regained": regained["time"] - t0,
                "redone_steps": last_step - resume["from_step"],
                "normal_step": normal,
            }
        )
    return out


# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="small model and shapes: a smoke check (about 1.5 minutes)"
    )
    parser.add_argument("--size", default=None, help="config name (default opt-125m; --quick: a 4-layer OPT)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default 4; --quick 2)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 256; --quick 64)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps each (default 5; --quick 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--ckpt-rounds", type=int, default=None, help="save/resume rounds (default 3; --quick 2)")
    parser.add_argument("--faults", type=int, default=None, help="SIGKILLs in the fault drill (default 2; --quick 1)")
    parser.add_argument("--parallel", default="tp2,dp2", help="which two-process layouts to run (tp2, dp2, or none)")
    parser.add_argument("--profile", action="store_true", help="print the profiler table even when ours is faster")
    args = parser.parse_args()

    threads = torch.get_num_threads()
    opts: dict[str, Any] = {
        "batch": args.batch or (2 if args.quick else 4),
        "seq": args.seq or (64 if args.quick else 256),
        "iters": args.iters or (3 if args.quick else 5),
        "warmup": args.warmup,
        "ckpt_rounds": args.ckpt_rounds or (2 if args.quick else 3),
        "faults": args.faults if args.faults is not None else (1 if args.quick else 2),
        "fault_save_every": 4,
        "fault_batch": 4,
        "fault_seq": 128,
        "profile": args.profile,
        "profile_rows": 15,
        "threads_per_rank": max(1, threads // 2),
    }
    tokens = opts["batch"] * opts["seq"]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as t:
        work = Path(t)
        small = work / "small_opt.json"
        small.write_text(json.dumps(SMALL_OPT))
        model = args.size or (str(small) if args.quick else "opt-125m")
        config = training.ModelConfig(**SMALL_OPT) if model == str(small) else training.get_config(model)
        n_params = config.num_parameters()
        need = (opts["warmup"] + opts["iters"] + 8) * opts["batch"] * (opts["seq"] + 1) * 4
        data = write_tokens(work / "data.tokens", vocab=config.vocab_size, tokens=max(need, 200_000))
        print(
            f"{config.name}: {n_params / 1e6:.1f}M params, float32, CPU, torch threads={threads}; "
            f"B={opts['batch']} T={opts['seq']} ({tokens} tokens/step), warm-up {opts['warmup']}, "
            f"median of {opts['iters']} steps, ours and transformers alternating"
        )

        tp1 = bench_tp1(model, data, work, opts)
        rows: dict[str, float] = {"ours tp=1": tp1["ours tp=1"], "transformers": tp1["transformers"]}
        spreads: dict[str, Any] = dict(tp1["spread"])
        layouts = [x.strip() for x in args.parallel.split(",") if x.strip() and x.strip() != "none"]
        for layout in layouts:
            tp = 2 if layout == "tp2" else 1
            label = f"ours tp={tp} dp={2 // tp}"
            got = bench_parallel(model, data, work, opts, tp=tp, world=2)
            rows[label] = got["median"]
            spreads[label] = (min(got["spread"]), max(got["spread"]))
        faults = bench_faults(str(small), data, work, opts)

    ckpt = tp1["checkpoint"]
    print(f"\n{'training step':24s} {'tokens/s':>10s} {'ms/step':>9s} {'min-max ms':>16s}")
    for label, seconds in rows.items():
        low, high = spreads[label]
        print(f"{label:24s} {tokens / seconds:10.0f} {seconds * 1e3:9.0f} {low * 1e3:7.0f}-{high * 1e3:<8.0f}")
    print("(tp=2 / dp=2: two gloo processes with one thread each; tp=1 and transformers: one process, all threads)")
    ours_loss, peer_loss = tp1["first_loss"]
    print(
        f"same weights and batches: step-1 loss ours {ours_loss:.6f}, transformers {peer_loss:.6f}; "
        f"largest loss gap over all {opts['warmup'] + opts['iters']} steps {tp1['loss_gap']:.2e}"
    )
    step_ratio = rows["transformers"] / rows["ours tp=1"]
    print(f"ours tp=1 / transformers: {step_ratio:.2f}x tokens/s (target >= 1.0x)")

    size = ckpt["bytes"]
    print(
        f"\ncheckpoint of model + AdamW state ({size['ours'] / 2**20:.0f} MiB ours, {size['peer'] / 2**20:.0f} MiB torch.save), "
        f"median of {opts['ckpt_rounds']} rounds, page cache warm"
    )
    for label in ("ours save", "torch.save+fsync", "torch.save", "ours resume", "torch.load"):
        print(f"  {label:18s} {ckpt[label]:7.3f} s")
    save_ratio = ckpt["ours save"] / ckpt["torch.save+fsync"]
    load_ratio = ckpt["ours resume"] / ckpt["torch.load"]
    print(
        f"ours save / (torch.save+fsync): {save_ratio:.2f}x (target <= 1.5x); "
        f"ours save / torch.save without fsync: {ckpt['ours save'] / ckpt['torch.save']:.2f}x"
    )
    print(f"ours resume / (torch.load + load_state_dict): {load_ratio:.2f}x (target <= 1.5x)")

    print(
        f"\ntime lost per fault ({SMALL_OPT['name']}: {SMALL_OPT['n_layer']} layers, "
        f"d={SMALL_OPT['n_embd']}, B={opts['fault_batch']} T={opts['fault_seq']}, "
        f"--save-every {opts['fault_save_every']}; SIGKILL, rerun at once)"
    )
    for fault in faults:
        print(
            f"  killed after step {fault['killed_after_step']} (committed: {fault['checkpoint']}): "
            f"kill -> resume logged {fault['to_resume']:.2f} s, kill -> next completed step "
            f"(step {fault['first_step']}) {fault['to_first_step']:.2f} s, kill -> step "
            f"{fault['killed_after_step'] + 1} {fault['to_regained']:.2f} s "
            f"({fault['redone_steps']} steps redone; a normal step takes {fault['normal_step']:.3f} s)"
        )
    print(f"\ntotal bench time {time.monotonic() - started:.0f} s")
    missed = [
        name
        for name, ok in (("step", step_ratio >= 1.0), ("save", save_ratio <= 1.5), ("resume", load_ratio <= 1.5))
        if not ok
    ]
    if missed:
        print(f"targets missed: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
