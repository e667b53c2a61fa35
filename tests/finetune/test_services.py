"""Datasets and training jobs through the services, in-process (the Celery tasks' bodies), on the real
database: upload and tokenization, field errors, the GPU-hours cap, a whole run of the real training
command, the private result with its lineage, operator pause / resume with a new learning rate."""

from __future__ import annotations

from typing import Any

import pytest

from access.errors import AccessError, AccessRefused
from artifacts import selectors as artifact_selectors
from artifacts.models import Checkpoint, CheckpointFormat
from finetune import runs, selectors, services
from jobs.models import JobStatus
from tests import factories
from tests.finetune.conftest import META, TINY_HYPERPARAMETERS, Upload, jsonl, ready_dataset

pytestmark = pytest.mark.django_db


def test_dataset_is_tokenized_with_the_checkpoints_tokenizer(
    applicant: Any, holder_grant: Any, base_checkpoint: Any
) -> None:
    from training.data import read_header

    dataset = ready_dataset(applicant, base_checkpoint, jsonl(docs=40))
    assert dataset.status == JobStatus.SUCCEEDED, dataset.error_message
    assert dataset.doc_count == 40 and dataset.token_count > 40 and dataset.bytes_done == dataset.size_bytes
    header = read_header(dataset.tokens_file())
    assert header["num_tokens"] == dataset.token_count and header["eos_token_id"] == 2


@pytest.mark.parametrize(
    ("name", "data", "line", "words"),
    [
        ("bad.jsonl", b'{"text": "fine"}\n{"text": "also fine"}\n{"text": broken\n', 3, "not valid JSON"),
        ("bad.jsonl", b'{"text": "fine"}\n\n{"title": "no text"}\n', 3, '"text"'),
        ("bad.txt", b"a good paragraph\n\n\xff\xfe not utf-8\n", 3, "UTF-8"),
    ],
)
def test_a_malformed_line_refuses_the_dataset_with_its_number(
    applicant: Any, holder_grant: Any, base_checkpoint: Any, name: str, data: bytes, line: int, words: str
) -> None:
    dataset = ready_dataset(applicant, base_checkpoint, data, name=name)
    assert dataset.status == JobStatus.FAILED and dataset.error_line == line
    assert dataset.error_message.startswith(f"Line {line} of {name}: ") and words in dataset.error_message
    assert str(dataset.source_path) not in dataset.error_message  # no server path
    assert not (dataset.tokens_path and dataset.tokens_file().exists())


def test_upload_refusals_name_the_field(
    applicant: Any, other_applicant: Any, holder_grant: Any, base_checkpoint: Any, settings: Any
) -> None:
    def refused(**kwargs: Any) -> AccessError:
        with pytest.raises(AccessError) as caught:
            services.dataset_upload(checkpoint=base_checkpoint, meta=META, dispatch=False, **kwargs)
        return caught.value

    assert refused(owner=applicant, upload=Upload("data.csv", b"a,b\n")).field == "file"
    assert refused(owner=applicant, upload=Upload("empty.jsonl", b"")).field == "file"
    settings.FINETUNE_DATASET_MAX_BYTES = 100
    error = refused(owner=applicant, upload=Upload("big.jsonl", b"x" * 101))
    assert error.field == "file" and "limit is 100 bytes" in error.message
    # No grant to the gated release: refused with the access decision's message.
    assert isinstance(
        refused(owner=factories.make_user("zed@uni.example"), upload=Upload("a.jsonl", b"{}")), AccessRefused
    )


def test_submit_checks_fields_grant_and_gpu_hours_cap(
    applicant: Any, holder_grant: Any, base_checkpoint: Any, reviewer: Any, settings: Any
) -> None:
    dataset = ready_dataset(applicant, base_checkpoint, jsonl(docs=30))

    def refused(**kwargs: Any) -> AccessError:
        values = {
            "owner": applicant,
            "checkpoint": base_checkpoint,
            "dataset": dataset,
            "meta": META,
            "dispatch": False,
        }
        with pytest.raises(AccessError) as caught:
            services.training_job_submit(**{**values, **kwargs})
        return caught.value

    assert refused(hyperparameters={"lr": -1}).field == "lr"
    assert refused(hyperparameters={"steps": "many"}).field == "steps"
    assert refused(hyperparameters={"seq_len": 4096}).field == "seq_len"  # the tiny OPT reads 128 tokens
    assert "128" in refused(hyperparameters={"seq_len": 4096}).message
    assert refused(hyperparameters={"learning_rate": 1}).field == "learning_rate"
    assert refused(hyperparameters={"warmup_steps": 500, "steps": 10}).field == "warmup_steps"
    assert refused(gpus=2, tp=3).field == "tp"
    error = refused(gpus=3, tp=3)
    assert error.field == "tp" and "4 attention heads" in error.message
    assert refused(gpus=2, hyperparameters={"batch_size": 3}).field == "batch_size"
    assert refused(gpus=99).field == "gpus"
    assert refused(max_hours=0).field == "max_hours"
    # The cap: 10 GPU-hours; a queued job reserves gpus x max_hours.
    services.training_job_submit(
        owner=applicant, checkpoint=base_checkpoint, dataset=dataset, gpus=4, max_hours=2, meta=META, dispatch=False
    )
    error = refused(gpus=2, max_hours=1.5)
    assert error.field == "max_hours" and "2 of your 10 left" in error.message
    assert selectors.gpu_hours_used(user=applicant) == 8
    # Someone else's dataset cannot be used, even by a holder of the same release.
    from tests.artifacts.conftest import grant_access

    other = factories.make_user("zoe@uni.example")
    grant_access(other, base_checkpoint.release, reviewer)
    assert refused(owner=other).field == "dataset"


