"""`vla-ros train`: flow-matching training of a small pi0 / pi0.5 policy from rosbags (docs/training.md).

    vla-ros train --bags BAG [BAG ...] --config ROBOT.yaml --init pi0-tiny|CHECKPOINT --out DIR
                  [--steps N] [--batch-size B] [--lr LR] [--seed S] [--val-bags BAG ...]

Observations are assembled from the bags by the node's own code, targets are
the recorded commands (or the future joint states) at policy.action_rate,
the statistics are the data's; OUT gets a checkpoint in the project's
layout, loss.png and train_meta.json. For small policies on a CPU: fine-tune
full pi0 / pi0.5 with openpi or LeRobot.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import shlex


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--bags', required=True, nargs='+', type=Path, metavar='BAG',
                        help='rosbags to train on (rosbag2 directories, .db3 / .mcap files or ROS 1 .bag)')
    parser.add_argument('--config', required=True, type=Path, help="robot YAML (the node's parameter file)")
    parser.add_argument('--init', default='pi0-tiny',
                        help='a named config for random weights (pi0-tiny, pi05-tiny, pi0-mid, ...) or a '
                        'checkpoint directory (openpi / vla_ros layout) to continue from (default pi0-tiny)')
    parser.add_argument('--out', required=True, type=Path,
                        help='checkpoint directory to write (must not exist or be empty)')
    parser.add_argument('--steps', type=int, default=1000, help='optimizer steps (default 1000)')
    parser.add_argument('--batch-size', type=int, default=8, help='samples per step (default 8)')
    parser.add_argument('--lr', type=float, default=3e-3, help='peak learning rate of AdamW (default 3e-3)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the weights, batches, noise and times')
    parser.add_argument('--val-bags', nargs='+', type=Path, default=[], metavar='BAG',
                        help='held-out bags: their loss is plotted beside the training loss')
    parser.add_argument('--sample-rate', type=float, default=10.0,
                        help='observations per second of bag time (default 10)')
    parser.add_argument('--action-source', choices=('auto', 'command', 'joint_states'), default='auto',
                        help='targets from the recorded command (JointTrajectory on output.trajectory_topic, '
                        'else Float64MultiArray on output.position_topic) or the future joint states '
                        '(default auto: the command when the bag has it)')
    parser.add_argument('--command-topic', default=None,
                        help='where the executed commands were recorded (default output.trajectory_topic)')
    parser.add_argument('--prompt', default=None, help="instruction for every sample (default: the bag's)")
    parser.add_argument('--loss-dims', choices=('all', 'robot'), default='all',
                        help="average the loss over the model's 32 dims (all, openpi) or the robot's "
                        'action dims (robot, LeRobot); default all')
    parser.add_argument('--image-size', type=int, default=None, metavar='PIXELS',
                        help='with a named --init: the model\'s image size instead of the config\'s 224 (a '
                        'multiple of 14; 112 or 56 train and run several times faster, seeing less detail)')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--force', action='store_true', help='replace a previous checkpoint in --out')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def command_line(args: argparse.Namespace) -> str:
    """The command that repeats this run, every option spelled out (train_meta.json "command")."""
    words = ['vla-ros', 'train', '--bags', *map(str, args.bags), '--config', str(args.config),
             '--init', str(args.init), '--out', str(args.out), '--steps', str(args.steps),
             '--batch-size', str(args.batch_size), '--lr', repr(args.lr), '--seed', str(args.seed),
             '--sample-rate', repr(args.sample_rate), '--action-source', args.action_source,
             '--loss-dims', args.loss_dims]
    if args.val_bags:
        words += ['--val-bags', *map(str, args.val_bags)]
    for flag, value in (('--command-topic', args.command_topic), ('--prompt', args.prompt),
                        ('--image-size', args.image_size), ('--threads', args.threads)):
        if value is not None:
            words += [flag, str(value)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    from vla_ros.training.trainer import TrainOptions, train_from_bags

    options = TrainOptions(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                           loss_dims=args.loss_dims, num_threads=args.threads,
                           progress=not args.no_progress)
    command = command_line(args)
    result = train_from_bags(
        args.bags, args.config, args.init, args.out, options, val_bags=args.val_bags,
        sample_rate=args.sample_rate, action_source=args.action_source, command_topic=args.command_topic,
        prompt=args.prompt, force=args.force, image_size=args.image_size, command=command)
    meta = result.meta

    def fmt(value):
        return '-' if value is None else f'{value:.4f}'

    print(f"trained {args.init} for {meta['steps']} steps on {result.samples} samples in "
          f"{meta['train_seconds']:.1f} s: loss {fmt(meta['start_loss'])} -> {fmt(meta['final_loss'])}"
          + (f", held-out {fmt(meta['val_loss'])}" if meta['val_loss'] is not None else '')
          + (' (interrupted)' if meta['interrupted'] else ''))
    print(f'wrote {result.out} (checkpoint, norm stats, loss.png, train_meta.json)')
    return 130 if meta['interrupted'] else 0
