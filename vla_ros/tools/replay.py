"""`vla-ros replay`: run a policy over a recorded rosbag and compare it with what the robot did.

    vla-ros replay BAG --config ROBOT.yaml (--checkpoint DIR | --artifacts DIR) --out OUT_DIR
                   [--mode offline|live] [--rate R] [--start S --duration D]
                   [--latency fixed|measured] [--latency-ms X] [--seed S]
    vla-ros replay BAG --config ROBOT.yaml --checkpoint DIR --out OUT_DIR
                   --compare-aggregation rtc,temporal_ensemble,latest --latency-ms 100,200,300

offline (default, vla_ros.tools.replay_offline): the bag's messages go
    through the node's own code (conversions, PolicyController, Policy) on
    simulated time with a simulated inference latency. No DDS; with a fixed
    latency two runs give identical outputs.

live (vla_ros.tools.replay_live): publishes the bag's input topics over DDS
    in real time (times --rate), with /clock, to a running vla_policy_node
    (started with use_sim_time:=true), and records the trajectories and
    diagnostics it publishes.

comparison (--compare-aggregation MODES, offline, fixed latency): one offline
    replay per aggregation mode and --latency-ms value (a comma-separated list),
    all with the same policy (loaded once) and the same --seed, each with the
    YAML's aggregation.mode replaced. OUT_DIR gets a table per mode and
    latency (largest and mean jump at chunk boundaries, max step, mean squared
    jerk, error against the recorded command) as comparison.md / .csv / .json,
    plots/comparison.png, and each run's metrics.json and commands.csv under
    runs/.

Topic names and types come from the robot YAML, exactly as the node reads
them (vla_ros.tools.replay_plan). Outputs (see vla_ros.tools.replay_report):
a rosbag2 bag of the produced trajectories and diagnostics, commands.csv,
metrics.json, plots, and a summary table on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
import sys
import time
from typing import Any, Callable

import numpy as np

from vla_ros.tools.replay_live import LiveReplay
from vla_ros.tools.replay_offline import DEFAULT_LATENCY_MS, load_policy, OfflineReplay
from vla_ros.tools.replay_plan import DEFAULT_NODE_NAME, plan_replay, read_reference


def latency_values(text: str) -> float | tuple[float, ...]:
    """--latency-ms: one number, or a comma-separated list (with --compare-aggregation)."""
    parts = [part.strip() for part in str(text).split(',') if part.strip()]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected milliseconds, e.g. 100 or 100,200,300; got {text!r}') \
            from None
    if not values:
        raise argparse.ArgumentTypeError(f'expected milliseconds, e.g. 100 or 100,200,300; got {text!r}')
    return values[0] if len(values) == 1 and ',' not in str(text) else values


def aggregation_modes(text: str) -> tuple[str, ...]:
    """--compare-aggregation: comma-separated aggregation modes (checked against the config later)."""
    modes = tuple(dict.fromkeys(part.strip() for part in str(text).split(',') if part.strip()))
    if not modes:
        raise argparse.ArgumentTypeError(f'expected aggregation modes, e.g. rtc,temporal_ensemble,latest; '
                                         f'got {text!r}')
    return modes


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
    parser.add_argument('--latency-ms', type=latency_values, default=DEFAULT_LATENCY_MS,
                        help=f'offline: the fixed inference latency in ms (default {DEFAULT_LATENCY_MS:g}); '
                        'with --compare-aggregation a comma-separated list, e.g. 100,200,300')
    parser.add_argument('--seed', type=int, default=0, help='offline: seed of the policy noise (default 0)')
    parser.add_argument('--compare-aggregation', type=aggregation_modes, default=None, metavar='MODES',
                        help='offline, fixed latency: replay once per aggregation mode (comma-separated, '
                        'e.g. rtc,temporal_ensemble,latest) and per --latency-ms value, same policy and '
                        'seed, and write a comparison table and plot instead of one report')
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


def check_fit(args: argparse.Namespace, config: Any, warn: bool = True) -> None:
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
        if warn:
            print(f'warning: {warning}', file=sys.stderr)


def replay(args: argparse.Namespace, abort_check: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run a replay from parsed arguments; returns the metrics (also written to --out).

    abort_check: live mode calls it while waiting and playing; it raises to stop.
    """
    from vla_ros.tools import bag_io, replay_report

    if getattr(args, 'compare_aggregation', None):
        return compare(args)
    if isinstance(args.latency_ms, tuple):
        raise bag_io.BagError(f'--latency-ms takes one value (got {len(args.latency_ms)}); a list of '
                              f'latencies needs --compare-aggregation MODES')
    out = Path(args.out)
    replay_report.prepare_out_dir(out, args.overwrite)
    config = bag_io.load_config(args.config)
    source = args.checkpoint or args.artifacts
    if args.mode == 'offline':
        source = _offline_source(args, config)
        _check_latency(args.latency_ms)
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


def _offline_source(args: argparse.Namespace, config: Any) -> Path:
    """The checkpoint or artifact directory an offline replay loads (CheckpointError: none)."""
    from vla_ros.errors import CheckpointError

    source = args.checkpoint or args.artifacts
    if source is None:
        if not config.checkpoint:
            raise CheckpointError('offline replay needs --checkpoint DIR or --artifacts DIR '
                                  '(or a checkpoint in the config)')
        source = Path(config.checkpoint)
    return Path(source)


