"""Deployments: the `deployment_add` command and the service behind it (bad input refused with a message
naming the field), the operator pages (add, drain, remove), and the health-check task."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from access.models import AuditEvent
from artifacts.models import CheckpointState
from gateway.models import Deployment, Replica, ReplicaStatus
from gateway.tasks import check_deployments
from tests import factories
from tests.artifacts.conftest import make_checkpoint
from tests.gateway.conftest import add_deployment, closed_port_url, write_secret

pytestmark = pytest.mark.django_db


def command(*args: str) -> str:
    out = StringIO()
    call_command("deployment_add", *args, stdout=out)
    return out.getvalue()


def test_command_adds_a_deployment_with_its_replicas(gated_release: Any, checkpoint: Any, secret_file: Path) -> None:
    urls = [closed_port_url(), closed_port_url() + "/"]
    output = command(
        gated_release.slug, *urls, "--checkpoint", str(checkpoint.pk), "--secret-file", str(secret_file), "--tp", "2"
    )
    deployment = Deployment.objects.get()
    assert deployment.release == gated_release and deployment.checkpoint == checkpoint and deployment.tp_size == 2
    assert deployment.secret_file == str(secret_file.resolve())
    assert sorted(deployment.replicas.values_list("url", flat=True)) == sorted(url.rstrip("/") for url in urls)
    # The command checked them once: nothing listens there.
    assert set(deployment.replicas.values_list("status", flat=True)) == {ReplicaStatus.FAILING}
    assert "failing" in output and "connection" in output.lower()
    event = AuditEvent.objects.get(action="deployment.add")
    secret = secret_file.read_text().strip()
    assert secret not in str(event.after) and secret not in output  # the secret is never stored nor shown


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown_release", "No release 'no-such-model'"),
        ("unknown_checkpoint", "No checkpoint #999999"),
        ("other_release", "belongs to opt-125m, not opt-175b"),
        ("not_ready", "is quarantined: only a ready"),
        ("bad_scheme", "use http://HOST:PORT"),
        ("with_path", "without a path"),
        ("bad_port", "the port is not a number"),
        ("missing_secret", "does not exist or is not a file"),
        ("empty_secret", "is empty"),
        ("tp", "tp=5 does not divide the 12 attention heads"),
        ("duplicate_url", "already serves"),
    ],
)
def test_command_refuses_bad_input_naming_it(
    case: str, message: str, gated_release: Any, open_release: Any, checkpoint: Any, secret_file: Path, tmp_path: Path
) -> None:
    url = closed_port_url()
    args = {"release": gated_release.slug, "urls": [url], "checkpoint": str(checkpoint.pk), "secret": str(secret_file)}
    extra: list[str] = ["--no-check"]
    if case == "unknown_release":
        args["release"] = "no-such-model"
    elif case == "unknown_checkpoint":
        args["checkpoint"] = "999999"
    elif case == "other_release":
        args["checkpoint"] = str(make_checkpoint(open_release, tmp_path, variant="open").pk)
    elif case == "not_ready":
        type(checkpoint).objects.filter(pk=checkpoint.pk).update(state=CheckpointState.QUARANTINED)
    elif case == "bad_scheme":
        args["urls"] = ["ftp://127.0.0.1:9000"]
    elif case == "with_path":
        args["urls"] = [url + "/v1"]
    elif case == "bad_port":
        args["urls"] = ["http://127.0.0.1:99999"]
    elif case == "missing_secret":
        args["secret"] = str(tmp_path / "nope.secret")
    elif case == "empty_secret":
        empty = tmp_path / "empty.secret"
        empty.write_text("\n")
        args["secret"] = str(empty)
    elif case == "tp":
        extra += ["--tp", "5"]
    elif case == "duplicate_url":
        add_deployment(gated_release, checkpoint, [url], secret_file)
    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        command(
            args["release"], *args["urls"], "--checkpoint", args["checkpoint"], "--secret-file", args["secret"], *extra
        )
    assert Deployment.objects.count() == (1 if case == "duplicate_url" else 0)


def test_command_serves_a_private_checkpoint_under_its_own_model_id(
    gated_release: Any, tmp_path: Path, secret_file: Path
) -> None:
    owner = factories.make_user("owner@uni-mannheim.de")
    private = make_checkpoint(gated_release, tmp_path, variant="ft-12")
    type(private).objects.filter(pk=private.pk).update(owner=owner)  # a fine-tuning result: its owner's only
    output = command(
        gated_release.slug, closed_port_url(), "--checkpoint", str(private.pk), "--secret-file", str(secret_file),
        "--no-check",
    )  # fmt: skip
    deployment = Deployment.objects.get()
    assert deployment.checkpoint == private and deployment.is_private and deployment.model_id == "opt-175b:ft-12"
    assert "served as model 'opt-175b:ft-12' (private to owner@uni-mannheim.de)" in output
    event = AuditEvent.objects.get(action="deployment.add")
    assert event.after["model"] == "opt-175b:ft-12" and event.after["owner"] == owner.pk


def test_admin_adds_a_private_checkpoint_on_the_page_and_the_list_shows_its_owner(
    admin: Any, reviewer: Any, gated_release: Any, checkpoint: Any, secret_file: Path, tmp_path: Path
) -> None:
    owner = factories.make_user("owner@uni-mannheim.de")
    private = make_checkpoint(gated_release, tmp_path, variant="ft-3")
    type(private).objects.filter(pk=private.pk).update(owner=owner)
    client = Client()
    client.force_login(admin)
    form_page = client.get("/gateway/deployments/add/")
    assert b"opt-175b/ft-3 (tp 1, private to owner@uni-mannheim.de)" in form_page.content
    added = client.post(
        "/gateway/deployments/add/",
        {"release": gated_release.slug, "checkpoint": private.pk, "urls": closed_port_url(),
         "secret_file": str(secret_file), "tp_size": 1},
    )  # fmt: skip
    assert added.status_code == 302
    detail = client.get(added["Location"])
    assert b"<code>opt-175b:ft-3</code>" in detail.content and b"owner@uni-mannheim.de only" in detail.content
    add_deployment(gated_release, checkpoint, [closed_port_url()], secret_file)  # a public one beside it
    client.force_login(reviewer)
    listing = client.get("/gateway/deployments/")
    rows = {row["deployment"].model_id: row["deployment"] for row in listing.context["rows"]}
    assert set(rows) == {"opt-175b", "opt-175b:ft-3"}
    assert b"owner@uni-mannheim.de (private)" in listing.content and b"<code>opt-175b:ft-3</code>" in listing.content


def test_a_removed_deployments_url_can_serve_a_new_one(gated_release: Any, checkpoint: Any, secret_file: Path) -> None:
    from access.services.audit import SYSTEM
    from gateway.services.deployments import deployment_remove

    url = closed_port_url()
    first = add_deployment(gated_release, checkpoint, [url], secret_file)
    deployment_remove(deployment=first, actor=None, meta=SYSTEM)
    second = add_deployment(gated_release, checkpoint, [url], secret_file)
    assert second.pk != first.pk and Deployment.objects.get(pk=first.pk).is_removed


def test_health_check_task_records_failures_and_skips_removed(
    gated_release: Any, checkpoint: Any, secret_file: Path
) -> None:
    deployment = add_deployment(gated_release, checkpoint, [closed_port_url()], secret_file)
    check_deployments.delay()  # run eagerly in unit tests
    replica = Replica.objects.get(deployment=deployment)
    assert replica.status == ReplicaStatus.FAILING and replica.consecutive_failures == 1
    assert replica.checked_at is not None and replica.healthy_at is None
    check_deployments()
    replica.refresh_from_db()
    assert replica.consecutive_failures == 2


def test_the_health_check_is_on_the_beat_schedule(settings: Any) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["gateway-health-check"]
    assert entry["task"] == "gateway.tasks.check_deployments"
    assert entry["schedule"] == settings.GATEWAY_HEALTH_CHECK_SECONDS


# --- The operator pages -----------------------------------------------------------------------


def test_admin_adds_a_deployment_on_the_page_with_a_secret_under_the_secrets_dir(
    admin: Any, gated_release: Any, checkpoint: Any, secret_file: Path, tmp_path: Path
) -> None:
    client = Client()
    client.force_login(admin)
    outside = write_secret(tmp_path, "outside.secret")
    form = {
        "release": gated_release.slug,
        "checkpoint": checkpoint.pk,
        "urls": f"{closed_port_url()}\n",
        "secret_file": str(outside),
        "tp_size": 1,
    }
    refused = client.post("/gateway/deployments/add/", form)
    assert refused.status_code == 400 and b"must lie under" in refused.content
    assert Deployment.objects.count() == 0
    added = client.post("/gateway/deployments/add/", {**form, "secret_file": str(secret_file)})
    assert added.status_code == 302
    assert Deployment.objects.get().replicas.count() == 1
    page = client.get(added["Location"])
    assert page.status_code == 200 and str(secret_file.resolve()).encode() in page.content
    assert secret_file.read_text().strip().encode() not in page.content


def test_reviewer_drains_and_undrains_admin_removes(
    reviewer: Any, admin: Any, gated_release: Any, checkpoint: Any, secret_file: Path
) -> None:
    deployment = add_deployment(gated_release, checkpoint, [closed_port_url()], secret_file)
    client = Client()
    client.force_login(reviewer)
    client.post(f"/gateway/deployments/{deployment.pk}/drain/", {"draining": "1"})
    deployment.refresh_from_db()
    assert deployment.draining
    listing = client.get("/gateway/deployments/")
    assert b"Draining" in listing.content
    client.post(f"/gateway/deployments/{deployment.pk}/drain/", {"draining": "0"})
    deployment.refresh_from_db()
    assert not deployment.draining
    assert client.post(f"/gateway/deployments/{deployment.pk}/remove/").status_code == 403
    client.force_login(admin)
    assert client.post(f"/gateway/deployments/{deployment.pk}/remove/").status_code == 302
    deployment.refresh_from_db()
    assert deployment.is_removed and deployment.draining
    assert [e.action for e in AuditEvent.objects.filter(target_type="gateway.deployment").order_by("pk")] == [
        "deployment.add", "deployment.drain", "deployment.undrain", "deployment.remove",
    ]  # fmt: skip
    assert deployment.pk not in [row["deployment"].pk for row in client.get("/gateway/deployments/").context["rows"]]
