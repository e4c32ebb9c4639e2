#!/usr/bin/env bash
# Create or update the project venv (idempotent).
#
#   bash scripts/bootstrap.sh            # venv in <repo>/.venv
#   VENV=/tmp/v bash scripts/bootstrap.sh
#
# - Creates ${VENV:-.venv} (relative paths are taken from the repo root) if it
#   has no python yet.
# - If a system ROS 2 is sourced (ROS_DISTRO set and the system python3 can
#   import rclpy), the venv sees the system site-packages (rclpy, message
#   packages, cv_bridge) and requirements-ros.txt is skipped. Otherwise the
#   ROS 2 Python packages come from requirements-ros.txt as pip wheels.
# - Installs requirements.txt and the package itself (editable, --no-deps).
# - Skips all pip work when the stamp in the venv matches the hash of the
#   requirements files, setup.py/setup.cfg, the package version, the ROS mode
#   and the python version, so a second run takes about a second.
#
# - ONNXRUNTIME=openvino installs onnxruntime-openvino in place of
#   onnxruntime-gpu (both provide the `onnxruntime` module, so one venv holds
#   one of them): for CPU-only robots, whose exported prefix then runs in bf16
#   on OpenVINO (about 2x onnxruntime's CPU provider, see the README).
# - VLA_ROS_FLEET=1 also installs the `fleet` extra, Ray Serve (ray[serve], about
#   80 MB), for `vla-ros serve --ray` on a GPU server; off by default (a robot
#   that asks a server for actions needs none of it).
#
# Prints one line saying what it did. On a pip failure it prints the tail of the
# pip log and exits non-zero. Environment: VENV, PYTHON (interpreter used to
# create the venv; default python3), ONNXRUNTIME (gpu, the default, or openvino),
# VLA_ROS_FLEET (0, the default, or 1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${VENV:-.venv}"
case "$VENV" in
    /*) ;;
    *) VENV="$ROOT/$VENV" ;;
esac
PYTHON="${PYTHON:-python3}"
ONNXRUNTIME="${ONNXRUNTIME:-gpu}"
case "$ONNXRUNTIME" in
    gpu | openvino) ;;
    *) echo "bootstrap: error: ONNXRUNTIME must be 'gpu' or 'openvino', got '$ONNXRUNTIME'" >&2; exit 1 ;;
esac
VLA_ROS_FLEET="${VLA_ROS_FLEET:-0}"
case "$VLA_ROS_FLEET" in
    0 | 1) ;;
    *) echo "bootstrap: error: VLA_ROS_FLEET must be 0 or 1, got '$VLA_ROS_FLEET'" >&2; exit 1 ;;
esac
STAMP="$VENV/.vla_ros_bootstrap_stamp"
LOG="$VENV/bootstrap-pip.log"

die() {
    echo "bootstrap: error: $*" >&2
    exit 1
}

command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found; install Python 3.10+ or set PYTHON=/path/to/python3"

# --- which ROS 2 to use ------------------------------------------------------
ros_mode="pip"
if [ -n "${ROS_DISTRO:-}" ] && "$PYTHON" -c 'import rclpy' >/dev/null 2>&1; then
    ros_mode="system-$ROS_DISTRO"
fi

# --- serialise concurrent runs on the same venv -----------------------------
mkdir -p "$VENV"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV/.bootstrap.lock"
    flock 9
fi

version="$(sed -n 's:.*<version>\(.*\)</version>.*:\1:p' package.xml | head -n 1)"
[ -n "$version" ] || die "no <version> in package.xml"

compute_hash() {
    {
        echo "version=$version"
        echo "ros_mode=$ros_mode"
        echo "onnxruntime=$ONNXRUNTIME"
        echo "fleet=$VLA_ROS_FLEET"
        echo "python=$("$VENV/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null || echo none)"
        for f in requirements.txt requirements-ros.txt setup.py setup.cfg; do
            echo "== $f"
            cat "$f"
        done
    } | sha256sum | cut -d' ' -f1
}

# --- create the venv ---------------------------------------------------------
created=""
want_system_site="false"
[ "$ros_mode" = "pip" ] || want_system_site="true"
if [ ! -x "$VENV/bin/python" ]; then
    venv_args=()
    [ "$want_system_site" = "true" ] && venv_args+=(--system-site-packages)
    "$PYTHON" -m venv ${venv_args[@]+"${venv_args[@]}"} "$VENV" || die "could not create venv at $VENV with $PYTHON -m venv"
    created="created venv"
else
    # A venv made before ROS 2 was sourced (or the reverse): fix its
    # system-site-packages setting in place instead of recreating it.
    have_system_site="false"
    grep -qiE '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg" 2>/dev/null && have_system_site="true"
    if [ "$have_system_site" != "$want_system_site" ]; then
        sed -i -E "s/^(include-system-site-packages *= *).*/\1$want_system_site/I" "$VENV/pyvenv.cfg"
    fi
