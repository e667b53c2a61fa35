"""Import (local dir and s3://), format detection, published checksum lists, verification,
quarantine, re-runs, path traversal in import sources, and the management commands."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from access.errors import Conflict, InvalidInput
from access.services.audit import SYSTEM
from artifacts.models import Checkpoint, CheckpointState, ChecksumSource, VerificationJob, VerificationStatus
from artifacts.services import imports, verification
from artifacts.storage import get_storage
from jobs.services import jobs_reap
from tests.artifacts.conftest import HF_FILES, make_checkpoint, s3_client, use_s3, write_tree

pytestmark = pytest.mark.django_db

SHARDS = {f"checkpoint_last-model_part-{p}-shard{s}.pt": bytes([p, s]) * 5000 for p in range(2) for s in range(2)}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_import_local_detects_format_and_verifies(
    backend: str, gated_release: Any, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    source = write_tree(tmp_path / "src", SHARDS)
    with django_capture_on_commit_callbacks(execute=True):
        result = imports.checkpoint_import(release=gated_release, source_uri=str(source))
    checkpoint = Checkpoint.objects.get(pk=result.checkpoint.pk)
    assert (checkpoint.format, checkpoint.tp_size, checkpoint.variant) == ("metaseq-fsdp", 2, "metaseq-fsdp")
    assert checkpoint.state == CheckpointState.READY
    job = VerificationJob.objects.get(checkpoint=checkpoint)
    assert (job.status, job.files_done, job.files_total) == (VerificationStatus.SUCCEEDED, 4, 4)
    assert job.bytes_hashed == job.bytes_total == sum(map(len, SHARDS.values()))
    assert job.heartbeat_at is not None
    for row in checkpoint.files.all():
        assert (row.sha256, row.md5) == (sha(SHARDS[row.path]), md5(SHARDS[row.path]))
        assert row.expected_source == ChecksumSource.FIRST_VERIFICATION and row.verified_at
    assert get_storage().size(f"{checkpoint.storage_prefix}/checkpoint_last-model_part-1-shard1.pt") == 10000


def test_import_from_s3_uri(gated_release: Any, tmp_path: Path, settings: Any, moto_endpoint: str) -> None:
    bucket = use_s3(settings, moto_endpoint)
    client = s3_client(moto_endpoint)
    for name, data in HF_FILES.items():
        client.put_object(Bucket=bucket, Key=f"incoming/opt/{name}", Body=data)
    client.put_object(Bucket=bucket, Key="incoming/other/x.bin", Body=b"not ours")
    checkpoint = imports.checkpoint_import(
        release=gated_release, source_uri=f"s3://{bucket}/incoming/opt", enqueue=False
    ).checkpoint
    assert checkpoint.format == "hf" and checkpoint.dtype == "float32"
    assert set(checkpoint.files.values_list("path", flat=True)) == set(HF_FILES)
    job = verification.verification_enqueue(checkpoint=checkpoint, dispatch=False)
    verification.verification_run(job_id=job.pk)
    checkpoint.refresh_from_db()
    assert checkpoint.state == CheckpointState.READY
    body = client.get_object(Bucket=bucket, Key=f"{checkpoint.storage_prefix}/model.safetensors")["Body"].read()
    assert body == HF_FILES["model.safetensors"]


def test_import_from_local_into_s3_then_flip_is_caught(
    gated_release: Any, tmp_path: Path, settings: Any, moto_endpoint: str
) -> None:
    bucket = use_s3(settings, moto_endpoint)
    checkpoint = make_checkpoint(gated_release, tmp_path)
    assert checkpoint.state == CheckpointState.READY
    key = f"{checkpoint.storage_prefix}/model.safetensors"
    data = bytearray(HF_FILES["model.safetensors"])
    data[777] ^= 0x01
    s3_client(moto_endpoint).put_object(Bucket=bucket, Key=key, Body=bytes(data))
    job = verification.verification_enqueue(checkpoint=checkpoint, dispatch=False)
    verification.verification_run(job_id=job.pk)
    checkpoint.refresh_from_db()
    assert checkpoint.state == CheckpointState.QUARANTINED
    assert [b["path"] for b in VerificationJob.objects.get(pk=job.pk).report["bad_files"]] == ["model.safetensors"]


def test_one_flipped_byte_quarantines_and_nothing_is_served(
    gated_release: Any, tmp_path: Path, client: Any, applicant: Any, holder_grant: Any
) -> None:
    checkpoint = make_checkpoint(gated_release, tmp_path)
    client.force_login(applicant)
    manifest = client.post(f"/api/v1/checkpoints/{checkpoint.pk}/links/").json()
    path = get_storage().local_path(f"{checkpoint.storage_prefix}/model.safetensors")
    with open(path, "r+b") as handle:
        handle.seek(12345)
        byte = handle.read(1)
        handle.seek(12345)
        handle.write(bytes([byte[0] ^ 0x80]))
    job = verification.verification_enqueue(checkpoint=checkpoint, dispatch=False)
    verification.verification_run(job_id=job.pk)
    checkpoint.refresh_from_db()
    job.refresh_from_db()
    assert checkpoint.state == CheckpointState.QUARANTINED and "model.safetensors" in checkpoint.state_reason
    assert job.status == VerificationStatus.FAILED
    assert job.report["bad_files"][0]["path"] == "model.safetensors"
    assert "sha256" in job.report["bad_files"][0]["problem"]
    assert checkpoint.files.get(path="model.safetensors").error
    for item in manifest["files"]:  # links issued before: all refused, even for the good files
        assert client.get(item["url"].removeprefix("http://testserver")).status_code == 403
    assert client.get(f"/downloads/{checkpoint.pk}/").status_code == 404
    assert client.get(f"/api/v1/checkpoints/{checkpoint.pk}/").status_code == 404
    assert client.get("/api/v1/checkpoints/").json()["results"] == []


@pytest.mark.parametrize("kind", ["opt-csv", "sha256sum", "md5sum"])
def test_published_lists_and_mismatch(kind: str, gated_release: Any, tmp_path: Path) -> None:
    good = {
        "opt-csv": "shard,md5sum\n" + "".join(f"{n},{md5(d)}\n" for n, d in SHARDS.items()),
        "sha256sum": "".join(f"{sha(d)}  {n}\n" for n, d in SHARDS.items()),
        "md5sum": "".join(f"{md5(d)}  {n}\n" for n, d in SHARDS.items()),
    }[kind]
    checkpoint = make_checkpoint(gated_release, tmp_path, SHARDS, variant="good", checksums=good)
    assert checkpoint.state == CheckpointState.READY
    assert checkpoint.published_checksums["kind"] == kind
    assert set(checkpoint.files.values_list("expected_source", flat=True)) == {ChecksumSource.PUBLISHED}
    bad_name = "checkpoint_last-model_part-1-shard0.pt"
    wrong = good.replace(md5(SHARDS[bad_name]), "f" * 32).replace(sha(SHARDS[bad_name]), "e" * 64)
    checkpoint = make_checkpoint(gated_release, tmp_path, SHARDS, variant="bad", checksums=wrong)
    assert checkpoint.state == CheckpointState.QUARANTINED
    report = checkpoint.verification_jobs.get().report
    assert [b["path"] for b in report["bad_files"]] == [bad_name]


def test_listed_file_missing_from_checkpoint_quarantines(gated_release: Any, tmp_path: Path) -> None:
    listing = "".join(f"{sha(d)}  {n}\n" for n, d in SHARDS.items()) + f"{'c' * 64}  extra-shard.pt\n"
    checkpoint = make_checkpoint(gated_release, tmp_path, SHARDS, checksums=listing)
    assert checkpoint.state == CheckpointState.QUARANTINED
    assert "missing" in checkpoint.verification_jobs.get().report["bad_files"][0]["problem"]


def test_unreadable_file_quarantines(gated_release: Any, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(gated_release, tmp_path)
    get_storage().delete(f"{checkpoint.storage_prefix}/config.json")
    job = verification.verification_enqueue(checkpoint=checkpoint, dispatch=False)
    verification.verification_run(job_id=job.pk)
    checkpoint.refresh_from_db()
    assert checkpoint.state == CheckpointState.QUARANTINED
    assert "unreadable" in VerificationJob.objects.get(pk=job.pk).report["bad_files"][0]["problem"]


def test_verification_rerun_is_safe(gated_release: Any, tmp_path: Path, reviewer: Any) -> None:
    checkpoint = make_checkpoint(gated_release, tmp_path)
    job = checkpoint.verification_jobs.get()
    finished = job.finished_at
    assert verification.verification_run(job_id=job.pk).finished_at == finished  # same id again: no-op
    assert verification.verification_run(job_id=999999) is None
    again = verification.checkpoint_verify_again(checkpoint=checkpoint, actor=reviewer, meta=SYSTEM)
    assert verification.verification_enqueue(checkpoint=checkpoint, dispatch=False) == again  # one at a time
    verification.verification_run(job_id=again.pk)
    checkpoint.refresh_from_db()
    assert checkpoint.state == CheckpointState.READY
    # Re-importing the unchanged directory is a no-op too.
    result = imports.checkpoint_import(
        release=gated_release, source_uri=str(tmp_path / "src-opt-175b-hf"), variant="hf"
    )
    assert result.unchanged and result.job is None and checkpoint.verification_jobs.count() == 2


def test_stale_running_job_is_reaped(gated_release: Any, tmp_path: Path) -> None:
    from datetime import timedelta

    from django.utils import timezone

    checkpoint = make_checkpoint(gated_release, tmp_path)
    job = verification.verification_enqueue(checkpoint=checkpoint, dispatch=False)
    # Out of attempts (fewer attempts are queued again: tests/jobs/test_services.py).
    VerificationJob.objects.filter(pk=job.pk).update(
        status=VerificationStatus.RUNNING, attempts=3, heartbeat_at=timezone.now() - timedelta(hours=2)
    )
    Checkpoint.objects.filter(pk=checkpoint.pk).update(state=CheckpointState.VERIFYING)
    assert jobs_reap() == 1
    checkpoint.refresh_from_db()
    assert checkpoint.state == CheckpointState.REGISTERED and "verify again" in checkpoint.state_reason


def test_import_refuses_symlinks_escaping_the_source(gated_release: Any, tmp_path: Path) -> None:
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"private")
    source = write_tree(tmp_path / "src", HF_FILES)
    (source / "leak.bin").symlink_to(outside)
    with pytest.raises(InvalidInput, match="outside") as error:
        imports.checkpoint_import(release=gated_release, source_uri=str(source))
    assert error.value.field == "source"
    (source / "leak.bin").unlink()
    (source / "sub").symlink_to(tmp_path)
    with pytest.raises(InvalidInput, match="symlinked directory"):
        imports.checkpoint_import(release=gated_release, source_uri=str(source))
    assert not Checkpoint.objects.exists()


@pytest.mark.parametrize("uri", ["s3://", "ftp://host/x", "/no/such/dir"])
def test_import_refuses_bad_sources(gated_release: Any, uri: str) -> None:
    with pytest.raises(InvalidInput):
        imports.checkpoint_import(release=gated_release, source_uri=uri)


def test_import_refuses_traversal_in_s3_prefix_and_variant(
    gated_release: Any, tmp_path: Path, settings: Any, moto_endpoint: str
) -> None:
    bucket = use_s3(settings, moto_endpoint)
    with pytest.raises(InvalidInput, match="'..'"):
        imports.checkpoint_import(release=gated_release, source_uri=f"s3://{bucket}/a/../../etc")
    source = write_tree(tmp_path / "src", HF_FILES)
    for variant in ("../x", "a/b", "/abs"):
        with pytest.raises(InvalidInput) as error:
            imports.checkpoint_import(release=gated_release, source_uri=str(source), variant=variant)
        assert error.value.field == "variant"


def test_import_roots_setting(gated_release: Any, tmp_path: Path, settings: Any) -> None:
    source = write_tree(tmp_path / "src", HF_FILES)
    settings.ARTIFACTS_IMPORT_ROOTS = [str(tmp_path / "allowed")]
    (tmp_path / "allowed").mkdir()
    with pytest.raises(InvalidInput, match="outside the import roots"):
        imports.checkpoint_import(release=gated_release, source_uri=str(source))
    with pytest.raises(InvalidInput, match="outside the import roots"):
        imports.checkpoint_import(release=gated_release, source_uri=str(tmp_path / "allowed" / ".." / "src"))


def _tiny_opt_written_by(tmp_path: Path, *, to: str, tp: int, dtype: str) -> Path:
    """A tiny random OPT as reshard's own writer lays it out (native, transformers or metaseq parts)."""
    import reshard
    from reshard.testing import random_state
    from training import get_config

    config = get_config("opt-125m").replace(name="opt-tiny", n_layer=1, n_head=4, n_embd=32, ffn_dim=64, max_seq_len=32)
    target = tmp_path / f"{to}-tp{tp}-{dtype}"
    reshard.save_state(random_state(config), config, target, to=to, tp=tp, dtype=dtype)
    return target


