"""`vla-ros sim`: a simulated planar arm standing in for a profile's robot (docs/sim.md).

    vla-ros sim --config ROBOT.yaml [--sim-config SIM.yaml] [--clock sim|wall] [--expert]
    vla-ros sim --config ROBOT.yaml --record DIR --episodes N --expert [--first-episode K]
                [--storage sqlite3|mcap] [--seed S]
    vla-ros sim --config ROBOT.yaml --eval CHECKPOINT|expert --episodes N --seed S [--latency-ms MS]
                [--compare-untrained] [--compare-expert] [--blank-camera KEY|all] [--node-config YAML]
                [--eval-out FILE.json]

Live (default): a ROS 2 node (vla_ros.ros.sim_node) on the profile's topics:
it follows JointTrajectory commands on ``output.trajectory_topic``, publishes
joint states and renders the cameras, reports success on ``~/success`` and
``~/episode``, starts a new episode on the ``~/reset`` service (std_srvs/
Trigger), and with ``--clock sim`` publishes /clock. ``--expert`` lets the
scripted expert publish the commands (a baseline, or a check of the wiring).

Recording (``--record DIR``): the scripted expert drives the simulator on
simulated time, without DDS, and each episode is written as an ordinary
rosbag2 bag ``DIR/episode_NNN`` with the profile's topics (vla_ros.sim.record).
It lives under `sim` rather than a `record` command of its own because it is
the same simulator and profile with the clock run offline; a separate
command would repeat every option. ``--expert`` is the only driver a
recording has today and is required, so that a command line says what drove
the robot.

Closed-loop evaluation (``--eval CHECKPOINT``): the policy drives the
simulator through the node's own PolicyController on simulated time, without
DDS (vla_ros.sim.evaluate), for N held-out episodes (episode k of ``--seed``),
and prints the success rate, the mean time to success and the final
distance; ``--compare-untrained`` / ``--compare-expert`` run the same
episodes with the checkpoint's random-weight twin and with the scripted
expert behind the policy interface. It lives under `sim` for the reason
recording does: the same simulator and profile with the clock run offline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vla_ros.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--config', required=True, type=Path,
                        help="robot YAML: the node's section, and the simulator's vla_sim section")
    parser.add_argument('--sim-config', type=Path, default=None,
                        help='a separate parameter file with the vla_sim section (default: --config)')
    parser.add_argument('--seed', type=int, default=None, help="seed of the episodes (default: vla_sim.seed)")
    parser.add_argument('--expert', action='store_true',
                        help='the scripted expert drives the arm (required with --record)')
    parser.add_argument('--record', type=Path, default=None, metavar='DIR',
                        help='record expert episodes offline as rosbag2 bags DIR/episode_NNN, then exit')
    parser.add_argument('--episodes', type=int, default=10,
                        help='--record: number of episodes (default 10); live: stop after this many '
                        'with --expert (0 = run until stopped)')
    parser.add_argument('--first-episode', type=int, default=0,
                        help='index of the first episode (its target comes from [seed, index]; default 0)')
    parser.add_argument('--storage', choices=('sqlite3', 'mcap'), default='sqlite3',
                        help='--record: rosbag2 storage (default sqlite3)')
    parser.add_argument('--clock', choices=('wall', 'sim'), default=None,
                        help='live: wall (ROS time) or sim (publish /clock; the policy node needs '
                        'use_sim_time:=true); default: vla_sim.publish_clock')
    parser.add_argument('--real-time-factor', type=float, default=None,
                        help='live: simulated seconds per wall second (default: vla_sim.real_time_factor)')
    parser.add_argument('--no-progress', action='store_true',
                        help='--record: one line per episode only; --eval: no line per episode')
    evaluation = parser.add_argument_group('closed-loop evaluation (offline, simulated time, no DDS)')
    evaluation.add_argument('--eval', default=None, metavar='CHECKPOINT',
                            help="run the policy of CHECKPOINT in closed loop on --episodes episodes of "
                            "--seed ('expert': the scripted expert behind the policy interface), then exit")
    evaluation.add_argument('--latency-ms', type=float, default=None,
                            help='--eval: simulated inference latency (default 100 ms)')
    evaluation.add_argument('--compare-untrained', action='store_true',
                            help='--eval: also run the same checkpoint with random weights (same statistics)')
    evaluation.add_argument('--compare-expert', action='store_true',
                            help='--eval: also run the scripted expert through the same controller')
    evaluation.add_argument('--blank-camera', action='append', default=[], metavar='KEY',
                            help="--eval: replace this camera's frames by an empty table ('all': every "
                            'camera); repeatable. Does success depend on the image?')
    evaluation.add_argument('--node-config', type=Path, default=None,
                            help="--eval: the policy node's parameter file for the controller (default "
                            '--config), e.g. a copy with the joint order reversed, to break the chain')
    evaluation.add_argument('--policy-seed', type=int, default=0,
                            help="--eval: seed of the policy's noise (default 0)")
    evaluation.add_argument('--eval-out', type=Path, default=None, metavar='FILE',
                            help='--eval: write every result as JSON')


def load_robot(args: argparse.Namespace):
    """The SimRobot of --config / --sim-config, with the command-line overrides."""
    import dataclasses

    from vla_ros.sim.config import load_sim_robot, sim_robot

    robot = load_sim_robot(args.config, args.sim_config)
    changes = {}
    if args.seed is not None:
        changes['seed'] = args.seed
    if getattr(args, 'clock', None) is not None:
        changes['publish_clock'] = args.clock == 'sim'
    if getattr(args, 'real_time_factor', None) is not None:
        changes['real_time_factor'] = args.real_time_factor
    if changes:
        robot = sim_robot(robot.node, dataclasses.replace(robot.sim, **changes))
    return robot


def record(args: argparse.Namespace) -> int:
    from vla_ros.sim.record import record_episodes, SUMMARY_NAME

    if not args.expert:
        raise ConfigError('--expert', 'a recording needs a driver: pass --expert (the scripted expert)')
    if args.episodes < 1:
        raise ConfigError('--episodes', f'expected at least 1, got {args.episodes}')
    if args.first_episode < 0:
        raise ConfigError('--first-episode', f'expected >= 0, got {args.first_episode}')
    robot = load_robot(args)
    episodes = range(args.first_episode, args.first_episode + args.episodes)
    successes = []

    def report(k, status, counts):
        successes.append(status.success)
        outcome = f'success at {status.success_time:.2f} s' if status.success else 'FAILED'
        print(f'  episode_{k:03d}: {status.instruction!r}, {outcome}, {status.time:.2f} s, '
              f'{sum(counts.values())} messages', flush=True)

    print(f'recording {args.episodes} expert episode(s) of {args.config} into {args.record} '
          f'({args.storage}, seed {robot.sim.seed})', flush=True)
    record_episodes(robot, args.record, episodes, args.storage, report)
    print(f'{sum(successes)}/{len(successes)} episodes succeeded; summary: {args.record / SUMMARY_NAME}')
    return 0


def evaluate(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from vla_ros.sim.evaluate import ClosedLoopEval, DEFAULT_LATENCY_MS, ExpertPolicy, untrained_copy
    from vla_ros.tools.bag_io import load_config
    from vla_ros.tools.replay_offline import load_policy

    if args.record is not None:
        raise ConfigError('--eval', 'either --record or --eval, not both')
    if args.episodes < 1:
        raise ConfigError('--episodes', f'expected at least 1, got {args.episodes}')
    robot = load_robot(args)
    node_config = load_config(args.node_config) if args.node_config is not None else robot.node
    latency = DEFAULT_LATENCY_MS if args.latency_ms is None else args.latency_ms
    episodes = range(args.first_episode, args.first_episode + args.episodes)
    blank = f', blank cameras {args.blank_camera}' if args.blank_camera else ''
    print(f'closed-loop evaluation on {args.episodes} episode(s) {episodes.start}..{episodes.stop - 1} of '
          f'seed {robot.sim.seed} ({args.config}; controller {args.node_config or args.config}), latency '
          f'{latency:g} ms{blank}', flush=True)

    def report(result):
        outcome = f'success at {result.success_time:.2f} s' if result.success else 'FAILED'
        print(f'  episode {result.episode}: {result.instruction!r}, {outcome}, final distance '
              f'{100 * result.final_distance:.1f} cm, {result.inferences} inferences', flush=True)

    def run_one(name, policy_factory):
        print(f'{name}:', flush=True)
        ev = ClosedLoopEval(robot, None, node_config=node_config, latency_ms=latency, blank=args.blank_camera)
        ev.policy = policy_factory(ev)
        return ev.run(episodes, name, None if args.no_progress else report)

    def checkpoint_policy(path):
        return lambda ev: load_policy(node_config, Path(path), args.policy_seed)

    runs = []
    if args.eval == 'expert' and not Path(args.eval).exists():
        runs.append(('expert', lambda ev: ExpertPolicy(ev.world)))
    else:
        runs.append((f'policy {args.eval}', checkpoint_policy(args.eval)))
    with tempfile.TemporaryDirectory(prefix='vla_ros_untrained_') as tmp:
        if args.compare_untrained and runs[0][0] != 'expert':
            twin = untrained_copy(args.eval, Path(tmp) / 'untrained', seed=args.policy_seed)
            runs.append((f'untrained twin of {args.eval}', checkpoint_policy(twin)))
        if args.compare_expert and runs[0][0] != 'expert':
            runs.append(('scripted expert (through the controller)', lambda ev: ExpertPolicy(ev.world)))
        summaries = [run_one(name, factory) for name, factory in runs]
    print('summary:')
    for summary in summaries:
        print(f'  {summary.line()}')
    if args.eval_out is not None:
        document = {'config': str(args.config), 'node_config': str(args.node_config or args.config),
                    'seed': robot.sim.seed, 'episodes': list(episodes), 'latency_ms': latency,
                    'blank_cameras': list(args.blank_camera), 'runs': [s.as_dict() for s in summaries]}
        args.eval_out.write_text(json.dumps(document, indent=1) + '\n')
        print(f'wrote {args.eval_out}')
    return 0


def run(args: argparse.Namespace) -> int:
    if args.eval is not None:
        return evaluate(args)
    if args.record is not None:
        return record(args)
    robot = load_robot(args)
    from vla_ros.ros.sim_node import run_sim

    return run_sim(robot, expert=args.expert, episodes=args.episodes if args.expert else 0,
                   first_episode=args.first_episode)
