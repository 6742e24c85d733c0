#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1:55432 (role/db/password: xvol) for the tests
# marked `postgres`. Installs Debian's postgresql package when the server binaries are missing.
set -euo pipefail
port=55432
data=/tmp/xvol-ci-pg
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq postgresql >/dev/null
fi
bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
id postgres >/dev/null 2>&1 || useradd --system postgres
as_pg() { runuser -u postgres -- "$@"; }
if as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
  as_pg "$bin/pg_ctl" -D "$data" -m fast stop >/dev/null
fi
rm -rf "$data" && mkdir -p "$data" && chown postgres "$data"
as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
as_pg "$bin/pg_ctl" -D "$data" -o "-p $port -k /tmp -c listen_addresses=127.0.0.1" -l "$data/log" -w start >/dev/null
as_pg "$bin/psql" -h 127.0.0.1 -p $port -U postgres -qc "CREATE ROLE xvol LOGIN PASSWORD 'xvol'"
as_pg "$bin/psql" -h 127.0.0.1 -p $port -U postgres -qc "CREATE DATABASE xvol OWNER xvol"
echo "postgres: ready on 127.0.0.1:$port"