@pytest.mark.parametrize(
    "to, tp, dtype, expected",
    [
        ("native", 2, "fp16", ("native", 2, "float16")),
        ("hf", 1, "bf16", ("hf", 1, "bfloat16")),
        ("metaseq", 2, "fp32", ("metaseq", 2, "")),  # metaseq's dtype lives in the weights only
    ],
)
def test_import_detects_what_reshard_wrote(
    backend: str, gated_release: Any, tmp_path: Path, to: str, tp: int, dtype: str, expected: tuple[str, int, str]
) -> None:
    """Was: a native tp=2 checkpoint written by reshard was imported as hf tp=1 (the importer looked
    for a marker reshard never writes)."""
    source = _tiny_opt_written_by(tmp_path, to=to, tp=tp, dtype=dtype)
    checkpoint = imports.checkpoint_import(release=gated_release, source_uri=str(source), enqueue=False).checkpoint
    assert (checkpoint.format, checkpoint.tp_size, checkpoint.dtype) == expected
    assert checkpoint.variant == expected[0]


def test_import_refuses_what_reshard_cannot_read(gated_release: Any, tmp_path: Path) -> None:
    native = _tiny_opt_written_by(tmp_path, to="native", tp=2, dtype="fp32")
    (native / "model-rank-00001-of-00002.safetensors").unlink()
    with pytest.raises(InvalidInput, match="model-rank-00001-of-00002.safetensors is missing") as caught:
        imports.checkpoint_import(release=gated_release, source_uri=str(native))
    assert caught.value.field == "format"
    hf = _tiny_opt_written_by(tmp_path, to="hf", tp=1, dtype="fp32")
    with pytest.raises(InvalidInput, match="--format native, but the files are a hf checkpoint") as caught:
        imports.checkpoint_import(release=gated_release, source_uri=str(hf), fmt="native")


