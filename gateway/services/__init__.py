"""Writes of the gateway: `deployments` (add, drain, remove, health checks), `limits` (per-grant
overrides) and `usage` (one row per API request). Views, the API, tasks and commands call these."""
