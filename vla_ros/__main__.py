"""``python -m vla_ros``: same as the ``vla-ros`` command."""

import sys

from vla_ros.tools.cli import main

if __name__ == '__main__':
    sys.exit(main())
