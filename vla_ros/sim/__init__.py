"""A simulated planar arm that stands in for a profile's robot, without ROS.

- config.py      the ``vla_sim:`` section of a robot YAML (SimConfig) and its
                 cross-check with the node's section (SimRobot)
- kinematics.py  forward / inverse kinematics of a planar arm
- trajectory.py  following JointTrajectory commands like joint_trajectory_controller
- render.py      OpenCV top and wrist views
- world.py       SimWorld: arm, target, episodes, success
- expert.py      the scripted expert (IK + minimum-jerk approach)
- episode.py     one expert episode on simulated time
- record.py      episodes as rosbag2 bags
- evaluate.py    closed-loop evaluation: a policy drives the sim through the node's controller

The ROS 2 node around SimWorld is vla_ros.ros.sim_node; the CLI is
``vla-ros sim`` (vla_ros.tools.sim). See docs/sim.md.
"""
