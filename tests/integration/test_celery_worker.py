"""A real Celery worker process, on real Redis, sends notification emails from committed rows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from access.models import Notification
from tests import factories
from tests.live import database_url_of_test_db

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_worker_sends_notification_email(tmp_path: Path) -> None:
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url or connection.vendor != "postgresql":
        pytest.skip("needs REDIS_URL and PostgreSQL (make test starts both when installed; CI always does)")
    user = factories.make_user("carol@uni.example", full_name="Carol")
    notification = Notification.objects.create(user=user, subject="Hello from the worker", body="Body text")
    mail_dir = tmp_path / "mail"
    queue = f"default-test-{os.getpid()}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url_of_test_db(),
        "REDIS_URL": redis_url,
        "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "EMAIL_FILE_PATH": str(mail_dir),
        "CELERY_TASK_ALWAYS_EAGER": "0",
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "portal",
            "worker",
            "-Q",
            queue,
            "--pool",
            "solo",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "WARNING",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        from access.tasks import send_notification_email
        from portal.celery import app

        app.conf.task_always_eager = False
        app.conf.broker_url = redis_url
        with app.connection_for_write() as conn:
            send_notification_email.apply_async(args=[notification.pk], queue=queue, connection=conn)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            notification.refresh_from_db()
            if notification.email_sent_at is not None:
                break
            assert worker.poll() is None, worker.stdout.read().decode() if worker.stdout else "worker exited"
            time.sleep(0.2)
        assert notification.email_sent_at is not None, "the worker did not send the email within 60 s"
        sent = "".join(path.read_text() for path in mail_dir.iterdir())
        assert "Hello from the worker" in sent and "carol@uni.example" in sent
    finally:
        worker.terminate()
        worker.wait(timeout=30)
