"""Running the fine-tuning app's queued work, with the one job mechanism (`jobs.services`):

- a dataset's check and tokenization (`io` queue): the checkpoint's tokenizer files are materialised, then
  `training.tokenize.tokenize_file` writes the token file, reporting progress; a malformed line refuses
  the dataset with its line number;
- a training job (`gpu` queue): the base checkpoint is materialised, then `python -m training train`
  (under `torchrun` for more than one process) runs as a subprocess under `jobs.runner.run_command`,
  with `--out` the job's run directory. Its logbook.jsonl is followed into the row (step, loss, lr,
  tokens/s) and, at every heartbeat, the owner's access to the release is checked again: a revoked or
  expired grant cancels the job with that reason. The command is idempotent, so an attempt requeued
  after a worker loss continues from the newest committed checkpoint. At the end the exported native
  checkpoint is stored and registered, private to the owner, with its lineage, in ONE transaction with
  the job's success.

A worker killed with SIGKILL cannot kill its subprocess; the subprocess gets SIGKILL from the kernel
when its parent dies (`setpriv --pdeathsig`), and the next attempt also kills whatever is left of the
process group it recorded in the run directory (torchrun's workers), so two attempts never write the
same run directory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, cast

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from access.services.audit import SYSTEM, audit_record
from artifacts.models import Checkpoint, CheckpointFormat, CheckpointState
from artifacts.services.files import HashingReader, create_checkpoint_files, materialise
from artifacts.storage import StorageError, get_storage
from finetune import hyperparameters as hp
from finetune.models import TrainingDataset, TrainingJob
from finetune.selectors import job_may_run
from jobs.kinds import JobKind, JobPolicy
from jobs.models import Job, JobStatus
from jobs.runner import run_command
from jobs.services import Claim, JobCancelled, JobLost, RetryLater, job_cancel, job_claim, retry_delay

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
PID_FILE = "launcher.pid"
OUTPUT_LOG = "output.log"
# How often the running attempt reads new logbook lines (the row is written at most once a second).
FOLLOW_SECONDS = 1.0


def training_policy() -> JobPolicy:
    return JobPolicy(
        stale_seconds=settings.FINETUNE_STALE_SECONDS,
        max_attempts=settings.FINETUNE_MAX_ATTEMPTS,
        heartbeat_seconds=settings.FINETUNE_HEARTBEAT_SECONDS,
    )


def dataset_policy() -> JobPolicy:
    return JobPolicy(
        stale_seconds=settings.FINETUNE_STALE_SECONDS,
        max_attempts=3,
        heartbeat_seconds=settings.FINETUNE_HEARTBEAT_SECONDS,
    )


def _dataset_abandoned(job: Job) -> None:
    assert isinstance(job, TrainingDataset)
    _remove_tokens(job)


def _training_abandoned(job: Job) -> None:
    """Failed by the reaper or cancelled while queued: stop what may be left of its process group. The run
    directory stays (an operator may resume from its checkpoints)."""
    assert isinstance(job, TrainingJob)
    kill_leftover(job.run_dir())


DATASET_JOBS = JobKind(
    model=TrainingDataset, task="finetune.tasks.tokenize_dataset", policy=dataset_policy, on_abandon=_dataset_abandoned
)
TRAINING_JOBS = JobKind(
    model=TrainingJob, task="finetune.tasks.run_training_job", policy=training_policy, on_abandon=_training_abandoned
)


class _Fault(Exception):
    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Permanent(_Fault):
    """Running again cannot help: the job fails."""


class _Transient(_Fault):
    """Another attempt may succeed: the job is queued again, up to its policy's attempts."""


def _finetune_dir() -> Path:
    return Path(settings.FINETUNE_DIR)


# --- Datasets ---------------------------------------------------------------------------------


def _remove_tokens(dataset: TrainingDataset) -> None:
    if dataset.tokens_path:
        (_finetune_dir() / dataset.tokens_path).unlink(missing_ok=True)


