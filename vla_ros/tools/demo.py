"""`vla-ros demo`: the whole pipeline on this computer in a few minutes, nothing to download.

1. make a tiny pi0 checkpoint with random weights (seed 0): it is UNTRAINED,
   so its actions are noise; the demo shows the pipeline, not a skill;
2. export it to an inference artifact (ONNX prefix; skipped with a note when
   the exporter is unavailable);
3. write a synthetic ALOHA-style rosbag (3 cameras at 30 Hz, joint states at
   100 Hz, the recorded commands, an instruction);
4. start the vla_policy node on it (a subprocess; dry_run, so it publishes
   to its debug topic only, on a private ROS domain limited to localhost,
   so no real robot can receive anything);
5. replay the bag live against the node, record what it publishes, and
   print the summary and where the plots are.

Everything lands in --out (default ./vla_ros_demo); a previous demo there is
replaced.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import random
import shutil
import signal
import subprocess
import sys
import time

from vla_ros.errors import VlaRosError

MARKER = '.vla_ros_demo'
DEMO_SEED = 0
DEMO_IMAGE_SIZE = (320, 240)  # (width, height): keeps 3 raw cameras at 30 Hz light on a small CPU


class DemoError(VlaRosError):
    """A demo step failed."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', type=Path, default=Path('vla_ros_demo'),
                        help='working directory for every demo file (default ./vla_ros_demo)')
    parser.add_argument('--seconds', type=float, default=10.0, help='length of the sample bag (default 10)')
    parser.add_argument('--config', type=Path, default=None,
                        help="robot YAML to start from (default: the package's config/aloha.yaml)")
    parser.add_argument('--storage', choices=('sqlite3', 'mcap'), default='mcap',
                        help='storage of the sample bag (default mcap)')
    # wall by default: under /clock the node's timer fires on clock messages, so its
    # measured jitter would show the replayer's clock granularity, not the node's.
    parser.add_argument('--clock', choices=('sim', 'wall'), default='wall',
                        help='wall (default): the node runs on the system clock and the replay restamps '
                        'the messages; sim: the node runs with use_sim_time and the replay publishes '
                        '/clock')
    parser.add_argument('--inference-mode', choices=('thread', 'process'), default=None,
                        help='where the node runs the policy (default: what the robot YAML says)')
    parser.add_argument('--no-export', action='store_true', help='run the checkpoint, skip the ONNX export')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID for the demo (default: a free-looking one in 60..100)')


def _step(number: int, text: str) -> None:
    print(f'[{number}/5] {text}', flush=True)


def find_robot_config(path: Path | None) -> Path:
    if path is not None:
        if not path.is_file():
            raise DemoError(f'--config {path} does not exist')
        return path
    here = Path(__file__).resolve().parents[2] / 'config' / 'aloha.yaml'
    if here.is_file():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory('vla_ros')) / 'config' / 'aloha.yaml'
        if shared.is_file():
            return shared
    except Exception:  # not installed through ament: fall through to the error
        pass
    raise DemoError('cannot find config/aloha.yaml; pass --config ROBOT.yaml')


def write_demo_config(base: Path, out: Path, model_dir: Path, clock: str,
                      inference_mode: str | None = None) -> Path:
    """The robot YAML with the demo's changes: model, dry run, small images, auto-activate."""
    import yaml

    from vla_ros.config import DEFAULT_NODE_NAME, load_parameters_file

    params = load_parameters_file(base, DEFAULT_NODE_NAME)
    params['checkpoint'] = str(model_dir.resolve())
    params['auto_activate'] = True
    params['dry_run'] = True  # debug topic only: never a controller's command topic
    policy = params.setdefault('policy', {})
    policy['seed'] = DEMO_SEED
    policy.setdefault('num_threads', 1)
    policy['warmup_runs'] = max(1, int(policy.get('warmup_runs', 1)))
    if inference_mode is not None:
        params.setdefault('inference', {})['mode'] = inference_mode
    cameras = params.setdefault('cameras', {})
    for key in cameras.get('keys', ['base_0_rgb', 'left_wrist_0_rgb', 'right_wrist_0_rgb']):
        camera = cameras.setdefault(key, {})
        camera['width'], camera['height'] = DEMO_IMAGE_SIZE
    document = {DEFAULT_NODE_NAME: {'ros__parameters': params}}
    header = (f'# vla-ros demo: {base} with the demo model, dry_run, '
              f'{DEMO_IMAGE_SIZE[0]}x{DEMO_IMAGE_SIZE[1]} cameras and auto_activate ({clock} clock).\n')
    out.write_text(header + yaml.safe_dump(document, sort_keys=False))
    return out


def export_model(checkpoint: Path, artifact: Path) -> Path | None:
    """The exported artifact dir, or None (with the reason printed) when export is not possible."""
    try:
        from vla_ros.engines.onnx_export import ExportOptions, export_artifact
    except ImportError as exc:
        print(f'      export skipped: the exporter is not available ({exc}); the node runs the checkpoint')
        return None
    try:
        export_artifact(checkpoint, artifact, ExportOptions(), progress=False)
    except Exception as exc:  # an exporter problem must not stop the demo: run the checkpoint instead
        shutil.rmtree(artifact, ignore_errors=True)
        print(f'      export failed ({type(exc).__name__}: {exc}); the node runs the checkpoint instead')
        return None
    return artifact


