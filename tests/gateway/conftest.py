"""Fixtures for the gateway tests.

- Settings: counters in the real Redis (REDIS_URL) under a prefix of their own, secret files in a
  temporary folder, checkpoints on local disk.
- Rows: a ready checkpoint of the gated release, a deployment, the grant holder (the `applicant`).
- Live processes (session-wide): a REAL engine (`python -m inference_worker serve`) on a tiny random
  OPT with a tokenizer trained here, and the portal itself under uvicorn (ASGI) on the test database,
  for the official `openai` client to talk to.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.artifacts.conftest import grant_access, make_checkpoint
from tests.inference_worker._server import REPO, EngineProcess, free_port
from tests.live import database_url_of_test_db, start_portal, wait_for_sessions_to_end

ENGINE_CONTEXT = 1024  # long enough for streams that last seconds (revocation, concurrency tests)


def closed_port_url() -> str:
    """A URL nothing listens on: a replica that refuses connections."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(autouse=True)
def _gateway_settings(settings: Any, tmp_path: Path) -> Iterator[None]:
    settings.GATEWAY_COUNTERS = "redis" if settings.REDIS_URL else "local"
    settings.GATEWAY_REDIS_PREFIX = f"gwtest:{uuid.uuid4().hex[:10]}:"
    settings.GATEWAY_SECRETS_DIR = tmp_path / "engine-secrets"
    settings.GATEWAY_SECRETS_DIR.mkdir()
    settings.ARTIFACTS_STORAGE = "local"
    settings.ARTIFACTS_LOCAL_ROOT = tmp_path / "storage"
    settings.ARTIFACTS_IMPORT_ROOTS = []
    yield
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        keys = list(client.scan_iter(f"{settings.GATEWAY_REDIS_PREFIX}*"))
        if keys:
            client.delete(*keys)
        client.close()


def write_secret(folder: Path, name: str = "engine.secret", secret: str | None = None) -> Path:
    path = folder / name
    path.write_text((secret or secrets.token_urlsafe(24)) + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def secret_file(settings: Any) -> Path:
    return write_secret(Path(settings.GATEWAY_SECRETS_DIR))


@pytest.fixture
def checkpoint(gated_release: Any, tmp_path: Path) -> Any:
    return make_checkpoint(gated_release, tmp_path)


def add_deployment(release: Any, checkpoint: Any, urls: list[str], secret_file: Path, **options: Any) -> Any:
    from access.services.audit import SYSTEM
    from gateway.services.deployments import deployment_add

    return deployment_add(
        release=release,
        checkpoint=checkpoint,
        urls=urls,
        secret_file=str(secret_file),
        actor=None,
        meta=SYSTEM,
        restrict_secret_dir=False,
        **options,
    )


@pytest.fixture
def holder_grant(applicant: Any, gated_release: Any, reviewer: Any) -> Any:
    return grant_access(applicant, gated_release, reviewer)


def api_key_for(user: Any, **options: Any) -> tuple[Any, str]:
    from access.services.api_keys import api_key_create

    return api_key_create(user=user, name="test", **options)


# --- A real engine ----------------------------------------------------------------------------

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world this is a tiny corpus for the gateway tests",
    "researchers score text with the logprobs of its tokens",
    "once upon a time there was a small model that liked to talk",
]


def build_engine_checkpoint(path: Path) -> Path:
    """A small random OPT (transformers layout) with a BPE tokenizer trained on a few sentences. Wide
    enough that a long stream lasts seconds on one CPU thread (the revocation and concurrency tests
    act while one is open); every other request asks for a few tokens."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    config = transformers.OPTConfig(
        vocab_size=128,
        hidden_size=512,
        num_hidden_layers=6,
        ffn_dim=2048,
        num_attention_heads=8,
        max_position_embeddings=ENGINE_CONTEXT,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    transformers.OPTForCausalLM(config).save_pretrained(path)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False)
    tokenizer.train_from_iterator(CORPUS * 5, trainer)
    tokenizer.save(str(path / "tokenizer.json"))
    return path


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`python -m inference_worker serve` on a tiny random OPT, with a secret file."""
    root = tmp_path_factory.mktemp("engine")
    checkpoint_dir = build_engine_checkpoint(root / "tiny-opt")
    process = EngineProcess(
        checkpoint_dir, "--kv-memory", "64MiB", secret_file=write_secret(root), log=root / "engine.log"
    ).wait_ready()
    yield process
    process.stop()


# --- The portal under ASGI --------------------------------------------------------------------

PORTAL_PREFIX = f"gwlive:{uuid.uuid4().hex[:10]}:"


@pytest.fixture(scope="session")
def portal(django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The portal (`uvicorn portal.asgi:application`) on the test database and the real Redis."""
    if not os.environ.get("DATABASE_URL", "").startswith("postgres") or not os.environ.get("REDIS_URL"):
        pytest.skip("the live gateway tests need PostgreSQL and Redis (source var/services.env)")
    name = f"gateway-live-{uuid.uuid4().hex[:8]}"  # one per instance: the playground test holds its own
    with django_db_blocker.unblock():
        database_url = database_url_of_test_db(application_name=name)
    root = tmp_path_factory.mktemp("portal")
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PORTAL_VAR_DIR": str(root),
        "DEBUG": "0",
        "GATEWAY_REDIS_PREFIX": PORTAL_PREFIX,
        "GATEWAY_RECHECK_SECONDS": "1",
        "GATEWAY_LEASE_SECONDS": "30",
        "GATEWAY_TOKENS_PER_DAY": "1000000",
        "GATEWAY_REQUESTS_PER_MINUTE": "1000",
        "GATEWAY_MAX_CONCURRENT": "16",
        "SITE_URL": f"http://127.0.0.1:{port}",
        # A small pool that fails fast: a request that kept its connection while it waits on the engine
        # would leave the third concurrent one without (test_requests_in_flight_do_not_hold_connections).
        "DB_POOL_MAX_SIZE": "2",
        "DB_POOL_TIMEOUT": "3",
    }
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=REPO, env=env, check=True
    )  # the playground's script, served by whitenoise with DEBUG off
    process = start_portal(env, port=port, log=root / "portal.log")
    yield process
    process.stop()
    with django_db_blocker.unblock():
        wait_for_sessions_to_end(name)  # its pool's connections


@pytest.fixture
def live_settings(settings: Any) -> Any:
    """This process reads the same counters as the portal subprocess."""
    settings.GATEWAY_REDIS_PREFIX = PORTAL_PREFIX
    settings.GATEWAY_COUNTERS = "redis"
    return settings
