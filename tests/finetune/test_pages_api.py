"""The fine-tuning pages and API: upload with a refused line shown, the submit form's field errors, the
job page (step / total, ETA, loss and learning-rate charts as inline SVG, the logbook timeline, the
result link, the cancel button), the operators' list and actions, and the API (submit, list, read,
cancel, logbook)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from finetune.models import TrainingDataset, TrainingJob
from jobs.models import JobStatus
from tests.finetune.conftest import jsonl, ready_dataset

pytestmark = pytest.mark.django_db


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def write_logbook(job: TrainingJob, *, steps: int, spike_at: int | None = None) -> None:
    """A run's logbook as the engine writes it (training.logbook.Logbook)."""
    from training.logbook import Logbook

    book = Logbook(job.run_dir())
    book.write("start", step=0, world_size=1, tp=1, dp=1, steps=job.total_steps)
    for step in range(1, steps + 1):
        loss = float("nan") if step == spike_at else 5.0 / step
        book.write("step", step=step, loss=loss, lr=1e-4 * (1 - step / 100), tokens_per_s=1000.0, seconds=0.5)
        if step % 5 == 0:
            book.write("checkpoint", step=step, path=f"checkpoints/step_{step}", seconds=0.1)
    book.write("resume", from_step=5, reason="rerun", changes={}, path="x")
    book.close()


def test_upload_page_shows_the_refused_line(
    applicant: Any, holder_grant: Any, base_checkpoint: Any, django_capture_on_commit_callbacks: Any
) -> None:
    client = client_for(applicant)
    page = client.get(reverse("finetune-dataset-upload"))
    assert page.status_code == 200 and str(base_checkpoint.variant) in page.content.decode()
    bad = SimpleUploadedFile("notes.jsonl", b'{"text": "ok"}\n{"text": 3}\n')
    with django_capture_on_commit_callbacks(execute=True):  # the io task runs eagerly in unit tests
        response = client.post(
            reverse("finetune-dataset-upload"), {"checkpoint": base_checkpoint.pk, "file": bad, "name": ""}
        )
    dataset = TrainingDataset.objects.get(owner=applicant)
    assert response.status_code == 302 and response["Location"] == reverse("finetune-dataset", args=[dataset.pk])
    body = client.get(response["Location"]).content.decode()
    assert "refused" in body and "Line 2 of notes.jsonl" in body
    wrong = client.post(
        reverse("finetune-dataset-upload"),
        {"checkpoint": base_checkpoint.pk, "file": SimpleUploadedFile("x.csv", b"a,b")},
    )
    assert wrong.status_code == 400 and "upload a .jsonl file" in wrong.content.decode()


def test_submit_form_shows_field_errors_then_queues_the_job(
    applicant: Any, holder_grant: Any, base_checkpoint: Any
) -> None:
    dataset = ready_dataset(applicant, base_checkpoint, jsonl(docs=30))
    client = client_for(applicant)
    form = {
        "checkpoint": base_checkpoint.pk,
        "dataset": dataset.pk,
        "gpus": 1,
        "tp": 1,
        "max_hours": 1,
        "steps": 10,
        "batch_size": 4,
        "seq_len": 32,
        "lr": -1,
        "warmup_steps": 0,
        "decay": "linear",
        "min_lr_ratio": 0.1,
        "weight_decay": 0.0,
        "clip_grad": 1.0,
        "grad_accum": 1,
        "optimizer": "adamw",
        "save_every": 0,
        "seed": 0,
    }
    refused = client.post(reverse("finetune-submit"), form)
    assert refused.status_code == 400 and "lr: must be above 0" in refused.content.decode()
    assert not TrainingJob.objects.exists()
    response = client.post(reverse("finetune-submit"), {**form, "lr": 1e-4})
    job = TrainingJob.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("finetune-job", args=[job.pk])
    assert job.hyperparameters["save_every"] == 1 and job.hyperparameters["lr"] == 1e-4
    page = client.get(reverse("finetune-job", args=[job.pk])).content.decode()
    assert "Cancel the job" in page and "0 / 10" in page
    client.post(reverse("finetune-job-cancel", args=[job.pk]))
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.error_message == f"Cancelled by {applicant.email}."


def _job(owner: Any, checkpoint: Any, **fields: Any) -> TrainingJob:
    dataset = TrainingDataset.objects.create(
        owner=owner, checkpoint=checkpoint, name="docs.jsonl", input_format="jsonl", status=JobStatus.SUCCEEDED
    )
    values = {
        "owner": owner,
        "base_checkpoint": checkpoint,
        "release": checkpoint.release,
        "dataset": dataset,
        "hyperparameters": {"steps": 100, "lr": 1e-4},
        "max_hours": 1,
        "total_steps": 100,
        **fields,
    }
    return TrainingJob.objects.create(**values)


