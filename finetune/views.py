"""Pages of the fine-tuning app: the user's jobs and datasets, the submit and upload forms, one job's page
(status, step / total and ETA, loss and learning-rate charts, the logbook's events, the result), and the
operators' list of every job with pause, resume and cancel. Each view validates, calls one service or
selector, and renders."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from access.errors import AccessError
from access.selectors import is_reviewer
from access.services.audit import RequestMeta
from finetune import selectors, services
from finetune.forms import DatasetUploadForm, PauseForm, ResumeForm, SubmitForm
from finetune.models import TrainingJob
from gateway.charts import PALETTE, line_chart


def _form_error(form: Any, error: AccessError) -> None:
    form.add_error(error.field if error.field in form.fields else None, error.message)


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "finetune/job_list.html",
        {
            "jobs": selectors.user_training_jobs(user=request.user)[:200],
            "datasets": selectors.user_datasets(user=request.user)[:200],
            "gpu_hours_used": selectors.gpu_hours_used(user=request.user),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def dataset_upload(request: HttpRequest) -> HttpResponse:
    checkpoints = selectors.trainable_checkpoints(user=request.user)
    form = DatasetUploadForm(request.POST or None, request.FILES or None, checkpoints=checkpoints)
    if request.method == "POST" and form.is_valid():
        checkpoint = next(c for c in checkpoints if c.pk == form.cleaned_data["checkpoint"])
        try:
            dataset = services.dataset_upload(
                owner=request.user,
                checkpoint=checkpoint,
                upload=form.cleaned_data["file"],
                name=form.cleaned_data["name"],
                meta=RequestMeta.from_request(request),
            )
        except AccessError as error:
            _form_error(form, error)
        else:
            messages.success(request, f"{dataset.name} uploaded; it is checked and tokenized now.")
            return redirect("finetune-dataset", dataset.pk)
    return render(request, "finetune/dataset_upload.html", {"form": form}, status=400 if form.errors else 200)


@login_required
def dataset_detail(request: HttpRequest, dataset_id: int) -> HttpResponse:
    dataset = selectors.access_dataset(actor=request.user, dataset_id=dataset_id)
    return render(request, "finetune/dataset_detail.html", {"dataset": dataset})


@login_required
@require_http_methods(["GET", "POST"])
def job_submit(request: HttpRequest) -> HttpResponse:
    checkpoints = selectors.trainable_checkpoints(user=request.user)
    datasets = list(selectors.user_datasets(user=request.user).filter(status="succeeded"))
    form = SubmitForm(request.POST or None, checkpoints=checkpoints, datasets=datasets)
    if request.method == "POST" and form.is_valid():
        checkpoint = next(c for c in checkpoints if c.pk == form.cleaned_data["checkpoint"])
        dataset = next(d for d in datasets if d.pk == form.cleaned_data["dataset"])
        try:
            job = services.training_job_submit(
                owner=request.user,
                checkpoint=checkpoint,
                dataset=dataset,
                hyperparameters=form.hyperparameters(),
                tp=form.cleaned_data["tp"],
                gpus=form.cleaned_data["gpus"],
                max_hours=form.cleaned_data["max_hours"],
                meta=RequestMeta.from_request(request),
            )
        except AccessError as error:
            _form_error(form, error)
        else:
            messages.success(request, f"Training job #{job.pk} is queued.")
            return redirect("finetune-job", job.pk)
    return render(
        request,
        "finetune/job_submit.html",
        {"form": form, "gpu_hours_used": selectors.gpu_hours_used(user=request.user)},
        status=400 if form.errors else 200,
    )


def _job_context(job: TrainingJob) -> dict[str, Any]:
    events = selectors.job_logbook(job)
    steps = [e for e in events if e.get("event") == "step" and isinstance(e.get("step"), int)]
    marks = [
        (float(e.get("from_step") or e.get("to_step") or 0), str(e["event"]))
        for e in events
        if e.get("event") in ("resume", "rollback")
    ]
    losses = [(float(e["step"]), float(e["loss"])) for e in steps if _number(e.get("loss"))]
    rates = [(float(e["step"]), float(e["lr"])) for e in steps if _number(e.get("lr"))]
    return {
        "job": job,
        "timeline": selectors.job_timeline(events),
        "eta_seconds": selectors.job_eta_seconds(job, events),
        "loss_chart": line_chart(losses, marks=marks, colour=PALETTE[0]) if losses else None,
        "lr_chart": line_chart(rates, marks=marks, colour=PALETTE[1], height=140) if rates else None,
    }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


@login_required
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.access_training_job(actor=request.user, job_id=job_id)
    return render(request, "finetune/job_detail.html", {**_job_context(job), "operator": False})


@login_required
@require_POST
def job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.access_training_job(actor=request.user, job_id=job_id)
    try:
        services.training_job_cancel(job=job, actor=request.user, meta=RequestMeta.from_request(request))
    except AccessError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"Job #{job.pk}: cancel requested.")
    return redirect("finetune-job", job.pk)


# --- Operators --------------------------------------------------------------------------------


@login_required
def operator_jobs(request: HttpRequest) -> HttpResponse:
    if not is_reviewer(request.user):
        raise PermissionDenied("Only operators and reviewers can see every training job.")
    return render(request, "finetune/operator_jobs.html", {"jobs": selectors.all_training_jobs()[:500]})


def _resumable_steps(job: TrainingJob) -> list[int]:
    return services.committed_steps(job) if job.status in ("cancelled", "failed") else []


def _operator_page(
    request: HttpRequest, job: TrainingJob, *, pause_form: Any = None, resume_form: Any = None, status: int = 200
) -> HttpResponse:
    steps = _resumable_steps(job)
    return render(
        request,
        "finetune/job_detail.html",
        {
            **_job_context(job),
            "operator": True,
            "pause_form": pause_form or PauseForm(),
            "resume_form": resume_form or ResumeForm(steps=steps, initial={"lr": job.hyperparameters.get("lr")}),
            "committed_steps": steps,
        },
        status=status,
    )


@login_required
def operator_job(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.access_operator_training_job(actor=request.user, job_id=job_id)
    return _operator_page(request, job)


@login_required
@require_POST
def operator_pause(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.access_operator_training_job(actor=request.user, job_id=job_id)
    form = PauseForm(request.POST)
    if form.is_valid():
        try:
            services.training_job_pause(
                job=job, actor=request.user, reason=form.cleaned_data["reason"], meta=RequestMeta.from_request(request)
            )
        except AccessError as error:
            _form_error(form, error)
        else:
            messages.success(request, f"Job #{job.pk} is pausing; its checkpoints are kept.")
            return redirect("finetune-operator-job", job.pk)
    return _operator_page(request, job, pause_form=form, status=400)


@login_required
@require_POST
def operator_resume(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.access_operator_training_job(actor=request.user, job_id=job_id)
    form = ResumeForm(request.POST, steps=_resumable_steps(job))
    if form.is_valid():
        try:
            services.training_job_resume(
                job=job,
                actor=request.user,
                from_step=form.cleaned_data["from_step"],
                lr=form.cleaned_data["lr"],
                reason=form.cleaned_data["reason"],
                meta=RequestMeta.from_request(request),
            )
        except AccessError as error:
            _form_error(form, error)
        else:
            messages.success(request, f"Job #{job.pk} is queued again from step {form.cleaned_data['from_step']}.")
            return redirect("finetune-operator-job", job.pk)
    return _operator_page(request, job, resume_form=form, status=400)


@login_required
@require_POST
def operator_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.access_operator_training_job(actor=request.user, job_id=job_id)
    try:
        services.training_job_cancel(
            job=job, actor=request.user, reason=request.POST.get("reason", ""), meta=RequestMeta.from_request(request)
        )
    except AccessError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"Job #{job.pk}: cancel requested.")
    return redirect("finetune-operator-job", job.pk)
