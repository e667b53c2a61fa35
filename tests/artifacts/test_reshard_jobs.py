"""Reshard jobs on the platform: a ready checkpoint converted by a job becomes a new, verified checkpoint
of the same release (same access rules), byte-identical to `reshard.convert` run by hand; requests are
idempotent; bad options are refused naming the number to change; transient faults retry, input errors
fail for good; a worker killed with SIGKILL mid-conversion leaves nothing visible and the retry gives
the same bytes; outsiders get 403/404 on every page and endpoint."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import Retry
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone

from access.errors import AccessError, InvalidInput, NotAllowed
from access.models import AuditEvent
from access.services.audit import RequestMeta
from artifacts import selectors
from artifacts.models import Checkpoint, CheckpointState, ReshardJob
from artifacts.services import downloads, imports, links, reshard_run, verification
from artifacts.services.reshard import reshard_job_create
from artifacts.storage import LocalStorage, get_storage
from artifacts.tasks import run_reshard_job
from jobs.models import JobStatus
from jobs.services import jobs_reap, retry_delay
from jobs.tasks import reap_jobs
from tests.artifacts.conftest import grant_access
from tests.conftest import login
from tests.live import database_url_of_test_db

META = RequestMeta(ip="127.0.0.1", user_agent="pytest")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_opt(tmp_path_factory: Any) -> Path:
    """A 2-layer, 64-wide random OPT in transformers format (the demo checkpoint's recipe)."""
    from artifacts.management.commands.seed_demo_checkpoints import build_demo_checkpoint

    return build_demo_checkpoint(tmp_path_factory.mktemp("tiny") / "opt-tiny")


@pytest.fixture(autouse=True)
def _reshard_settings(settings: Any, tmp_path: Path) -> None:
    settings.ARTIFACTS_RESHARD_WORK_DIR = tmp_path / "reshard-work"
    settings.ARTIFACTS_RESHARD_NUMERICS_MAX_BYTES = 0  # numerics on for the test that asks for them
    settings.ARTIFACTS_RESHARD_MAX_ATTEMPTS = 3


def import_ready(release: Any, folder: Path, variant: str = "hf-tiny") -> Checkpoint:
    result = imports.checkpoint_import(
        release=release, source_uri=str(folder), fmt="hf", variant=variant, label="tiny random OPT", enqueue=False
    )
    job = verification.verification_enqueue(checkpoint=result.checkpoint, dispatch=False)
    verification.verification_run(job_id=job.pk, workers=1)
    result.checkpoint.refresh_from_db()
    assert result.checkpoint.state == CheckpointState.READY
    return result.checkpoint


def direct_sums(source: Path, target: Path, *, checkpoint: Checkpoint, **options: Any) -> dict[str, str]:
    """What `reshard.convert` writes when run by hand on the checkpoint as download.sh saves it (in a
    folder named <release>-<variant>, which reshard records as the model name): {path: sha256}."""
    import reshard

    downloaded = shutil.copytree(source, target / f"{checkpoint.release.slug}-{checkpoint.variant}")
    result = reshard.convert(downloaded, target / "converted", **options)
    return {info.path: info.sha256 for info in result.files}


def stored_sums(checkpoint: Checkpoint) -> dict[str, str]:
    storage = get_storage()
    sums = {}
    for row in checkpoint.files.all():
        stream = storage.open_read(row.storage_key)
        try:
            sums[row.path] = hashlib.sha256(stream.read()).hexdigest()
        finally:
            stream.close()
    return sums


# --- The happy path -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_conversion_registers_a_verified_checkpoint_of_the_same_release(
    backend: str,
    gated_release: Any,
    reviewer: Any,
    applicant: Any,
    other_applicant: Any,
    tiny_opt: Path,
    tmp_path: Path,
    settings: Any,
    client: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.ARTIFACTS_RESHARD_NUMERICS_MAX_BYTES = 1 << 30  # tiny: compare logits with the source too
    source = import_ready(gated_release, tiny_opt)
    with django_capture_on_commit_callbacks(execute=True):
        outcome = reshard_job_create(checkpoint=source, to="native", tp=2, dtype="fp16", actor=reviewer, meta=META)
    assert outcome.created
    job = ReshardJob.objects.get(pk=outcome.job.pk)
    assert job.status == JobStatus.SUCCEEDED, job.error_message
    assert job.attempts == 1 and job.finished_at is not None and job.exit_code is None
    assert job.bytes_total > 0 and job.bytes_done == job.bytes_total
    assert job.tensors_total > 0 and job.tensors_done == job.tensors_total
    assert job.report["verified"]["numerics"]["max_abs_diff"] <= job.report["verified"]["numerics"]["tolerance"]

    output = job.output
    assert output is not None and output.state == CheckpointState.READY
    assert output.release == gated_release and output.derived_from == source
    assert output.produced_by_job == {"kind": "reshard", "id": job.pk}
    assert (output.variant, output.format, output.tp_size, output.dtype) == (
        "hf-tiny-native-tp2-fp16",
        "native",
        2,
        "float16",
    )
    expected = direct_sums(tiny_opt, tmp_path / "by-hand", checkpoint=source, to="native", tp=2, dtype="fp16")
    registered = {row.path: row.sha256 for row in output.files.all()}
    assert registered == expected
    assert stored_sums(output) == expected  # the bytes in storage, not only the rows
    assert all(row.md5 and row.expected_sha256 == row.sha256 and row.verified_at for row in output.files.all())
    assert AuditEvent.objects.filter(action="checkpoint.reshard_request", target_id=str(source.pk)).count() == 1
    assert AuditEvent.objects.filter(action="checkpoint.reshard", target_id=str(output.pk)).count() == 1
    assert not (tmp_path / "reshard-work" / f"job-{job.pk}").exists()  # work folder cleaned up

    # Same access rules as its release: the grant holder downloads it, an outsider does not.
    grant_access(applicant, gated_release, reviewer)
    bundle = links.links_issue(
        user=applicant,
        checkpoint=output,
        base_url="http://testserver",
        link_url=lambda token: reverse("download-file", args=[token]),
        renewal_url="/renew",
        meta=META,
    )
    assert {link.file.path for link in bundle.links} == set(expected)
    weights = next(link for link in bundle.links if link.file.path.endswith("00001-of-00002.safetensors"))
    redemption = downloads.download_redeem(
        token=weights.url.rsplit("/", 1)[-1], request_user=applicant, meta=META, renewal_url_for=lambda pk: "/renew"
    )
    if backend == "local":
        assert hashlib.sha256(redemption.local_path.read_bytes()).hexdigest() == expected[weights.file.path]
    else:
        assert redemption.redirect_url
    with pytest.raises(NotAllowed):
        links.links_issue(
            user=other_applicant,
            checkpoint=output,
            base_url="http://testserver",
            link_url=lambda token: f"/d/{token}",
            renewal_url="/renew",
            meta=META,
        )
    login(client, other_applicant)
    assert client.get(reverse("downloads-checkpoint", args=[output.pk])).status_code == 403

    # Lineage on the operator pages.
    login(client, reviewer)
    page = client.get(reverse("checkpoint-detail", args=[output.pk])).content.decode()
    assert f"reshard job #{job.pk}" in page
    assert reverse("checkpoint-detail", args=[source.pk]) in page
    # It says it was verified, how, and its true size: the bytes in storage.
    assert "Never verified" not in page and "Ready" in page
    assert f"{output.verified_at:%Y-%m-%d %H:%M} UTC" in page
    checked = job.report["verified"]["files_checked"]
    assert f"Verified by reshard job #{job.pk}" in page and f"{checked} files checked" in page
    assert "logits match the source" in page
    stored_bytes = sum(get_storage().size(row.storage_key) for row in output.files.all())
    assert stored_bytes == sum(row.size for row in output.files.all())
    assert f"({stored_bytes} bytes) in {output.files.count()} files" in page
    index = client.get(reverse("checkpoint-index")).content.decode()
    assert filesizeformat(stored_bytes) in index
    source_page = client.get(reverse("checkpoint-detail", args=[source.pk])).content.decode()
    assert f'id="reshard-job-{job.pk}"' in source_page and reverse("checkpoint-detail", args=[output.pk]) in source_page


@pytest.mark.django_db
def test_hf_to_hf_dtype_change_and_metaseq(gated_release: Any, reviewer: Any, tiny_opt: Path, tmp_path: Path) -> None:
    source = import_ready(gated_release, tiny_opt)
    for to, tp, dtype in [("hf", None, "bf16"), ("metaseq", 2, None)]:
        outcome = reshard_job_create(
            checkpoint=source, to=to, tp=tp, dtype=dtype, actor=reviewer, meta=META, dispatch=False
        )
        job = reshard_run.reshard_job_run(job_id=outcome.job.pk)
        assert job is not None and job.status == JobStatus.SUCCEEDED, job.error_message
        expected = direct_sums(tiny_opt, tmp_path / f"by-hand-{to}", checkpoint=source, to=to, tp=tp, dtype=dtype)
        assert {row.path: row.sha256 for row in job.output.files.all()} == expected
        assert job.output.dtype == ("bfloat16" if to == "hf" else "float32")
        assert job.output.format == {"hf": "hf", "metaseq": "metaseq"}[to]


# --- Idempotency ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_same_conversion_twice_is_one_job_and_rerun_is_a_noop(
    gated_release: Any,
    reviewer: Any,
    admin: Any,
    tiny_opt: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:
    source = import_ready(gated_release, tiny_opt)
    first = reshard_job_create(
        checkpoint=source, to="native", tp=1, dtype="fp32", actor=reviewer, meta=META, dispatch=False
    )
    # Spelled differently, asked by someone else, still the same conversion.
    second = reshard_job_create(checkpoint=source, to="native", tp=None, dtype="float32", actor=admin, meta=META)
    assert first.created and not second.created and second.job.pk == first.job.pk
    assert ReshardJob.objects.count() == 1

    job = reshard_run.reshard_job_run(job_id=first.job.pk)
    assert job is not None and job.status == JobStatus.SUCCEEDED
    checkpoints = Checkpoint.objects.count()
    again = reshard_run.reshard_job_run(job_id=first.job.pk)  # a duplicate delivery
    run_reshard_job.delay(first.job.pk)
    assert again is not None and again.status == JobStatus.SUCCEEDED and again.attempts == 1
    assert Checkpoint.objects.count() == checkpoints
    third = reshard_job_create(checkpoint=source, to="native", tp=1, dtype="fp32", actor=reviewer, meta=META)
    assert not third.created and third.job.pk == first.job.pk and third.job.output_id == job.output_id


# --- Refusals -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_bad_options_are_refused_naming_what_to_change(
    gated_release: Any,
    reviewer: Any,
    applicant: Any,
    tiny_opt: Path,
    tmp_path: Path,
) -> None:
    source = import_ready(gated_release, tiny_opt)

    def refused(**options: Any) -> AccessError:
        options = {"checkpoint": source, "to": "native", "actor": reviewer, "meta": META, **options}
        with pytest.raises(AccessError) as caught:
            reshard_job_create(**options)
        return caught.value

    error = refused(tp=3)
    assert isinstance(error, InvalidInput) and error.field == "tp"
    assert "tp 3" in error.message and "n_head=4" in error.message and "divides 4" in error.message
    error = refused(to="hf", tp=2)
    assert error.field == "tp" and "set tp to 1" in error.message
    error = refused(to="onnx")
    assert error.field == "to" and "native, hf, metaseq" in error.message
    error = refused(dtype="int8")
    assert error.field == "dtype" and "fp16, bf16, fp32" in error.message
    error = refused(tp=0)
    assert error.field == "tp"
    assert isinstance(refused(actor=applicant), NotAllowed)

    quarantined = import_ready(gated_release, tiny_opt, variant="hf-other")
    Checkpoint.objects.filter(pk=quarantined.pk).update(state=CheckpointState.QUARANTINED)
    quarantined.refresh_from_db()
    error = refused(checkpoint=quarantined)
    assert error.field == "checkpoint" and "ready" in error.message

    # A stored config.json past reshard's limit is named as too large (not read as broken JSON).
    stored = get_storage().local_path(source.files.get(path="config.json").storage_key)
    assert stored is not None
    stored.write_text('{"padding": "' + "x" * (5 * 1024 * 1024) + '"}')
    assert "too large" in refused().message
    assert ReshardJob.objects.count() == 0


