"""Fixtures for the training/ tests: tiny transformers checkpoints with random weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# The repository root (for `import training`) and this folder (for the `_dist` / `_workers`
# helpers) must be importable whatever pytest's import mode, and in spawned worker processes,
# which inherit sys.path from this process.
_HERE = Path(__file__).resolve().parent
for _path in (str(_HERE.parents[1]), str(_HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _workers import HF_CASES, make_hf_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> directory written by transformers' save_pretrained (one per tiny case)."""
    root = tmp_path_factory.mktemp("hf")
    return {name: make_hf_checkpoint(name, root / name) for name in HF_CASES}


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fast_and_isolated() -> None:
    """Overrides the Django-wide autouse fixture of tests/conftest.py: these tests touch neither
    Django nor its settings, and must also run with ``-p no:django``."""
