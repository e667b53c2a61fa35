"""The engine as a real subprocess on 127.0.0.1, driven by the official ``openai`` client (and raw
HTTP where the client would hide what is checked): completions plain, streamed, with logprobs,
echo, n, seed and stop; errors in OpenAI's shape; the secret; metrics; client disconnects."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
import torch
from _server import SECRET, EngineProcess, metric
from _tiny import make_checkpoint

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture(scope="module")
def long_opt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A 2048-position context, so a request can run long enough to be cut off by its client.
    return make_checkpoint("opt", tmp_path_factory.mktemp("srv") / "tiny-opt", max_position_embeddings=2048)


@pytest.fixture(scope="module")
def server(long_opt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    secret_file = tmp_path_factory.mktemp("secret") / "engine.secret"
    secret_file.write_text(SECRET + "\n")
    engine = EngineProcess(long_opt, "--max-batch-tokens", "32", "--block-size", "8", secret_file=secret_file)
    try:
        yield engine.wait_ready()
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def client(server: EngineProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=SECRET, max_retries=0)


@pytest.fixture(scope="module")
def reference(long_opt: Path) -> Any:
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(long_opt, dtype=torch.float32).eval()


def greedy_reference(model: Any, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=1, eos_token_id=2
        )
    tokens = out[0, len(prompt_ids) :].tolist()
    return tokens[: tokens.index(2) + 1] if 2 in tokens else tokens


def post(server: EngineProcess, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/completions", json=body, headers=AUTH if headers is None else headers, timeout=60
    )


def test_models_tokenize_and_plain_greedy_completion(
    server: EngineProcess, client: openai.OpenAI, reference: Any
) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-opt"]
    ids = httpx.post(f"{server.url}/tokenize", json={"prompt": "the quick brown fox"}, headers=AUTH).json()["tokens"]
    assert len(ids) >= 4

    done = client.completions.create(
        model="tiny-opt",
        prompt="the quick brown fox",
        max_tokens=12,
        temperature=0,
        extra_body={"return_token_ids": True},
    )
    choice = done.choices[0]
    tokens = choice.model_extra["token_ids"]
    assert choice.model_extra["prompt_token_ids"] == ids
    assert tokens == greedy_reference(reference, ids, 12)
    assert choice.finish_reason == ("stop" if tokens[-1] == 2 else "length")
    assert done.usage.prompt_tokens == len(ids) and done.usage.completion_tokens == len(tokens)
    # Token ids in, the same tokens out.
    again = client.completions.create(model="tiny-opt", prompt=ids, max_tokens=12, temperature=0)
    assert again.choices[0].text == choice.text


def test_streaming_matches_the_single_body_and_ends_with_done(server: EngineProcess, client: openai.OpenAI) -> None:
    body = {"model": "tiny-opt", "prompt": "once upon a time", "max_tokens": 20, "temperature": 0}
    whole = client.completions.create(**body)
    chunks = list(client.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    with httpx.stream("POST", f"{server.url}/v1/completions", json={**body, "stream": True}, headers=AUTH) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert all(json.loads(e[6:])["usage"] is None for e in events[:-1]), "no usage unless asked"


def test_echo_scores_the_prompt_and_logprobs_match_transformers(client: openai.OpenAI, reference: Any) -> None:
    text = "researchers score text with the logprobs"
    scored = client.completions.create(model="tiny-opt", prompt=text, max_tokens=0, echo=True, logprobs=2)
    choice = scored.choices[0]
    assert choice.text == text
    lp = choice.logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    ids = (
        client.completions.create(
            model="tiny-opt", prompt=text, max_tokens=0, echo=True, extra_body={"return_token_ids": True}
        )
        .choices[0]
        .model_extra["prompt_token_ids"]
    )
    with torch.no_grad():
        logprobs = torch.log_softmax(reference(torch.tensor([ids])).logits[0], dim=-1)
    want = [logprobs[i - 1, ids[i]].item() for i in range(1, len(ids))]
    assert lp.token_logprobs[1:] == pytest.approx(want, abs=1e-4)
    assert "".join(lp.tokens) == text
    assert all(len(top) >= 2 for top in lp.top_logprobs[1:])

    generated = client.completions.create(model="tiny-opt", prompt=text, max_tokens=5, temperature=0, logprobs=1)
    assert len(generated.choices[0].logprobs.token_logprobs) == generated.usage.completion_tokens
    assert all(v <= 0 for v in generated.choices[0].logprobs.token_logprobs)


def test_n_seed_and_several_prompts(client: openai.OpenAI) -> None:
    args = {"model": "tiny-opt", "max_tokens": 8, "temperature": 1.0, "seed": 5, "n": 3}
    first = client.completions.create(prompt="hello world", **args)
    second = client.completions.create(prompt="hello world", **args)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert len({c.text for c in first.choices}) > 1
    both = client.completions.create(
        model="tiny-opt", prompt=["hello world", "the lazy dog"], max_tokens=4, n=2, seed=1
    )
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    assert both.usage.completion_tokens <= 16 and both.usage.prompt_tokens > 4


def test_stop_string_is_not_returned(client: openai.OpenAI) -> None:
    body = {
        "model": "tiny-opt",
        "prompt": "the lazy dog",
        "max_tokens": 30,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    text = client.completions.create(**body).choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = client.completions.create(**body, stop=[stop, "@@"])
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(**body, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == text[: text.find(stop)]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": "two"}, "n"),
        ({"logprobs": 50}, "logprobs"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, 2, 100000]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"stop": [""]}, "stop"),
        ({"logit_bias": {"token": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 500}}, "logit_bias"),
        ({"logit_bias": {"100000": 1}}, "logit_bias"),
        ({"presence_penalty": 9}, "presence_penalty"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "x"}, "suffix"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"model": None}, "model"),
    ],
)
def test_bad_fields_are_400_naming_the_field(server: EngineProcess, change: dict[str, Any], param: str) -> None:
    body = {"model": "tiny-opt", "prompt": "hello", "max_tokens": 4, **change}
    response = post(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_context_limits_auth_and_unknown_model(server: EngineProcess) -> None:
    long_prompt = list(range(3, 100)) * 22  # 2134 tokens > 2048
    response = post(server, {"model": "tiny-opt", "prompt": long_prompt, "max_tokens": 1})
    assert response.status_code == 400
    assert "2048" in response.json()["error"]["message"] and "2134" in response.json()["error"]["message"]
    response = post(server, {"model": "tiny-opt", "prompt": list(range(3, 100)) * 20, "max_tokens": 200})
    message = response.json()["error"]["message"]
    assert response.status_code == 400 and "2048" in message and "1940" in message and "200" in message
    response = post(server, {"model": "gpt-4", "prompt": "hi"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET}):
        response = post(server, {"model": "tiny-opt", "prompt": "hi"}, headers=headers)
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{server.url}/v1/models", headers=headers).status_code == 401
        assert httpx.get(f"{server.url}/metrics", headers=headers).status_code == 401
    response = httpx.post(
        f"{server.url}/v1/completions", content=b"{not json", headers={**AUTH, "content-type": "application/json"}
    )
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]
    assert httpx.get(f"{server.url}/health").status_code == 200, "health needs no secret"


def test_metrics_count_tokens_and_latencies(server: EngineProcess, client: openai.OpenAI) -> None:
    client.completions.create(model="tiny-opt", prompt="hello there", max_tokens=6, temperature=0)
    text = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    assert metric(text, "inference_generation_tokens_total") >= 6
    assert metric(text, "inference_prompt_tokens_total") >= 2
    assert metric(text, "inference_time_to_first_token_seconds_count") >= 1
    assert metric(text, "inference_inter_token_latency_seconds_count") >= 5
    assert metric(text, "inference_e2e_request_latency_seconds_count") >= 1
    assert metric(text, "inference_kv_blocks_total") > 0
    for name in ("inference_requests_waiting", "inference_requests_running", "inference_kv_blocks_used"):
        assert metric(text, name) == 0
    assert metric(text, "inference_preemptions_total") == 0


def _wait_idle(server: EngineProcess, aborted: float) -> str:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        text = httpx.get(f"{server.url}/metrics", headers=AUTH).text
        idle = metric(text, "inference_requests_running") == 0 and metric(text, "inference_kv_blocks_used") == 0
        if idle and metric(text, "inference_requests_aborted_total") >= aborted:
            return text
        time.sleep(0.1)
    raise AssertionError(f"engine still busy after the client left:\n{text}")


def test_a_client_that_disconnects_frees_its_sequence(server: EngineProcess) -> None:
    before = metric(httpx.get(f"{server.url}/metrics", headers=AUTH).text, "inference_requests_aborted_total")
    body = {"model": "tiny-opt", "prompt": "the", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=AUTH, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # one chunk, then hang up
    text = _wait_idle(server, before + 1)
    # Far fewer than 2000 tokens were made: generation stopped when the client left.
    assert metric(text, "inference_generation_tokens_total") < 2000 + 500
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json={**body, "stream": False}, headers=AUTH, timeout=0.5)
    _wait_idle(server, before + 2)
