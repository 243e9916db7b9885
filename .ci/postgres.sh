#!/usr/bin/env bash
# Make PostgreSQL server binaries available for the registry's PostgreSQL tests.
# The tests start their own throwaway server; this only installs Debian's package when
# it is missing and we may install (root). Without it those tests skip and say why.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing PostgreSQL server (Debian package) for the registry tests..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
    || echo "warning: could not install PostgreSQL; its tests will skip" >&2
else
  echo "note: PostgreSQL server not installed and not root; its tests will skip" >&2
fi
