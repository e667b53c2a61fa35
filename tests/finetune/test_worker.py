"""The job lifecycle with real Celery workers on real Redis, running the real training command on a tiny
random OPT: a worker killed with SIGKILL mid-run takes its training process with it, the reaper queues
the job again, and a new worker resumes from the last committed checkpoint and finishes; a grant revoked
while a job runs cancels it at its next heartbeat, with the reason."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from access.services.grants import grant_revoke
from finetune import selectors, services
from finetune.models import TrainingJob
from finetune.runs import PID_FILE, _process_alive
from jobs.models import JobStatus
from jobs.services import jobs_reap
from tests.finetune.conftest import META, ready_dataset
from tests.live import database_url_of_test_db

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def queue() -> Iterator[str]:
    """A queue of this test's own on the shared Redis; the tasks are routed to it while the test runs."""
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        pytest.skip("needs REDIS_URL (make test starts Redis when installed; CI always does)")
    from portal.celery import app

    name = f"finetune-test-{uuid.uuid4().hex[:8]}"
    saved = (app.conf.task_always_eager, app.conf.broker_url, app.conf.task_routes)
    app.conf.task_always_eager = False
    app.conf.broker_url = redis_url
    app.conf.task_routes = {"finetune.tasks.*": {"queue": name}}
    app.amqp.flush_routes()
    app.amqp.__dict__.pop("router", None)  # the cached router holds the routes it was made with
    try:
        yield name
    finally:
        with app.connection_for_write() as connection:
            connection.default_channel.queue_purge(name)  # the reaper's delayed duplicate, if still there
        app.conf.task_always_eager, app.conf.broker_url, app.conf.task_routes = saved
        app.amqp.flush_routes()
        app.amqp.__dict__.pop("router", None)


