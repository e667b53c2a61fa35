"""The portal's `/v1/openapi.json`, and schemathesis over it against the live portal (uvicorn, the
production path) in front of a REAL engine, as the grant holder's API key: no input gives a 5xx.

The engine's own schema is fuzzed in tests/inference_worker/test_service.py; this is the gateway's.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from django.test import Client

from access.models import ApiKey
from gateway.models import UsageRecord, UsageStatus
from inference_worker.protocol import CompletionRequest
from tests.artifacts.conftest import make_checkpoint
from tests.gateway.conftest import REPO, add_deployment, api_key_for
from tests.inference_worker._server import schema_fuzz_failures

MODEL = "opt-175b"
EXAMPLES = 30


@pytest.mark.django_db
def test_the_document_describes_v1_with_the_engines_request_model() -> None:
    response = Client().get("/v1/openapi.json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    document = response.json()
    assert document["openapi"].startswith("3.1")
    operations = {(path, method) for path, item in document["paths"].items() for method in item}
    assert operations == {("/v1/completions", "post"), ("/v1/models", "get"), ("/v1/models/{model}", "get")}
    # The request body is the engine's model, not a copy that could drift from it.
    request_schema = document["components"]["schemas"]["CompletionRequest"]
    assert set(request_schema["properties"]) == set(CompletionRequest.model_fields)
    assert request_schema["additionalProperties"] is False and set(request_schema["required"]) == {"model", "prompt"}
    assert "StreamOptions" in document["components"]["schemas"]
    completion = document["paths"]["/v1/completions"]["post"]["responses"]
    assert {"401", "403", "404", "429", "502", "503"} <= set(completion)
    assert Client().post("/v1/openapi.json").status_code == 405


def test_the_wire_format_imports_without_torch() -> None:
    """The portal reads `inference_worker.protocol`; that must not load torch into every portal worker."""
    probe = "import sys, inference_worker.protocol; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_fuzzing_the_v1_schema_never_gives_a_server_error(
    engine: Any, portal: Any, live_settings: Any, applicant: Any, holder_grant: Any, gated_release: Any, tmp_path: Any
) -> None:
    import schemathesis
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    add_deployment(gated_release, make_checkpoint(gated_release, tmp_path), [engine.url], engine.secret_file)
    _, raw = api_key_for(applicant)
    headers = {"Authorization": f"Bearer {raw}"}
    schema = schemathesis.openapi.from_url(f"{portal.url}/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} == {
        ("POST", "/v1/completions"), ("GET", "/v1/models"), ("GET", "/v1/models/{model}"),
    }  # fmt: skip
    # GET /v1/models takes no input: nothing negative to generate for it.
    runs = [
        (op, mode)
        for op in operations
        for mode in GenerationMode
        if op.path != "/v1/models" or mode.value == "positive"
    ]
    # The `model` of a body with a prompt: the served one (past the grant check, into the
    # engine's validation and generation), else odd text (control characters, NUL) aimed at the
    # gateway's own reading of `model` (lookups, usage rows).
    odd_text = st.text(st.one_of(st.just("\x00"), st.characters(categories=["Cc"]), st.characters()), max_size=12)
    models = st.one_of(st.just(MODEL), odd_text)
    failures = schema_fuzz_failures(runs, headers=headers, models=models, examples=EXAMPLES)
    assert not failures, "\n\n".join(failures)
    # The fuzzer was signed in as the grant holder and reached the engine.
    assert ApiKey.objects.get(user=applicant, key_prefix=raw[: len(ApiKey.PREFIX) + 6]).last_used_at is not None
    rows = UsageRecord.objects.filter(user=applicant)
    assert rows.filter(status=UsageStatus.OK, completion_tokens__gt=0).exists()
    assert not rows.filter(http_status__gte=500).exists()