def test_submit_refuses_a_revoked_grant(applicant: Any, holder_grant: Any, base_checkpoint: Any, reviewer: Any) -> None:
    from access.services.grants import grant_revoke

    dataset = ready_dataset(applicant, base_checkpoint, jsonl(docs=30))
    grant_revoke(grant=holder_grant, actor=reviewer, reason="Terms breach", meta=META)
    with pytest.raises(AccessRefused) as caught:
        services.training_job_submit(
            owner=applicant, checkpoint=base_checkpoint, dataset=dataset, meta=META, dispatch=False
        )
    assert "revoked" in caught.value.message


@pytest.mark.slow
def test_a_job_runs_the_real_command_and_registers_a_private_checkpoint_with_lineage(
    applicant: Any, other_applicant: Any, holder_grant: Any, base_checkpoint: Any, reviewer: Any, gated_release: Any
) -> None:
    from tests.artifacts.conftest import grant_access

    grant_access(other_applicant, gated_release, reviewer)
    dataset = ready_dataset(applicant, base_checkpoint)
    job = services.training_job_submit(
        owner=applicant,
        checkpoint=base_checkpoint,
        dataset=dataset,
        hyperparameters=TINY_HYPERPARAMETERS,
        meta=META,
        dispatch=False,
    )
    assert job.grant == holder_grant and job.total_steps == 6 and job.hyperparameters["seq_len"] == 32
    job = runs.training_job_run(job_id=job.pk)
    assert job is not None
    assert job.status == JobStatus.SUCCEEDED, (job.error_message, (job.run_dir() / "output.log").read_text()[-3000:])
    assert job.step == 6 and job.last_loss is not None and job.last_lr is not None and job.tokens_per_s
    assert job.gpu_seconds > 0 and job.attempts == 1

    result = job.result
    assert result.owner == applicant and result.release == gated_release and result.derived_from == base_checkpoint
    assert result.format == CheckpointFormat.NATIVE and result.state == "ready"
    assert result.produced_by_job == {"kind": "finetune", "id": job.pk, "dataset": dataset.pk}
    paths = set(result.files.values_list("path", flat=True))
    assert "config.json" in paths and "tokenizer.json" in paths
    # Private: the owner lists and opens it; a holder of the same release does not see it.
    assert result in artifact_selectors.downloadable_checkpoints(user=applicant)
    assert result not in artifact_selectors.downloadable_checkpoints(user=other_applicant)
    assert base_checkpoint in artifact_selectors.downloadable_checkpoints(user=other_applicant)
    artifact_selectors.access_downloadable_checkpoint(actor=applicant, checkpoint_id=result.pk)
    from django.http import Http404

    with pytest.raises(Http404):
        artifact_selectors.access_downloadable_checkpoint(actor=other_applicant, checkpoint_id=result.pk)
    from django.test import Client
    from django.urls import reverse

    for user, status in ((applicant, 200), (other_applicant, 404)):
        client = Client()
        client.force_login(user)
        assert client.get(reverse("downloads-checkpoint", args=[result.pk])).status_code == status
        listed = client.get(reverse("artifacts-api:checkpoints")).json()["results"]
        assert (result.pk in [row["id"] for row in listed]) is (user == applicant)

    events = selectors.job_logbook(job)
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert events[-1]["event"] == "done"
    # Running the task again (a duplicate delivery) changes nothing.
    again = runs.training_job_run(job_id=job.pk)
    assert again is not None and again.attempts == 1 and Checkpoint.objects.filter(owner=applicant).count() == 1

    # The fine-tuned checkpoint can be fine-tuned again (its own tokenizer came along).
    second = ready_dataset(applicant, result, jsonl(docs=30, seed=3))
    assert second.status == JobStatus.SUCCEEDED, second.error_message


