"""The job mechanism is exercised through a real kind (VerificationJob) on a real, local checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.artifacts.conftest import _local_storage, make_checkpoint  # noqa: F401 - the storage fixture


@pytest.fixture
def verification_job(gated_release: Any, tmp_path: Path) -> Any:
    """A queued verification of a ready checkpoint, not sent to any worker."""
    from artifacts.services.verification import verification_enqueue

    checkpoint = make_checkpoint(gated_release, tmp_path)
    return verification_enqueue(checkpoint=checkpoint, dispatch=False)


def live_group_members(pgid: int) -> list[int]:
    """Pids of the process group that are still alive (zombies are dead: only their parent can reap them)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in {"Z", "X"}:
            members.append(int(stat.parent.name))
    return members
