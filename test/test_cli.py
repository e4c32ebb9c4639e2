"""The vla-ros dispatcher: registry, missing and broken tool modules, error reporting."""

import os
import subprocess
import sys
import types

import pytest

from vla_ros.errors import ConfigError
from vla_ros.tools import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY_MODULES = ('torch', 'onnxruntime', 'onnx', 'transformers', 'safetensors.torch')


def _fake_tool(monkeypatch, name, run):
    module = types.ModuleType(name)

    def add_arguments(parser):
        parser.add_argument('--value', type=int, default=1)

    module.add_arguments = add_arguments
    module.run = run
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_registry_names_modules_after_subcommands():
    commands = [c for c, _, _ in cli.SUBCOMMANDS]
    assert commands == ['infer', 'inspect', 'make-tiny', 'export', 'bench', 'replay', 'make-bag', 'demo',
                        'serve', 'sim', 'train']
    for command, module, help_text in cli.SUBCOMMANDS:
        assert module == 'vla_ros.tools.' + command.replace('-', '_')
        assert help_text and '\n' not in help_text


def test_missing_module_is_left_out(monkeypatch, capsys):
    _fake_tool(monkeypatch, 'fake_tool_ok', lambda args: 0)
    registry = (('ghost', 'vla_ros.tools._no_such_tool', 'not written yet'),
                ('ok', 'fake_tool_ok', 'works'))
    parser = cli.build_parser(registry)
    assert 'ghost' not in parser.format_help()
    assert cli.main(['ok'], registry=registry) == 0
    with pytest.raises(SystemExit) as exc:
        cli.main(['ghost'], registry=registry)
    assert exc.value.code == 2
    assert 'invalid choice' in capsys.readouterr().err


def test_run_return_value_is_the_exit_code(monkeypatch):
    _fake_tool(monkeypatch, 'fake_tool_rc', lambda args: args.value)
    _fake_tool(monkeypatch, 'fake_tool_none', lambda args: None)
    registry = (('rc', 'fake_tool_rc', 'x'), ('none', 'fake_tool_none', 'y'))
    assert cli.main(['rc', '--value', '3'], registry=registry) == 3
    assert cli.main(['none'], registry=registry) == 0


def test_typed_error_is_one_line_exit_2(monkeypatch, capsys):
    def run(args):
        raise ConfigError('engine', "expected one of 'torch', 'onnx'\ngot 'tensorrt'")

    _fake_tool(monkeypatch, 'fake_tool_err', run)
    registry = (('boom', 'fake_tool_err', 'fails'),)
    monkeypatch.delenv('VLA_ROS_DEBUG', raising=False)
    assert cli.main(['boom'], registry=registry) == 2
    err = capsys.readouterr().err
    assert err == "vla-ros boom: error: parameter 'engine': expected one of 'torch', 'onnx' got 'tensorrt'\n"
    assert 'Traceback' not in err

    monkeypatch.setenv('VLA_ROS_DEBUG', '1')
    with pytest.raises(ConfigError):
        cli.main(['boom'], registry=registry)


def test_other_errors_are_not_swallowed(monkeypatch):
    def run(args):
        raise RuntimeError('a bug')

    _fake_tool(monkeypatch, 'fake_tool_bug', run)
    with pytest.raises(RuntimeError):
        cli.main(['bug'], registry=(('bug', 'fake_tool_bug', 'x'),))


def test_broken_module_is_listed_and_reports_on_run(monkeypatch, capsys):
    incomplete = types.ModuleType('fake_tool_incomplete')  # no add_arguments/run
    monkeypatch.setitem(sys.modules, 'fake_tool_incomplete', incomplete)
    registry = (('broken', 'fake_tool_incomplete', 'a tool with a bug'),)
    assert 'a tool with a bug [unavailable: AttributeError]' in cli.build_parser(registry).format_help()
    monkeypatch.delenv('VLA_ROS_DEBUG', raising=False)
    assert cli.main(['broken', '--anything'], registry=registry) == 1
    err = capsys.readouterr().err
    assert err.startswith('vla-ros broken: error: cannot load fake_tool_incomplete')


def test_add_arguments_bug_marks_only_that_tool_unavailable(monkeypatch, capsys):
    def add_arguments(parser):
        raise TypeError('bad option spec')

    _fake_tool(monkeypatch, 'fake_tool_fine', lambda args: 0)
    bad = _fake_tool(monkeypatch, 'fake_tool_badargs', lambda args: 0)
    bad.add_arguments = add_arguments
    registry = (('bad', 'fake_tool_badargs', 'bad options'), ('fine', 'fake_tool_fine', 'fine'))
    assert 'bad options [unavailable: TypeError]' in cli.build_parser(registry).format_help()
    monkeypatch.delenv('VLA_ROS_DEBUG', raising=False)
    assert cli.main(['fine'], registry=registry) == 0
    assert cli.main(['bad'], registry=registry) == 1
    assert 'TypeError: bad option spec' in capsys.readouterr().err


def test_no_subcommand_prints_help_and_fails(capsys):
    assert cli.main([], registry=()) == 2
    assert 'usage: vla-ros' in capsys.readouterr().err


def _run_python(code):
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_building_the_parser_imports_no_heavy_module():
    code = ('import sys\n'
            'from vla_ros.tools import cli\n'
            'cli.build_parser()\n'
            f'print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n')
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[]', \
        f'tool modules must import these inside run(), not at import time: {proc.stdout.strip()}'


def test_python_dash_m_vla_ros_help():
    proc = subprocess.run([sys.executable, '-m', 'vla_ros', '--help'], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('usage: vla-ros')


def test_every_existing_tool_module_loads():
    for command, module_name, _ in cli.SUBCOMMANDS:
        module, error = cli.load_tool(module_name)
        assert error is None, f'vla-ros {command}: {module_name} is broken: {error!r}'
