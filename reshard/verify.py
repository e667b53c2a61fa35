"""``verify DIR [--against SRC]``: checksums, structure, and numerics.

1. Checksums: every file in ``manifest.json`` exists with its size and sha256, and no other file
   is there (besides ``manifest.json`` and ``SHA256SUMS``, which must agree with it).
2. Structure: the directory opens as a checkpoint whose tensors are exactly the architecture's
   (names, shapes, dtypes, tp) -- the same checks a conversion does on its input.
3. Numerics (``against``): the converted model, at its own tp (one gloo process per rank), gives
   the source's logits on fixed token batches, both computed in float32.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from reshard.errors import ReshardError, VerificationError
from reshard.layout import meta_model
from reshard.pickles import file_sha256
from reshard.sources import Source, open_source
from training import ModelConfig, TPGroup, Transformer

BATCH, SEQ = 2, 16


@dataclass
class VerifyResult:
    path: str
    format: str
    tp: int
    dtype: str
    files_checked: int
    numerics: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check_manifest(folder: Path) -> tuple[int, list[str]]:
    problems: list[str] = []
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        files = manifest["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        return 0, [f"{folder}/manifest.json: unreadable ({exc})"]
    listed = {}
    for entry in files:
        rel = entry["path"]
        listed[rel] = entry
        file = folder / rel
        if not file.is_file():
            problems.append(f"{rel}: listed in manifest.json but missing")
            continue
        size = file.stat().st_size
        if size != entry["size"]:
            problems.append(f"{rel}: size {size}, manifest says {entry['size']} (truncated or replaced?)")
            continue
        if file_sha256(file) != entry["sha256"]:
            problems.append(f"{rel}: sha256 differs from manifest.json (corrupted or modified)")
    extra = sorted(
        p.name for p in folder.iterdir() if p.name not in listed and p.name not in ("manifest.json", "SHA256SUMS")
    )
    if extra:
        problems.append(f"files not in manifest.json: {', '.join(extra)}")
    sums = folder / "SHA256SUMS"
    if sums.is_file():
        manifest_sha = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
        expected = {rel: e["sha256"] for rel, e in listed.items()} | {"manifest.json": manifest_sha}
        got = {}
        for line in sums.read_text().splitlines():
            digest, _, rel = line.partition("  ")
            got[rel] = digest
        if got != expected:
            problems.append("SHA256SUMS disagrees with manifest.json")
    else:
        problems.append("SHA256SUMS is missing")
    return len(listed), problems


def fixed_batch(cfg: ModelConfig, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (BATCH, min(SEQ, cfg.max_seq_len)), generator=gen)


def model_from_source(source: Source, *, dtype: torch.dtype = torch.float32) -> Transformer:
    """A tp=1 model with the source's weights (the whole model in memory: a reference for checks)."""
    model = meta_model(source.config, TPGroup(None, 0, 1))
    state = {name: source.read(name).to(dtype) for name in source.layout.names}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main() -> None:
    """Entry point of one verification rank (env: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
    as torchrun sets them); argv: checkpoint dir, token ids file, output file."""
    import sys

    import torch.distributed as dist

    from reshard.native import load_native

    folder, ids_file, out = sys.argv[1:4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        model = load_native(folder, dtype=torch.float32)
        with torch.no_grad():
            logits = model(torch.load(ids_file, weights_only=True))
        if dist.get_rank() == 0:
            torch.save(logits, out)
    finally:
        dist.destroy_process_group()


def native_logits(folder: Path, ids: torch.Tensor, tp: int, *, timeout: float = 600.0) -> torch.Tensor:
    """Logits of a native checkpoint run at its own tp: one process per rank on gloo, started
    the way torchrun would (env rendezvous), each reading only its own rank file."""
    if tp == 1:
        from reshard.native import load_native

        with torch.no_grad():
            return load_native(folder, group=TPGroup(None, 0, 1), dtype=torch.float32)(ids)
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory() as tmp:
        ids_file, out = os.path.join(tmp, "ids.pt"), os.path.join(tmp, "logits.pt")
        torch.save(ids, ids_file)
        port = _free_port()
        procs = []
        for rank in range(tp):
            env = {
                **os.environ,
                "RANK": str(rank),
                "WORLD_SIZE": str(tp),
                "LOCAL_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "OMP_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]),
            }
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        "from reshard.verify import _rank_main; _rank_main()",
                        str(folder),
                        ids_file,
                        out,
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        errors = []
        for rank, proc in enumerate(procs):
            try:
                _, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode != 0:
                errors.append(
                    f"rank {rank} exited {proc.returncode}: {err.decode(errors='replace').strip().splitlines()[-1:]}"
                )
        if errors:
            raise VerificationError(
                f"{folder}: could not run the model at tp={tp}: {'; '.join(errors)}", problems=errors
            )
        return torch.load(out, weights_only=True)


def verify(
    path: str | os.PathLike[str], against: str | os.PathLike[str] | None = None, *, atol: float | None = None
) -> VerifyResult:
    """Raises VerificationError (exit 4) listing every problem; returns the result when all pass."""
    folder = Path(path)
    count, problems = check_manifest(folder)
    result = VerifyResult(path=str(folder), format="?", tp=0, dtype="?", files_checked=count, problems=problems)
    if problems:  # never parse files whose bytes are known to be wrong
        raise VerificationError(f"{folder}: " + "; ".join(problems), problems=problems)
    try:
        converted = open_source(folder)
    except ReshardError as exc:
        raise VerificationError(f"{folder}: structure: {exc}", problems=[str(exc)]) from None
    try:
        result.format, result.tp, result.dtype = (
            converted.format,
            converted.tp,
            str(converted.dtype).removeprefix("torch."),
        )
        if against is not None:
            source = open_source(against)
            try:
                if source.layout.shapes != converted.layout.shapes:
                    raise VerificationError(
                        f"{folder}: architecture differs from {against}", problems=["architecture differs"]
                    )
                ids = fixed_batch(source.config)
                with torch.no_grad():
                    reference = model_from_source(source)(ids)
                if converted.format == "native":
                    logits = native_logits(folder, ids, converted.tp)
                else:
                    with torch.no_grad():
                        logits = model_from_source(converted)(ids)
                same_dtype = source.dtype == converted.dtype
                scale = reference.abs().max().item()
                tol = atol if atol is not None else (1e-4 * max(1.0, scale) if same_dtype else 2e-2 * max(1.0, scale))
                diff = (logits - reference).abs().max().item()
                result.numerics = {
                    "max_abs_diff": diff,
                    "tolerance": tol,
                    "tokens": list(ids.shape),
                    "tp": converted.tp,
                }
                if not diff <= tol:
                    result.problems.append(f"logits differ from {against} by {diff:.3g} (tolerance {tol:.3g})")
            finally:
                source.close()
    finally:
        converted.close()
    if result.problems:
        raise VerificationError(f"{folder}: " + "; ".join(result.problems), problems=result.problems)
    return result
