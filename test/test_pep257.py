"""Docstring style through ament_pep257, as `colcon test` runs it on a ROS 2 machine.

ament_pep257 is not part of the project venv; without it the test skips.
The ament convention is used, except that the project writes a docstring's
summary on its first line (D212 style, as in PEP 257 itself, instead of D213)
and Google-style sections without dashed underlines (D406, D407, D413).
On top of that, the docstring codes that the [flake8] section of setup.cfg
ignores (flake8-docstrings' D codes, e.g. D401 and D403) are ignored here too,
so both linters hold the docstrings to the same rules.
"""

import configparser
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = ['vla_ros', 'test', 'launch', 'setup.py']
EXTRA_IGNORES = ['D213', 'D406', 'D407', 'D413']


def setup_cfg_docstring_ignores():
    """Return the D codes in setup.cfg's [flake8] extend-ignore."""
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, 'setup.cfg'))
    codes = re.split(r'[\s,]+', cfg.get('flake8', 'extend-ignore', fallback=''))
    return [code for code in codes if re.fullmatch(r'D\d{3}', code)]


def test_setup_cfg_docstring_ignores():
    # The flake8 and pep257 checks agree on D401/D403 (setup.cfg ignores them).
    assert {'D401', 'D403'} <= set(setup_cfg_docstring_ignores())


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    main = pytest.importorskip('ament_pep257.main').main
    paths = [os.path.join(ROOT, p) for p in PATHS if os.path.exists(os.path.join(ROOT, p))]
    ignores = EXTRA_IGNORES + [c for c in setup_cfg_docstring_ignores() if c not in EXTRA_IGNORES]
    rc = main(argv=['--add-ignore'] + ignores + ['--'] + paths)
    assert rc == 0, 'Found code style errors / warnings (listed above)'
