"""`vla-ros sim`: a simulated planar arm standing in for a profile's robot (docs/sim.md).

    vla-ros sim --config ROBOT.yaml [--sim-config SIM.yaml] [--clock sim|wall] [--expert]
    vla-ros sim --config ROBOT.yaml --record DIR --episodes N --expert [--first-episode K]
                [--storage sqlite3|mcap] [--seed S]

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
    parser.add_argument('--no-progress', action='store_true', help='--record: one line per episode only')


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


def run(args: argparse.Namespace) -> int:
    if args.record is not None:
        return record(args)
    robot = load_robot(args)
    from vla_ros.ros.sim_node import run_sim

    return run_sim(robot, expert=args.expert, episodes=args.episodes if args.expert else 0,
                   first_episode=args.first_episode)
