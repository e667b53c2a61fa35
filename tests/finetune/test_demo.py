"""`make demo`'s fine-tuning job: seeded on the demo checkpoint after `seed_demo`, run for real (a few
steps on CPU), with a falling loss curve on the researcher's job page; seeding again keeps it."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from finetune.models import TrainingJob
from jobs.models import JobStatus


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # the heartbeat thread has its own connection
def test_seed_demo_finetune_runs_one_job_with_a_curve() -> None:
    call_command("seed_demo", stdout=StringIO(), stderr=StringIO())
    out = StringIO()
    call_command("seed_demo_finetune", "--run-now", stdout=out, stderr=StringIO())
    job = TrainingJob.objects.get()
    assert job.status == JobStatus.SUCCEEDED, (job.error_message, out.getvalue())
    assert job.step == job.total_steps == 12 and job.result is not None
    assert job.owner.email == "researcher@demo.local" and job.result.owner == job.owner
    from finetune.selectors import job_logbook

    losses = [e["loss"] for e in job_logbook(job) if e["event"] == "step"]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])  # it learns the repeated phrases

    client = Client()
    client.force_login(job.owner)
    page = client.get(reverse("finetune-job", args=[job.pk])).content.decode()
    assert 'data-testid="loss-chart"' in page and job.result.variant in page

    again = StringIO()
    call_command("seed_demo_finetune", stdout=again, stderr=StringIO())
    assert "kept" in again.getvalue() and TrainingJob.objects.count() == 1
