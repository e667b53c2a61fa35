"""The OpenAPI document of the portal's `/v1/` API, served at `GET /v1/openapi.json`.

The request body of `POST /v1/completions` is the engine's own pydantic model
(`inference_worker.protocol.CompletionRequest`): the gateway passes the body on and the engine
validates it, so the portal describes exactly what the engine accepts. What differs at the portal is
said here: `model` is a release's id from `GET /v1/models`, the key is a user's `orp_` API key, and
the answers include the gateway's own refusals (401 key, 403 grant, 404 model, 413 body, 429 quota)
and the engine's unavailability (502/503/504). `inference_worker.protocol` imports pydantic only, so
the portal never loads torch for this.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from inference_worker.protocol import CompletionRequest

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "OpenAI's error shape.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

COMPLETION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "text_completion"},
        "created": {"type": "integer"},
        "model": {"type": "string", "description": "The `model` of the request."},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "text"],
                "properties": {
                    "index": {"type": "integer"},
                    "text": {"type": "string"},
                    "logprobs": {"type": ["object", "null"]},
                    "finish_reason": {"type": ["string", "null"], "enum": ["stop", "length", None]},
                },
            },
        },
        "usage": {
            "type": ["object", "null"],
            "properties": {
                "prompt_tokens": {"type": "integer"},
                "completion_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            },
        },
    },
}

MODEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {
            "type": "string",
            "description": (
                "The `model` of a completion request: a release's slug, or `<release-slug>:<variant>` for your "
                "own fine-tuned checkpoint of it."
            ),
        },
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
        "parent": {"type": "string", "description": "Fine-tuned models only: the base release's slug."},
    },
}

MODEL_LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}},
}

RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}


def _error(description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}, **extra}


UNAUTHENTICATED = _error("No API key, or an unknown, revoked or expired one.")


def _completion_request_schemas() -> dict[str, Any]:
    """The engine's request model as JSON Schema, its nested models moved to the components."""
    schema = CompletionRequest.model_json_schema(ref_template=REF)
    nested = schema.pop("$defs", {})
    schema["description"] = (
        "As OpenAI's completions API (plus `top_k`, `ignore_eos` and `return_token_ids` as vLLM has them). "
        "The portal checks `model` and `stream`; the engine validates every other field (a 400 naming it)."
    )
    schema["properties"]["model"] = {
        **schema["properties"]["model"],
        "description": "The id of a model you may use, from GET /v1/models (a release's slug, or "
        "`<release-slug>:<variant>` for your own fine-tuned checkpoint).",
    }
    return {"CompletionRequest": schema, **nested}


@cache
def _document() -> dict[str, Any]:
    completion_responses = {
        "200": {
            "description": "The completion; with `stream: true`, server-sent events ending in `data: [DONE]`.",
            "content": {
                "application/json": {"schema": _ref("Completion")},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        },
        "400": _error("A bad field (`param` names it), or a prompt longer than the model's context."),
        "401": UNAUTHENTICATED,
        "403": _error("No active grant to the release `model` names (or a browser request without CSRF token)."),
        "404": _error("No served model of that id."),
        "405": _error("Use POST."),
        "413": _error("The body is over the portal's limit."),
        "429": _error(
            "A quota (tokens per day, requests per minute, concurrent requests) or every engine's queue is full.",
            headers=RETRY_AFTER,
        ),  # fmt: skip
        "502": _error("The engine failed."),
        "503": _error("No engine of the model can be reached now."),
        "504": _error("The engine did not answer in time."),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OpenRelease hosted inference",
            "version": "1",
            "description": (
                'OpenAI-compatible: `openai.OpenAI(base_url="<portal>/v1", api_key="orp_…")`. A model is usable '
                "while its caller holds an active grant to its release; quotas are per user and release."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "paths": {
            "/v1/completions": {
                "post": {
                    "operationId": "createCompletion",
                    "summary": "Complete a prompt with a model you hold a grant to.",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("CompletionRequest")}},
                    },
                    "responses": completion_responses,
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "summary": "The models you may use now.",
                    "responses": {
                        "200": {
                            "description": "Served releases whose access check passes for you.",
                            "content": {"application/json": {"schema": _ref("ModelList")}},
                        },
                        "401": UNAUTHENTICATED,
                    },
                }
            },
            "/v1/models/{model}": {
                "get": {
                    "operationId": "retrieveModel",
                    "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "200": {
                            "description": "The model, if you may use it.",
                            "content": {"application/json": {"schema": _ref("Model")}},
                        },
                        "401": UNAUTHENTICATED,
                        "404": _error("No such model, or not one you may use."),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from your account page (orp_…).",
                }
            },
            "schemas": {
                **_completion_request_schemas(),
                "Completion": COMPLETION_SCHEMA,
                "Model": MODEL_SCHEMA,
                "ModelList": MODEL_LIST_SCHEMA,
                "Error": ERROR_SCHEMA,
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    """The document (a copy: callers may change it)."""
    return copy.deepcopy(_document())
