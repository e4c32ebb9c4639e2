"""The package metadata agrees with the tree: package.xml, setup.py, setup.cfg, launch, config.

Nothing here executes setup.py or the launch file (launch/launch_ros are not
installed in the venv): both are parsed with ast.
"""

import ast
import configparser
import glob
import os
import re
import stat
from xml.etree import ElementTree

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_FILE = os.path.join(ROOT, 'launch', 'vla_policy.launch.py')

# ROS packages the node and tools need at run time (rclpy.lifecycle is in rclpy).
REQUIRED_EXEC_DEPENDS = {
    'rclpy', 'sensor_msgs', 'trajectory_msgs', 'std_msgs', 'diagnostic_msgs',
    'std_srvs', 'lifecycle_msgs', 'cv_bridge', 'launch', 'launch_ros', 'ament_index_python',
}
# Imports that come from ROS packages (and so must be exec_depends), beside *_msgs/_srvs.
ROS_PYTHON_PACKAGES = {
    'rclpy', 'cv_bridge', 'message_filters', 'launch', 'launch_ros', 'ament_index_python',
    'rosbag2_py', 'tf2_ros', 'builtin_interfaces', 'rosgraph_msgs',
}


def _read(path):
    with open(os.path.join(ROOT, path), encoding='utf-8') as f:
        return f.read()


@pytest.fixture(scope='module')
def package_xml():
    return ElementTree.parse(os.path.join(ROOT, 'package.xml')).getroot()


@pytest.fixture(scope='module')
def setup_kwargs():
    """Return the keyword arguments of the setup() call, module-level constants resolved."""
    tree = ast.parse(_read('setup.py'), filename='setup.py')
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Constant):
            constants[node.targets[0].id] = node.value.value
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name) and n.func.id == 'setup']
    assert len(calls) == 1, 'setup.py must call setup() exactly once'

    def value(node):
        if isinstance(node, ast.Name) and node.id in constants:
            return constants[node.id]
        return ast.literal_eval(node)

    kwargs = {}
    for kw in calls[0].keywords:
        try:
            kwargs[kw.arg] = value(kw.value)
        except ValueError:
            kwargs[kw.arg] = kw.value  # not a literal (e.g. data_files with glob()): keep the node
    return kwargs


def _ros_imports(paths):
    """Top-level package names of ROS imports in the given Python files."""
    found = set()
    for path in paths:
        tree = ast.parse(_read(path), filename=path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split('.')[0]
                if top in ROS_PYTHON_PACKAGES or re.search(r'_(msgs|srvs|interfaces)$', top):
                    found.add(top)
    return found


# --- package.xml -------------------------------------------------------------

def test_package_xml_format_name_version(package_xml, setup_kwargs):
    assert package_xml.tag == 'package'
    assert package_xml.get('format') == '3'
    assert package_xml.findtext('name') == 'vla_ros' == setup_kwargs['name']
    assert package_xml.findtext('version') == setup_kwargs['version']
    assert package_xml.findtext('license') == 'Apache-2.0'
    assert package_xml.find('maintainer').get('email')
    assert package_xml.findtext('export/build_type') == 'ament_python'


def test_package_xml_exec_depends(package_xml):
    exec_depends = {e.text for e in package_xml.findall('exec_depend')}
    missing = REQUIRED_EXEC_DEPENDS - exec_depends
    assert not missing, f'package.xml lacks <exec_depend> for {sorted(missing)}'
    test_depends = {e.text for e in package_xml.findall('test_depend')}
    assert {'ament_copyright', 'ament_flake8', 'ament_pep257', 'python3-pytest'} <= test_depends


def test_every_ros_import_is_an_exec_depend(package_xml):
    sources = glob.glob(os.path.join(ROOT, 'vla_ros', '**', '*.py'), recursive=True)
    sources += glob.glob(os.path.join(ROOT, 'launch', '*.launch.py'))
    exec_depends = {e.text for e in package_xml.findall('exec_depend')}
    missing = _ros_imports(os.path.relpath(p, ROOT) for p in sources) - exec_depends
    assert not missing, f'imported by vla_ros but not an <exec_depend> in package.xml: {sorted(missing)}'


# --- setup.py / setup.cfg ----------------------------------------------------

def _console_scripts(setup_kwargs):
    scripts = {}
    for entry in setup_kwargs['entry_points']['console_scripts']:
        name, target = (part.strip() for part in entry.split('=', 1))
        scripts[name] = target
    return scripts


def test_console_scripts_point_at_modules_in_tree(setup_kwargs):
    scripts = _console_scripts(setup_kwargs)
    assert scripts.get('vla-ros') == 'vla_ros.tools.cli:main'
    assert scripts.get('vla_policy_node') == 'vla_ros.ros.node:main'
    for name, target in scripts.items():
        module, _, func = target.partition(':')
        path = os.path.join(ROOT, *module.split('.')) + '.py'
        assert os.path.isfile(path), f'console script {name}: {os.path.relpath(path, ROOT)} does not exist'
        tree = ast.parse(_read(path), filename=path)
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        defined |= {t.id for n in tree.body if isinstance(n, ast.Assign)
                    for t in n.targets if isinstance(t, ast.Name)}
        defined |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom)
                    for a in n.names}
        assert func in defined, f'console script {name}: {module} defines no {func}()'


