"""Claim with a fencing token, heartbeat, reaper and cancel, on a real job kind (VerificationJob)."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from access.errors import Conflict
from artifacts.models import Checkpoint, CheckpointState, VerificationJob, VerificationStatus
from jobs.models import JobStatus
from jobs.runner import run_command
from jobs.services import JobCancelled, JobLost, job_cancel, job_claim, jobs_reap
from tests.jobs.conftest import live_group_members

pytestmark = pytest.mark.django_db


def _make_stale(job: Any, settings: Any) -> None:
    long_ago = timezone.now() - timedelta(seconds=settings.ARTIFACTS_VERIFY_STALE_SECONDS + 60)
    VerificationJob.objects.filter(pk=job.pk).update(heartbeat_at=long_ago)


def test_claim_twice_only_one_wins(verification_job: Any) -> None:
    first = job_claim(VerificationJob, job_id=verification_job.pk)
    second = job_claim(VerificationJob, job_id=verification_job.pk)  # a duplicate delivery
    assert first is not None and second is None
    assert first.attempt == 1 and first.job.status == JobStatus.RUNNING
    assert job_claim(VerificationJob, job_id=999999) is None


def test_a_stale_attempt_cannot_write_once_another_claimed(verification_job: Any, settings: Any) -> None:
    old = job_claim(VerificationJob, job_id=verification_job.pk)
    assert old is not None
    _make_stale(verification_job, settings)
    new = job_claim(VerificationJob, job_id=verification_job.pk)  # the worker of `old` looked dead
    assert new is not None and new.attempt == 2

    with pytest.raises(JobLost):
        old.progress(force=True, bytes_hashed=123)
    assert not old.beat()
    assert not old.finish(VerificationStatus.SUCCEEDED, report={"from": "old"})
    row = VerificationJob.objects.get(pk=verification_job.pk)
    assert row.status == JobStatus.RUNNING and row.attempts == 2 and row.bytes_hashed == 0 and row.report == {}

    new.progress(force=True, bytes_hashed=7)
    assert new.finish(VerificationStatus.SUCCEEDED, report={"from": "new"})
    row.refresh_from_db()
    assert row.status == VerificationStatus.SUCCEEDED and row.report == {"from": "new"} and row.bytes_hashed == 7


def test_reaper_requeues_a_stale_job_then_fails_it_out_of_attempts(verification_job: Any, settings: Any) -> None:
    settings.ARTIFACTS_VERIFY_MAX_ATTEMPTS = 2
    checkpoint = verification_job.checkpoint
    assert job_claim(VerificationJob, job_id=verification_job.pk) is not None
    Checkpoint.objects.filter(pk=checkpoint.pk).update(state=CheckpointState.VERIFYING)
    _make_stale(verification_job, settings)

    # Attempts left: queued again and sent (tasks run eagerly here, so the retry runs at once).
    assert jobs_reap() == 1
    job = VerificationJob.objects.get(pk=verification_job.pk)
    assert job.status == VerificationStatus.SUCCEEDED and job.attempts == 2
    checkpoint.refresh_from_db()
    assert checkpoint.state == CheckpointState.READY

    # Out of attempts: failed ("error" for verification), and the checkpoint is released.
    again = VerificationJob.objects.create(checkpoint=checkpoint, status=JobStatus.RUNNING, attempts=2)
    Checkpoint.objects.filter(pk=checkpoint.pk).update(state=CheckpointState.VERIFYING)
    _make_stale(again, settings)
    assert jobs_reap() == 1
    again.refresh_from_db()
    assert again.status == VerificationStatus.ERROR and "stopped sending heartbeats" in again.error_message
    checkpoint.refresh_from_db()
    assert checkpoint.state == CheckpointState.REGISTERED and "verify again" in checkpoint.state_reason
    assert jobs_reap() == 0  # a fresh or finished job is left alone


def test_cancel_a_queued_job_at_once(verification_job: Any) -> None:
    job = job_cancel(job=verification_job)
    assert job.status == JobStatus.CANCELLED and job.finished_at is not None
    assert job_claim(VerificationJob, job_id=job.pk) is None  # its message, delivered later, is a no-op
    with pytest.raises(Conflict, match="only queued or running jobs can be cancelled"):
        job_cancel(job=job)


def test_a_running_job_notices_the_cancel_at_its_next_heartbeat(verification_job: Any) -> None:
    claim = job_claim(VerificationJob, job_id=verification_job.pk)
    assert claim is not None
    job = job_cancel(job=verification_job, message="Cancelled by the operator.")
    assert job.status == JobStatus.RUNNING and job.cancel_requested  # the attempt decides when it stops
    assert not claim.beat()
    with pytest.raises(JobCancelled):
        claim.progress(bytes_hashed=1)
    assert claim.finish(JobStatus.CANCELLED)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.error_message == "Cancelled by the operator."
    assert job_claim(VerificationJob, job_id=job.pk) is None


def test_the_reaper_ends_a_stale_job_that_was_asked_to_cancel(verification_job: Any, settings: Any) -> None:
    assert job_claim(VerificationJob, job_id=verification_job.pk) is not None
    job_cancel(job=verification_job)
    _make_stale(verification_job, settings)
    assert jobs_reap() == 1
    verification_job.refresh_from_db()
    assert verification_job.status == JobStatus.CANCELLED and verification_job.attempts == 1


def test_cancel_stops_a_command_running_for_a_job(verification_job: Any, tmp_path: Path) -> None:
    """The pattern of a training job: the attempt runs a command (torchrun) with the claim's heartbeat;
    a cancel between two beats kills the command's whole process group."""
    claim = job_claim(VerificationJob, job_id=verification_job.pk)
    assert claim is not None
    script = textwrap.dedent(
        """
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print(os.getpgrp(), child.pid, flush=True)
        time.sleep(120)
        """
    )
    lines: list[str] = []
    beats = 0

    def heartbeat() -> bool:
        nonlocal beats
        beats += 1
        if beats == 2:  # an operator presses Cancel while the command runs
            job_cancel(job=verification_job)
        return claim.beat()

    result = run_command(
        [sys.executable, "-c", script],
        on_line=lambda stream, line: lines.append(line),
        heartbeat=heartbeat,
        heartbeat_seconds=0.2,
        kill_grace_seconds=1,
    )
    assert result.stopped == "cancelled" and result.exit_code < 0
    pgid = int(lines[0].split()[0])  # the grandchild (second number) is in this group too
    assert pgid != os.getpgrp()  # the command had its own group...
    deadline = time.monotonic() + 10
    while live_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_group_members(pgid) == []  # ...and nothing of it survives, the grandchild included
    with pytest.raises(JobCancelled):
        claim.check()


def test_a_transient_fault_after_a_cancel_request_does_not_requeue(verification_job: Any) -> None:
    """Otherwise the job would sit queued with a cancel request that no claim accepts."""
    claim = job_claim(VerificationJob, job_id=verification_job.pk)
    assert claim is not None
    job_cancel(job=verification_job)
    assert not claim.requeue(message="disk full, retrying")
    assert claim.finish(JobStatus.CANCELLED)
    verification_job.refresh_from_db()
    assert verification_job.status == JobStatus.CANCELLED and verification_job.error_message == "Cancelled on request."