def _tokenizer_dir(checkpoint: Checkpoint, folder: Path, claim: Claim[Any]) -> Path:
    """The checkpoint's tokenizer files (at its top level or under tokenizer/) as a local folder."""
    rows = [
        row
        for row in checkpoint.files.order_by("path")
        if row.name in TOKENIZER_FILES
        and row.path.count("/") <= 1
        and row.path.split("/")[0] in (row.name, "tokenizer")
    ]
    materialise(rows, folder, claim)
    for candidate in (folder, folder / "tokenizer"):
        if (candidate / "tokenizer.json").is_file() or (
            (candidate / "vocab.json").is_file() and (candidate / "merges.txt").is_file()
        ):
            if candidate != folder and (folder / "config.json").exists() and not (candidate / "config.json").exists():
                (candidate / "config.json").symlink_to((folder / "config.json").resolve())
            return candidate
    raise _Permanent(
        f"{checkpoint} has no tokenizer (tokenizer.json, or vocab.json + merges.txt); ask an operator to add "
        "it to the checkpoint."
    )


def dataset_tokenize_run(*, job_id: int) -> TrainingDataset | None:
    """Check and tokenize the dataset if it is queued (or running with a stale heartbeat); else nothing."""
    claim = job_claim(
        TrainingDataset, job_id=job_id, reset={"bytes_done": 0, "doc_count": 0, "token_count": 0, "error_line": None}
    )
    if claim is None:
        return TrainingDataset.objects.filter(pk=job_id).first()
    from training.tokenize import TokenizeError, tokenize_file

    dataset = claim.job
    folder = _finetune_dir() / "datasets" / f"dataset-{dataset.pk}"
    tokens = folder / "data.tokens"
    try:
        with claim.heartbeat():
            claim.set_phase("tokenizer")
            checkpoint = Checkpoint.objects.select_related("release").get(pk=dataset.checkpoint_id)
            tokenizer = _tokenizer_dir(checkpoint, folder / "tokenizer", claim)
            claim.set_phase("tokenizing")

            def progress(read: int, docs: int, count: int) -> None:
                claim.progress(bytes_done=read, doc_count=docs, token_count=count)

            header = tokenize_file(
                _finetune_dir() / dataset.source_path,
                tokenizer=tokenizer,
                out=tokens,
                input_format=dataset.input_format,
                progress=False,
                on_progress=progress,
            )
        claim.finish(
            JobStatus.SUCCEEDED,
            tokens_path=tokens.relative_to(_finetune_dir()).as_posix(),
            token_count=int(header["num_tokens"]),
            doc_count=int(header["num_docs"]),
            bytes_done=F("size_bytes"),
        )
    except JobLost:
        log.info("dataset %s: attempt %s lost its claim", dataset.pk, claim.attempt)
    except JobCancelled:
        claim.finish(JobStatus.CANCELLED)
        tokens.unlink(missing_ok=True)
    except TokenizeError as error:
        claim.finish(JobStatus.FAILED, error_message=_dataset_message(dataset, error), error_line=error.line)
    except _Permanent as error:
        claim.finish(JobStatus.FAILED, error_message=str(error))
    except Exception as error:
        claim.finish(JobStatus.FAILED, error_message=f"{type(error).__name__}: {error}")
        raise
    dataset.refresh_from_db()
    return dataset


def _dataset_message(dataset: TrainingDataset, error: Any) -> str:
    """The engine's message without the server's path: "Line 3: not valid JSON (...)"."""
    text = str(error)
    if error.line is not None:
        reason = text.split(f":{error.line}: ", 1)[-1]
        return f"Line {error.line} of {dataset.name}: {reason}. Fix that line and upload the file again."
    return text.replace(str(_finetune_dir() / dataset.source_path), dataset.name)


# --- Training jobs ----------------------------------------------------------------------------


def _process_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie is gone for our purpose


