#!/bin/sh
# The official image's start-up, reduced to what compose uses: a first start creates the cluster (UTF-8, as the official
# image's; initdb would pick SQL_ASCII in a container without a locale, and psycopg then returns bytes), the user (with
# its password) and the database; every start runs PostgreSQL as the postgres user, listening on all interfaces.
set -eu
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
chown postgres:postgres "$PGDATA"
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    printf '%s\n' "$POSTGRES_PASSWORD" >/tmp/pwfile
    chown postgres /tmp/pwfile
    runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb --username="$user" --pwfile=/tmp/pwfile --auth-host=scram-sha-256 \
        --auth-local=trust --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
    rm -f /tmp/pwfile
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [ "$db" != postgres ]; then
        runuser -u postgres -- /usr/lib/postgresql/15/bin/postgres --single -D "$PGDATA" postgres <<SQL >/dev/null
CREATE DATABASE "$db" OWNER "$user";
SQL
    fi
fi
if [ "$1" = postgres ]; then
    shift
    exec runuser -u postgres -- /usr/lib/postgresql/15/bin/postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec "$@"