def test_setup_packages_and_data_files(setup_kwargs):
    source = _read('setup.py')
    for needed in ("'share/ament_index/resource_index/packages'", "'resource/' + package_name",
                   "'package.xml'", "'launch'", "'*.launch.py'", "'config'", "'*.yaml'"):
        assert needed in source, f'setup.py data_files lacks {needed}'
    marker = os.path.join(ROOT, 'resource', 'vla_ros')
    assert os.path.isfile(marker) and os.path.getsize(marker) == 0


def test_setup_cfg_script_dirs_for_ros2_run():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(os.path.join(ROOT, 'setup.cfg'))
    assert cfg['develop']['script_dir'] == '$base/lib/vla_ros'
    assert cfg['install']['install_scripts'] == '$base/lib/vla_ros'
    assert cfg['flake8']['max-line-length'] == '110'


def test_requirements_pin_torch():
    lines = [ln.split('#')[0].strip() for ln in _read('requirements.txt').splitlines()]
    torch = [ln for ln in lines if re.match(r'torch\b', ln)]
    assert torch == ['torch==2.13.0'], 'torch must stay pinned (an unpinned torch pulls GBs of CUDA wheels)'
    ros = [ln for ln in _read('requirements-ros.txt').splitlines() if ln and not ln.startswith('#')]
    assert ros and all(ln.startswith('ros-jazzy-') for ln in ros)


# --- scripts, README -----------------------------------------------------------

def test_scripts_are_executable_and_ci_runs_the_readme_command():
    for path in ('scripts/bootstrap.sh', 'scripts/test.sh', 'scripts/demo.sh', '.ci/run'):
        mode = os.stat(os.path.join(ROOT, path)).st_mode
        assert mode & stat.S_IXUSR, f'{path} is not executable'
    ci = [ln for ln in _read('.ci/run').splitlines() if ln.strip()]
    assert ci[0] == '#!/usr/bin/env bash'
    assert ci[-1] == 'bash scripts/test.sh'


def test_readme_starts_with_the_two_commands():
    readme = _read('README.md')
    match = re.match(r'```[a-z]*\n(.*?)\n```', readme, re.S)
    assert match, 'README.md must start with a fenced code block'
    commands = [ln.split('#')[0].strip() for ln in match.group(1).splitlines()]
    assert [c for c in commands if c] == ['bash scripts/demo.sh', 'bash scripts/test.sh']


# --- launch file and config ----------------------------------------------------

def _config_files():
    return sorted(glob.glob(os.path.join(ROOT, 'config', '*.yaml')))


def test_launch_file_references_package_executable_and_config():
    tree = ast.parse(_read(LAUNCH_FILE), filename=LAUNCH_FILE)
    strings = {n.value for n in ast.walk(tree)
               if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert 'vla_ros' in strings
    assert 'vla_policy_node' in strings
    assert any(isinstance(n, ast.FunctionDef) and n.name == 'generate_launch_description'
               for n in tree.body)
    declared = {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, 'id', None) == 'DeclareLaunchArgument'
                and n.args and isinstance(n.args[0], ast.Constant)}
    assert {'config', 'checkpoint', 'namespace', 'auto_activate', 'log_level'} <= declared
    yaml_names = {s for s in strings if s.endswith('.yaml')}
    assert yaml_names, 'the launch file names no default config file'
    if not _config_files():
        pytest.skip('config/ has no YAML files yet')
    for name in yaml_names:
        assert os.path.isfile(os.path.join(ROOT, 'config', name)), \
            f'default config config/{name} does not exist'


def test_config_files_are_ros_parameter_files():
    files = _config_files()
    if not files:
        pytest.skip('config/ has no YAML files yet')
    for path in files:
        with open(path, encoding='utf-8') as f:
            data = yaml.safe_load(f)
        name = os.path.relpath(path, ROOT)
        assert isinstance(data, dict) and data, f'{name} is not a mapping'
        nodes = [k for k, v in data.items()
                 if isinstance(v, dict) and isinstance(v.get('ros__parameters'), dict)]
        assert nodes, f'{name} has no top-level node key with a ros__parameters mapping'
