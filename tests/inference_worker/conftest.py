"""Fixtures for the inference engine tests: tiny random checkpoints with their own tokenizer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# The repository root (for `import inference_worker`) and this folder (for `_tiny`) must be
# importable in spawned worker processes too, which inherit sys.path from this process.
_HERE = Path(__file__).resolve().parent
for _path in (str(_HERE.parents[1]), str(_HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _tiny import CASES, make_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> directory written by transformers' save_pretrained, plus tokenizer.json."""
    root = tmp_path_factory.mktemp("iw")
    return {name: make_checkpoint(name, root / name) for name in CASES}


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fast_and_isolated() -> None:
    """Overrides the Django-wide autouse fixture of tests/conftest.py: the engine never touches
    Django, and these tests also run with ``-p no:django``."""