fi

hash="$(compute_hash)"
if [ -z "$created" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$hash" ]; then
    echo "bootstrap: ${VENV#"$ROOT"/} is up to date (vla_ros $version, ROS 2 from $ros_mode)"
    exit 0
fi

# --- pip work ----------------------------------------------------------------
rm -f "$STAMP"
: >"$LOG"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

pip_run() {
    if ! "$VENV/bin/python" -m pip "$@" >>"$LOG" 2>&1; then
        echo "bootstrap: error: pip $* failed; last lines of $LOG:" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}

start=$SECONDS
requirements="$VENV/bootstrap-requirements.txt"
sed "s/^onnxruntime-gpu\b.*/onnxruntime-$ONNXRUNTIME/" requirements.txt >"$requirements"
other="onnxruntime-openvino"
[ "$ONNXRUNTIME" = "openvino" ] && other="onnxruntime-gpu"
if "$VENV/bin/python" -m pip show -q "$other" >/dev/null 2>&1; then
    # Installing one flavour over the other leaves a mixed onnxruntime module.
    pip_run uninstall -y -q onnxruntime-gpu onnxruntime-openvino onnxruntime
fi
req_args=(-r "$requirements")
if [ "$ros_mode" = "pip" ]; then
    req_args+=(-r requirements-ros.txt)
else
    # Keep the system numpy that cv_bridge and the ROS message packages were
    # built against: a newer numpy in the venv would shadow it.
    sys_numpy="$("$PYTHON" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)"
    if [ -n "$sys_numpy" ]; then
        echo "numpy==$sys_numpy" >"$VENV/bootstrap-constraints.txt"
        req_args+=(-c "$VENV/bootstrap-constraints.txt")
    fi
fi
pip_run install -q "${req_args[@]}"
# Test-only: openpi's own client and server, for the interop tests of `vla-ros serve` and the
# remote node. Without their dependencies: openpi-client pins numpy<2 in its metadata only
# (requirements.txt says why); websockets and msgpack come from requirements.txt.
pip_run install -q --no-deps openpi-client==0.1.2 openpi-server==0.1.0
pip_run install -q --no-deps -e .
if [ "$VLA_ROS_FLEET" = "1" ]; then
    # The `fleet` extra of setup.py (kept in step with it), under the same numpy constraint.
    fleet_args=("ray[serve]>=2.60")
    if [ "$ros_mode" != "pip" ] && [ -f "$VENV/bootstrap-constraints.txt" ]; then
        fleet_args+=(-c "$VENV/bootstrap-constraints.txt")
    fi
    pip_run install -q "${fleet_args[@]}"
fi
echo "$hash" >"$STAMP"

what="${created:+$created, }installed requirements and vla_ros $version (editable)"
[ "$VLA_ROS_FLEET" = "1" ] && what="$what with Ray Serve (fleet)"
echo "bootstrap: $what into ${VENV#"$ROOT"/} in $((SECONDS - start)) s (ROS 2 from $ros_mode, onnxruntime-$ONNXRUNTIME)"
