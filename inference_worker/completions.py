"""POST /v1/completions: from a validated request to engine submissions, and from engine reports
to OpenAI's response JSON (one body, or server-sent events)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from inference_worker.async_engine import AsyncEngine, EngineFailed, Submission
from inference_worker.engine import RequestOutput, SampleOutput
from inference_worker.protocol import APIError, CompletionRequest, error_body
from inference_worker.sampling import SamplingParams, TokenLogprobs
from inference_worker.tokenizer import Tokenizer

DEFAULT_MAX_TOKENS = 16


@dataclass
class Prompt:
    ids: list[int]
    text: str  # as given, or decoded from ids (for echo)


@dataclass
class Prepared:
    completion_id: str
    created: int
    model: str
    prompts: list[Prompt]
    params: SamplingParams
    echo: bool
    stream: bool
    include_usage: bool
    return_token_ids: bool

    def request_id(self, prompt_index: int) -> str:
        return f"{self.completion_id}-{prompt_index}"

    def submissions(self) -> list[Submission]:
        return [Submission(self.request_id(i), p.ids, self.params) for i, p in enumerate(self.prompts)]


def prepare(
    body: CompletionRequest, *, tokenizer: Tokenizer, model_name: str, vocab_size: int, max_context: int, engine: Any
) -> Prepared:
    """Validate what pydantic cannot (token ranges, lengths against the context) and build the
    sampling parameters. Raises APIError(400/404) naming the field."""
    if body.model != model_name:
        raise APIError(
            404, f"The model {body.model!r} does not exist; this engine serves {model_name!r}", param="model",
            type="invalid_request_error", code="model_not_found",
        )  # fmt: skip
    if body.suffix is not None:
        raise APIError(400, "suffix is not supported", param="suffix")
    n = body.n or 1
    if body.best_of is not None and body.best_of != n:
        raise APIError(
            400, f"best_of={body.best_of} must equal n={n} (best-of reranking is not supported)", param="best_of"
        )
    prompts = _prompts(body.prompt, tokenizer, vocab_size)
    echo = bool(body.echo)
    longest = max(len(p.ids) for p in prompts)
    if longest > max_context:
        raise APIError(
            400,
            f"This model's maximum context length is {max_context} tokens, but the prompt has {longest} tokens. "
            f"Shorten the prompt.",
            param="prompt",
            code="context_length_exceeded",
        )
    if body.max_tokens is None:
        max_tokens = max(0, min(DEFAULT_MAX_TOKENS, max_context - longest))
    else:
        max_tokens = body.max_tokens
        if longest + max_tokens > max_context:
            raise APIError(
                400,
                f"This model's maximum context length is {max_context} tokens. However, you requested "
                f"{longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} for the completion). "
                f"Lower max_tokens or shorten the prompt.",
                param="max_tokens",
                code="context_length_exceeded",
            )
    if max_tokens == 0 and not echo:
        raise APIError(400, "max_tokens=0 generates nothing; it is only useful with echo=true", param="max_tokens")
    for prompt in prompts:
        try:
            engine.check_fits(len(prompt.ids), max_tokens)
        except ValueError as exc:
            raise APIError(400, str(exc), param="max_tokens") from None
    bias: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        token = int(key)
        if token >= vocab_size:
            raise APIError(
                400, f"logit_bias key {key} is not a token id (vocabulary size {vocab_size})", param="logit_bias"
            )
        bias[token] = float(value)
    top_k = body.top_k if body.top_k is not None and body.top_k > 0 else 0
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=top_k,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=bias,
        stop=body.stop_strings(),
        n=n,
        seed=body.seed,
        logprobs=body.logprobs,
        prompt_logprobs=echo and body.logprobs is not None,
        ignore_eos=bool(body.ignore_eos),
    )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options is only allowed with stream=true", param="stream_options")
    return Prepared(
        completion_id=f"cmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=model_name,
        prompts=prompts,
        params=params,
        echo=echo,
        stream=bool(body.stream),
        include_usage=include_usage,
        return_token_ids=bool(body.return_token_ids),
    )


def _prompts(prompt: Any, tokenizer: Tokenizer, vocab_size: int) -> list[Prompt]:
    if isinstance(prompt, str):
        items: list[str | list[int]] = [prompt]
    elif prompt and isinstance(prompt[0], int):
        items = [prompt]
    else:
        items = list(prompt)
    out: list[Prompt] = []
    for item in items:
        if isinstance(item, str):
            ids = tokenizer.encode(item)
            text = item
        else:
            bad = [t for t in item if not 0 <= t < vocab_size]
            if bad:
                raise APIError(
                    400, f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab_size})", param="prompt"
                )
            ids, text = list(item), tokenizer.decode(list(item))
        if not ids:
            raise APIError(400, "prompt is empty: it has no tokens", param="prompt")
        out.append(Prompt(ids, text))
    return out


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


@dataclass
class _Choice:
    """What one choice (prompt i, sample j) has accumulated."""

    index: int
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: dict[str, list[Any]] | None = None
    finish_reason: str | None = None
    offset: int = 0  # text_offset of the next token (token texts laid end to end, as vLLM counts)
    started: bool = False


class ResponseBuilder:
    """Turns reports into choices. The same code serves the one-body answer and each SSE chunk."""

    def __init__(self, prepared: Prepared, tokenizer: Tokenizer) -> None:
        self.p, self.tokenizer = prepared, tokenizer
        n = prepared.params.n
        self.choices = [_Choice(i) for i in range(len(prepared.prompts) * n)]
        self.prompt_logprobs: dict[int, list[TokenLogprobs | None]] = {}
        self.usage_prompt = sum(len(p.ids) for p in prepared.prompts)
        self.completion_tokens: dict[int, int] = {}
        self.finished_prompts: set[int] = set()

    def prompt_index(self, request_id: str) -> int:
        return int(request_id.rsplit("-", 1)[1])

    def apply(self, report: RequestOutput) -> list[dict[str, Any]]:
        """The choice deltas this report adds (each a choice dict for a chunk)."""
        i = self.prompt_index(report.request_id)
        if report.prompt_logprobs is not None:
            self.prompt_logprobs[i] = report.prompt_logprobs
        self.completion_tokens[i] = report.completion_tokens
        if report.finished:
            self.finished_prompts.add(i)
        return [self._delta(i, sample) for sample in report.samples]

    @property
    def done(self) -> bool:
        return len(self.finished_prompts) == len(self.p.prompts)

    def _delta(self, prompt_index: int, sample: SampleOutput) -> dict[str, Any]:
        choice = self.choices[prompt_index * self.p.params.n + sample.index]
        text = sample.text
        want_logprobs = self.p.params.logprobs is not None
        delta_lp: dict[str, list[Any]] | None = _empty_logprobs() if want_logprobs else None
        prompt_ids: list[int] | None = None
        if not choice.started:
            choice.started = True
            if self.p.echo:
                prompt = self.p.prompts[prompt_index]
                text = prompt.text + text
                if delta_lp is not None:
                    entries = self.prompt_logprobs.get(prompt_index) or [None] * len(prompt.ids)
                    for position, (token_id, entry) in enumerate(zip(prompt.ids, entries, strict=True)):
                        self._add_logprob(delta_lp, choice, token_id, entry, first=position == 0)
                choice.offset = len(prompt.text)
            if self.p.return_token_ids:
                prompt_ids = self.p.prompts[prompt_index].ids
        if delta_lp is not None:
            for entry in sample.logprobs:
                self._add_logprob(delta_lp, choice, entry.token_id, entry)
        choice.text.append(text)
        choice.token_ids.extend(sample.token_ids)
        if delta_lp is not None:
            choice.logprobs = _merge_logprobs(choice.logprobs, delta_lp)
        if sample.finish_reason is not None:
            choice.finish_reason = sample.finish_reason
        out: dict[str, Any] = {
            "index": choice.index,
            "text": text,
            "logprobs": delta_lp,
            "finish_reason": sample.finish_reason,
        }
        if self.p.return_token_ids:
            out["token_ids"] = list(sample.token_ids)
            if prompt_ids is not None:
                out["prompt_token_ids"] = list(prompt_ids)
        return out

    def _add_logprob(
        self, lp: dict[str, list[Any]], choice: _Choice, token_id: int, entry: TokenLogprobs | None, first: bool = False
    ) -> None:
        token_text = self.tokenizer.token_text(token_id, first=first)
        lp["tokens"].append(token_text)
        lp["token_logprobs"].append(None if entry is None else entry.logprob)
        if entry is None:
            lp["top_logprobs"].append(None)
        else:
            top = {self.tokenizer.token_text(t): v for t, v in entry.top}
            top.setdefault(token_text, entry.logprob)
            lp["top_logprobs"].append(top)
        lp["text_offset"].append(choice.offset)
        choice.offset += len(token_text)

    def usage(self) -> dict[str, int]:
        completion = sum(self.completion_tokens.values())
        return {
            "prompt_tokens": self.usage_prompt,
            "completion_tokens": completion,
            "total_tokens": self.usage_prompt + completion,
        }

    def body(self) -> dict[str, Any]:
        choices = []
        for choice in self.choices:
            item: dict[str, Any] = {
                "index": choice.index,
                "text": "".join(choice.text),
                "logprobs": choice.logprobs,
                "finish_reason": choice.finish_reason or "length",
            }
            if self.p.return_token_ids:
                item["token_ids"] = choice.token_ids
                item["prompt_token_ids"] = self.p.prompts[choice.index // self.p.params.n].ids
            choices.append(item)
        return {
            "id": self.p.completion_id,
            "object": "text_completion",
            "created": self.p.created,
            "model": self.p.model,
            "choices": choices,
            "usage": self.usage(),
            "system_fingerprint": None,
        }

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        body = {
            "id": self.p.completion_id,
            "object": "text_completion",
            "created": self.p.created,
            "model": self.p.model,
            "choices": choices,
            "usage": usage,
        }
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def _empty_logprobs() -> dict[str, list[Any]]:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


def _merge_logprobs(into: dict[str, list[Any]] | None, delta: dict[str, list[Any]]) -> dict[str, list[Any]]:
    if into is None:
        return {k: list(v) for k, v in delta.items()}
    for key, values in delta.items():
        into[key].extend(values)
    return into


async def collect(queue: Any, builder: ResponseBuilder) -> dict[str, Any]:
    while not builder.done:
        item = await queue.get()
        if isinstance(item, EngineFailed):
            raise APIError(500, str(item), type="server_error")
        builder.apply(item)
    return builder.body()


async def stream(
    queue: Any, builder: ResponseBuilder, engine: AsyncEngine, request_ids: list[str]
) -> AsyncIterator[str]:
    """SSE chunks; if the client goes away (the task is cancelled) its sequences are dropped."""
    try:
        while not builder.done:
            item = await queue.get()
            if isinstance(item, EngineFailed):
                yield f"data: {json.dumps(error_body(str(item), type='server_error'))}\n\n"
                break
            for choice in builder.apply(item):
                yield builder.chunk([choice])
        if builder.done and builder.p.include_usage:
            yield builder.chunk([], builder.usage())
        yield "data: [DONE]\n\n"
    finally:
        if not builder.done:
            engine.abort(request_ids)
