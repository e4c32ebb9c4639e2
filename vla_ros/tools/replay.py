"""`vla-ros replay`: run a policy over a recorded rosbag and compare it with what the robot did.

    vla-ros replay BAG --config ROBOT.yaml (--checkpoint DIR | --artifacts DIR) --out OUT_DIR
                   [--mode offline|live] [--rate R] [--start S --duration D]
                   [--latency fixed|measured] [--latency-ms X] [--seed S]

offline (default, vla_ros.tools.replay_offline): the bag's messages go
    through the node's own code (conversions, PolicyController, Policy) on
    simulated time with a simulated inference latency. No DDS; with a fixed
    latency two runs give identical outputs.

live (vla_ros.tools.replay_live): publishes the bag's input topics over DDS
    in real time (times --rate), with /clock, to a running vla_policy_node
    (started with use_sim_time:=true), and records the trajectories and
    diagnostics it publishes.

Topic names and types come from the robot YAML, exactly as the node reads
them (vla_ros.tools.replay_plan). Outputs (see vla_ros.tools.replay_report):
a rosbag2 bag of the produced trajectories and diagnostics, commands.csv,
metrics.json, plots, and a summary table on stdout.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
import sys
import time
from typing import Any, Callable

import numpy as np

from vla_ros.tools.replay_live import LiveReplay
from vla_ros.tools.replay_offline import DEFAULT_LATENCY_MS, load_policy, OfflineReplay
from vla_ros.tools.replay_plan import DEFAULT_NODE_NAME, plan_replay, read_reference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bag', type=Path,
                        help='rosbag2 directory (sqlite3 or mcap), .db3 / .mcap file, or ROS 1 .bag')
    parser.add_argument('--config', required=True, type=Path, help="robot YAML (the node's parameter file)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--checkpoint', type=Path, help='checkpoint directory (offline mode)')
    source.add_argument('--artifacts', type=Path, help='exported artifact directory (offline mode)')
    parser.add_argument('--out', required=True, type=Path, help='output directory (created; must not exist)')
    parser.add_argument('--mode', choices=('offline', 'live'), default='offline',
                        help='offline: simulated time, no DDS (default); live: against a running node')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='live mode: playback speed factor (default 1)')
    parser.add_argument('--start', type=float, default=0.0,
                        help='seconds into the bag to start at (default 0)')
    parser.add_argument('--duration', type=float, default=None,
                        help='seconds of bag to replay (default: all)')
    parser.add_argument('--latency', choices=('fixed', 'measured'), default='fixed',
                        help='offline: simulated inference latency, fixed (--latency-ms, reproducible) or '
                        'the measured wall-clock time of each inference (default fixed)')
    parser.add_argument('--latency-ms', type=float, default=DEFAULT_LATENCY_MS,
                        help=f'offline: the fixed inference latency in ms (default {DEFAULT_LATENCY_MS:g})')
    parser.add_argument('--seed', type=int, default=0, help='offline: seed of the policy noise (default 0)')
    parser.add_argument('--command-topic', default=None,
                        help="recorded JointTrajectory to compare with (default: the config's "
                        'output.trajectory_topic; without it the joint states are the reference)')
    parser.add_argument('--prompt', default=None, help="instruction to use instead of the bag's")
    parser.add_argument('--out-storage', choices=('sqlite3', 'mcap'), default='sqlite3',
                        help='storage of the output bag (default sqlite3)')
    parser.add_argument('--clock', choices=('sim', 'wall'), default='sim',
                        help='live: sim publishes /clock and keeps the recorded stamps (node runs with '
                        'use_sim_time:=true); wall shifts the stamps to the current time, no /clock '
                        '(default sim)')
    parser.add_argument('--node-name', default=DEFAULT_NODE_NAME, help='live: name of the policy node')
    parser.add_argument('--wait', type=float, default=60.0,
                        help='live: seconds to wait for the node (default 60)')
    parser.add_argument('--overwrite', action='store_true', help='replace OUT_DIR if it exists')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def check_fit(args: argparse.Namespace, config: Any) -> None:
    """Check the config's robot against the checkpoint before the policy loads (ConfigError: no fit).

    Offline: the checkpoint the replay loads. Live: --checkpoint / --artifacts
    when given, else the config's checkpoint when it is a directory here (the
    node may run on another machine); the node checks again at configure.
    """
    from vla_ros.policy import check_config_fits, read_spec

    if args.checkpoint or args.artifacts:
        source = args.checkpoint or args.artifacts
        parameter = '--checkpoint' if args.checkpoint else '--artifacts'
    elif config.checkpoint and (args.mode == 'offline' or Path(config.checkpoint).is_dir()):
        source, parameter = Path(config.checkpoint), 'checkpoint'
    else:
        return
    spec = read_spec(source, config.policy.to_policy_options())
    for warning in check_config_fits(spec, config, checkpoint_from=parameter):
        print(f'warning: {warning}', file=sys.stderr)


def replay(args: argparse.Namespace, abort_check: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run a replay from parsed arguments; returns the metrics (also written to --out).

    abort_check: live mode calls it while waiting and playing; it raises to stop.
    """
    from vla_ros.errors import CheckpointError
    from vla_ros.tools import bag_io, replay_report

    out = Path(args.out)
    replay_report.prepare_out_dir(out, args.overwrite)
    config = bag_io.load_config(args.config)
    source = args.checkpoint or args.artifacts
    if args.mode == 'offline':
        if source is None:
            if not config.checkpoint:
                raise CheckpointError('offline replay needs --checkpoint DIR or --artifacts DIR '
                                      '(or a checkpoint in the config)')
            source = Path(config.checkpoint)
        if args.latency_ms < 0 or not math.isfinite(args.latency_ms):
            raise bag_io.BagError(f'--latency-ms must be >= 0, got {args.latency_ms}')
    started = time.perf_counter()
    compute_ms = np.zeros(0)
    with bag_io.BagReader(args.bag) as bag:
        plan = plan_replay(bag, config, args.command_topic, args.start, args.duration, args.prompt)
        kind, ref_topic, ref_t, ref_p = read_reference(bag, plan)
        check_fit(args, config)  # the bag fits the config; now the config must fit the checkpoint
        record = replay_report.ReplayRecord(
            mode=args.mode, joint_names=tuple(config.joint_names),
            start_time=plan.begin_ns * 1e-9, end_time=plan.end_ns * 1e-9, control_rate=config.control_rate,
            reference_kind=kind, reference_topic=ref_topic, reference_times=ref_t, reference_positions=ref_p)
        record.info.update({
            'bag': str(args.bag), 'bag_storage': bag.storage, 'config': str(args.config),
            'window_s': [(plan.begin_ns - bag.start_ns) * 1e-9, (plan.end_ns - bag.start_ns) * 1e-9],
        })
        if args.mode == 'offline':
            policy = load_policy(config, source, args.seed)
            record.info.update({'checkpoint': str(source), 'seed': args.seed, 'latency_model': args.latency,
                                'latency_ms': args.latency_ms if args.latency == 'fixed' else None})
            offline = OfflineReplay(plan, policy, args.latency, args.latency_ms)
            offline.run(bag, record, not args.no_progress)
            compute_ms = np.asarray(offline.compute) * 1e3
        else:
            record.info.update({'rate': args.rate, 'clock': args.clock, 'node_name': args.node_name})
            LiveReplay(plan, args.rate, args.node_name, args.wait, args.clock,
                       abort_check=abort_check).run(bag, record, not args.no_progress)
    metrics = replay_report.write_report(record, out, args.out_storage, args.overwrite)
    elapsed = time.perf_counter() - started
    print(replay_report.summary_table(metrics))
    if compute_ms.size and args.latency == 'fixed':
        print(f'  (measured inference compute on this machine: p50 {np.percentile(compute_ms, 50):.1f} ms, '
              f'p99 {np.percentile(compute_ms, 99):.1f} ms; the simulation used a fixed '
              f'{args.latency_ms:g} ms)')
    plots = ', '.join(metrics['outputs']['plots'])
    print(f'wrote {out}/ ({replay_report.METRICS_NAME}, {replay_report.CSV_NAME}, {replay_report.BAG_NAME}/, '
          f'{plots}) in {elapsed:.1f} s')
    if replay_report.SHEET_NAME in plots:
        sheet = f'{out}/{replay_report.PLOTS_DIR}/{replay_report.SHEET_NAME}'
        print(f'  check the camera-to-slot mapping: {sheet}')
    sys.stdout.flush()
    return metrics


def run(args: argparse.Namespace) -> int:
    replay(args)
    return 0
