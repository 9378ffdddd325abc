#!/bin/sh
# Entrypoint of the locally built PostgreSQL image. It honours the official `postgres` image's
# contract: POSTGRES_PASSWORD, POSTGRES_USER, POSTGRES_DB, PGDATA, POSTGRES_HOST_AUTH_METHOD,
# and scripts in /docker-entrypoint-initdb.d/ run once on an empty data directory.
set -eu

PGDATA="${PGDATA:-/var/lib/postgresql/data}"
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
AUTH="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
export PGDATA

as_postgres() {
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
}

# As the official image: arguments that start with '-' are the server's (`args: [-c, ...]`).
case "${1:-}" in
    -*) set -- postgres "$@" ;;
esac
if [ "${1:-postgres}" != "postgres" ]; then
    exec "$@"
fi
shift || true

mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 0700 "$PGDATA"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$AUTH" != "trust" ]; then
        echo "error: database is uninitialized and superuser password is not specified." >&2
        echo "       Set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust)." >&2
        exit 1
    fi
    pwfile=$(mktemp)
    printf '%s' "${POSTGRES_PASSWORD:-}" > "$pwfile"
    chown postgres "$pwfile"
    chmod 0600 "$pwfile"
    as_postgres initdb --username="$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host="$AUTH" -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
    printf '\nhost all all all %s\n' "$AUTH" >> "$PGDATA/pg_hba.conf"

    # A temporary server on the Unix socket only, so clients see no TCP answer until the
    # init scripts have run.
    as_postgres pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    psql_init() { as_postgres psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" "$@"; }
    if [ "$POSTGRES_DB" != "postgres" ]; then
        psql_init --dbname postgres -q -c "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        [ -e "$f" ] || continue
        case "$f" in
            *.sh) echo "running $f"; . "$f" ;;
            *.sql) echo "running $f"; psql_init --dbname "$POSTGRES_DB" -q -f "$f" ;;
            *.sql.gz) echo "running $f"; gunzip -c "$f" | psql_init --dbname "$POSTGRES_DB" -q ;;
            *) echo "ignoring $f" ;;
        esac
    done
    as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "PostgreSQL init process complete; ready for start up."
fi

exec setpriv --reuid=postgres --regid=postgres --init-groups -- postgres -D "$PGDATA" -c listen_addresses='*' "$@"