def _group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` on this machine (torchrun's workers outlive their leader)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def kill_leftover(run_dir: Path, *, wait_seconds: float = 30.0) -> bool:
    """Kill what is left on this machine of the process group an earlier attempt started for this run
    directory (the pid file names it). True when something was killed."""
    pid_file = run_dir / PID_FILE
    try:
        pgid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    # Only a group running this very run (its commands name this directory, as torchrun's workers'
    # do), never one that happens to have that id now.
    marker = os.fsencode(str(run_dir))
    killed = any(marker in _cmdline(pid) for pid in _group_members(pgid))
    if killed:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            killed = False
        deadline = time.monotonic() + wait_seconds
        while _group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return killed


def train_argv(job: TrainingJob, *, model_dir: Path, data: Path, run_dir: Path) -> list[str]:
    """The command of one attempt: `python -m training train` (torchrun for more than one process),
    wrapped so the kernel kills it with its parent and its process group id is recorded."""
    flags = [
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--out",
        str(run_dir),
        "--tp",
        str(job.tp),
        *hp.train_flags(job.hyperparameters),
        "--device",
        settings.FINETUNE_DEVICE,
        *settings.FINETUNE_TRAIN_EXTRA_ARGS,
    ]
    if job.resume_from_step is not None:
        flags += ["--resume-from", str(job.resume_from_step)]
    if job.gpus == 1:
        command = [sys.executable, "-m", "training", "train", *flags]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(job.gpus),
            "--max-restarts",
            "2",
            "-m",
            "training",
            "train",
            *flags,
        ]
    wrapper = ["sh", "-c", 'echo $$ > "$0"; exec "$@"', str(run_dir / PID_FILE)]
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        wrapper = [setpriv, "--pdeathsig", "KILL", "--", *wrapper]
    return [*wrapper, *command]


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


class LogbookFollower:
    """Reads the lines appended to logbook.jsonl since the last call (a partial last line waits)."""

    def __init__(self, path: Path, *, from_end: bool = True) -> None:
        self.path = path
        self.offset = path.stat().st_size if from_end and path.is_file() else 0
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        events = []
        for line in lines:
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(record, dict) and "event" in record:
                events.append(record)
        return events


class _RowFollower:
    """Turns logbook events into the job row's columns; writes at most once a second (or when forced)."""

    def __init__(self, claim: Claim[TrainingJob], follower: LogbookFollower) -> None:
        self.claim = claim
        self.follower = follower
        self.values: dict[str, Any] = {}
        self.resumed_by_operator = False
        self.last_error: str | None = None

    def poll(self, *, force: bool = False) -> None:
        for event in self.follower.poll():
            kind = event["event"]
            if kind == "step":
                self.values.update(
                    step=int(event.get("step", 0)),
                    last_loss=_finite(event.get("loss")),
                    last_lr=_finite(event.get("lr")),
                    tokens_per_s=_finite(event.get("tokens_per_s")),
                )
            elif kind == "resume":
                self.values["step"] = int(event.get("from_step") or 0)
                if event.get("reason") == "--resume-from":
                    self.resumed_by_operator = True
                    self.values["resume_from_step"] = None
            elif kind == "rollback":
                self.values["step"] = int(event.get("to_step") or 0)
            elif kind == "error":
                self.last_error = str(event.get("message") or event.get("type") or "error")
        if self.values or force:
            self.claim.progress(force=force, **self.values)


def training_job_run(*, job_id: int) -> TrainingJob | None:
    """Run (or continue) the job if it is queued, or running with a stale heartbeat; otherwise nothing.

    Raises RetryLater after a transient fault (the job is queued again); every other outcome is recorded
    on the row.
    """
    claim = job_claim(TrainingJob, job_id=job_id, reset={"exit_code": None})
    if claim is None:
        return TrainingJob.objects.filter(pk=job_id).first()
    job = claim.job
    started = time.monotonic()
    try:
        with claim.heartbeat():
            _train_claimed(claim)
    except JobLost:
        log.info("training job %s: attempt %s lost its claim", job.pk, claim.attempt)
    except JobCancelled:
        claim.finish(JobStatus.CANCELLED)  # keeps the message the cancel request wrote
    except _Permanent as error:
        claim.finish(JobStatus.FAILED, error_message=str(error), exit_code=error.exit_code)
    except (_Transient, OSError, StorageError) as error:
        message = f"attempt {claim.attempt}: {error}"
        if claim.attempt >= claim.policy.max_attempts:
            claim.finish(
                JobStatus.FAILED,
                error_message=f"Gave up after {claim.attempt} attempts; last fault: {message}",
                exit_code=getattr(error, "exit_code", None),
            )
        else:
            delay = retry_delay(claim.attempt)
            if claim.requeue(message=f"Retrying in {delay} s from the last committed checkpoint ({message})."):
                raise RetryLater(message, seconds=delay) from error
            claim.finish(JobStatus.CANCELLED)
    except Exception as error:
        claim.finish(JobStatus.FAILED, error_message=f"{type(error).__name__}: {error}", exit_code=1)
        raise
    finally:
        TrainingJob.objects.filter(pk=job.pk).update(
            gpu_seconds=F("gpu_seconds") + job.gpus * (time.monotonic() - started)
        )
    job.refresh_from_db()
    return job


def _cancel_if_access_ended(job: TrainingJob) -> bool:
    """Ask the job to stop when its owner may no longer use the release; True if so."""
    allowed, message = job_may_run(job)
    if allowed:
        return False
    job_cancel(job=job, message=f"Cancelled: {message}")
    return True


def _train_claimed(claim: Claim[TrainingJob]) -> None:
    job = TrainingJob.objects.select_related("base_checkpoint__release", "owner", "release", "dataset").get(
        pk=claim.job.pk
    )
    if _cancel_if_access_ended(job):
        claim.beat()
        claim.check()
    run_dir = job.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    kill_leftover(run_dir)

    claim.set_phase("materialising")
    base = job.base_checkpoint
    if base.state != CheckpointState.READY:
        raise _Permanent(f"{base} is {base.get_state_display().lower()} now; fine-tune a ready checkpoint.")
    data = job.dataset.tokens_file()
    if not data.is_file():
        raise _Permanent(f"The tokens of dataset {job.dataset.name} are gone; upload the dataset again.")
    model_dir = materialise(
        list(base.files.order_by("path")),
        base_dir(job) / f"{base.release.slug}-{base.variant}",
        cast(Any, claim),  # reshard's helper only reports progress through the claim, whatever its kind
    )

    claim.set_phase("training")
    follower = _RowFollower(claim, LogbookFollower(run_dir / "logbook.jsonl"))
    tail: list[str] = []
    policy = claim.policy
    next_check = time.monotonic() + policy.heartbeat_seconds

    def on_line(stream: str, line: str) -> None:
        tail.append(line)
        del tail[:-40]

    def heartbeat() -> bool:
        nonlocal next_check
        follower.poll()  # raises JobCancelled / JobLost: run_command then kills the group
        if time.monotonic() < next_check:
            return True
        next_check = time.monotonic() + policy.heartbeat_seconds
        if _cancel_if_access_ended(job):
            return False
        return claim.beat()

    try:
        result = run_command(
            train_argv(job, model_dir=model_dir, data=data, run_dir=run_dir),
            cwd=settings.BASE_DIR,
            env=_subprocess_env(),
            log_path=run_dir / OUTPUT_LOG,
            on_line=on_line,
            heartbeat=heartbeat,
            heartbeat_seconds=FOLLOW_SECONDS,
            timeout_seconds=job.max_hours * 3600,
        )
    finally:
        # run_command left no process of the group behind, whichever way it ended.
        (run_dir / PID_FILE).unlink(missing_ok=True)
    follower.poll(force=True)
    if result.stopped == "cancelled":
        claim.beat()
        claim.check()
        raise JobCancelled(str(job))
    if result.stopped == "timeout":
        raise _Permanent(
            f"The attempt ran past its limit of {job.max_hours:g} hours and was stopped; an operator can resume "
            "it from its last committed checkpoint.",
            exit_code=result.exit_code,
        )
    if result.exit_code != 0:
        reason = follower.last_error or _last_error_line(tail) or f"exit status {result.exit_code}"
        if result.exit_code == 2:  # usage: a flag does not fit the model or the data; running again cannot help
            raise _Permanent(f"The training command refused the settings: {reason}", exit_code=2)
        raise _Transient(
            f"the training command stopped (exit {result.exit_code}): {reason}", exit_code=result.exit_code
        )
    steps = int(job.hyperparameters["steps"])
    export = run_dir / "export" / f"step_{steps}"
    if not (export / "config.json").is_file():
        raise _Transient(f"the run ended without its export in {export.name}", exit_code=0)
    claim.set_phase("storing")
    _publish(claim, job, export)
    _cleanup_after_success(job)


def base_dir(job: TrainingJob) -> Path:
    """Where the base checkpoint is materialised (symlinks into local storage, or downloads from S3)."""
    return job.run_dir().parent / f"job-{job.pk}.base"


def _cleanup_after_success(job: TrainingJob) -> None:
    """The result is stored: the run's checkpoints, export and materialised base go; the logbook, the
    command's output and run.json stay (the job page and the operators read them)."""
    from training.checkpoint import checkpoint_root

    for folder in (checkpoint_root(job.run_dir()), job.run_dir() / "export", base_dir(job)):
        shutil.rmtree(folder, ignore_errors=True)


def _last_error_line(tail: list[str]) -> str | None:
    for line in reversed(tail):
        if line.startswith("error:") or "Error" in line:
            return line.removeprefix("error: ").strip()[:2000]
    return None


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(settings.BASE_DIR), env.get("PYTHONPATH", "")]))
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the engine never imports Django
    return env


def _publish(claim: Claim[TrainingJob], job: TrainingJob, export: Path) -> None:
    """Store the exported checkpoint and register it, private to the owner, with its lineage; the
    checkpoint, its files and the job's success commit together."""
    base = job.base_checkpoint
    variant = f"ft-{job.pk}"
    prefix = f"checkpoints/{base.release.slug}/{variant}"
    storage = get_storage()
    stored: list[tuple[str, int, str, str]] = []
    for path in sorted(p for p in export.rglob("*") if p.is_file()):
        relative = path.relative_to(export).as_posix()
        with open(path, "rb") as handle:
            reader = HashingReader(handle)
            size = storage.write_stream(f"{prefix}/{relative}", reader, size=path.stat().st_size)  # type: ignore[arg-type]
        stored.append((relative, size, reader.sha256.hexdigest(), reader.md5.hexdigest()))
        claim.progress()
    config = json.loads((export / "config.json").read_text())
    now = timezone.now()
    dataset = job.dataset
    with transaction.atomic():
        if claim.fenced().select_for_update().first() is None:
            raise JobLost(f"training job {job.pk} attempt {claim.attempt}")
        checkpoint = Checkpoint.objects.create(
            release=base.release,
            variant=variant,
            format=CheckpointFormat.NATIVE,
            tp_size=int(config.get("tp_size") or job.tp),
            dtype=str(config.get("dtype") or ""),
            state=CheckpointState.READY,
            verified_at=now,
            state_reason=f"Produced by fine-tuning job #{job.pk}: {len(stored)} files.",
            label=f"{base.label or base.variant} fine-tuned on {dataset.name}"[:200],
            description=f"Fine-tuned from {base} on dataset {dataset.name} ({dataset.token_count:,} tokens) by "
            f"job #{job.pk}: {job.hyperparameters.get('steps')} steps, lr {job.hyperparameters.get('lr')}.",
            derived_from=base,
            produced_by_job={"kind": "finetune", "id": job.pk, "dataset": dataset.pk},
            source_uri=f"finetune-job:{job.pk}",
            storage_prefix=prefix,
            owner=job.owner,
        )
        create_checkpoint_files(checkpoint, prefix=prefix, stored=stored, now=now)
        claim.finish(JobStatus.SUCCEEDED, result=checkpoint, exit_code=0, resume_from_step=None)
        audit_record(
            actor=None,
            action="finetune.result",
            target=checkpoint,
            meta=SYSTEM,
            after={"job": job.pk, "base": base.pk, "dataset": dataset.pk, "files": len(stored)},
        )
