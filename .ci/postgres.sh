#!/usr/bin/env bash
# Make PostgreSQL server binaries available for the registry tests (tests/_postgres.py).
#
# Contract: idempotent; exits 0 when /usr/lib/postgresql/*/bin/initdb exists afterwards.
# It only installs Debian's `postgresql` package (no cluster is created or started):
# the test fixture starts a private throwaway server itself, as the `postgres` user,
# on a free port in a temp folder. To test against an existing server instead, export
# CONES2_TEST_POSTGRES_URL=postgresql+psycopg://USER[:PASS]@HOST:PORT (USER must be
# allowed to CREATE DATABASE). Without binaries or that URL the PostgreSQL tests skip
# with the reason shown.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null; then
    echo "postgres.sh: PostgreSQL binaries present: $(ls -d /usr/lib/postgresql/*/bin | tail -1)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "postgres.sh: no PostgreSQL binaries and not root: cannot install (its tests will skip, saying why)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql > /dev/null; }; then
    echo "postgres.sh: could not install PostgreSQL (its tests will skip, saying why)" >&2
    exit 0
fi
# Debian's package may start a cluster of its own; the tests do not need it.
service postgresql stop > /dev/null 2>&1 || true
compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null
echo "postgres.sh: installed $(ls -d /usr/lib/postgresql/*/bin | tail -1)"
