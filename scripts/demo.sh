#!/usr/bin/env bash
# The demo: bootstrap the venv, then `vla-ros demo` (makes a tiny untrained
# checkpoint, exports it, replays a synthetic rosbag through the policy node and
# prints a summary). Extra arguments go to `vla-ros demo`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/bootstrap.sh

VENV="${VENV:-.venv}"
case "$VENV" in
    /*) ;;
    *) VENV="$ROOT/$VENV" ;;
esac

exec "$VENV/bin/vla-ros" demo "$@"
