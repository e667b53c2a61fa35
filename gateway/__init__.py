"""The gateway for hosted inference: deployments of engines (`inference_worker`), the OpenAI-compatible
API at the portal (`/v1/completions`, `/v1/models`) behind the live grant check, quotas, usage rows and
the playground.

- `models`: Deployment and its Replica rows, per-grant limit overrides, one UsageRecord per request;
- `selectors`: the reads (what a user may call, usage figures, the one door per guarded row);
- `services`: the writes (deployments, limits, usage, health checks);
- `counters`: in-flight leases and rate windows, in Redis or in process memory (picked by settings);
- `proxy`: the async client to the engines (replica choice, SSE pass-through);
- `api`: the async views of `/v1/`; `views`: the pages.
"""
