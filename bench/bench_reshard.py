"""Resharding speed and memory against `cp -r` and the naive method, in one run.

Generates metaseq FSDP checkpoints (fp16, 2 tensor-parallel parts x 8 FSDP shards) of OPT-125M
and OPT-1.3B shape under var/bench/reshard (reused when present), then for each size measures:

  * ``cp -r`` of the source directory (the floor: same bytes read and written);
  * ``python -m reshard convert --to native --tp 2`` and ``--to hf``;
  * the naive method: ``torch.load`` every shard, concatenate, merge parts, ``torch.save``.

Each command runs in its own wrapper process that reports its children's peak RSS
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``), so one measurement never inherits another's
peak. Targets: wall time <= 1.5x cp; peak RSS <= 2x the largest tensor + 300 MB.

    .venv/bin/python bench/bench_reshard.py [--sizes opt-125m,opt-1.3b] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def bench_size(size: str, keep: bool) -> dict[str, object]:
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
    subprocess.run(["cat", *map(str, sorted(src.iterdir()))], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    runs: dict[str, dict[str, float]] = {}
    python = [sys.executable]
    commands = {
        "cp -r": ["cp", "-r", str(src), str(out / "cp")],
        "reshard -> native tp=2": [
            *python,
            "-m",
            "reshard",
            "convert",
            str(src),
            str(out / "native"),
            "--to",
            "native",
            "--tp",
            "2",
            "--quiet",
        ],
        "reshard -> hf": [*python, "-m", "reshard", "convert", str(src), str(out / "hf"), "--to", "hf", "--quiet"],
        "naive (torch.load all + save)": [*python, __file__, "--naive", str(src), str(out / "naive")],
    }
    for label, cmd in commands.items():
        runs[label] = measure(cmd)
        print(
            f"  {size:9s} {label:30s} {runs[label]['wall_s']:7.2f}s  peak RSS {runs[label]['peak_rss_mb']:8.0f} MB",
            file=sys.stderr,
        )
        for sub in ("cp", "naive"):
            shutil.rmtree(out / sub, ignore_errors=True)
    # the outputs must verify (checksums + structure) -- cheap, not timed
    subprocess.run([*python, "-m", "reshard", "verify", str(out / "native")], check=True, stdout=subprocess.DEVNULL)
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    cp = runs["cp -r"]["wall_s"]
    rss_target = 2 * largest_mb + 300
    return {
        "size": size,
        "source_bytes": total,
        "largest_tensor_mb": round(largest_mb, 1),
        "rss_target_mb": round(rss_target, 0),
        "runs": {
            k: {
                "wall_s": round(v["wall_s"], 2),
                "x_cp": round(v["wall_s"] / cp, 2),
                "peak_rss_mb": round(v["peak_rss_mb"], 0),
            }
            for k, v in runs.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="opt-125m,opt-1.3b")
    parser.add_argument("--keep", action="store_true", help="keep the converted outputs")
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
    results = [bench_size(size, args.keep) for size in args.sizes.split(",")]
    print(
        f"{'size':9s} {'source':>9s} {'largest':>8s} {'method':30s} {'wall':>8s} {'x cp':>6s} {'peak RSS':>9s} "
        f"{'RSS target':>10s}"
    )
    for r in results:
        for label, v in r["runs"].items():  # type: ignore[union-attr]
            print(
                f"{r['size']:9s} {r['source_bytes'] / 1e9:7.2f}GB {r['largest_tensor_mb']:6.0f}MB {label:30s} "
                f"{v['wall_s']:7.2f}s {v['x_cp']:6.2f} {v['peak_rss_mb']:7.0f}MB {r['rss_target_mb']:8.0f}MB"
            )
    (BENCH_DIR / "results.json").write_text(json.dumps(results, indent=2) + "\n")
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
