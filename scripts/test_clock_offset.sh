#!/usr/bin/env bash
# Run the whole test suite with every process's clock shifted (default: a year ahead), to prove that no test
# and no code path depends on today's date. Usage: scripts/test_clock_offset.sh [+365d|-365d|…] [pytest args]
#
# Needs libfaketime (https://github.com/wolfcw/libfaketime); point LIBFAKETIME at its libfaketime.so.1.
# It must fake the clock for Python's thread waits and the stat family Python calls (stat64, lstat64,
# fstatat): Debian 12's package (0.9.10) leaves lock and queue timeouts waiting a year. With none given,
# the script says so and exits 0 (it is not part of CI).
set -euo pipefail
cd "$(dirname "$0")/.."
offset="${1:-+365d}"
shift || true
lib="${LIBFAKETIME:-}"
if [ -z "$lib" ] || [ ! -f "$lib" ]; then
  echo "skipped: set LIBFAKETIME to a libfaketime.so.1 (see this script's header)" >&2
  exit 0
fi
echo "running the suite with the clock at ${offset}: $(LD_PRELOAD="$lib" FAKETIME="$offset" date -u)" >&2
# FAKE_UTIME=1: explicit times given to utime() are shifted back, so they read back as written.
exec env LD_PRELOAD="$lib" FAKETIME="$offset" FAKE_UTIME=1 uv run --no-sync pytest -q "$@"
