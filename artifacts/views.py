"""Pages of the artifacts app: download pages and bundles for users, checkpoint and download views
for operators, and the signed-link endpoint. Each view validates, calls one service or selector,
and renders."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from access.errors import AccessError, AccessRefused, NotAllowed
from access.selectors import access_grant, is_reviewer
from access.services.audit import RequestMeta
from access.services.grants import grant_revoke
from artifacts import selectors
from artifacts.models import Checkpoint, ReshardFormat, ReshardJob
from artifacts.services import links, reshard, verification
from artifacts.services.downloads import DownloadRefused, download_redeem
from artifacts.services.links import Bundle
from artifacts.serving import download_response, refusal_response
from jobs.models import JobStatus


def _link_path(token: str) -> str:
    return reverse("download-file", args=[token])


def _renewal_path(checkpoint_id: int) -> str:
    return reverse("downloads-renew", args=[checkpoint_id])


def _base_url(request: HttpRequest) -> str:
    return request.build_absolute_uri("/").rstrip("/")


def _downloadable(request: HttpRequest, checkpoint_id: int) -> Checkpoint:
    try:
        checkpoint, _decision = selectors.access_downloadable_checkpoint(
            actor=request.user, checkpoint_id=checkpoint_id
        )
    except AccessRefused:
        raise  # a PermissionDenied too: the 403 page says why and how to get access again
    except NotAllowed as error:
        raise PermissionDenied(error.message) from None
    return checkpoint


def issue_bundle(request: HttpRequest, checkpoint: Checkpoint, *, record: bool = True) -> Bundle:
    try:
        return links.links_issue(
            user=request.user,
            checkpoint=checkpoint,
            base_url=_base_url(request),
            link_url=_link_path,
            renewal_url=_renewal_path(checkpoint.pk),
            meta=RequestMeta.from_request(request),
            record=record,
        )
    except NotAllowed as error:
        raise PermissionDenied(error.message) from None


# --- The signed link --------------------------------------------------------------------------


@never_cache
@require_http_methods(["GET", "HEAD"])
def download_file(request: HttpRequest, token: str) -> HttpResponseBase:
    head = request.method == "HEAD"
    try:
        redemption = download_redeem(
            token=token,
            request_user=request.user,
            meta=RequestMeta.from_request(request),
            renewal_url_for=_renewal_path,
            range_header=request.META.get("HTTP_RANGE"),
            if_none_match=request.META.get("HTTP_IF_NONE_MATCH"),
            if_range=request.META.get("HTTP_IF_RANGE"),
            head=head,
        )
    except DownloadRefused as refusal:
        return refusal_response(request, refusal)
    return download_response(redemption, head=head)


# --- Users' download pages --------------------------------------------------------------------


@login_required
def my_downloads(request: HttpRequest) -> HttpResponse:
    return render(
        request, "artifacts/my_downloads.html", {"checkpoints": selectors.downloadable_checkpoints(user=request.user)}
    )


@login_required
def checkpoint_download(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    checkpoint = _downloadable(request, checkpoint_id)
    bundle = issue_bundle(request, checkpoint, record=False)
    return render(request, "artifacts/download.html", {"checkpoint": checkpoint, "bundle": bundle})


@login_required
@require_http_methods(["GET", "POST"])
def checkpoint_renew(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    """The page an expired link points to: one click (POST) gets fresh links, no reviewer involved."""
    checkpoint = _downloadable(request, checkpoint_id)
    if request.method == "POST":
        bundle = issue_bundle(request, checkpoint)
        messages.success(
            request,
            f"Fresh links issued; they expire on {bundle.expires_at:%Y-%m-%d %H:%M} UTC. "
            "Download the new download.sh and run it in the same directory to resume.",
        )
        return redirect("downloads-checkpoint", checkpoint_id=checkpoint.pk)
    return render(request, "artifacts/renew.html", {"checkpoint": checkpoint})


def _text(body: str, filename: str, content_type: str = "text/plain; charset=utf-8") -> HttpResponse:
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


@login_required
def bundle_sha256sums(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    return _text(issue_bundle(request, _downloadable(request, checkpoint_id), record=False).sha256sums(), "SHA256SUMS")


@login_required
def bundle_md5sums(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    return _text(issue_bundle(request, _downloadable(request, checkpoint_id), record=False).md5sums(), "MD5SUMS")


@login_required
def bundle_manifest(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    bundle = issue_bundle(request, _downloadable(request, checkpoint_id))
    response = JsonResponse(bundle.manifest(), json_dumps_params={"indent": 2})
    response["Content-Disposition"] = 'attachment; filename="manifest.json"'
    response["Cache-Control"] = "no-store"
    return response


@login_required
def bundle_script(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    bundle = issue_bundle(request, _downloadable(request, checkpoint_id))
    return _text(bundle.download_script(), "download.sh", "text/x-shellscript; charset=utf-8")


# --- Operators and reviewers ------------------------------------------------------------------


def _operator(request: HttpRequest) -> None:
    if not is_reviewer(request.user):
        raise PermissionDenied("Only operators and reviewers can see checkpoints and downloads.")


@login_required
def checkpoint_index(request: HttpRequest) -> HttpResponse:
    _operator(request)
    counts = selectors.checkpoint_download_counts()
    rows = [(checkpoint, counts.get(checkpoint.pk, {})) for checkpoint in selectors.operator_checkpoints()]
    return render(request, "artifacts/checkpoint_index.html", {"rows": rows})


class ReshardForm(forms.Form):
    to = forms.ChoiceField(label="Target format", choices=ReshardFormat.choices)
    tp = forms.IntegerField(
        label="Tensor-parallel parts",
        min_value=1,
        max_value=4096,
        required=False,
        help_text="Empty: the source's (always 1 for transformers).",
    )
    dtype = forms.ChoiceField(
        label="Data type",
        required=False,
        choices=[
            ("", "Same as the source"),
            ("fp16", "float16"),
            ("bf16", "bfloat16"),
            ("fp32", "float32"),
        ],
    )


def _checkpoint_page(
    request: HttpRequest, checkpoint: Checkpoint, *, reshard_form: ReshardForm | None = None, status: int = 200
) -> HttpResponse:
    job = selectors.latest_verification(checkpoint)
    reshard_list = list(selectors.checkpoint_reshard_jobs(checkpoint)[:20])
    return render(
        request,
        "artifacts/checkpoint_detail.html",
        {
            "checkpoint": checkpoint,
            "files": selectors.checkpoint_files(checkpoint),
            "size": selectors.checkpoint_size(checkpoint),
            "job": job,
            "jobs": checkpoint.verification_jobs.all()[:10],
            "counts": selectors.checkpoint_download_counts().get(checkpoint.pk, {}),
            "derivatives": checkpoint.derivatives.all(),
            "reshard_form": reshard_form or ReshardForm(initial={"to": ReshardFormat.NATIVE, "tp": checkpoint.tp_size}),
            "reshard_jobs": reshard_list,
            "reshard_active": any(item.is_active for item in reshard_list),
            "produced_by": ReshardJob.objects.select_related("source").filter(output=checkpoint).first(),
        },
        status=status,
    )


@login_required
def checkpoint_detail(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    checkpoint = selectors.access_operator_checkpoint(actor=request.user, checkpoint_id=checkpoint_id)
    return _checkpoint_page(request, checkpoint)


@login_required
@require_POST
def checkpoint_reshard(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    """The Convert form: queue a reshard job (or find the same conversion already asked for)."""
    checkpoint = selectors.access_operator_checkpoint(actor=request.user, checkpoint_id=checkpoint_id)
    form = ReshardForm(request.POST)
    if form.is_valid():
        try:
            outcome = reshard.reshard_job_create(
                checkpoint=checkpoint,
                to=form.cleaned_data["to"],
                tp=form.cleaned_data["tp"],
                dtype=form.cleaned_data["dtype"] or None,
                actor=request.user,
                meta=RequestMeta.from_request(request),
            )
        except AccessError as error:
            form.add_error(error.field if error.field in form.fields else None, error.message)
        else:
            job = outcome.job
            if outcome.created:
                messages.success(request, f"Reshard job #{job.pk} queued.")
            else:
                messages.info(
                    request,
                    f"The same conversion is already reshard job #{job.pk} ({job.get_status_display().lower()}).",
                )
            return redirect(reverse("checkpoint-detail", args=[checkpoint.pk]) + f"#reshard-job-{job.pk}")
    return _checkpoint_page(request, checkpoint, reshard_form=form, status=400)


@login_required
@require_POST
def reshard_job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.access_reshard_job(actor=request.user, job_id=job_id)
    try:
        job = reshard.reshard_job_cancel(job=job, actor=request.user, meta=RequestMeta.from_request(request))
    except AccessError as error:
        messages.error(request, error.message)
    else:
        if job.status == JobStatus.CANCELLED:
            messages.success(request, f"Reshard job #{job.pk} cancelled.")
        else:
            messages.info(request, f"Reshard job #{job.pk} will stop at its next heartbeat and remove what it stored.")
    return redirect(reverse("checkpoint-detail", args=[job.source_id]) + f"#reshard-job-{job.pk}")


@login_required
def checkpoint_reshard_jobs(request: HttpRequest, checkpoint_id: int) -> JsonResponse:
    """Live figures for the jobs table (polled every 2 s while a job is queued or running)."""
    checkpoint = selectors.access_operator_checkpoint(actor=request.user, checkpoint_id=checkpoint_id)
    jobs = []
    for job in selectors.checkpoint_reshard_jobs(checkpoint)[:20]:
        body = selectors.reshard_job_progress(job)
        body["status_display"] = job.get_status_display()
        body["output_url"] = reverse("checkpoint-detail", args=[job.output_id]) if job.output_id else None
        body["output_name"] = str(job.output) if job.output_id else None
        jobs.append(body)
    return JsonResponse({"checkpoint": checkpoint.pk, "jobs": jobs})


@login_required
def checkpoint_progress(request: HttpRequest, checkpoint_id: int) -> JsonResponse:
    checkpoint = selectors.access_operator_checkpoint(actor=request.user, checkpoint_id=checkpoint_id)
    job = selectors.latest_verification(checkpoint)
    body: dict[str, Any] = {"checkpoint": checkpoint.pk, "state": checkpoint.state, "job": None}
    if job is not None:
        body["job"] = {
            "id": job.pk,
            "status": job.status,
            "bytes_hashed": job.bytes_hashed,
            "bytes_total": job.bytes_total,
            "files_done": job.files_done,
            "files_total": job.files_total,
            "heartbeat_at": job.heartbeat_at.isoformat() if job.heartbeat_at else None,
            "report": job.report,
        }
    return JsonResponse(body)


@login_required
@require_POST
def checkpoint_verify(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    checkpoint = selectors.access_operator_checkpoint(actor=request.user, checkpoint_id=checkpoint_id)
    try:
        job = verification.checkpoint_verify_again(
            checkpoint=checkpoint, actor=request.user, meta=RequestMeta.from_request(request)
        )
    except AccessError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"Verification #{job.pk} queued.")
    return redirect("checkpoint-detail", checkpoint_id=checkpoint.pk)


@login_required
def grant_downloads_index(request: HttpRequest) -> HttpResponse:
    _operator(request)
    return render(request, "artifacts/grant_downloads.html", {"rows": selectors.downloads_by_grant()})


@login_required
@require_http_methods(["GET", "POST"])
def grant_downloads_detail(request: HttpRequest, grant_id: int) -> HttpResponse:
    _operator(request)
    grant = access_grant(actor=request.user, grant_id=grant_id)
    reason = ""
    error = ""
    if request.method == "POST":
        reason = request.POST.get("reason", "")
        try:
            grant_revoke(grant=grant, actor=request.user, reason=reason, meta=RequestMeta.from_request(request))
        except AccessError as failure:
            error = failure.message
        else:
            messages.success(request, f"Grant #{grant.pk} revoked; its download links stop working now.")
            return redirect("grant-downloads-detail", grant_id=grant.pk)
    return render(
        request,
        "artifacts/grant_downloads_detail.html",
        {
            "grant": grant,
            "files": selectors.grant_file_downloads(grant),
            "events": selectors.grant_recent_events(grant),
            "reason": reason,
            "error": error,
        },
        status=400 if error else 200,
    )
