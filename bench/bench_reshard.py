"""Resharding speed and memory against `cp -r` and the naive method, in one run.

Generates metaseq FSDP checkpoints (fp16, 2 tensor-parallel parts x 8 FSDP shards) of OPT-125M
and OPT-1.3B shape under var/bench/reshard (reused when present), then for each size measures:

  * ``cp -r`` of the source directory (the floor: same bytes read and written);
  * ``python -m reshard convert --to native --tp 2`` and ``--to hf``;
  * the naive method: ``torch.load`` every shard, concatenate, merge parts, ``torch.save``.

Each command runs in its own wrapper process that reports its children's peak RSS
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``), so one measurement never inherits another's
peak. cp and the two conversions run ``--rounds`` times, interleaved (cp, native, hf; then in
reverse order), each after ``sync`` and with the previous outputs deleted, and the medians are
compared: on a shared machine a drifting load then hits every method alike. The naive method
runs once (it is a reference, not a target). The "startup" row is ``python -m reshard --help``:
the interpreter and torch import every conversion pays before touching a byte.

Warm (default): the source is read once before each run, so it is in the page cache. ``--cold``:
the source's pages are evicted before each run with ``posix_fadvise(DONTNEED)`` (only these
files; no root and no global cache drop), so reads go to the disk -- or to whatever cache the
VM's host keeps below it.

Targets: wall time <= 1.5x cp; peak RSS <= 2x the largest tensor + 300 MB.

    .venv/bin/python bench/bench_reshard.py [--sizes opt-125m,opt-1.3b] [--rounds 3] [--cold] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH_DIR = ROOT / "var" / "bench" / "reshard"
PARTS, SHARDS = 2, 8
MB = 1e6


def generate(size: str, folder: Path) -> None:
    import torch

    import training
    from reshard.testing import metaseq_parts, random_state, write_metaseq_fsdp

    cfg = training.get_config(size)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    state = random_state(cfg, seed=0, dtype=torch.float16)
    parts = metaseq_parts(state, cfg, PARTS)
    del state
    write_metaseq_fsdp(parts, cfg, tmp, shards=SHARDS)
    tmp.rename(folder)


def naive(src: Path, dst: Path) -> None:
    """What metaseq's consolidation scripts did: every shard in RAM at once, then one torch.save."""
    import torch

    from reshard import metaseq

    parts: list[dict[str, torch.Tensor]] = []
    for p in range(PARTS):
        shards = [
            torch.load(src / f"checkpoint_last-model_part-{p}-shard{s}.pt", weights_only=False) for s in range(SHARDS)
        ]
        tensors: dict[str, torch.Tensor] = {}
        for i, module in enumerate(shards[0]["shard_metadata"]["param_metadata"]):
            path = module["fsdp_path"]
            info = module["params"]["flat_param_0"]
            key = f"{path}.flat_param_0" if path else "flat_param_0"
            flats = [
                sh["model"][key][
                    : sh["model"][key].numel()
                    - sh["shard_metadata"]["param_metadata"][i]["params"]["flat_param_0"]["padding"]
                ]
                for sh in shards
            ]
            flat = torch.cat(flats)
            for name, piece, shape in zip(info["names"], flat.split(info["numels"]), info["shapes"], strict=True):
                tensors[f"{path}.{name}" if path else name] = piece.view(shape)
        parts.append(tensors)
        del shards
    merged: dict[str, torch.Tensor] = {}
    for name in parts[0]:
        pieces = [part[name] for part in parts]
        if name.endswith(("qkv_proj.weight", "qkv_proj.bias")):  # per part K, V, Q
            thirds = [piece.chunk(3) for piece in pieces]
            merged[name] = torch.cat([torch.cat([t[j] for t in thirds]) for j in (2, 0, 1)])
        elif name == "decoder.embed_tokens.weight" or name.endswith(("fc1.weight", "fc1.bias")):
            merged[name] = torch.cat(pieces)
        elif name.endswith(("out_proj.weight", "fc2.weight")):
            merged[name] = torch.cat(pieces, dim=1)
        else:
            merged[name] = pieces[0]
    dst.mkdir()
    torch.save(merged, dst / "consolidated.pt")
    del metaseq


def measure(cmd: list[str]) -> dict[str, float]:
    """Run ``cmd`` from a fresh wrapper process; wall seconds and the command's peak RSS (MB)."""
    wrapper = (
        "import json,resource,subprocess,sys,time;t=time.perf_counter();"
        "rc=subprocess.run(sys.argv[1:]).returncode;w=time.perf_counter()-t;"
        "print(json.dumps({'rc':rc,'wall':w,'maxrss_kb':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{cmd} failed with {result['rc']}: {out.stderr[-2000:]}")
    return {"wall_s": result["wall"], "peak_rss_mb": result["maxrss_kb"] * 1024 / MB}


def dir_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def evict(folder: Path) -> None:
    """Drop this folder's (clean) pages from the page cache; other files are left alone."""
    for file in folder.iterdir():
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(folder: Path) -> None:
    subprocess.run(["cat", *map(str, sorted(folder.iterdir()))], stdout=subprocess.DEVNULL, check=True)