@pytest.fixture
def start_worker(queue: str, settings: Any, tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    workers: list[subprocess.Popen[bytes]] = []
    env = {
        **os.environ,
        "DATABASE_URL": database_url_of_test_db(),
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PYTHONPATH": str(REPO),
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "ARTIFACTS_STORAGE": "local",
        "ARTIFACTS_LOCAL_ROOT": str(settings.ARTIFACTS_LOCAL_ROOT),
        "FINETUNE_DIR": str(settings.FINETUNE_DIR),
        "FINETUNE_DEVICE": "cpu",
        "FINETUNE_HEARTBEAT_SECONDS": "1",
        "FINETUNE_STALE_SECONDS": "3",
        "OMP_NUM_THREADS": "1",
    }

    def start() -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker-{len(workers)}.log", "wb")  # noqa: SIM115 - closed with the process
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", queue, "--pool", "solo"]
            + ["--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def wait_for(condition: Callable[[], Any], what: str, *, seconds: float = 120, log: Path | None = None) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    detail = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(log.glob("worker-*.log"))) if log else ""
    pytest.fail(f"timed out waiting for {what}\n{detail}")


def send(job: TrainingJob) -> None:
    from finetune.tasks import run_training_job

    run_training_job.apply_async(args=[job.pk])


def committed(job: TrainingJob) -> list[int]:
    return services.committed_steps(job)


def submit(applicant: Any, base_checkpoint: Any, steps: int, save_every: int) -> TrainingJob:
    dataset = ready_dataset(applicant, base_checkpoint)
    return services.training_job_submit(
        owner=applicant,
        checkpoint=base_checkpoint,
        dataset=dataset,
        hyperparameters={"steps": steps, "batch_size": 4, "seq_len": 32, "lr": 1e-3, "save_every": save_every},
        meta=META,
        dispatch=False,
    )


def test_worker_killed_mid_run_is_resumed_from_the_last_committed_checkpoint(
    applicant: Any, holder_grant: Any, base_checkpoint: Any, start_worker: Any, tmp_path: Path, settings: Any
) -> None:
    # ~6 ms a step and ~80 ms a save on a 2-core VM: 120 steps take seconds, so the kill lands mid-run.
    job = submit(applicant, base_checkpoint, steps=120, save_every=3)
    first = start_worker()
    send(job)
    wait_for(lambda: committed(job), "a committed checkpoint", log=tmp_path)
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.attempts == 1
    pgid = int((job.run_dir() / PID_FILE).read_text())
    assert _process_alive(pgid)

    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL
    # The kernel kills the training process with its parent (setpriv --pdeathsig): no orphan writes on.
    wait_for(lambda: not _process_alive(pgid), "the training process to die with its worker")
    killed_at = committed(job)[-1]
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.step < 120 and job.result is None

    # Once its heartbeat is stale the reaper queues the job again (sending the task with a backoff); a new
    # worker is sent it now instead of after the backoff (a duplicate message is a no-op: claims decide).
    later = timezone.now() + timedelta(seconds=django_settings.FINETUNE_STALE_SECONDS + 1)
    assert jobs_reap(now=later) >= 1
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and "stopped sending heartbeats" in job.error_message
    start_worker()
    send(job)
    wait_for(
        lambda: TrainingJob.objects.get(pk=job.pk).status in (JobStatus.SUCCEEDED, JobStatus.FAILED),
        "the job to finish",
        log=tmp_path,
    )
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error_message
    assert job.attempts == 2 and job.step == 120 and job.result is not None and job.result.owner == applicant

    events = selectors.job_logbook(job)
    resume = next(e for e in events if e["event"] == "resume")
    assert resume["reason"] == "rerun" and resume["from_step"] == killed_at and killed_at >= 3
    after = [e["step"] for e in events[events.index(resume) :] if e["event"] == "step"]
    assert after == list(range(killed_at + 1, 121))
    assert sum(e["event"] == "start" for e in events) == 1 and events[-1]["event"] == "done"


def test_a_revoked_grant_cancels_the_running_job_at_its_next_heartbeat(
    applicant: Any, holder_grant: Any, base_checkpoint: Any, reviewer: Any, start_worker: Any, tmp_path: Path
) -> None:
    # The revocation reaches the run within a heartbeat (1 s here); 20,000 steps take minutes, so the job
    # cannot have finished on its own by then (300 steps once did, on a fast CI machine).
    job = submit(applicant, base_checkpoint, steps=20_000, save_every=50)
    start_worker()
    send(job)
    wait_for(lambda: TrainingJob.objects.get(pk=job.pk).step > 0, "the first steps", log=tmp_path)
    grant_revoke(grant=holder_grant, actor=reviewer, reason="Terms breach", meta=META)
    wait_for(lambda: not TrainingJob.objects.get(pk=job.pk).is_active, "the job to stop", log=tmp_path)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.step < 20_000 and job.result is None
    assert "revoked" in job.error_message and job.error_message.startswith("Cancelled: ")
    pid_file = job.run_dir() / PID_FILE
    assert not pid_file.exists()  # the attempt ended its process group and cleaned up


def test_operator_pauses_then_resumes_from_a_committed_step_with_a_new_lr(
    applicant: Any, holder_grant: Any, base_checkpoint: Any, reviewer: Any, start_worker: Any, tmp_path: Path
) -> None:
    # The pause reaches the run within a heartbeat (1 s): 600 steps leave it seconds of margin, not tenths.
    job = submit(applicant, base_checkpoint, steps=600, save_every=20)
    start_worker()
    send(job)
    wait_for(lambda: len(committed(job)) >= 2, "two committed checkpoints", log=tmp_path)
    services.training_job_pause(job=job, actor=reviewer, reason="node maintenance", meta=META)
    wait_for(lambda: not TrainingJob.objects.get(pk=job.pk).is_active, "the job to pause", log=tmp_path)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.paused and job.result is None
    steps = committed(job)
    assert len(steps) >= 2 and not (job.run_dir() / PID_FILE).exists()

    job = services.training_job_resume(
        job=job, actor=reviewer, from_step=steps[0], lr=2e-4, reason="loss spike", meta=META, dispatch=False
    )
    send(job)
    wait_for(
        lambda: TrainingJob.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED, "the job to finish", log=tmp_path
    )
    job.refresh_from_db()
    assert job.step == 600 and job.resume_from_step is None and job.result is not None and job.attempts == 2

    events = selectors.job_logbook(job)
    notes = [(e["action"], e["by"], e["reason"]) for e in events if e["event"] == "operator"]
    assert notes == [("pause", reviewer.email, "node maintenance"), ("resume", reviewer.email, "loss spike")]
    resume = next(e for e in events if e["event"] == "resume")
    assert resume["reason"] == "--resume-from" and resume["from_step"] == steps[0]
    assert resume["changes"]["lr"] == [1e-3, 2e-4]
    after = [e for e in events[events.index(resume) :] if e["event"] == "step"]
    assert [e["step"] for e in after] == list(range(steps[0] + 1, 601))
    assert all(e["lr"] <= 2e-4 for e in after)
    # The result is stored: right after, the run's checkpoints and export go; its logbook stays.
    wait_for(lambda: not committed(job) and not (job.run_dir() / "export").exists(), "the cleanup", log=tmp_path)
    assert (job.run_dir() / "logbook.jsonl").is_file()
