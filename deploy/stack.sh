#!/usr/bin/env bash
# The local stack: Redis and PostgreSQL under a local folder (default .local/),
# on loopback ports, plus the three daemons. PostgreSQL refuses to run as root,
# so as root it runs as the `postgres` system user.
#
#   deploy/stack.sh up        start Redis, PostgreSQL, migrate, start the daemons
#   deploy/stack.sh down      stop everything
#   deploy/stack.sh env       print the environment to reach the stack
#   deploy/stack.sh status    what runs
#
# Settings: WACAST_HOME (folder, default .local), WACAST_REDIS_PORT (6390),
# WACAST_PG_PORT (5440), WACAST_BUILD (build dir, default build), WACAST_SENDERS (1),
# WACAST_HTTP_BASE (first daemon port, 8081), WACAST_REDIS_APPENDFSYNC (everysec:
# a crash of Redis can lose up to ~1 s of acknowledged writes; always: none,
# at the cost measured in README.md's delivery guarantee).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
home=${WACAST_HOME:-$root/.local}
redis_port=${WACAST_REDIS_PORT:-6390}
pg_port=${WACAST_PG_PORT:-5440}
build=${WACAST_BUILD:-$root/build}
senders=${WACAST_SENDERS:-1}
http_base=${WACAST_HTTP_BASE:-8081}
appendfsync=${WACAST_REDIS_APPENDFSYNC:-everysec}
case "$appendfsync" in
  everysec|always) ;;
  *) echo "stack: WACAST_REDIS_APPENDFSYNC must be everysec or always (got '$appendfsync')" >&2; exit 2 ;;
esac
pgbin=/usr/lib/postgresql/15/bin
export DATABASE_URL="postgresql://postgres@127.0.0.1:$pg_port/wacast"
export REDIS_URL="redis://127.0.0.1:$redis_port/0"

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_redis() {
  mkdir -p "$home/redis" "$home/log"
  if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then return; fi
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$home/redis" --save "" \
    --appendonly yes --appendfsync "$appendfsync" --maxmemory-policy noeviction \
    --auto-aof-rewrite-min-size 512mb \
    --daemonize yes --pidfile "$home/redis/redis.pid" --logfile "$home/log/redis.log"
  for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "stack: redis-server did not start; see $home/log/redis.log" >&2; exit 1
}

start_pg() {
  mkdir -p "$home/log"
  if [ ! -f "$home/pg/PG_VERSION" ]; then
    mkdir -p "$home/pg" "$home/pgsock"
    chmod 755 "$home"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$home/pg" "$home/pgsock"
    as_pg "$pgbin/initdb" -D "$home/pg" -U postgres --auth=trust -E UTF8 --locale=C >"$home/log/initdb.log" 2>&1 \
      || { echo "stack: initdb failed; see $home/log/initdb.log" >&2; exit 1; }
  fi
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$home/log"
  if ! as_pg "$pgbin/pg_ctl" -D "$home/pg" status >/dev/null 2>&1; then
    as_pg "$pgbin/pg_ctl" -D "$home/pg" -l "$home/log/postgres.log" -w -t 60 \
      -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$home/pgsock -c max_connections=200 -c shared_buffers=256MB -c max_wal_size=4GB" \
      start >/dev/null
  fi
  psql "postgresql://postgres@127.0.0.1:$pg_port/postgres" -qtAc \
    "SELECT 1 FROM pg_database WHERE datname = 'wacast'" | grep -q 1 \
    || psql "postgresql://postgres@127.0.0.1:$pg_port/postgres" -qc "CREATE DATABASE wacast"
}

start_daemon() { # name port [extra env...]
  local name=$1 port=$2; shift 2
  local pidf="$home/run/$name.pid"
  mkdir -p "$home/run" "$home/log"
  if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then return; fi
  local bin=${name%-[0-9]*}
  env PORT="$port" "$@" nohup "$build/wacast-$bin" >>"$home/log/$name.log" 2>&1 &
  echo $! >"$pidf"
}

up() {
  [ -x "$build/wacast-sender" ] || { echo "stack: build first (cmake --build $build)" >&2; exit 1; }
  start_redis
  start_pg
  "$build/wacast-ctl" migrate
  start_daemon scheduler "$http_base"
  start_daemon dispatcher "$((http_base + 1))"
  for i in $(seq "$senders"); do
    start_daemon "sender-$i" "$((http_base + 1 + i))" WACAST_INSTANCE_ID="sender-$i-$$"
  done
  echo "stack: up (redis :$redis_port, postgres :$pg_port, daemons from :$http_base; logs in $home/log)"
}

down() {
  for pidf in "$home"/run/*.pid; do
    [ -f "$pidf" ] || continue
    kill -TERM "$(cat "$pidf")" 2>/dev/null || true
  done
  for pidf in "$home"/run/*.pid; do
    [ -f "$pidf" ] || continue
    for _ in $(seq 100); do kill -0 "$(cat "$pidf")" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$(cat "$pidf")" 2>/dev/null || true
    rm -f "$pidf"
  done
  redis-cli -p "$redis_port" shutdown >/dev/null 2>&1 || true
  if [ -f "$home/pg/PG_VERSION" ]; then
    as_pg "$pgbin/pg_ctl" -D "$home/pg" -m fast stop >/dev/null 2>&1 || true
  fi
  echo "stack: down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) echo "export DATABASE_URL=$DATABASE_URL"; echo "export REDIS_URL=$REDIS_URL" ;;
  status)
    redis-cli -p "$redis_port" ping 2>/dev/null | sed 's/^/redis: /' || echo "redis: down"
    as_pg "$pgbin/pg_ctl" -D "$home/pg" status 2>/dev/null | head -1 | sed 's/^/postgres: /' || echo "postgres: down"
    for pidf in "$home"/run/*.pid; do
      [ -f "$pidf" ] || continue
      n=$(basename "$pidf" .pid); kill -0 "$(cat "$pidf")" 2>/dev/null && echo "$n: running" || echo "$n: stopped"
    done ;;
  *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
