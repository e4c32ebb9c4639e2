#!/usr/bin/env bash
# Run the test suite: bootstrap the venv, then pytest on test/.
#
#   bash scripts/test.sh                 # all tests
#   bash scripts/test.sh -k packaging    # extra arguments go to pytest
#
# Tests that start ROS 2 nodes use DDS; they are kept on the loopback interface
# and on a ROS domain derived from this shell's PID, so parallel runs (and other
# ROS 2 processes on the machine) do not see each other. Set ROS_DOMAIN_ID or
# ROS_AUTOMATIC_DISCOVERY_RANGE yourself to override.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/bootstrap.sh

VENV="${VENV:-.venv}"
case "$VENV" in
    /*) ;;
    *) VENV="$ROOT/$VENV" ;;
esac

# Domains 1..100: valid on Linux with the default DDS port mapping, and never
# the default domain 0 that other ROS 2 processes on the machine use.
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(($$ % 100 + 1))}"
# Jazzy (and Iron+) restrict discovery with ROS_AUTOMATIC_DISCOVERY_RANGE;
# ROS_LOCALHOST_ONLY is deprecated there (rcl warns when it is set), so it is
# only set for Humble, which knows nothing else.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
if [ "${ROS_DISTRO:-}" = "humble" ]; then
    export ROS_LOCALHOST_ONLY="${ROS_LOCALHOST_ONLY:-1}"
fi

rc=0
"$VENV/bin/python" -m pytest test -q -p no:cacheprovider "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: error: pytest collected no tests (exit code 5); check the test/ folder and the -k/-m arguments" >&2
fi
exit "$rc"