def bench_size(size: str, keep: bool, rounds: int, cold: bool) -> dict[str, object]:
    import training
    from reshard.layout import ModelLayout

    src = BENCH_DIR / f"{size}-fsdp-{PARTS}x{SHARDS}"
    if not src.is_dir():
        print(f"generating {src} ...", file=sys.stderr)
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--generate", size, str(src)], check=True)
        print(f"  generated in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    layout = ModelLayout.of(training.get_config(size))
    largest = max(layout.shapes.values(), key=lambda s: __import__("math").prod(s))
    largest_mb = __import__("math").prod(largest) * 2 / MB  # fp16
    total = dir_bytes(src)
    out = BENCH_DIR / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    python = [sys.executable]
    reshard_cmd = [*python, "-m", "reshard", "convert", str(src)]
    commands = {
        "cp -r": (out / "cp", ["cp", "-r", str(src), str(out / "cp")]),
        "reshard -> native tp=2": (
            out / "native",
            [*reshard_cmd, str(out / "native"), "--to", "native", "--tp", "2", "--quiet"],
        ),
        "reshard -> hf": (out / "hf", [*reshard_cmd, str(out / "hf"), "--to", "hf", "--quiet"]),
    }
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in commands}

    def run(label: str, dst: Path, cmd: list[str]) -> None:
        shutil.rmtree(dst, ignore_errors=True)
        os.sync()  # no writeback of an earlier run's output lands in this one
        if cold:
            evict(src)
        else:
            warm(src)
        result = measure(cmd)
        samples.setdefault(label, []).append(result)
        print(
            f"  {size:9s} {label:30s} {result['wall_s']:7.2f}s  peak RSS {result['peak_rss_mb']:8.0f} MB",
            file=sys.stderr,
        )

    labels = list(commands)
    for r in range(rounds):
        for label in labels if r % 2 == 0 else reversed(labels):
            run(label, *commands[label])
    run("startup (python -m reshard --help)", out / "none", [*python, "-m", "reshard", "--help"])
    run("naive (torch.load all + save)", out / "naive", [*python, __file__, "--naive", str(src), str(out / "naive")])
    for sub in ("cp", "naive", "hf"):
        shutil.rmtree(out / sub, ignore_errors=True)
    # the outputs must verify (checksums + structure) -- cheap, not timed
    subprocess.run([*python, "-m", "reshard", "verify", str(out / "native")], check=True, stdout=subprocess.DEVNULL)
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    walls = {label: [r["wall_s"] for r in runs] for label, runs in samples.items()}
    cp = statistics.median(walls["cp -r"])
    rss_target = 2 * largest_mb + 300
    return {
        "size": size,
        "cache": "cold" if cold else "warm",
        "rounds": rounds,
        "source_bytes": total,
        "largest_tensor_mb": round(largest_mb, 1),
        "rss_target_mb": round(rss_target, 0),
        "runs": {
            label: {
                "wall_s": round(statistics.median(walls[label]), 2),
                "wall_min_s": round(min(walls[label]), 2),
                "wall_max_s": round(max(walls[label]), 2),
                "x_cp": round(statistics.median(walls[label]) / cp, 2),
                "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 0),
            }
            for label, runs in samples.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="opt-125m,opt-1.3b")
    parser.add_argument("--keep", action="store_true", help="keep the converted outputs")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of cp and the conversions")
    parser.add_argument("--cold", action="store_true", help="evict the source from the page cache before each run")
    parser.add_argument("--generate", nargs=2, metavar=("SIZE", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--naive", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate[0], Path(args.generate[1]))
        return
    if args.naive:
        naive(Path(args.naive[0]), Path(args.naive[1]))
        return
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    results = [bench_size(size, args.keep, args.rounds, args.cold) for size in args.sizes.split(",")]
    print(
        f"page cache {'cold (source evicted before each run)' if args.cold else 'warm'}; "
        f"median of {args.rounds} interleaved rounds (min-max)"
    )
    print(
        f"{'size':9s} {'source':>9s} {'largest':>8s} {'method':36s} {'wall':>8s} {'min-max':>13s} {'x cp':>6s} "
        f"{'peak RSS':>9s} {'RSS target':>10s}"
    )
    for r in results:
        for label, v in r["runs"].items():  # type: ignore[union-attr]
            spread = f"{v['wall_min_s']:.2f}-{v['wall_max_s']:.2f}s"
            print(
                f"{r['size']:9s} {r['source_bytes'] / 1e9:7.2f}GB {r['largest_tensor_mb']:6.0f}MB {label:36s} "
                f"{v['wall_s']:7.2f}s {spread:>13s} {v['x_cp']:6.2f} {v['peak_rss_mb']:7.0f}MB "
                f"{r['rss_target_mb']:8.0f}MB"
            )
    (BENCH_DIR / ("results-cold.json" if args.cold else "results.json")).write_text(
        json.dumps(results, indent=2) + "\n"
    )
    missed = []
    for r in results:
        for label, v in r["runs"].items():  # type: ignore[union-attr]
            if not label.startswith("reshard"):
                continue
            if v["x_cp"] > 1.5:
                missed.append(f"{r['size']} {label}: {v['x_cp']}x cp (target <= 1.5x)")
            if v["peak_rss_mb"] > r["rss_target_mb"]:  # type: ignore[operator]
                missed.append(
                    f"{r['size']} {label}: peak RSS {v['peak_rss_mb']} MB (target <= {r['rss_target_mb']} MB)"
                )
    for line in missed:
        print(f"MISSED {line}")
    if missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
