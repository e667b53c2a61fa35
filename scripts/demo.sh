#!/usr/bin/env bash
# `make demo` (or `PORT=8001 make demo`): migrate, seed demo data and accounts, then run the portal
# (ASGI, under uvicorn), its Celery worker and one inference engine on the demo OPT checkpoint, on
# http://127.0.0.1:$PORT with no external service (SQLite, a file-system broker, emails written to
# files). DEBUG is off, as in production: static files come from whitenoise and errors show the
# portal's own 404/500 pages. Ctrl-C stops everything in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PORT=${PORT:-8000}
ENGINE_PORT=${ENGINE_PORT:-$((PORT + 100))}
VAR=${PORTAL_VAR_DIR:-var}

export DJANGO_SETTINGS_MODULE=portal.settings
# The demo is a laptop: never let a stray production variable point it elsewhere.
unset DATABASE_URL REDIS_URL EMAIL_HOST
export PORTAL_ENV=development DEBUG=0 PORTAL_VAR_DIR="$VAR" SITE_URL="http://127.0.0.1:$PORT"
export EMAIL_BACKEND=django.core.mail.backends.filebased.EmailBackend EMAIL_FILE_PATH="$VAR/mail"
mkdir -p "$VAR/log" "$EMAIL_FILE_PATH"

$BIN/python manage.py migrate --noinput -v 0
$BIN/python manage.py collectstatic --noinput -v 0
$BIN/python manage.py seed_demo | tee "$VAR/log/seed.log"
# One fine-tuning job on the demo checkpoint, queued for the worker below (a few CPU steps, done in seconds).
$BIN/python manage.py seed_demo_finetune
# The engine serves the demo OPT checkpoint (random weights, its own tokenizer) from local storage.
ENGINE_SECRET="$VAR/engine-secrets/demo.secret"
CHECKPOINT_DIR=$($BIN/python manage.py demo_engine prepare --secret-file "$ENGINE_SECRET")

# Job control puts each background command in its own process group, so stopping kills the
# uvicorn, Celery and engine processes they fork too, and the terminal's Ctrl-C reaches only this script.
set -m
PIDS=()
stop() {
  local status=$1
  trap - INT TERM EXIT
  echo
  echo "Stopping the portal, the worker and the engine..."
  local pid _
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  # A warm Celery shutdown waits for running tasks; give both 5 s, then stop them hard.
  for _ in $(seq 50); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "Stopped."
  exit "$status"
}
trap 'stop 0' INT TERM
trap 'stop $?' EXIT

$BIN/celery -A portal worker --beat --schedule "$VAR/celerybeat-schedule" -Q default,io,gpu --concurrency 2 \
  --loglevel INFO >"$VAR/log/worker.log" 2>&1 &
PIDS+=($!)
# One uvicorn process: its event loop holds any number of API streams, and the gateway's counters live
# in its memory here (no Redis). Production runs several workers with Redis (README).
$BIN/uvicorn portal.asgi:application --host 127.0.0.1 --port "$PORT" --timeout-graceful-shutdown 3 \
  --log-level warning >>"$VAR/log/portal.log" 2>&1 &
PIDS+=($!)
$BIN/python -m inference_worker serve "$CHECKPOINT_DIR" --port "$ENGINE_PORT" --secret-file "$ENGINE_SECRET" \
  --kv-memory 256MiB --log-level warning >"$VAR/log/engine.log" 2>&1 &
PIDS+=($!)
# Register the engine once it answers (it loads in seconds); the portal works without it meanwhile.
for _ in $(seq 120); do
  $BIN/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" \
    "http://127.0.0.1:$ENGINE_PORT/health" 2>/dev/null && break
  kill -0 -- "-${PIDS[2]}" 2>/dev/null || break
  sleep 0.5
done
$BIN/python manage.py demo_engine register --url "http://127.0.0.1:$ENGINE_PORT" --secret-file "$ENGINE_SECRET" \
  || echo "The engine did not register; see $VAR/log/engine.log" >&2

echo
sed -n '/^Demo logins/,$p' "$VAR/log/seed.log"
echo
echo "Portal: http://127.0.0.1:$PORT  ·  API docs: http://127.0.0.1:$PORT/api/docs/  ·  admin: /admin/"
echo "Playground: http://127.0.0.1:$PORT/playground/ (as researcher@demo.local)  ·  OpenAI API: http://127.0.0.1:$PORT/v1"
echo "Fine-tuning: http://127.0.0.1:$PORT/finetune/ (as researcher@demo.local)  ·  all jobs: /finetune/operator/"
echo "Emails: one file per email in $EMAIL_FILE_PATH/"
echo "Logs: $VAR/log/portal.log (portal), $VAR/log/worker.log (worker), $VAR/log/engine.log (engine). Stop with Ctrl-C."
# Returns when a signal runs `stop`, or when uvicorn exits (a port already in use, say).
wait "${PIDS[1]}" || { echo "The portal stopped: see $VAR/log/portal.log" >&2; exit 1; }