def test_command_unknown_format_says_pass_format(gated_release: Any, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", {"weights.npz": b"x"})
    with pytest.raises(CommandError, match="--format"):
        call_command("import_checkpoint", "opt-175b", str(source))
    out = io.StringIO()
    call_command("import_checkpoint", "opt-175b", str(source), "--format", "native", "--sync", stdout=out)
    assert "ready" in out.getvalue()


def test_command_with_checksums_file(gated_release: Any, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", SHARDS)
    listing = tmp_path / "md5.csv"
    listing.write_text("shard,md5sum\n" + "".join(f"{n},{'0' * 32}\n" for n in SHARDS))
    out = io.StringIO()
    call_command(
        "import_checkpoint",
        "opt-175b",
        str(source),
        "--checksums",
        str(listing),
        "--variant",
        "fsdp",
        "--sync",
        stdout=out,
    )
    assert "quarantined" in out.getvalue() and "bad: checkpoint_last-model_part-0-shard0.pt" in out.getvalue()
    with pytest.raises(CommandError, match="No release"):
        call_command("import_checkpoint", "no-such-release", str(source))


def test_retired_checkpoint_cannot_be_reimported(gated_release: Any, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(gated_release, tmp_path)
    Checkpoint.objects.filter(pk=checkpoint.pk).update(state=CheckpointState.RETIRED)
    with pytest.raises(Conflict):
        imports.checkpoint_import(release=gated_release, source_uri=str(tmp_path / "src-opt-175b-hf"), variant="hf")


def test_seed_demo_checkpoints_is_idempotent(gated_release: Any, open_release: Any) -> None:
    call_command("seed_demo_checkpoints", stdout=io.StringIO())
    checkpoints = list(Checkpoint.objects.order_by("release__slug"))
    assert [c.release.slug for c in checkpoints] == ["opt-125m", "opt-175b"]
    assert all(c.state == CheckpointState.READY and "random weights (demo)" in c.label for c in checkpoints)
    assert set(checkpoints[0].files.values_list("path", flat=True)) == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    }
    sums = [set(c.files.values_list("sha256", flat=True)) for c in checkpoints]
    call_command("seed_demo_checkpoints", stdout=io.StringIO())
    assert Checkpoint.objects.count() == 2 and VerificationJob.objects.count() == 2
    assert [set(c.files.values_list("sha256", flat=True)) for c in Checkpoint.objects.order_by("release__slug")] == sums


def test_reaper_resends_queued_jobs_whose_message_was_lost(gated_release: Any, tmp_path: Path) -> None:
    """A verification queued while the broker was down is sent again by the periodic reaper, once."""
    from datetime import timedelta

    from django.utils import timezone

    checkpoint = make_checkpoint(gated_release, tmp_path)
    job = verification.verification_enqueue(checkpoint=checkpoint, dispatch=False)  # never reached a worker
    assert jobs_reap() == 0  # too young to be called lost
    VerificationJob.objects.filter(pk=job.pk).update(dispatched_at=timezone.now() - timedelta(hours=2))
    assert jobs_reap() == 1  # sent again (tasks run eagerly in tests)
    job.refresh_from_db()
    assert job.status == VerificationStatus.SUCCEEDED
    assert jobs_reap() == 0
