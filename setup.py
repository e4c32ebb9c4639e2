"""ament_python package definition for vla_ros (also plain-pip installable)."""

from glob import glob
import os

from setuptools import find_packages
from setuptools import setup

package_name = 'vla_ros'


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob(os.path.join('launch', '*.launch.py'))),
        ('share/' + package_name + '/config', glob(os.path.join('config', '*.yaml'))),
    ],
    zip_safe=True,
    maintainer='vla_ros maintainers',
    maintainer_email='maintainers@users.noreply.b-seed-743c9b67.example',
    description='Run pi0 / pi0.5 vision-language-action policies as a ROS 2 node.',
    license='Apache-2.0',
    python_requires='>=3.10',
    # `pip install .[fleet]`: Ray Serve for `vla-ros serve --ray` (a fleet of policy replicas). Not
    # needed on a robot, which only talks to a server (websockets + msgpack, requirements.txt).
    extras_require={'fleet': ['ray[serve]>=2.60']},
    entry_points={
        'console_scripts': [
            'vla-ros = vla_ros.tools.cli:main',
            'vla_policy_node = vla_ros.ros.node:main',
        ],
    },
)
