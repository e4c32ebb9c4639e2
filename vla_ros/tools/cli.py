"""The ``vla-ros`` command: a dispatcher over the tool modules in ``vla_ros/tools``.

Each subcommand lives in its own module ``vla_ros/tools/<name>.py`` that exposes

    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> int

Tool modules must be cheap to import (heavy imports such as torch belong inside
``run``) because building the parser imports every one of them. A module that
does not exist is left out of the parser; a module that exists but cannot be
imported stays listed and reports its import error when it is run.

Errors derived from ``vla_ros.errors.VlaRosError`` are printed as a single line
``vla-ros <cmd>: error: <message>`` with exit code 2. Set ``VLA_ROS_DEBUG=1`` to
get the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType
from typing import Optional, Sequence

from vla_ros.errors import VlaRosError

PROG = 'vla-ros'

# (subcommand, module, one-line help), in the order `vla-ros --help` lists them.
SUBCOMMANDS: tuple[tuple[str, str, str], ...] = (
    ('infer', 'vla_ros.tools.infer',
     'run the policy on one observation and print the action chunk'),
    ('inspect', 'vla_ros.tools.inspect',
     'show what a checkpoint expects (cameras, dims, tokenizer); write a starter robot YAML'),
    ('make-tiny', 'vla_ros.tools.make_tiny',
     'write a tiny untrained checkpoint (for the demo and tests)'),
    ('export', 'vla_ros.tools.export',
     'export a checkpoint to an inference artifact directory'),
    ('bench', 'vla_ros.tools.bench',
     'measure inference latency of an engine'),
    ('replay', 'vla_ros.tools.replay',
     'replay a rosbag through the policy node and summarise the actions'),
    ('make-bag', 'vla_ros.tools.make_bag',
     'write a synthetic rosbag of camera images and joint states'),
    ('demo', 'vla_ros.tools.demo',
     'make-tiny, export, make-bag and replay in one go, then print a summary'),
    ('serve', 'vla_ros.tools.serve', "serve the policy over openpi's websocket protocol (docs/remote.md)"),
    ('sim', 'vla_ros.tools.sim',
     'a simulated planar arm for a robot profile; record expert demonstrations as rosbags'),
    ('train', 'vla_ros.tools.train',
     'train a small pi0 / pi0.5 policy from rosbags (flow matching, CPU; docs/training.md)'),
)


def debug_enabled() -> bool:
    """Tell whether VLA_ROS_DEBUG asks for tracebacks instead of one-line errors."""
    return os.environ.get('VLA_ROS_DEBUG', '').strip().lower() not in ('', '0', 'false', 'no')


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version('vla_ros')
    except PackageNotFoundError:
        return 'unknown (not installed)'


def load_tool(module_name: str) -> tuple[Optional[ModuleType], Optional[BaseException]]:
    """Import one tool module.

    Returns (module, None) when it imports and has add_arguments/run,
    (None, None) when the module does not exist, and (None, error) when it
    exists but is broken.
    """
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None, None
        return None, exc
    except Exception as exc:  # any import-time failure is reported when the tool is run
        return None, exc
    missing = [name for name in ('add_arguments', 'run') if not callable(getattr(module, name, None))]
    if missing:
        return None, AttributeError(f"{module_name} does not define {' and '.join(missing)}()")
    return module, None


def build_parser(registry: Sequence[tuple[str, str, str]] = SUBCOMMANDS) -> argparse.ArgumentParser:
    """Build the argument parser with one subparser per available tool module."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Tools for running pi0 / pi0.5 vision-language-action policies with ROS 2.',
        epilog='Set VLA_ROS_DEBUG=1 to see full tracebacks.',
    )
    parser.add_argument('--version', action='version', version=f'%(prog)s {_package_version()}')
    subparsers = parser.add_subparsers(dest='command', metavar='<command>')
    for command, module_name, help_text in registry:
        module, error = load_tool(module_name)
        if module is None and error is None:
            continue  # not written yet: leave it out
        sub = subparsers.add_parser(command, help=help_text, description=help_text)
        if module is not None:
            try:
                module.add_arguments(sub)
            except Exception as exc:  # a bug in the tool must not break the other commands
                error = exc
        if error is not None:
            for choice in getattr(subparsers, '_choices_actions', ()):  # the `--help` listing
                if choice.dest == command:
                    choice.help = f'{help_text} [unavailable: {type(error).__name__}]'
            sub.set_defaults(_tool=None, _load_error=error, _module_name=module_name)
            continue
        sub.set_defaults(_tool=module, _load_error=None, _module_name=module_name)
    return parser


def _one_line(exc: BaseException) -> str:
    text = ' '.join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def main(argv: Optional[Sequence[str]] = None,
         registry: Sequence[tuple[str, str, str]] = SUBCOMMANDS) -> int:
    """Entry point of the ``vla-ros`` console script; returns the exit code."""
    parser = build_parser(registry)
    # Known args only, so that a broken tool (which could not add its options)
    # still gets to report its import error; everything else stays strict.
    args, extras = parser.parse_known_args(argv)
    if extras and getattr(args, '_load_error', None) is None:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    command = getattr(args, 'command', None)
    if command is None:
        parser.print_help(sys.stderr)
        return 2
    debug = debug_enabled()

    error = getattr(args, '_load_error', None)
    if error is not None:
        if debug:
            raise error
        print(f'{PROG} {command}: error: cannot load {args._module_name}: '
              f'{type(error).__name__}: {_one_line(error)} (set VLA_ROS_DEBUG=1 for the traceback)',
              file=sys.stderr)
        return 1

    try:
        rc = args._tool.run(args)
    except VlaRosError as exc:
        if debug:
            raise
        print(f'{PROG} {command}: error: {_one_line(exc)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f'{PROG} {command}: interrupted', file=sys.stderr)
        return 130
    return 0 if rc is None else int(rc)


if __name__ == '__main__':
    sys.exit(main())