def _pick_domain(requested: int | None) -> int:
    if requested is not None:
        if not 0 <= requested <= 232:
            raise DemoError(f'--domain-id must be in 0..232, got {requested}')
        return requested
    current = os.environ.get('ROS_DOMAIN_ID', '0')
    choices = [d for d in range(60, 101) if str(d) != current]
    return random.SystemRandom().choice(choices)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return '\n'.join(path.read_text(errors='replace').splitlines()[-lines:])
    except OSError:
        return '(no log)'


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def run(args: argparse.Namespace) -> int:
    from vla_ros.config import DEFAULT_NODE_NAME
    from vla_ros.tools import bag_io, make_bag, replay, replay_live, replay_offline, replay_report
    from vla_ros.tools.make_tiny import make_tiny_checkpoint

    started = time.monotonic()
    out: Path = args.out
    if out.exists():
        if not (out / MARKER).exists() and any(out.iterdir()):
            raise DemoError(f'{out} exists and is not a previous demo; choose another --out')
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text('files written by `vla-ros demo`; safe to delete\n')

    _step(1, 'tiny pi0 checkpoint')
    checkpoint = make_tiny_checkpoint(out / 'checkpoint', 'pi0-tiny', seed=DEMO_SEED, dims=14)
    print(f'      {checkpoint}: random weights (seed {DEMO_SEED}), UNTRAINED: its actions are noise; '
          'the demo shows the pipeline, not a skill')

    _step(2, 'export')
    model_dir = checkpoint
    if args.no_export:
        print('      export skipped (--no-export); the node runs the checkpoint')
    else:
        t = time.monotonic()
        artifact = export_model(checkpoint, out / 'artifact')
        if artifact is not None:
            model_dir = artifact
            print(f'      {artifact} ({time.monotonic() - t:.1f} s)')

    _step(3, f'sample bag ({args.seconds:g} s)')
    base = find_robot_config(args.config)
    config_path = write_demo_config(base, out / 'robot.yaml', model_dir, args.clock, args.inference_mode)
    config = bag_io.load_config(config_path)
    robot = bag_io.robot_topics_from_config(config)
    bag_path = out / 'bag'
    counts = make_bag.write_bag(robot, bag_path, args.seconds, args.storage, seed=DEMO_SEED)
    print(f'      {bag_path} ({args.storage}, from {base.name}):')
    for line in make_bag.summarize(counts, args.seconds).splitlines():
        print('    ' + line)

    _step(4, 'policy node')
    domain = _pick_domain(args.domain_id)
    os.environ['ROS_DOMAIN_ID'] = str(domain)
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    command = [sys.executable, '-m', 'vla_ros.ros.node', '--ros-args', '--params-file', str(config_path)]
    if args.clock == 'sim':
        command += ['-p', 'use_sim_time:=true']
    log_path = out / 'node.log'
    print(f'      {" ".join(command)}')
    print(f'      ROS_DOMAIN_ID={domain}, localhost only, dry_run (publishes to '
          f'{replay_live.resolve_topic(config.output.debug_trajectory_topic, DEFAULT_NODE_NAME)}); '
          f'log: {log_path}')
    with log_path.open('w') as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        _step(5, f'live replay ({args.clock} clock)')

        def node_died() -> None:
            if proc.poll() is not None:
                raise DemoError(f'the policy node exited with code {proc.returncode}; its log ({log_path}) '
                                f'ends with:\n{_tail(log_path)}')

        replay_args = argparse.Namespace(
            bag=bag_path, config=config_path, checkpoint=None, artifacts=None, out=out / 'replay',
            mode='live', rate=1.0, start=0.0, duration=None, latency='fixed',
            latency_ms=replay_offline.DEFAULT_LATENCY_MS, seed=0,
            command_topic=config.output.trajectory_topic, prompt=None, out_storage='sqlite3',
            clock=args.clock, node_name=DEFAULT_NODE_NAME, wait=120.0, overwrite=False, no_progress=False)
        metrics = replay.replay(replay_args, abort_check=node_died)
    finally:
        _stop(proc)

    counts = metrics['counts']
    live = metrics['info'].get('live', {})
    expected = counts['expected_trajectories']
    rate = live.get('received_rate_hz')
    print()
    print(f'demo finished in {time.monotonic() - started:.0f} s')
    print(f'  control rate: {counts["trajectories"]} trajectories for {expected} periods of '
          f'{metrics["bag_time"]["duration"]:.1f} s at {metrics["control_rate"]:g} Hz '
          f'({counts["trajectories"] / max(expected, 1):.0%}); received at '
          f'{"-" if rate is None else format(rate, ".1f")} Hz')
    node = metrics['info'].get('node_diagnostics', {})
    if 'timer.period_jitter_p99_ms' in node:
        print(f'  node control timer: period deviation p50 {node.get("timer.period_jitter_p50_ms")} ms, '
              f'p99 {node["timer.period_jitter_p99_ms"]} ms, max {node.get("timer.period_jitter_max_ms")} ms '
              f'(its diagnostics)')
    print('  the checkpoint is untrained: large errors against the recorded commands are expected')
    print(f'  plots:   {out / "replay" / replay_report.PLOTS_DIR / "joints.png"}')
    print(f'           {out / "replay" / replay_report.PLOTS_DIR / "latency.png"}')
    sheet = out / "replay" / replay_report.PLOTS_DIR / replay_report.SHEET_NAME
    print(f'           {sheet}  (what the model sees)')
    print(f'  metrics: {out / "replay" / replay_report.METRICS_NAME}')
    print(f'  replay it offline: vla-ros replay {bag_path} --config {config_path} --checkpoint {checkpoint} '
          f'--out {out / "offline"}')
    return 0
