"""Launch the vla_ros policy node.

    ros2 launch vla_ros vla_policy.launch.py \
        config:=/path/to/robot.yaml checkpoint:=/path/to/models/<name>

Launch arguments:
  config         parameter file (default: the installed config/aloha.yaml)
  checkpoint     checkpoint directory; when non-empty it overrides the
                 'checkpoint' parameter of the config file
  namespace      ROS namespace of the node (default: none)
  auto_activate  whether the node configures and activates itself on start-up
                 (default: true)
  log_level      ROS log level of the node (default: info)
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.actions import OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'vla_ros'
EXECUTABLE = 'vla_policy_node'
NODE_NAME = 'vla_policy'
DEFAULT_CONFIG = 'aloha.yaml'


def _policy_node(context):
    """Build the node once the launch arguments are known."""
    config = LaunchConfiguration('config').perform(context)
    checkpoint = LaunchConfiguration('checkpoint').perform(context).strip()
    auto_activate = LaunchConfiguration('auto_activate').perform(context).strip().lower()

    overrides = {'auto_activate': auto_activate in ('true', '1', 'yes', 'on')}
    # Only a given checkpoint overrides the config file: an empty string must
    # not replace a checkpoint that the YAML file sets.
    if checkpoint:
        overrides['checkpoint'] = os.path.abspath(os.path.expanduser(checkpoint))

    return [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name=NODE_NAME,
            namespace=LaunchConfiguration('namespace'),
            parameters=[config, overrides],
            ros_arguments=['--log-level', LaunchConfiguration('log_level')],
            output='screen',
            emulate_tty=True,
        ),
    ]


def generate_launch_description():
    default_config = os.path.join(
        get_package_share_directory(PACKAGE), 'config', DEFAULT_CONFIG)
    return LaunchDescription([
        DeclareLaunchArgument(
            'config', default_value=default_config,
            description='Parameter file for the policy node (robot, topics, engine).'),
        DeclareLaunchArgument(
            'checkpoint', default_value='',
            description='Checkpoint directory; overrides the config file when non-empty.'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='ROS namespace of the policy node.'),
        DeclareLaunchArgument(
            'auto_activate', default_value='true', choices=['true', 'false'],
            description='Configure and activate the node on start-up.'),
        DeclareLaunchArgument(
            'log_level', default_value='info',
            choices=['debug', 'info', 'warn', 'error', 'fatal'],
            description='ROS log level of the policy node.'),
        OpaqueFunction(function=_policy_node),
    ])
