"""Checkpoint verification speed: our verifier (SHA-256 and MD5 of every file in one pass) against
coreutils `sha256sum` (SHA-256 only) on the same files, page cache warm.

    .venv/bin/python bench/bench_verify.py [--files 8] [--mib 256] [--runs 3]

- per core:     our verifier with 1 worker thread   vs `sha256sum f1 f2 …` (sequential)
- across cores: our verifier with 1 thread per core vs `xargs -P<cores> -n1 sha256sum`
Targets: >= 0.9x per core, > 1.0x across cores. The files (random bytes) live under var/bench/verify.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from artifacts.hashing import hash_files

DIRECTORY = ROOT / "var" / "bench" / "verify"


def make_files(count: int, mib: int) -> list[Path]:
    DIRECTORY.mkdir(parents=True, exist_ok=True)
    size = mib * 2**20
    paths = []
    for index in range(count):
        path = DIRECTORY / f"checkpoint_last-model_part-{index}-shard0.pt"
        if not (path.exists() and path.stat().st_size == size):
            block = os.urandom(16 * 2**20)
            with open(path, "wb") as out:
                out.writelines(block for _ in range(size // len(block)))
                out.write(block[: size % len(block)])
        paths.append(path)
    return paths


def timed(function) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def ours(paths: list[Path], workers: int) -> None:
    digests, failures = hash_files([(p.name, lambda p=p: open(p, "rb")) for p in paths], workers=workers)
    assert not failures and len(digests) == len(paths)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    paths = make_files(args.files, args.mib)
    total = args.files * args.mib * 2**20
    names = [str(p) for p in paths]
    for path in paths:  # warm the page cache: we measure hashing, not the disk
        with open(path, "rb") as handle:
            while handle.read(16 * 2**20):
                pass

    def sha256sum_seq() -> None:
        subprocess.run(["sha256sum", *names], check=True, stdout=subprocess.DEVNULL)

    def sha256sum_parallel() -> None:
        subprocess.run(
            ["xargs", f"-P{cores}", "-n1", "sha256sum"],
            input="\n".join(names),
            text=True,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    results = {}
    for label, function in [
        ("sha256sum (sequential)", sha256sum_seq),
        ("ours, 1 thread (sha256+md5)", lambda: ours(paths, 1)),
        (f"xargs -P{cores} sha256sum", sha256sum_parallel),
        (f"ours, {cores} threads (sha256+md5)", lambda: ours(paths, cores)),
    ]:
        results[label] = min(timed(function) for _ in range(args.runs))
    mbps = {label: total / seconds / 1e6 for label, seconds in results.items()}
    print(f"{args.files} files x {args.mib} MiB = {total / 2**30:.1f} GiB, best of {args.runs}, {cores} cores")
    for label, speed in mbps.items():
        print(f"  {label:34s} {speed:8.0f} MB/s  ({results[label]:.2f} s)")
    per_core = mbps["ours, 1 thread (sha256+md5)"] / mbps["sha256sum (sequential)"]
    across = mbps[f"ours, {cores} threads (sha256+md5)"] / mbps[f"xargs -P{cores} sha256sum"]
    versus_seq = mbps[f"ours, {cores} threads (sha256+md5)"] / mbps["sha256sum (sequential)"]
    print(f"  per-core ratio (ours 1 thread / sha256sum)            {per_core:.2f}x  (target >= 0.9x)")
    print(f"  across-core ratio (ours {cores} threads / xargs -P{cores})     {across:.2f}x  (target > 1.0x)")
    print(f"  ours {cores} threads / sha256sum sequential               {versus_seq:.2f}x")
    return 0 if per_core >= 0.9 and across > 1.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
