"""Fixtures for the fine-tuning tests: a tiny random OPT with a tokenizer of its own (built here, no
download) imported as a ready checkpoint of a gated release, a grant holder, and datasets."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from access.services.audit import RequestMeta
from tests.artifacts.conftest import grant_access, make_checkpoint
from tests.inference_worker._tiny import CORPUS

META = RequestMeta(ip="127.0.0.1", user_agent="pytest")
WORDS = sorted({word for line in CORPUS for word in line.split()})


@pytest.fixture(autouse=True)
def _finetune_settings(settings: Any, tmp_path: Path) -> None:
    settings.ARTIFACTS_STORAGE = "local"
    settings.ARTIFACTS_LOCAL_ROOT = tmp_path / "storage"
    settings.ARTIFACTS_X_ACCEL_PREFIX = ""
    settings.ARTIFACTS_IMPORT_ROOTS = []
    settings.FINETUNE_DIR = tmp_path / "finetune"
    settings.FINETUNE_DEVICE = "cpu"
    settings.FINETUNE_GPU_HOURS_PER_USER = 10
    settings.FINETUNE_MAX_HOURS_PER_JOB = 2


@pytest.fixture(scope="session")
def tiny_opt_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """transformers' save_pretrained of a random 2-layer OPT (vocab 128) plus tokenizer.json, as bytes."""
    from tests.inference_worker._tiny import make_checkpoint as make_hf

    folder = make_hf("opt", tmp_path_factory.mktemp("tiny-opt") / "opt")
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.fixture
def base_checkpoint(gated_release: Any, tmp_path: Path, tiny_opt_files: dict[str, bytes]) -> Any:
    return make_checkpoint(gated_release, tmp_path, tiny_opt_files, variant="hf-tiny")


@pytest.fixture
def holder_grant(applicant: Any, gated_release: Any, reviewer: Any) -> Any:
    return grant_access(applicant, gated_release, reviewer)


class Upload:
    """What the services read of an uploaded file (Django's UploadedFile offers the same)."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self.size = len(data)
        self._data = data

    def chunks(self) -> list[bytes]:
        return [self._data[i : i + 4096] for i in range(0, len(self._data), 4096)] or [b""]


def jsonl(docs: int = 120, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))}) for _ in range(docs)]
    return ("\n".join(lines) + "\n").encode()


def ready_dataset(owner: Any, checkpoint: Any, data: bytes | None = None, name: str = "docs.jsonl") -> Any:
    """Upload and tokenize in-process (the `io` task's body)."""
    from finetune import runs, services

    dataset = services.dataset_upload(
        owner=owner, checkpoint=checkpoint, upload=Upload(name, data or jsonl()), meta=META, dispatch=False
    )
    runs.dataset_tokenize_run(job_id=dataset.pk)
    dataset.refresh_from_db()
    return dataset


TINY_HYPERPARAMETERS = {"steps": 6, "batch_size": 4, "seq_len": 32, "lr": 1e-3, "save_every": 2}
