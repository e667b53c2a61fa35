#!/usr/bin/env bash
# Installs and starts the services the tests use: PostgreSQL, Redis and Chromium.
#
#   scripts/services.sh install      apt-get the packages that are missing (needs root)
#   scripts/services.sh start        start PostgreSQL and Redis on loopback ports under var/,
#                                    and print `export DATABASE_URL=… REDIS_URL=…` for eval
#   scripts/services.sh stop         stop them
#
# Ports and directories are private to this checkout, so nothing clashes with a system service.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN_DIR="${SERVICES_DIR:-$ROOT/var/services}"
PG_PORT="${PG_PORT:-54329}"
REDIS_PORT="${REDIS_PORT:-63799}"
PG_DATA="$RUN_DIR/pg"

log() { echo "services: $*" >&2; }

pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/pg_ctl" ] && { echo "$dir"; return; }
  done
  dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/pg_ctl)"
}

as_pg() {
  # initdb and postgres refuse to run as root: use the postgres account then.
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install() {
  local missing=()
  [ -x "$(pg_bin)/pg_ctl" ] && id postgres >/dev/null 2>&1 || missing+=(postgresql)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v chromium >/dev/null || missing+=(chromium)
  if [ ${#missing[@]} -eq 0 ]; then log "postgresql, redis-server and chromium are installed"; return; fi
  if [ "$(id -u)" != 0 ]; then
    log "missing ${missing[*]}: run 'sudo apt-get install ${missing[*]}' (or run this script as root)"
    return 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_pg() {
  local bin; bin=$(pg_bin)
  [ -x "$bin/pg_ctl" ] || { log "PostgreSQL is not installed (scripts/services.sh install)"; return 1; }
  mkdir -p "$RUN_DIR"
  if [ "$(id -u)" = 0 ]; then chown postgres "$RUN_DIR"; fi
  if [ ! -s "$PG_DATA/PG_VERSION" ]; then
    as_pg "$bin/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  if ! as_pg "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -t 60 \
      -o "-p $PG_PORT -k $PG_DATA -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
      start >/dev/null
  fi
  as_pg "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='openrelease'" | grep -q 1 \
    || as_pg "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres openrelease
  echo "export DATABASE_URL=postgresql://postgres@127.0.0.1:$PG_PORT/openrelease"
}

start_redis() {
  command -v redis-server >/dev/null || { log "redis-server is not installed (scripts/services.sh install)"; return 1; }
  mkdir -p "$RUN_DIR/redis"
  if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --dir "$RUN_DIR/redis" \
      --save '' --appendonly no --logfile "$RUN_DIR/redis/redis.log" --pidfile "$RUN_DIR/redis/redis.pid"
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  echo "export REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
}

stop() {
  local bin; bin=$(pg_bin)
  [ -d "$PG_DATA" ] && as_pg "$bin/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1 || true
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
}

case "${1:-}" in
  install) install ;;
  start) start_pg; start_redis ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