def test_resume_is_for_operators_from_a_committed_step_of_a_stopped_job(
    applicant: Any, holder_grant: Any, base_checkpoint: Any, reviewer: Any
) -> None:
    from training.checkpoint import COMMIT_MARKER, checkpoint_root

    dataset = ready_dataset(applicant, base_checkpoint, jsonl(docs=30))
    job = services.training_job_submit(
        owner=applicant, checkpoint=base_checkpoint, dataset=dataset, meta=META, dispatch=False
    )
    with pytest.raises(AccessError) as conflict:
        services.training_job_resume(job=job, actor=reviewer, from_step=2, reason="x", meta=META)
    assert conflict.value.code == "conflict"  # queued: nothing to resume
    services.training_job_pause(job=job, actor=reviewer, reason="maintenance", meta=META)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.paused
    for step in (2, 4):  # what the engine commits: step_N/ with its marker
        (checkpoint_root(job.run_dir()) / f"step_{step}").mkdir(parents=True)
        (checkpoint_root(job.run_dir()) / f"step_{step}" / COMMIT_MARKER).touch()
    (checkpoint_root(job.run_dir()) / "step_6.tmp").mkdir()  # a save killed part way is not offered
    assert services.committed_steps(job) == [2, 4]

    def refused(actor: Any = reviewer, **kwargs: Any) -> AccessError:
        values = {"from_step": 4, "lr": 2e-4, "reason": "loss spike", **kwargs}
        with pytest.raises(AccessError) as caught:
            services.training_job_resume(job=job, actor=actor, meta=META, dispatch=False, **values)
        return caught.value

    error = refused(from_step=6)
    assert error.field == "from_step" and "[2, 4]" in error.message
    assert refused(lr=-1).field == "lr"
    assert refused(reason=" ").field == "reason"
    assert refused(actor=applicant).code == "not_allowed"
    job = services.training_job_resume(
        job=job, actor=reviewer, from_step=4, lr=2e-4, reason="loss spike", meta=META, dispatch=False
    )
    assert job.status == JobStatus.QUEUED and not job.paused and job.cancel_requested_at is None
    assert job.resume_from_step == 4 and job.hyperparameters["lr"] == 2e-4
    notes = [e for e in selectors.job_logbook(job) if e["event"] == "operator"]
    assert [(n["action"], n["by"]) for n in notes] == [("pause", reviewer.email), ("resume", reviewer.email)]
    assert notes[1]["from_step"] == 4 and notes[1]["lr"] == 2e-4 and notes[1]["reason"] == "loss spike"
    from finetune.runs import train_argv

    argv = train_argv(job, model_dir=job.run_dir(), data=job.run_dir(), run_dir=job.run_dir())
    assert argv[argv.index("--resume-from") + 1] == "4" and argv[argv.index("--lr") + 1] == "0.0002"


@pytest.mark.slow
def test_a_two_process_job_runs_under_torchrun_with_tensor_parallelism(
    applicant: Any, holder_grant: Any, base_checkpoint: Any
) -> None:
    dataset = ready_dataset(applicant, base_checkpoint)
    job = services.training_job_submit(
        owner=applicant,
        checkpoint=base_checkpoint,
        dataset=dataset,
        hyperparameters={**TINY_HYPERPARAMETERS, "steps": 2},
        gpus=2,
        tp=2,
        meta=META,
        dispatch=False,
    )
    job = runs.training_job_run(job_id=job.pk)
    assert job is not None
    assert job.status == JobStatus.SUCCEEDED, (job.error_message, (job.run_dir() / "output.log").read_text()[-3000:])
    start = next(e for e in selectors.job_logbook(job) if e["event"] == "start")
    assert (start["world_size"], start["tp"], start["dp"]) == (2, 2, 1)
    assert job.result is not None and job.result.tp_size == 2 and job.gpu_seconds > 0


@pytest.mark.slow
def test_a_crashed_training_process_is_retried_from_the_last_committed_checkpoint(
    applicant: Any, holder_grant: Any, base_checkpoint: Any, settings: Any
) -> None:
    """The engine's own fault drill (FINETUNE_TRAIN_EXTRA_ARGS) kills the training process at step 3, after
    the checkpoint of step 2: the attempt is requeued with backoff, and the next one continues from step 2."""
    from jobs.services import RetryLater

    settings.FINETUNE_TRAIN_EXTRA_ARGS = ["--inject-fault", "kill:0@3"]
    dataset = ready_dataset(applicant, base_checkpoint)
    job = services.training_job_submit(
        owner=applicant,
        checkpoint=base_checkpoint,
        dataset=dataset,
        hyperparameters=TINY_HYPERPARAMETERS,
        meta=META,
        dispatch=False,
    )
    with pytest.raises(RetryLater) as retry:
        runs.training_job_run(job_id=job.pk)
    assert retry.value.seconds == 60
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.attempts == 1 and job.step == 2
    assert "exit -9" in job.error_message and "from the last committed checkpoint" in job.error_message
    job = runs.training_job_run(job_id=job.pk)  # the retry (the drill fires once per run directory)
    assert job is not None and job.status == JobStatus.SUCCEEDED, job.error_message
    events = selectors.job_logbook(job)
    resume = next(e for e in events if e["event"] == "resume")
    assert resume["from_step"] == 2 and resume["reason"] == "rerun"
    assert [e["step"] for e in events[events.index(resume) :] if e["event"] == "step"] == [3, 4, 5, 6]