def test_job_page_charts_timeline_eta_and_operator_actions(
    applicant: Any, holder_grant: Any, base_checkpoint: Any, reviewer: Any
) -> None:
    job = _job(applicant, base_checkpoint, status=JobStatus.RUNNING, step=20, last_loss=0.25)
    write_logbook(job, steps=20, spike_at=7)
    page = client_for(applicant).get(reverse("finetune-job", args=[job.pk])).content.decode()
    assert 'data-testid="loss-chart"' in page and 'data-testid="lr-chart"' in page
    assert page.count("<polyline") == 2
    assert "about 40 s left" in page  # 80 steps at the median 0.5 s
    assert 'data-event="checkpoint"' in page and 'data-event="resume"' in page and "(rerun)" in page
    assert 'data-event="step"' not in page  # steps are the charts, not the timeline

    operator = client_for(reviewer)
    listing = operator.get(reverse("finetune-operator-jobs")).content.decode()
    assert applicant.email in listing and reverse("finetune-operator-job", args=[job.pk]) in listing
    refused = operator.post(reverse("finetune-operator-pause", args=[job.pk]), {"reason": ""})
    assert refused.status_code == 400
    operator.post(reverse("finetune-operator-pause", args=[job.pk]), {"reason": "node maintenance"})
    job.refresh_from_db()
    assert job.paused and job.cancel_requested_at is not None
    assert job.error_message == f"Paused by {reviewer.email}: node maintenance"
    note = [line for line in (job.run_dir() / "logbook.jsonl").read_text().splitlines() if '"operator"' in line]
    assert len(note) == 1 and "node maintenance" in note[0] and reviewer.email in note[0]


def test_api_submit_list_read_cancel_and_logbook(
    applicant: Any, other_applicant: Any, holder_grant: Any, base_checkpoint: Any
) -> None:
    client = client_for(applicant)
    upload = client.post(
        reverse("finetune-api:training-datasets"),
        {"checkpoint": base_checkpoint.pk, "file": SimpleUploadedFile("d.jsonl", jsonl(docs=20))},
    )
    assert upload.status_code == 201 and upload.json()["status"] == "queued"
    dataset = TrainingDataset.objects.get(pk=upload.json()["id"])
    from finetune.runs import dataset_tokenize_run

    dataset_tokenize_run(job_id=dataset.pk)
    assert client.get(reverse("finetune-api:training-dataset", args=[dataset.pk])).json()["status"] == "succeeded"

    body = {"checkpoint": base_checkpoint.pk, "dataset": dataset.pk, "hyperparameters": {"steps": 0}}
    refused = client.post(reverse("finetune-api:training-jobs"), body, content_type="application/json")
    assert refused.status_code == 400 and "steps" in refused.json()["errors"]
    body["hyperparameters"] = {"steps": 8, "batch_size": 2, "seq_len": 32}
    created = client.post(reverse("finetune-api:training-jobs"), body, content_type="application/json")
    assert created.status_code == 201, created.json()
    job_id = created.json()["id"]
    assert created.json()["hyperparameters"]["lr"] == 1e-5 and created.json()["total_steps"] == 8
    assert [row["id"] for row in client.get(reverse("finetune-api:training-jobs")).json()["results"]] == [job_id]
    assert client_for(other_applicant).get(reverse("finetune-api:training-jobs")).json()["results"] == []

    job = TrainingJob.objects.get(pk=job_id)
    write_logbook(job, steps=3, spike_at=2)
    logbook = client.get(reverse("finetune-api:training-job-logbook", args=[job_id])).json()
    losses = [e["loss"] for e in logbook["events"] if e["event"] == "step"]
    assert losses[0] == 5.0 and losses[1] is None and math.isclose(losses[2], 5 / 3)  # NaN is sent as null
    cancelled = client.post(
        reverse("finetune-api:training-job-cancel", args=[job_id]), {}, content_type="application/json"
    )
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.post(reverse("finetune-api:training-job-cancel", args=[job_id]), {}, content_type="application/json")
    assert again.status_code == 409

    schema = client.get(reverse("api-schema")).content.decode()
    for path in ("/api/v1/training-jobs/", "/api/v1/training-jobs/{job_id}/logbook/", "/api/v1/training-datasets/"):
        assert path in schema


def test_admin_lists_datasets_and_jobs_read_only(
    admin: Any, applicant: Any, holder_grant: Any, base_checkpoint: Any
) -> None:
    job = _job(applicant, base_checkpoint)
    client = client_for(admin)
    for model, row in ((TrainingJob, job), (TrainingDataset, job.dataset)):
        base = f"/admin/finetune/{model._meta.model_name}/"
        assert client.get(base).status_code == 200
        assert client.get(f"{base}{row.pk}/change/").status_code == 200
        assert client.get(f"{base}add/").status_code == 403