@pytest.mark.django_db
def test_reshard_input_error_fails_for_good_and_frees_the_request(
    gated_release: Any,
    reviewer: Any,
    tmp_path: Path,
    tiny_opt: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:
    folder = Path(shutil.copytree(tiny_opt, tmp_path / "copy"))
    source = import_ready(gated_release, folder)
    # The stored weights lose their tail after verification: reshard refuses the input (exit code 3).
    weights = get_storage().local_path(source.files.get(path="model.safetensors").storage_key)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with django_capture_on_commit_callbacks(execute=True):
        outcome = reshard_job_create(checkpoint=source, to="native", tp=2, actor=reviewer, meta=META)
    job = ReshardJob.objects.get(pk=outcome.job.pk)
    assert job.status == JobStatus.FAILED and job.exit_code == 3 and job.attempts == 1
    assert "model.safetensors" in job.error_message
    assert job.output is None and not Checkpoint.objects.filter(derived_from=source).exists()
    # A failed request does not block asking again (after fixing the input).
    weights.write_bytes(data)
    with django_capture_on_commit_callbacks(execute=True):
        again = reshard_job_create(checkpoint=source, to="native", tp=2, actor=reviewer, meta=META)
    assert again.created and again.job.pk != job.pk
    assert ReshardJob.objects.get(pk=again.job.pk).status == JobStatus.SUCCEEDED


@pytest.mark.django_db
def test_transient_faults_retry_with_backoff_then_give_up(
    gated_release: Any,
    reviewer: Any,
    tiny_opt: Path,
    monkeypatch: Any,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    source = import_ready(gated_release, tiny_opt)
    real_write = LocalStorage.write_stream
    failures = {"left": 1}

    def flaky_write(self: Any, key: str, stream: Any, *, size: int | None = None) -> int:
        if "-native-tp" in key and key.endswith(".safetensors") and failures["left"] > 0:
            failures["left"] -= 1
            raise OSError(28, "No space left on device")
        return real_write(self, key, stream, size=size)

    monkeypatch.setattr(LocalStorage, "write_stream", flaky_write)
    with django_capture_on_commit_callbacks(execute=False):
        outcome = reshard_job_create(checkpoint=source, to="native", tp=1, dtype="fp16", actor=reviewer, meta=META)
    with pytest.raises(Retry) as retry:
        run_reshard_job.delay(outcome.job.pk)  # the first delivery
    assert retry.value.when == 60  # backoff: 60 s, then 120, 240... capped at 15 minutes
    assert (retry_delay(2), retry_delay(9)) == (120, 900)
    job = ReshardJob.objects.get(pk=outcome.job.pk)
    assert job.status == JobStatus.QUEUED and job.attempts == 1
    assert "No space left on device" in job.error_message and "retrying in 60 s" in job.error_message
    assert not Checkpoint.objects.filter(variant="hf-tiny-native-tp1-fp16").exists()
    run_reshard_job.delay(job.pk)  # the retry, delivered after the countdown
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 2 and job.output is not None
    assert job.error_message == ""

    settings.ARTIFACTS_RESHARD_MAX_ATTEMPTS = 2
    failures["left"] = 100
    with django_capture_on_commit_callbacks(execute=False):
        outcome = reshard_job_create(checkpoint=source, to="native", tp=2, dtype="fp16", actor=reviewer, meta=META)
    with pytest.raises(Retry):
        run_reshard_job.delay(outcome.job.pk)
    run_reshard_job.delay(outcome.job.pk)  # the second and last attempt fails the job instead of retrying
    job = ReshardJob.objects.get(pk=outcome.job.pk)
    assert job.status == JobStatus.FAILED and job.attempts == 2 and job.exit_code == 1
    assert "Gave up after 2 attempts" in job.error_message and "No space left on device" in job.error_message
    assert not Checkpoint.objects.filter(variant="hf-tiny-native-tp2-fp16").exists()
    # config.json and manifest.json were stored before the weights failed; a failed job removes them.
    assert list(get_storage().list(f"checkpoints/{gated_release.slug}/hf-tiny-native-tp2-fp16")) == []


@pytest.mark.django_db
def test_reaper_requeues_stale_jobs_then_fails_them_out_of_attempts(
    gated_release: Any,
    reviewer: Any,
    tiny_opt: Path,
    settings: Any,
) -> None:
    source = import_ready(gated_release, tiny_opt)
    job = reshard_job_create(
        checkpoint=source, to="native", tp=1, dtype="fp16", actor=reviewer, meta=META, dispatch=False
    ).job
    long_ago = timezone.now() - timedelta(seconds=settings.ARTIFACTS_RESHARD_STALE_SECONDS + 60)
    ReshardJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, attempts=3, heartbeat_at=long_ago)
    assert reshard_run.reshard_job_run(job_id=job.pk).status == JobStatus.RUNNING  # out of attempts: not claimed
    assert reap_jobs.delay().get() == 1
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "stopped sending heartbeats" in job.error_message
    # A fresh heartbeat is left alone.
    other = reshard_job_create(
        checkpoint=source, to="native", tp=2, dtype="fp16", actor=reviewer, meta=META, dispatch=False
    ).job
    ReshardJob.objects.filter(pk=other.pk).update(status=JobStatus.RUNNING, attempts=1, heartbeat_at=timezone.now())
    assert jobs_reap() == 0


# --- A worker killed mid-conversion ---------------------------------------------------------------

CHILD = r"""
import os, sys, time
import django

django.setup()
from django.conf import settings

settings.ARTIFACTS_STORAGE = "local"
settings.ARTIFACTS_LOCAL_ROOT = sys.argv[2]
settings.ARTIFACTS_RESHARD_WORK_DIR = sys.argv[3]
settings.ARTIFACTS_RESHARD_NUMERICS_MAX_BYTES = 0

import reshard
from artifacts.services import reshard_run

real_convert = reshard.convert


def slow_convert(*args, progress, **kwargs):
    # Test-only slowdown so the parent can kill this process in the middle of the conversion.
    def slow(*figures):
        progress(*figures)
        time.sleep(0.3)

    return real_convert(*args, progress=slow, **kwargs)


reshard.convert = slow_convert
reshard_run.reshard_job_run(job_id=int(sys.argv[1]))
"""


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_conversion_leaves_nothing_and_the_retry_is_identical(
    gated_release: Any,
    reviewer: Any,
    tiny_opt: Path,
    tmp_path: Path,
    settings: Any,
) -> None:
    source = import_ready(gated_release, tiny_opt)
    job = reshard_job_create(
        checkpoint=source, to="native", tp=2, dtype="fp16", actor=reviewer, meta=META, dispatch=False
    ).job
    variant = "hf-tiny-native-tp2-fp16"
    work = tmp_path / "reshard-work"
    env = {
        **os.environ,
        "DATABASE_URL": database_url_of_test_db(),
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PYTHONPATH": str(REPO),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(job.pk), str(settings.ARTIFACTS_LOCAL_ROOT), str(work)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            job.refresh_from_db()
            if job.status == JobStatus.RUNNING and job.bytes_done > 0:
                break
            if child.poll() is not None or time.monotonic() > deadline:
                output = child.stdout.read().decode() if child.stdout else ""
                pytest.fail(f"the child never reported progress (status {job.status}, exit {child.poll()}):\n{output}")
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    # Killed while converting: the row still says running, and nothing of the output is visible.
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.phase == "converting" and job.attempts == 1
    assert 0 < job.bytes_done < job.bytes_total and job.output is None
    assert not Checkpoint.objects.filter(derived_from=source).exists()
    assert not Checkpoint.objects.filter(variant=variant).exists()
    assert list(get_storage().list(f"checkpoints/{gated_release.slug}/{variant}")) == []
    job_dir = work / f"job-{job.pk}"
    assert not (job_dir / "output").exists()
    assert [p.name for p in job_dir.iterdir() if ".reshard-tmp-" in p.name] == [f".output.reshard-tmp-{child.pid}"]
    # The broker redelivers the task at once (acks_late): the heartbeat is fresh, so it does not run twice.
    assert reshard_run.reshard_job_run(job_id=job.pk).attempts == 1
    assert not selectors.downloadable_checkpoints(user=reviewer)  # nothing listed for anyone

    # Once the heartbeat is stale the reaper queues the job again; the (eager) retry converts from scratch.
    later = timezone.now() + timedelta(seconds=settings.ARTIFACTS_RESHARD_STALE_SECONDS + 1)
    assert jobs_reap(now=later) == 1
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error_message
    assert job.attempts == 2 and job.bytes_done == job.bytes_total
    expected = direct_sums(tiny_opt, tmp_path / "clean", checkpoint=source, to="native", tp=2, dtype="fp16")
    assert {row.path: row.sha256 for row in job.output.files.all()} == expected
    assert stored_sums(job.output) == expected
    assert not job_dir.exists()  # the killed run's temp dir went with the work folder
    assert Checkpoint.objects.filter(derived_from=source).count() == 1


# --- Pages and API --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_convert_form_jobs_table_and_live_progress(
    client: Any,
    reviewer: Any,
    gated_release: Any,
    tiny_opt: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:
    source = import_ready(gated_release, tiny_opt)
    login(client, reviewer)
    page = client.get(reverse("checkpoint-detail", args=[source.pk])).content.decode()
    assert (
        reverse("checkpoint-reshard", args=[source.pk]) in page and 'name="tp"' in page and "No conversions yet" in page
    )

    # A bad tp re-renders the form with the error and what was typed.
    response = client.post(
        reverse("checkpoint-reshard", args=[source.pk]), {"to": "native", "tp": "3", "dtype": "bf16"}
    )
    assert response.status_code == 400
    body = response.content.decode()
    assert "tp 3" in body and "n_head=4" in body and 'value="3"' in body
    assert '<option value="bf16" selected>' in body
    assert not ReshardJob.objects.exists()

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(
            reverse("checkpoint-reshard", args=[source.pk]), {"to": "native", "tp": "2", "dtype": "fp16"}
        )
    job = ReshardJob.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"#reshard-job-{job.pk}")
    # Queued, not run yet: the table shows the figures without JavaScript, and the poller is on the page.
    page = client.get(reverse("checkpoint-detail", args=[source.pk])).content.decode()
    assert f'id="reshard-job-{job.pk}"' in page and 'data-active="true"' in page and "setTimeout(tick, 2000)" in page
    progress = client.get(reverse("checkpoint-reshard-jobs", args=[source.pk])).json()
    assert progress["jobs"][0]["status"] == "queued" and progress["jobs"][0]["output_url"] is None

    for callback in callbacks:
        callback()  # the task runs (eagerly)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    figures = client.get(reverse("checkpoint-reshard-jobs", args=[source.pk])).json()["jobs"][0]
    assert figures["status"] == "succeeded" and figures["bytes_done"] == figures["bytes_total"] > 0
    assert figures["tensors_done"] == figures["tensors_total"] > 0 and figures["percent"] == 100.0
    assert figures["output_url"] == reverse("checkpoint-detail", args=[job.output_id])
    page = client.get(reverse("checkpoint-detail", args=[source.pk])).content.decode()
    assert "setTimeout(tick, 2000)" not in page and reverse("checkpoint-detail", args=[job.output_id]) in page

    # The same form again points at the existing job.
    response = client.post(
        reverse("checkpoint-reshard", args=[source.pk]), {"to": "native", "tp": "2", "dtype": "fp16"}, follow=True
    )
    assert f"already reshard job #{job.pk}" in response.content.decode()
    assert ReshardJob.objects.count() == 1


@pytest.mark.django_db
def test_api_create_get_and_list(
    client: Any, reviewer: Any, gated_release: Any, tiny_opt: Path, django_capture_on_commit_callbacks: Any
) -> None:
    source = import_ready(gated_release, tiny_opt)
    login(client, reviewer)
    url = reverse("artifacts-api:checkpoint-reshard-jobs", args=[source.pk])
    bad = client.post(url, {"to": "native", "tp": 3}, content_type="application/json")
    assert bad.status_code == 400 and "tp 3" in bad.json()["errors"]["tp"][0]
    with django_capture_on_commit_callbacks(execute=True):
        created = client.post(url, {"to": "hf", "dtype": "fp16"}, content_type="application/json")
    assert created.status_code == 201, created.content
    job_id = created.json()["id"]
    same = client.post(url, {"to": "hf", "dtype": "float16"}, content_type="application/json")
    assert same.status_code == 200 and same.json()["id"] == job_id
    detail = client.get(reverse("artifacts-api:reshard-job", args=[job_id])).json()
    assert (
        detail["status"] == "succeeded" and detail["to"] == "hf" and detail["tp"] == 1 and detail["dtype"] == "float16"
    )
    assert detail["bytes_done"] == detail["bytes_total"] > 0 and detail["output"] == ReshardJob.objects.get().output_id
    listing = client.get(url).json()
    assert [item["id"] for item in listing["results"]] == [job_id]


@pytest.mark.django_db
def test_outsiders_get_403_or_404_on_reshard_pages_and_api(
    client: Any,
    applicant: Any,
    gated_release: Any,
    reviewer: Any,
    tiny_opt: Path,
) -> None:
    source = import_ready(gated_release, tiny_opt)
    job = reshard_job_create(checkpoint=source, to="native", tp=1, actor=reviewer, meta=META, dispatch=False).job
    form = {"to": "native", "tp": "2"}
    api_list = reverse("artifacts-api:checkpoint-reshard-jobs", args=[source.pk])
    api_job = reverse("artifacts-api:reshard-job", args=[job.pk])
    # Anonymous: pages send to sign-in, the API answers 401/403.
    for response in (
        client.post(reverse("checkpoint-reshard", args=[source.pk]), form),
        client.get(reverse("checkpoint-reshard-jobs", args=[source.pk])),
    ):
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert client.get(api_list).status_code in (401, 403)
    assert client.post(api_list, form, content_type="application/json").status_code in (401, 403)
    assert client.get(api_job).status_code in (401, 403)
    # Signed in, not an operator (even with a grant for the release): 404 everywhere.
    grant_access(applicant, gated_release, reviewer)
    login(client, applicant)
    assert client.post(reverse("checkpoint-reshard", args=[source.pk]), form).status_code == 404
    assert client.get(reverse("checkpoint-reshard-jobs", args=[source.pk])).status_code == 404
    assert client.get(api_list).status_code == 404
    assert client.post(api_list, form, content_type="application/json").status_code == 404
    assert client.get(api_job).status_code == 404
    assert client.get(reverse("artifacts-api:reshard-job", args=[999999])).status_code == 404
    assert ReshardJob.objects.count() == 1
    # An operator may; an unknown id is still 404.
    login(client, reviewer)
    assert client.get(api_job).status_code == 200
    assert client.get(reverse("artifacts-api:reshard-job", args=[999999])).status_code == 404


# --- Cancel ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_cancel_a_queued_conversion_through_the_api_then_ask_again(
    client: Any, reviewer: Any, gated_release: Any, tiny_opt: Path
) -> None:
    source = import_ready(gated_release, tiny_opt)
    job = reshard_job_create(
        checkpoint=source, to="native", tp=1, dtype="fp16", actor=reviewer, meta=META, dispatch=False
    ).job
    login(client, reviewer)
    response = client.post(reverse("artifacts-api:reshard-job-cancel", args=[job.pk]))
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert response.json()["cancel_requested_at"] is not None
    assert reshard_run.reshard_job_run(job_id=job.pk).status == JobStatus.CANCELLED  # its late message: a no-op
    again = client.post(reverse("artifacts-api:reshard-job-cancel", args=[job.pk]))
    assert again.status_code == 409 and "only queued or running jobs" in again.json()["detail"]
    assert AuditEvent.objects.filter(action="checkpoint.reshard_cancel_request").count() == 1
    # A cancelled conversion does not hold its name: asking again queues a new job.
    outcome = reshard_job_create(
        checkpoint=source, to="native", tp=1, dtype="fp16", actor=reviewer, meta=META, dispatch=False
    )
    assert outcome.created and outcome.job.pk != job.pk


