"""flake8 through ament_flake8, as `colcon test` runs it on a ROS 2 machine.

ament_flake8 is not part of the project venv; without it the test skips.
The flake8 settings are the [flake8] section of setup.cfg.
"""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = ['vla_ros', 'test', 'launch', 'setup.py']


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    main_with_errors = pytest.importorskip('ament_flake8.main').main_with_errors
    paths = [os.path.join(ROOT, p) for p in PATHS if os.path.exists(os.path.join(ROOT, p))]
    rc, errors = main_with_errors(argv=['--config', os.path.join(ROOT, 'setup.cfg')] + paths)
    assert rc == 0, \
        'Found %d code style errors / warnings:\n' % len(errors) + '\n'.join(errors)