def _check_latency(latency_ms: float) -> None:
    from vla_ros.tools import bag_io

    if latency_ms < 0 or not math.isfinite(latency_ms):
        raise bag_io.BagError(f'--latency-ms must be >= 0, got {latency_ms:g}')


def with_aggregation(config: Any, mode: str) -> Any:
    """The NodeConfig with aggregation.mode replaced (ConfigError naming --compare-aggregation)."""
    from vla_ros.errors import ConfigError

    try:
        return dataclasses.replace(config, aggregation=dataclasses.replace(config.aggregation, mode=mode))
    except ConfigError as exc:
        problem = str(exc).split(': ', 1)[-1]
        raise ConfigError('--compare-aggregation', f'mode {mode!r}: {problem}') from None


def boundary_jumps(controller: Any) -> dict[str, Any]:
    """The controller's boundary-jump summary (last / max / mean / count) as plain numbers; {} if none."""
    accessor = getattr(controller, 'boundary_jumps', None)
    if accessor is None:
        return {}
    summary = accessor()
    if dataclasses.is_dataclass(summary) and not isinstance(summary, type):
        summary = dataclasses.asdict(summary)
    return {key: (None if value is None else float(value) if key != 'count' else int(value))
            for key, value in dict(summary).items()}


def compare(args: argparse.Namespace, abort_check: Callable[[], None] | None = None) -> dict[str, Any]:
    """`--compare-aggregation`: one offline replay per (mode, latency), same policy and seed.

    Writes the comparison (vla_ros.tools.replay_report.write_comparison) and
    prints its table; returns comparison.json's content.
    """
    from vla_ros.tools import bag_io, replay_report

    modes = tuple(args.compare_aggregation)
    latencies = args.latency_ms if isinstance(args.latency_ms, tuple) else (args.latency_ms,)
    if args.mode != 'offline':
        raise bag_io.BagError('--compare-aggregation replays offline; drop --mode live')
    if args.latency != 'fixed':
        raise bag_io.BagError('--compare-aggregation needs --latency fixed (the runs must be comparable)')
    for latency_ms in latencies:
        _check_latency(latency_ms)
    out = Path(args.out)
    replay_report.prepare_out_dir(out, args.overwrite)
    config = bag_io.load_config(args.config)
    configs = {mode: with_aggregation(config, mode) for mode in modes}  # bad modes fail before any work
    source = _offline_source(args, config)
    started = time.perf_counter()
    runs = []
    with bag_io.BagReader(args.bag) as bag:
        plan = plan_replay(bag, config, args.command_topic, args.start, args.duration, args.prompt)
        kind, ref_topic, ref_t, ref_p = read_reference(bag, plan)
        for i, mode_config in enumerate(configs.values()):  # e.g. rtc for a pi0-FAST checkpoint, up front
            check_fit(args, mode_config, warn=i == 0)  # the warnings are the same for every mode
        policy = load_policy(config, source, args.seed)
        for latency_ms in latencies:
            for mode in modes:
                if abort_check is not None:
                    abort_check()
                policy.reseed(args.seed)  # the same noise sequence in every run
                run_plan = dataclasses.replace(plan, config=configs[mode])
                record = replay_report.ReplayRecord(
                    mode='offline', joint_names=tuple(config.joint_names),
                    start_time=plan.begin_ns * 1e-9, end_time=plan.end_ns * 1e-9,
                    control_rate=config.control_rate, reference_kind=kind, reference_topic=ref_topic,
                    reference_times=ref_t, reference_positions=ref_p)
                record.info.update({'aggregation': mode, 'seed': args.seed, 'latency_model': 'fixed',
                                    'latency_ms': latency_ms})
                offline = OfflineReplay(run_plan, policy, 'fixed', latency_ms)
                offline.run(bag, record, not args.no_progress)
                record.model_inputs = None  # the comparison writes no contact sheet
                rtc = mode == 'rtc'
                runs.append(replay_report.ComparisonRun(
                    mode, latency_ms, record, replay_report.compute_metrics(record),
                    boundary_jumps(offline.controller),
                    rtc_delay=offline.controller.rtc_delay() if rtc else None,
                    rtc_horizon=configs[mode].rtc.execution_horizon if rtc else None))
        info = {'bag': str(args.bag), 'bag_storage': bag.storage, 'config': str(args.config),
                'checkpoint': str(source), 'seed': args.seed, 'modes': list(modes),
                'latencies_ms': list(latencies),
                'window_s': [(plan.begin_ns - bag.start_ns) * 1e-9, (plan.end_ns - bag.start_ns) * 1e-9]}
    result = replay_report.write_comparison(runs, out, info, args.overwrite)
    elapsed = time.perf_counter() - started
    reference = result['reference'] or {}
    print(f"aggregation comparison (offline, seed {args.seed}, {result['bag_time']['duration']:.2f} s of bag "
          f"time, error against {reference.get('kind')} {reference.get('topic')}):")
    print(replay_report.comparison_table(result['rows']))
    sys.stdout.flush()
    for warning in result['warnings']:
        print(f'warning: {warning}', file=sys.stderr)
    plot = result['plot']
    print(f"wrote {out}/ ({replay_report.COMPARISON_MD}, {replay_report.COMPARISON_CSV}, "
          f"{replay_report.COMPARISON_JSON}, {plot['file']} ({plot['joint']} at {plot['latency_ms']:g} ms), "
          f"{replay_report.RUNS_DIR}/) in {elapsed:.1f} s")
    sys.stdout.flush()
    return result


def run(args: argparse.Namespace) -> int:
    replay(args)
    return 0