@pytest.mark.django_db
def test_cancel_stops_a_running_conversion_and_removes_what_it_stored(
    client: Any, reviewer: Any, gated_release: Any, tiny_opt: Path, monkeypatch: Any, settings: Any
) -> None:
    import reshard

    source = import_ready(gated_release, tiny_opt)
    job = reshard_job_create(
        checkpoint=source, to="native", tp=2, dtype="fp16", actor=reviewer, meta=META, dispatch=False
    ).job
    login(client, reviewer)
    real_convert = reshard.convert

    def convert_while_an_operator_cancels(*args: Any, **kwargs: Any) -> Any:
        result = real_convert(*args, **kwargs)
        response = client.post(reverse("reshard-job-cancel", args=[job.pk]), follow=True)
        assert "will stop at its next heartbeat" in response.content.decode()
        return result

    monkeypatch.setattr(reshard, "convert", convert_while_an_operator_cancels)
    job = reshard_run.reshard_job_run(job_id=job.pk)
    assert job is not None and job.status == JobStatus.CANCELLED and job.output is None
    assert job.error_message == f"Cancelled by {reviewer.email}."
    assert not Checkpoint.objects.filter(derived_from=source).exists()
    assert list(get_storage().list(f"checkpoints/{gated_release.slug}/hf-tiny-native-tp2-fp16")) == []
    assert not (Path(settings.ARTIFACTS_RESHARD_WORK_DIR) / f"job-{job.pk}").exists()
    page = client.get(reverse("checkpoint-detail", args=[source.pk])).content.decode()
    assert "Cancelled by" in page and reverse("reshard-job-cancel", args=[job.pk]) not in page
