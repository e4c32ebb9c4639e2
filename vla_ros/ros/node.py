"""The ``vla_policy`` lifecycle node: cameras, joint states and a prompt in; trajectories out.

    ros2 run vla_ros vla_policy_node --ros-args --params-file config/aloha.yaml \
        -p checkpoint:=/path/to/models/<name> -p auto_activate:=true

Lifecycle (managed node, as in ros2/demos lifecycle_py):
  configure   read and validate the parameters, load the policy (in a worker
              thread's runner or a separate process), warm it up, create the
              subscriptions, publishers, timers and services
  activate    start inference and publishing (from a clean slate)
  deactivate  publish one hold at the last command, stop inference and publishing
  cleanup     free everything configure created
``auto_activate: true`` runs configure and activate at start-up.

Threads: subscriptions share a reentrant callback group; the control timer
has a mutually exclusive group of its own; diagnostics and the ~/pause,
~/resume services a third. Inference runs in InferenceWorker's thread (not an
executor callback) and hands chunks straight to the controller. All the
logic lives in vla_ros.controller.PolicyController; this module only wires
topics to it.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any, Callable

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import (
    ExternalShutdownException,
    MultiThreadedExecutor,
    ShutdownException,
    SingleThreadedExecutor,
)
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.clock import ClockChange, JumpThreshold
from rclpy.duration import Duration
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException, ParameterException
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

try:
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

from vla_ros.actions.trajectory import prepare_chunk
from vla_ros.config import DEFAULT_NODE_NAME, NodeConfig
from vla_ros.config.params_file import params_files_in_args, read_parameters_file
from vla_ros.controller import PolicyController
from vla_ros.status import PeriodRecorder
from vla_ros.errors import ActionDecodeError, ConfigError
from vla_ros.policy import check_config_fits
from vla_ros.ros.builtin_time import seconds_to_stamp, stamp_to_seconds
from vla_ros.ros.command_msgs import float64_array_msg, trajectory_msg
from vla_ros.ros.diagnostics_msgs import diagnostic_status
from vla_ros.observation.image import resize_with_pad
from vla_ros.ros.image_msgs import compressed_to_rgb, image_to_rgb, rgb_to_image_msg
from vla_ros.ros.inference_worker import InferenceWorker, make_runner, warmup_observation
from vla_ros.ros.joint_state_merge import joint_state_reader
from vla_ros.ros.params import declare_parameters, read_parameters
from vla_ros.ros.qos import COMMAND_QOS, DEBUG_QOS, INSTRUCTION_QOS, SENSOR_QOS
from vla_ros.types import ChunkGuidance, RawObservation

WARNING_PERIOD = 5.0  # seconds between repeated warnings about one input


class DedicatedTimer:
    """A timer with a thread of its own: a hidden helper node spun by a SingleThreadedExecutor.

    rclpy executors run their scheduling loop in Python under the GIL; with
    cameras and joint states arriving at a few hundred messages per second
    the node's own executor can delay a timer by tens of milliseconds (see
    vla_ros.ros.timer_jitter). This executor waits on one timer only, so the
    callback runs as soon as the timer is due and the GIL is free. The helper
    node follows the parent's use_sim_time and has no parameter services.
    """

    def __init__(self, parent: Node, period: float, callback: Callable[[], None]):
        use_sim_time = parent.get_parameter("use_sim_time").value
        self.node = Node(
            f"_{parent.get_name()}_control",
            namespace=parent.get_namespace(),
            context=parent.context,
            start_parameter_services=False,
            enable_rosout=False,
            parameter_overrides=[Parameter("use_sim_time", value=use_sim_time)],
        )
        self.executor = SingleThreadedExecutor(context=parent.context)
        self.executor.add_node(self.node)
        self.timer = self.node.create_timer(period, callback)
        self.thread = threading.Thread(target=self._spin, name="vla_ros-control", daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except (ExternalShutdownException, ShutdownException):
            pass  # Ctrl-C / rclpy.shutdown: main() cleans up

    def destroy(self) -> None:
        # Order matters at Ctrl-C: destroying a node whose executor thread still waits
        # on its handles crashes rcl (seen as SIGSEGV). Stop the timer, stop the
        # executor, and destroy only once the thread has really finished.
        self.timer.cancel()
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)
        if self.thread.is_alive():
            self.node.get_logger().warning("control thread did not stop; leaving its node to process exit")
            return
        self.node.destroy_timer(self.timer)
        self.node.destroy_node()


class _Progress:
    """Logs "still <doing> (N s)" every ``period`` seconds while a slow step runs.

    Configure runs inside a lifecycle service callback, so the executor is
    blocked while a multi-gigabyte checkpoint loads; this at least tells the
    operator (and ``ros2 launch``'s output) that the node is alive.
    """

    def __init__(self, log: Any, doing: str, period: float = 10.0):
        self._log, self._doing, self._period = log, doing, period
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vla_ros-progress", daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._done.wait(self._period):
            self._log.info(f"still {self._doing} ({time.monotonic() - start:.0f} s)")

    def __enter__(self) -> "_Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()


class VlaPolicyNode(LifecycleNode):
    """Runs a pi0 / pi0.5 policy on live sensor data and publishes joint trajectories.

    policy_factory: zero-argument callable returning an object with the
        Policy.infer interface, used instead of loading ``checkpoint`` (tests,
        benchmarks). It must be picklable for inference.mode 'process'.
    """

    def __init__(
        self,
        node_name: str = DEFAULT_NODE_NAME,
        *,
        policy_factory: Callable[[], Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(node_name, **kwargs)
        self._policy_factory = policy_factory
        declare_parameters(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.config: NodeConfig | None = None
        self.controller: PolicyController | None = None
        self.worker: InferenceWorker | None = None
        self.runner: Any = None
        self.period_recorder: PeriodRecorder | None = None
        self._active = False
        self._output_lock = threading.Lock()
        self._warned: dict[str, float] = {}
        self._input_subscriptions: list[Any] = []
        self._owned_timers: list[Any] = []
        self._owned_services: list[Any] = []
        self._traj_pub = None
        self._pos_pub = None
        self._diag_pub = None
        self._last_level = ""
        self._control_timer: DedicatedTimer | None = None
        self._sim_time = False
        self._jump_handle = None
        self._chunk_pub = None
        self._images_pub = None
        self._image_size = 224
        self._image_resize = "openpi"
        self._last_debug_images = -float("inf")
        self._switch_interval: float | None = None
        self.configure_error = ""

    # ----------------------------------------------------------- helpers ---

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _warn_throttled(self, key: str, text: str) -> None:
        t = time.monotonic()
        if t - self._warned.get(key, -1e9) >= WARNING_PERIOD:
            self._warned[key] = t
            self.get_logger().warning(text)

    @property
    def active(self) -> bool:
        return self._active

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Parameters take effect at configure: refuse changes while the node is configured.

        use_sim_time too: the buffered stamps, the control timer's helper
        node and the period statistics all follow the clock chosen at
        configure.
        """
        if self.config is None:
            return SetParametersResult(successful=True)
        return SetParametersResult(
            successful=False,
            reason="vla_policy reads its parameters at configure: deactivate and clean up the node, "
            "set them, then configure again",
        )

    # --------------------------------------------------------- lifecycle ---

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        log = self.get_logger()
        self.configure_error = ""
        try:
            config = NodeConfig.from_flat(read_parameters(self))
            remote = config.inference.mode == "remote"
            if not config.checkpoint and self._policy_factory is None and not remote:
                raise ConfigError("checkpoint", "required: a checkpoint or exported artifact directory")
        except ConfigError as exc:
            return self._configure_failed(str(exc))
        options = config.policy.to_policy_options()
        if remote:
            log.info(f"connecting to the policy server at {config.remote.uri} (inference.mode remote)")
        else:
            log.info(
                f"loading the policy from '{config.checkpoint or 'policy_factory'}' "
                f"(engine {options.engine}, precision {options.precision}, device {options.device}, "
                f"inference in a {config.inference.mode}); a full-size checkpoint takes minutes"
            )
        started = time.monotonic()
        try:
            with _Progress(log, "loading the policy"):
                runner = make_runner(
                    config.inference.mode,
                    config.checkpoint,
                    options,
                    timeout=config.inference.timeout,
                    policy_factory=self._policy_factory,
                    remote=config.remote,
                )
        except Exception as exc:  # a missing file, a bad engine: stay unconfigured, say why
            if remote:
                return self._configure_failed(
                    str(exc) if isinstance(exc, ConfigError) else f"remote.uri: {type(exc).__name__}: {exc}"
                )
            return self._configure_failed(
                f"cannot load the policy from '{config.checkpoint}': {type(exc).__name__}: {exc}"
            )
        try:
            notes = check_config_fits(getattr(runner, "spec", None), config)
            check_remote = getattr(runner, "check_config", None)  # the server's metadata (remote mode)
            if check_remote is not None:
                notes = notes + check_remote(config)
        except ConfigError as exc:
            runner.close()
            return self._configure_failed(str(exc))
        try:
            with _Progress(log, "warming up"):
                self._warm_up(config, runner)
        except Exception as exc:
            runner.close()
            return self._configure_failed(f"warm-up inference failed: {type(exc).__name__}: {exc}")
        self._log_summary(config, runner, time.monotonic() - started, notes)

        if config.gil_switch_interval > 0.0:
            # Process-wide: restored in _release.
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(config.gil_switch_interval)
        self.config = config
        self.runner = runner
        self.controller = PolicyController(config)
        self.period_recorder = PeriodRecorder(config.control_period)
        self._sim_time = bool(self.get_parameter("use_sim_time").value)
        self._create_entities(config)
        self.worker = InferenceWorker(
            self.controller,
            runner,
            self._now,
            on_error=lambda m: self._warn_throttled("inference", f"inference failed: {m}"),
            on_chunk=self._publish_debug if config.debug.action_chunk or config.debug.policy_images else None,
        )
        # A clock that goes back (a restarted simulation, a looped bag under
        # use_sim_time) would leave every buffered stamp in the future.
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-1), on_clock_change=True),
            post_callback=self._on_clock_jump,
        )
        self.worker.start()
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        self.configure_error = reason
        self.get_logger().error(f"configure failed: {reason}")
        return TransitionCallbackReturn.FAILURE

    def _log_summary(self, config: NodeConfig, runner: Any, seconds: float, notes: list[str]) -> None:
        """One summary of what runs: model, engine and why, norm stats, every topic in and out."""
        log = self.get_logger()
        spec = getattr(runner, "spec", None)
        lines = [f"loaded in {seconds:.1f} s, inference in a {runner.mode}"]
        if spec is not None:
            lines.append(
                f"model: {spec.config_name} ({spec.variant}), {len(spec.camera_keys)} camera slots at "
                f"{spec.image_size} px, {spec.max_token_len} prompt tokens, chunks of {spec.action_horizon}; "
                f"{spec.provenance} conventions "
                f"(image resize {spec.image_resize}, prompt {spec.prompt_style})"
            )
            if any(spec.camera_sources):
                lines.append(
                    "trained cameras: "
                    + ", ".join(f"{key} = {name}" for key, name in zip(spec.camera_keys, spec.camera_sources))
                )
            lines.append(
                f"norm stats: {spec.norm_stats or '?'} (state {spec.state_dim} dims, actions "
                f"{spec.action_stats_dim} dims; robot {config.num_joints} joints)"
            )
        elif hasattr(runner, "summary"):  # remote mode: the server's model
            lines.append(runner.summary())
        else:
            lines.append("model: a policy_factory object (no spec; joints and norm stats not checked)")
        engine = getattr(runner, "description", None)
        if engine:
            lines.append("engine: " + ", ".join(f"{k}={v}" for k, v in engine.items()))
        out = config.output
        traj = out.debug_trajectory_topic if config.dry_run else out.trajectory_topic
        outputs = [t for t in (traj, out.debug_position_topic if config.dry_run else out.position_topic) if t]
        if config.debug.action_chunk:
            outputs.append("~/debug/action_chunk")
        if config.debug.policy_images:
            outputs.append("~/debug/policy_images")
        lines.append(
            "in: "
            + ", ".join(f"{s.key} <- {s.topic} ({s.transport})" for s in config.cameras.streams)
            + f", joint states <- {config.joint_states.topic}, instruction <- {config.prompt.topic}"
        )
        lines.append(
            f"out: {', '.join(outputs)}, /diagnostics; control {config.control_rate:g} Hz"
            + (" (DRY RUN: nothing goes to the robot's topics)" if config.dry_run else "")
        )
        log.info("configured:\n  " + "\n  ".join(lines))
        for note in notes:
            log.warning("!" * 8 + f" {note} " + "!" * 8)

    def _warm_up(self, config: NodeConfig, runner: Any) -> None:
        sizes = {s.key: s.expected_size or (224, 224) for s in config.cameras.streams}
        obs = warmup_observation(sizes, config.num_joints, config.prompt.default or "warm up")
        actions = self._warm_up_runs(config, runner, obs)
        if config.aggregation.mode == "rtc" and actions is not None and len(actions) > 1:
            # The guided loop too (compiled / captured on first use by some engines; a setting the
            # engine cannot run, such as rtc.jacobian vjp on the optimized suffix, fails here).
            delay = min(config.rtc.delay_margin + 1, len(actions) - 1)
            start = time.perf_counter()
            runner.infer(obs, guidance=ChunkGuidance(actions[delay:], delay, config.rtc.to_settings()))
            self.get_logger().info(
                f"warm-up inference with Real-Time Chunking ({config.rtc.mode}): "
                f"{(time.perf_counter() - start) * 1e3:.1f} ms"
            )

    def _warm_up_runs(self, config: NodeConfig, runner: Any, obs: RawObservation):
        """The unguided warm-up inferences; the last chunk's actions (None if none decoded)."""
        actions = None
        for i in range(config.policy.warmup_runs):
            start = time.perf_counter()
            try:
                chunk = runner.infer(obs)
            except ActionDecodeError as exc:
                # The engine ran; the model wrote no well-formed action for a synthetic frame (a
                # decode model on a blank image). Live observations decide; each failure holds.
                self.get_logger().warning(
                    f"warm-up inference {i + 1}/{config.policy.warmup_runs}: the engine ran "
                    f"({(time.perf_counter() - start) * 1e3:.0f} ms) but decoded no action for the "
                    f"warm-up frame ({exc}); continuing: inferences that fail like this hold the robot"
                )
                continue
            actions = chunk.actions
            if actions.ndim != 2 or actions.shape[1] != config.num_joints:
                raise ConfigError(
                    "joint_names",
                    f"the policy returns actions of shape {tuple(actions.shape)}, "
                    f"but {config.num_joints} joints are configured",
                )
            latency = time.perf_counter() - start
            runs = config.policy.warmup_runs
            self.get_logger().info(f"warm-up inference {i + 1}/{runs}: {latency * 1e3:.1f} ms")
            if i + 1 == config.policy.warmup_runs:
                # The next chunk must arrive before the current one runs out.
                duration = actions.shape[0] * config.policy.action_period
                budget = duration * (1.0 - config.inference.execute_threshold)
                if config.inference.trigger == "threshold" and latency > budget:
                    self.get_logger().warning(
                        f"an inference takes {latency * 1e3:.0f} ms but only {budget * 1e3:.0f} ms of a "
                        f"{duration:.2f} s chunk remain after inference.execute_threshold "
                        f"{config.inference.execute_threshold:g}: the robot will hold between chunks; lower "
                        "the threshold or use a faster engine"
                    )
        return actions

    def _create_entities(self, config: NodeConfig) -> None:
        # With a MultiThreadedExecutor (executor_threads > 1): one mutually
        # exclusive group per camera and one for joint states and the prompt,
        # so a camera never decodes two frames at once; the control timer
        # ('shared') has a group of its own, diagnostics and services a third.
        self._control_group = MutuallyExclusiveCallbackGroup()
        self._state_group = MutuallyExclusiveCallbackGroup()
        self._misc_group = MutuallyExclusiveCallbackGroup()
        out = config.output
        traj_topic = out.debug_trajectory_topic if config.dry_run else out.trajectory_topic
        pos_topic = (
            (out.debug_position_topic if config.dry_run else out.position_topic) if out.position_topic else ""
        )
        if out.trajectory_topic:
            self._traj_pub = self.create_lifecycle_publisher(JointTrajectory, traj_topic, COMMAND_QOS)
        if pos_topic:
            self._pos_pub = self.create_lifecycle_publisher(Float64MultiArray, pos_topic, COMMAND_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        if config.debug.action_chunk:
            self._chunk_pub = self.create_lifecycle_publisher(
                JointTrajectory, "~/debug/action_chunk", DEBUG_QOS
            )
        if config.debug.policy_images:
            self._images_pub = self.create_lifecycle_publisher(Image, "~/debug/policy_images", DEBUG_QOS)
            # Remote mode has no spec: the runner has the server's size and the resize it applies.
            source = getattr(self.runner, "spec", None) or self.runner
            self._image_size = int(getattr(source, "image_size", 0) or 224)
            self._image_resize = getattr(source, "image_resize", "") or "openpi"

        read_joint_state = joint_state_reader(
            config.joint_names, config.joint_states.merge_partial, config.joint_states.max_staleness
        )
        subs = self._input_subscriptions
        for stream in config.cameras.streams:
            compressed = stream.transport == "compressed"
            subs.append(
                self.create_subscription(
                    CompressedImage if compressed else Image,
                    stream.topic,
                    self._image_callback(stream.key, compressed),
                    SENSOR_QOS[config.cameras.qos_of(stream.key)],
                    callback_group=MutuallyExclusiveCallbackGroup(),
                )
            )
        subs.append(
            self.create_subscription(
                JointState,
                config.joint_states.topic,
                self._joint_state_callback(read_joint_state),
                SENSOR_QOS[config.joint_states.qos],
                callback_group=self._state_group,
            )
        )
        subs.append(
            self.create_subscription(
                String,
                config.prompt.topic,
                self._on_prompt,
                INSTRUCTION_QOS,
                callback_group=self._state_group,
                event_callbacks=SubscriptionEventCallbacks(
                    incompatible_qos=self._on_incompatible_instruction
                ),
            )
        )

        if config.control_timer == "dedicated":
            self._control_timer = DedicatedTimer(self, config.control_period, self._on_control_timer)
        else:
            self._owned_timers.append(
                self.create_timer(
                    config.control_period, self._on_control_timer, callback_group=self._control_group
                )
            )
        self._owned_timers.append(
            self.create_timer(
                1.0 / config.diagnostics.rate, self._on_diagnostics_timer, callback_group=self._misc_group
            )
        )
        self._owned_services.append(
            self.create_service(Trigger, "~/pause", self._on_pause, callback_group=self._misc_group)
        )
        self._owned_services.append(
            self.create_service(Trigger, "~/resume", self._on_resume, callback_group=self._misc_group)
        )

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.controller.activate(self._now())
        self.period_recorder.reset()
        self.worker.resume()
        self._active = True
        prompt = self.controller.prompt
        where = self.config.prompt.topic
        self.get_logger().info(
            "activated: running the policy; "
            + (
                f"instruction '{prompt}' ({self.controller.prompt_source}; {where} replaces it)"
                if prompt
                else f"no instruction yet: publish one on {where} (std_msgs/String, transient-local)"
            )
        )
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._output_lock:
            self._active = False
            plan = self.controller.hold_plan("node deactivated")
            if plan is not None:
                self._publish(plan)
        self.worker.suspend()
        self.get_logger().info("deactivated: holding at the last command")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Stop inference and destroy what configure created (idempotent)."""
        self._active = False
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None
        if self._jump_handle is not None:
            self._jump_handle.unregister()
            self._jump_handle = None
        if self._control_timer is not None:
            self._control_timer.destroy()
            self._control_timer = None
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if self.runner is not None:
            self.runner.close()
            self.runner = None
        for timer in self._owned_timers:
            self.destroy_timer(timer)
        for sub in self._input_subscriptions:
            self.destroy_subscription(sub)
        for service in self._owned_services:
            self.destroy_service(service)
        self._owned_timers, self._input_subscriptions, self._owned_services = [], [], []
        with self._output_lock:  # no publish in flight while the publishers go
            for name in ("_traj_pub", "_pos_pub", "_chunk_pub", "_images_pub"):
                pub = getattr(self, name)
                if pub is not None:
                    self.destroy_lifecycle_publisher(pub)
                    setattr(self, name, None)
            if self._diag_pub is not None:
                self.destroy_publisher(self._diag_pub)
                self._diag_pub = None
        self.controller = None
        self.config = None

    def autostart(self) -> bool:
        """Configure and activate (auto_activate); False, with the reason logged, if either fails."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error("auto_activate: configure failed; fix the parameters and configure again")
            return False
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error("auto_activate: activate failed")
            return False
        return True

    def release(self) -> None:
        """Stop the worker and the policy process (at exit, whatever the lifecycle state)."""
        self._release()

    # ------------------------------------------------------------ inputs ---

    def _image_callback(self, key: str, compressed: bool) -> Callable[[Any], None]:
        convert = compressed_to_rgb if compressed else image_to_rgb

        def callback(msg: Any) -> None:
            controller = self.controller
            if controller is None:
                return
            receipt = self._now()
            try:
                rgb = convert(msg)
            except Exception as exc:  # ImageConversionError, or anything a broken message causes
                detail = f"camera {key}: {exc}"
                controller.on_input_error(key, detail, receipt, reason="invalid_image")
                self._warn_throttled(f"image:{key}:{str(exc)[:24]}", f"rejected {detail}")
                return
            stamp = stamp_to_seconds(msg.header.stamp)
            if not controller.on_image(key, rgb, stamp, receipt):
                self._warn_throttled(
                    f"image:{key}", f"rejected a frame of camera {key}: " f"{_last_detail(controller, key)}"
                )
            elif stamp <= 0.0:
                self._warn_throttled(
                    f"stamp:{key}", f"camera {key}: header stamp is zero; using the receipt time"
                )

        return callback

    def _joint_state_callback(
        self, read: Callable[[JointState, float], tuple[Any, float]]
    ) -> Callable[[JointState], None]:
        def callback(msg: JointState) -> None:
            controller = self.controller
            if controller is None:
                return
            receipt = self._now()
            try:
                positions, stamp = read(msg, receipt)
            except Exception as exc:
                controller.on_input_error(
                    "joint_state", f"joint state: {exc}", receipt, reason="invalid_state"
                )
                self._warn_throttled(f"joint_state:{str(exc)[:24]}", f"rejected joint state: {exc}")
                return
            if not controller.on_joint_state(positions, stamp, receipt):
                self._warn_throttled(
                    "joint_state", "rejected joint state: " f"{_last_detail(controller, 'joint_state')}"
                )
            elif stamp <= 0.0:
                self._warn_throttled(
                    "stamp:joint_state", "joint state: header stamp is zero; using the receipt time"
                )

        return callback

    def _on_prompt(self, msg: String) -> None:
        controller = self.controller
        if controller is None:
            return
        if controller.on_prompt(msg.data, self._now(), source=f"from {self.config.prompt.topic}"):
            self.get_logger().info(f"instruction: '{msg.data.strip()}' (from {self.config.prompt.topic})")
        else:
            self._warn_throttled("prompt", "rejected an empty instruction; keeping the previous prompt")

    # ------------------------------------------------------------ output ---

    def _on_control_timer(self) -> None:
        self.period_recorder.record(time.monotonic(), self._now() if self._sim_time else None)
        if not self._active:
            return
        with self._output_lock:
            if not self._active:
                return
            plan = self.controller.tick(self._now())
            if plan is None:
                return
            try:
                self._publish(plan)
            except Exception:
                if self.context.ok():
                    raise
                # Shutting down (Ctrl-C): the publishers' context is already gone.

    def _publish(self, plan: Any) -> None:
        if self._traj_pub is not None:
            velocities = plan.velocities if self.config.output.velocities else None
            self._traj_pub.publish(
                trajectory_msg(self.config.joint_names, plan.times_from_start, plan.positions, velocities)
            )
        if self._pos_pub is not None:
            self._pos_pub.publish(float64_array_msg(plan.positions[0]))

    def _on_incompatible_instruction(self, event: Any) -> None:
        self.get_logger().warning(
            f"a publisher on {self.config.prompt.topic} offers QoS this node cannot receive "
            f"({getattr(event, 'last_policy_kind', '?')}): the instruction is subscribed reliable and "
            "transient-local; publish it with durability transient_local (ros2 topic pub "
            "--qos-durability transient_local --qos-reliability reliable)"
        )

    def _on_clock_jump(self, jump: Any) -> None:
        seconds = jump.delta.nanoseconds * 1e-9
        controller = self.controller
        switched = jump.clock_change in (ClockChange.ROS_TIME_ACTIVATED, ClockChange.ROS_TIME_DEACTIVATED)
        if controller is None or (seconds >= 0.0 and not switched):
            return
        now = self._now()
        controller.on_clock_jump(now, seconds)
        if self.period_recorder is not None:
            self.period_recorder.reset()
        what = f"clock jumped back {-seconds:.3f} s"
        if switched:
            what = "clock switched between system and ROS time"
        self.get_logger().warning(
            f"{what} (restarted simulation or looped bag?): dropped buffered observations and chunks; "
            "holding until fresh ones arrive"
        )

    def _publish_debug(self, request: Any, chunk: Any) -> None:
        """~/debug/action_chunk and ~/debug/policy_images, from the inference worker's thread."""
        config = self.config
        obs = request.observation
        try:
            if self._chunk_pub is not None:
                absolute = prepare_chunk(
                    chunk, config.policy.action_space, obs.state, self.controller.delta_mask
                ).actions
                times = config.policy.action_period * np.arange(absolute.shape[0])
                msg = trajectory_msg(config.joint_names, times, absolute, None)
                msg.header.stamp = seconds_to_stamp(chunk.timestamp)
                self._chunk_pub.publish(msg)
            now = time.monotonic()
            due = now - self._last_debug_images >= 1.0 / config.debug.policy_images_rate
            if self._images_pub is not None and due:
                self._last_debug_images = now
                for key, rgb in obs.images.items():
                    boxed = resize_with_pad(rgb, self._image_size, self._image_size, self._image_resize)
                    msg = rgb_to_image_msg(boxed, "rgb8")
                    msg.header.stamp = seconds_to_stamp(obs.timestamp)
                    msg.header.frame_id = key
                    self._images_pub.publish(msg)
        except Exception as exc:  # debug output must never stop inference
            if self.context.ok():
                self._warn_throttled("debug", f"debug topics: {type(exc).__name__}: {exc}")

    def _on_pause(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        changed = self.controller.pause()
        response.success = True
        response.message = "paused: holding at the last command" if changed else "already paused"
        if changed:
            self.get_logger().info("paused by ~/pause")
        return response

    def _on_resume(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        changed = self.controller.resume(self._now())
        response.success = True
        response.message = "resumed: executing fresh action chunks" if changed else "not paused"
        if changed:
            self.get_logger().info("resumed by ~/resume")
        return response

    def _on_diagnostics_timer(self) -> None:
        controller = self.controller
        if controller is None or self._diag_pub is None:
            return
        now = self._now()
        status = controller.status(now)
        level, message = status.level, status.message
        if not self._active:
            level, message = "WARN", "node inactive (activate it to run the policy)"
        values = {"lifecycle": "active" if self._active else "inactive"}
        values.update(status.values)
        if self._active:
            for stream in self.config.cameras.streams:
                if str(values.get(f"camera.{stream.key}", "")).endswith("missing (never received)"):
                    self._warn_throttled(
                        f"never:{stream.key}",
                        f"camera {stream.key}: nothing received on {stream.topic} "
                        f"({'CompressedImage' if stream.transport == 'compressed' else 'Image'}, "
                        f"QoS {self.config.cameras.qos_of(stream.key)}); check the topic name, the transport "
                        f"and the publisher's QoS",
                    )
        jitter = self.period_recorder.stats()
        values["timer.period_jitter_p50_ms"] = jitter["p50_ms"]
        values["timer.period_jitter_p99_ms"] = jitter["p99_ms"]
        values["timer.period_jitter_max_ms"] = jitter["max_ms"]
        values["inference.mode"] = self.runner.mode if self.runner is not None else ""
        remote_status = getattr(self.runner, "status", None)  # remote mode: remote.connected, ...
        if remote_status is not None:
            values.update(remote_status())
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [
            diagnostic_status(
                f"{self.get_name()}: policy", level, message, values, self.config.diagnostics.hardware_id
            )
        ]
        self._diag_pub.publish(array)
        if level != self._last_level and self._active:
            log = self.get_logger()
            # One call site per severity: rclpy raises when a call site changes severity.
            if level == "OK":
                log.info(f"status {level}: {message}")
            else:
                log.warning(f"status {level}: {message}")
        self._last_level = level


def _last_detail(controller: PolicyController, source: str) -> str:
    events = controller.events()
    matching = [detail for key, (_, detail) in events.items() if key.endswith(":" + source)]
    return matching[-1] if matching else "rejected"


def make_executor(threads: int, context: Any = None) -> Any:
    """Return a SingleThreadedExecutor for threads <= 1, else a MultiThreadedExecutor(threads)."""
    if threads <= 1:
        return SingleThreadedExecutor(context=context)
    return MultiThreadedExecutor(num_threads=threads, context=context)


class _StopRequest:
    """What SIGINT / SIGTERM do to `main`.

    Before the spin loop (a slow model load) a signal raises KeyboardInterrupt,
    so Ctrl-C aborts at once. While spinning it only sets a flag the loop polls
    every 0.1 s: no exception lands inside the executor or rclpy, which left
    them half-updated at shutdown. A second signal always interrupts, so a
    stuck cleanup can still be aborted.
    """

    def __init__(self):
        self.spinning = False
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.spinning and not self.requested:
            self.requested = True
            return
        raise KeyboardInterrupt


class _StartFailed(Exception):
    """The node could not start (its reason is the message); main exits non-zero."""


def _fail_at_start(message: str) -> None:
    """One line on stderr, exit code 2: what ``ros2 launch`` shows, and what respawn policies see."""
    print(f"vla_policy_node: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``vla_policy_node``.

    Exits non-zero, with the reason in one line, when the node cannot start:
    a parameter file rcl would refuse (syntax, a missing file, a list mixing
    types: checked by the same loader as ``vla-ros replay``), a parameter of
    the wrong type, or (``auto_activate: true``) a failed configure.
    """
    argv = sys.argv if args is None else list(args)
    try:
        for path in params_files_in_args(argv):
            read_parameters_file(path)
    except ConfigError as exc:
        _fail_at_start(str(exc))
    # rclpy's own SIGINT handler shuts the context down while the control-timer and
    # executor threads still wait on it, which intermittently crashed rcl at Ctrl-C
    # (SIGSEGV, or errors from take_message). Here the node stops its threads and
    # destroys its entities first, while the context is still valid.
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as exc:  # rcl's own argument errors: keep the one line that says why
        _fail_at_start(str(exc).splitlines()[0])
    stop = _StopRequest()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    node = None
    executor = None
    failure = ""
    try:
        try:
            node = VlaPolicyNode()
        except (ParameterException, InvalidParameterTypeException, InvalidParameterValueException) as exc:
            raise _StartFailed(f"parameter: {exc}") from None
        executor = make_executor(node.get_parameter("executor_threads").value)
        executor.add_node(node)
        if node.get_parameter("auto_activate").value:
            if not node.autostart():
                raise _StartFailed(node.configure_error or "auto_activate: activate failed")
        else:
            name = node.get_fully_qualified_name()
            node.get_logger().info(
                f"unconfigured (auto_activate is false): nothing runs until you configure and activate it: "
                f"ros2 lifecycle set {name} configure && ros2 lifecycle set {name} activate"
            )
        stop.spinning = True
        while rclpy.ok() and not stop.requested:
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except _StartFailed as exc:
        failure = str(exc)
    finally:
        stop.spinning = False  # from here on a signal interrupts the cleanup
        if node is not None:
            node.release()
            node.destroy_node()
        if executor is not None:
            executor.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        rclpy.try_shutdown()
    if failure:
        _fail_at_start(failure)


if __name__ == "__main__":
    main()
