"""Docstring style through ament_pep257, as `colcon test` runs it on a ROS 2 machine.

ament_pep257 is not part of the project venv; without it the test skips.
The ament convention is used, except that the project writes a docstring's
summary on its first line (D212 style, as in PEP 257 itself, instead of D213)
and Google-style sections without dashed underlines (D406, D407, D413).
"""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = ['vla_ros', 'test', 'launch', 'setup.py']


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    main = pytest.importorskip('ament_pep257.main').main
    paths = [os.path.join(ROOT, p) for p in PATHS if os.path.exists(os.path.join(ROOT, p))]
    rc = main(argv=['--add-ignore', 'D213', 'D406', 'D407', 'D413', '--'] + paths)
    assert rc == 0, 'Found code style errors / warnings (listed above)'
