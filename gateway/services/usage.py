"""One usage row per API request of a known caller."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.models import UsageRecord, UsageStatus


@dataclass
class UsageDraft:
    """A request's figures as the gateway learns them; `usage_record` writes it once, at the end."""

    created_at: datetime
    user_id: int
    api_key_id: int | None
    model: str
    stream: bool = False
    release_id: int | None = None
    deployment_id: int | None = None
    replica_id: int | None = None
    status: str = UsageStatus.OK
    http_status: int = 200
    error_code: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_exact: bool = True
    latency_ms: int = 0
    first_token_ms: int | None = None


def usage_record(draft: UsageDraft) -> UsageRecord:
    return UsageRecord.objects.create(
        created_at=draft.created_at,
        user_id=draft.user_id,
        api_key_id=draft.api_key_id,
        release_id=draft.release_id,
        model=draft.model[:200],
        deployment_id=draft.deployment_id,
        replica_id=draft.replica_id,
        stream=draft.stream,
        status=draft.status,
        http_status=draft.http_status,
        error_code=draft.error_code[:64],
        prompt_tokens=max(0, draft.prompt_tokens),
        completion_tokens=max(0, draft.completion_tokens),
        usage_exact=draft.usage_exact,
        latency_ms=max(0, draft.latency_ms),
        first_token_ms=draft.first_token_ms,
    )
