"""The policy node's configuration: frozen dataclasses, validated on construction.

This is the only place where YAML files and ROS parameters become configuration.
Both arrive as one nested mapping of the node's ``ros__parameters`` (ROS
parameter names are that mapping flattened with dots), and
``NodeConfig.from_dict`` turns it into a ``NodeConfig``. Every error is a
``ConfigError`` that names the parameter as it is written in the YAML file
(``limits.max_velocity[3]``, ``cameras.base_0_rgb.topic``), and unknown names
are answered with a "did you mean".

Parameter layout (see config/aloha.yaml for a complete file)::

    vla_policy:
      ros__parameters:
        checkpoint, auto_activate, dry_run, control_rate, joint_names
        policy.*       how to load and run the checkpoint (engine, device, threads)
        inference.*    when to run it (threshold of the current chunk / fixed rate)
                       and where (thread / separate process)
        prompt.*       instruction topic and default prompt
        joint_states.* topic, staleness, QoS
        cameras.*      keys (model camera slots), default QoS, and one section
                       per key: topic, transport (raw / compressed), staleness,
                       expected size, QoS
        sync.*         skew between cameras, policy for a missing camera
        aggregation.*  how overlapping chunks are merged
        output.*       trajectory / position topics, look-ahead points
        limits.*       per-joint position, velocity and distance limits
        watchdog.*     observation and inference timeouts
        diagnostics.*  /diagnostics rate
        debug.*        ~/debug/action_chunk and ~/debug/policy_images

Every field carries its description (``parameter_specs`` hands them to the
node's parameter declarations) and, in the dataclass, a default.

The package's modules: ``validate`` (parameter kinds, field declarations and
checks), ``policy`` (policy.*, inference.*), ``inputs`` (prompt.*,
joint_states.*, cameras.*, sync.*), ``outputs`` (aggregation.*, output.*,
limits.*, watchdog.*, diagnostics.*), ``node`` (NodeConfig), ``mapping``
(mapping <-> config, unflatten), ``params_file`` (load_parameters_file) and
``specs`` (parameter_specs).
"""

from vla_ros.config.inputs import (
    CameraConfig,
    CamerasSection,
    JointStatesSection,
    PromptSection,
    SyncSection,
)
from vla_ros.config.mapping import unflatten
from vla_ros.config.node import NodeConfig
from vla_ros.config.outputs import (
    AggregationSection,
    DebugSection,
    DiagnosticsSection,
    LimitsSection,
    OutputSection,
    WatchdogSection,
)
from vla_ros.config.params_file import DEFAULT_NODE_NAME, load_parameters_file
from vla_ros.config.policy import InferenceSection, PolicySection
from vla_ros.config.specs import parameter_specs, ParameterSpec
from vla_ros.config.validate import (
    BOOL,
    BOOL_LIST,
    CAMERA_TRANSPORTS,
    FLOAT,
    FLOAT_LIST,
    INFERENCE_MODES,
    INT,
    param,
    QOS_PROFILES,
    SECTION,
    section,
    STR,
    STR_LIST,
    TRIGGERS,
)

__all__ = [
    "AggregationSection",
    "BOOL",
    "BOOL_LIST",
    "CAMERA_TRANSPORTS",
    "CameraConfig",
    "CamerasSection",
    "DEFAULT_NODE_NAME",
    "DebugSection",
    "DiagnosticsSection",
    "FLOAT",
    "FLOAT_LIST",
    "INFERENCE_MODES",
    "INT",
    "InferenceSection",
    "JointStatesSection",
    "LimitsSection",
    "load_parameters_file",
    "NodeConfig",
    "OutputSection",
    "param",
    "parameter_specs",
    "ParameterSpec",
    "PolicySection",
    "PromptSection",
    "QOS_PROFILES",
    "section",
    "SECTION",
    "STR",
    "STR_LIST",
    "SyncSection",
    "TRIGGERS",
    "unflatten",
    "WatchdogSection",
]
