#!/usr/bin/env bash
# `make demo`: migrate, seed demo data and accounts, then run the portal and its Celery worker on
# http://127.0.0.1:8000 with no external service (SQLite, a file-system broker, console email).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export DJANGO_SETTINGS_MODULE=portal.settings
# The demo is a laptop: never let a stray production variable point it elsewhere.
unset DATABASE_URL REDIS_URL
export PORTAL_ENV=development
mkdir -p var/log

$BIN/python manage.py migrate --noinput -v 0
$BIN/python manage.py collectstatic --noinput -v 0
$BIN/python manage.py seed_demo | tee var/log/seed.log

# The worker's console email backend prints every email into its log.
$BIN/celery -A portal worker --beat --schedule var/celerybeat-schedule -Q default,io,gpu --concurrency 2 \
  --loglevel INFO > var/log/worker.log 2>&1 &
WORKER=$!
trap 'kill $WORKER 2>/dev/null; wait $WORKER 2>/dev/null' EXIT INT TERM

echo
sed -n '/^Demo logins/,$p' var/log/seed.log
echo
echo "Portal: http://127.0.0.1:8000  ·  API docs: http://127.0.0.1:8000/api/docs/  ·  admin: /admin/"
echo "Worker and emails: var/log/worker.log. Stop with Ctrl-C."
$BIN/gunicorn portal.wsgi --bind 127.0.0.1:8000 --workers 2 --threads 4 --graceful-timeout 5 \
  --access-logfile var/log/access.log
