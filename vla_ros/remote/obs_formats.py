"""Observation formats of the policy server: a request dict -> RawObservation, validated.

openpi's clients send one flat (or once nested) dict per request, in the convention of the policy
they talk to. `vla-ros serve --obs-format` picks one (docs/remote.md, "Observation formats"):

  aloha   state (14,), images {cam_high, cam_left_wrist, cam_right_wrist[, cam_low]}, prompt
  droid   observation/exterior_image_1_left, observation/wrist_image_left,
          observation/joint_position (7,), observation/gripper_position (1,), prompt;
          state = concat(joint_position, gripper_position)
  libero  observation/image, observation/wrist_image, observation/state (8,), prompt
  slots   vla_ros's own: images {base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb} (at least one),
          state (D,) with D the checkpoint's state dims, prompt

Cameras land in vla_ros's slots (types.CAMERA_KEYS): ALOHA cam_high / cam_left_wrist /
cam_right_wrist -> base / left wrist / right wrist (AlohaTransform.CAMERA_RENAMES; cam_low is
accepted and dropped, as there); DROID exterior -> base, wrist -> left wrist; LIBERO image ->
base, wrist_image -> left wrist. Images: uint8 RGB, (H, W, 3) or (3, H, W) (openpi's ALOHA
examples send CHW), any size; the policy resizes them. Float images are refused: their range
(0..1 or -1..1) cannot be told from the data; send uint8 (openpi_client.image_tools.convert_to_uint8).

Every format also takes three optional vla_ros keys (EXTENSION_KEYS): `noise`, the initial
flow-matching noise (action_horizon, model_dim) float32, so that a client can reproduce an
in-process inference exactly; `timestamp`, the observation time in seconds, which the chunk is
stamped with and the reply echoes; `rtc`, Real-Time Chunking guidance (docs/rtc.md).

Every error is a RequestError whose message starts with the key at fault.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import math
from typing import Any

import numpy as np

from vla_ros.errors import ConfigError, ObservationError
from vla_ros.types import CAMERA_KEYS, ChunkGuidance, RawObservation

BASE, LEFT_WRIST, RIGHT_WRIST = CAMERA_KEYS

# The optional keys every format accepts, and what each holds (docs/remote.md, "Extensions").
EXTENSION_KEYS: dict[str, str] = {
    "noise": "float32 (action_horizon, model_dim), finite: the initial flow-matching noise "
    "(default: drawn by the server); pi0-FAST ignores it",
    "timestamp": "float seconds: the observation time; the chunk is stamped with it and the reply echoes it",
    "rtc": "map: Real-Time Chunking guidance; previous float (K, D) in robot units, delay int >= 0, "
    "optional execution_horizon, schedule, max_guidance_weight, mode, jacobian (docs/rtc.md)",
}
RTC_KEYS = ("previous", "delay", "execution_horizon", "schedule", "max_guidance_weight", "mode", "jacobian")


class RequestError(ObservationError):
    """A request the server cannot turn into an observation; the message names the key at fault."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(f"'{key}': {problem}" if key else problem)


@dataclasses.dataclass(frozen=True)
class PolicyRequest:
    """One decoded request: the observation and what `Policy.infer` takes beside it."""

    obs: RawObservation
    noise: np.ndarray | None = None
    guidance: ChunkGuidance | None = None
    stamped: bool = False  # the request carried a timestamp (the reply echoes it)


@dataclasses.dataclass(frozen=True)
class PolicyShape:
    """What the served policy takes, for checking requests before they reach it.

    state_dim: state entries (None: not checked here; the policy checks).
    noise_shape: (action_horizon, model_dim) of `noise` (None: not checked here).
    camera_slots: the slots images may go to (None: all of CAMERA_KEYS).
    default_prompt: used when a request has no `prompt` (None: `prompt` is required).
    """

    state_dim: int | None = None
    noise_shape: tuple[int, int] | None = None
    camera_slots: tuple[str, ...] | None = None
    default_prompt: str | None = None

    @classmethod
    def from_spec(cls, spec: Any, default_prompt: str | None = None) -> "PolicyShape":
        """From a PolicySpec (or anything with its fields); None: nothing known."""
        if spec is None:
            return cls(default_prompt=default_prompt)
        empty = set(getattr(spec, "empty_camera_slots", ()))
        return cls(
            state_dim=spec.state_dim,
            noise_shape=(spec.action_horizon, spec.model_dim),
            camera_slots=tuple(k for k in spec.camera_keys if k not in empty),
            default_prompt=default_prompt,
        )


def check_image(value: Any, key: str) -> np.ndarray:
    """A uint8 RGB image, (H, W, 3) or (3, H, W), as (H, W, 3) (RequestError naming `key`: why not).

    A CHW image comes back as a transposed view, not a copy: the policy's image preparation copies
    it once, in the inference thread, instead of the event loop copying it first.
    """
    if not isinstance(value, np.ndarray):
        raise RequestError(
            key, f"expected a uint8 image array (H, W, 3) or (3, H, W), got {type(value).__name__}")
    if value.dtype != np.uint8:
        if np.issubdtype(value.dtype, np.floating):
            raise RequestError(
                key, f"float image ({value.dtype}) refused: its range cannot be told from the data; "
                "send uint8 RGB 0..255 (openpi_client.image_tools.convert_to_uint8)"
            )
        raise RequestError(key, f"dtype {value.dtype}; expected uint8 RGB")
    if value.ndim != 3 or 3 not in (value.shape[0], value.shape[-1]):
        raise RequestError(key, f"shape {value.shape}; expected an RGB image (H, W, 3) or (3, H, W)")
    image = value if value.shape[-1] == 3 else value.transpose(1, 2, 0)
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise RequestError(key, f"empty image of shape {value.shape}")
    return image


def check_vector(value: Any, key: str, width: int | None) -> np.ndarray:
    """A finite float32 vector of `width` entries (None: any); a scalar counts as one entry."""
    from vla_ros.policy import check_state

    if isinstance(value, np.ndarray) and not (
        np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)
    ):
        raise RequestError(key, f"dtype {value.dtype}; expected numbers")
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        value = [value]
    elif isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.reshape(1)
    try:
        vector = check_state(value)
    except ObservationError as exc:
        raise RequestError(key, str(exc)) from None
    if width is not None and vector.shape[0] != width:
        raise RequestError(key, f"{vector.shape[0]} entries; expected {width}")
    return vector


def _prompt(message: Mapping[str, Any], shape: PolicyShape) -> str:
    if "prompt" not in message:
        if shape.default_prompt is not None:
            return shape.default_prompt
        raise RequestError("prompt", "missing; every request needs the instruction (a string)")
    prompt = message["prompt"]
    if isinstance(prompt, bytes):
        try:
            prompt = prompt.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("prompt", "bytes that are not UTF-8 text") from None
    if not isinstance(prompt, str):
        raise RequestError("prompt", f"expected a string, got {type(prompt).__name__}")
    return str(prompt)


def _noise(value: Any, shape: PolicyShape) -> np.ndarray:
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
        got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise RequestError("noise", f"expected a float32 array (action_horizon, model_dim), got {got}")
    if shape.noise_shape is not None and tuple(value.shape) != tuple(shape.noise_shape):
        raise RequestError("noise", f"shape {value.shape}; expected {tuple(shape.noise_shape)}")
    noise = value.astype(np.float32)
    if not np.isfinite(noise).all():
        raise RequestError("noise", "NaN/inf entries")
    return noise


def _timestamp(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise RequestError("timestamp", f"expected finite seconds (a number), got {value!r}")
    return float(value)


def _guidance(value: Any) -> ChunkGuidance:
    from vla_ros.types import RTCSettings

    if not isinstance(value, Mapping):
        raise RequestError("rtc", f"expected a map with 'previous' and 'delay', got {type(value).__name__}")
    unknown = sorted(map(str, set(value) - set(RTC_KEYS)))
    if unknown:
        raise RequestError("rtc", f"unknown key(s) {unknown}; expected {list(RTC_KEYS)}")
    for key in ("previous", "delay"):
        if key not in value:
            raise RequestError(f"rtc.{key}", "missing")
    previous = value["previous"]
    if not isinstance(previous, np.ndarray):
        raise RequestError("rtc.previous", f"expected a float array (K, D), got {type(previous).__name__}")
    delay = value["delay"]
    if isinstance(delay, np.integer):
        delay = int(delay)
    settings = {k: value[k] for k in RTC_KEYS[2:] if k in value}
    try:
        return ChunkGuidance(previous=previous, delay=delay, settings=RTCSettings(**settings))
    except ConfigError as exc:  # names rtc.<field>
        raise RequestError(exc.parameter, str(exc).split(": ", 1)[-1]) from None
    except (ObservationError, TypeError, ValueError) as exc:
        raise RequestError("rtc", str(exc)) from None


@dataclasses.dataclass(frozen=True)
class ObsFormat:
    """One request convention: where the cameras, the state and the prompt are.

    cameras: request camera key -> vla_ros camera slot. With `images_key` the
        cameras are entries of that nested map (ALOHA's `images`), else top-level keys.
    required: cameras every request must carry (the others are optional: masked when absent).
    state: (key, width) parts concatenated into the state; width None: the policy's state dims.
    dropped: cameras or keys accepted and not used (ALOHA's cam_low).
    """

    name: str
    cameras: Mapping[str, str]
    required: tuple[str, ...]
    state: tuple[tuple[str, int | None], ...]
    images_key: str | None = None
    dropped: tuple[str, ...] = ()
    description: str = ""

    def camera_name(self, camera: str) -> str:
        return f"{self.images_key}.{camera}" if self.images_key else camera

    def keys(self, shape: PolicyShape = PolicyShape()) -> dict[str, str]:
        """Every request key and what it holds (for the metadata and the docs)."""
        keys: dict[str, str] = {}
        if self.images_key:
            keys[self.images_key] = f"map of cameras: {', '.join(self.cameras)}"
        for camera, slot in self.cameras.items():
            need = "required" if camera in self.required else "optional (masked when absent)"
            keys[self.camera_name(camera)] = (
                f"uint8 RGB (H, W, 3) or (3, H, W), any size; slot {slot}; {need}")
        for camera in self.dropped:
            keys[self.camera_name(camera)] = "accepted and not used"
        for key, width in self.state:
            width = width if width is not None else shape.state_dim
            keys[key] = f"float ({width if width is not None else 'D'},), finite"
        keys["prompt"] = "str, the instruction" + (
            f" (default {shape.default_prompt!r})" if shape.default_prompt is not None else ""
        )
        return {**keys, **{k: f"optional: {v}" for k, v in EXTENSION_KEYS.items()}}

    @property
    def state_dim(self) -> int | None:
        """The state entries this format sends (None: the policy's)."""
        widths = [width for _, width in self.state]
        return None if None in widths else sum(widths)

    def check_policy(self, shape: PolicyShape, where: str = "--obs-format") -> None:
        """ConfigError if the policy cannot take this format's requests (state width, camera slots)."""
        own = self.state_dim
        if own is not None and shape.state_dim is not None and own != shape.state_dim:
            raise ConfigError(
                where, f"{self.name} requests carry {own} state dims, but the checkpoint's norm stats have "
                f"{shape.state_dim}; serve a checkpoint made for {self.name} or pick the format its robot "
                "sends"
            )
        if shape.camera_slots is not None:
            missing = [c for c in self.required if self.cameras[c] not in shape.camera_slots]
            if missing:
                raise ConfigError(
                    where, f"{self.name} cameras {missing} go to slots the checkpoint lacks "
                    f"(it has {list(shape.camera_slots)})"
                )

    def parse(self, message: Any, shape: PolicyShape = PolicyShape()) -> PolicyRequest:
        """The request in `message` (a decoded msgpack map); RequestError naming the first key at fault."""
        if not isinstance(message, Mapping):
            raise RequestError("", f"expected a map of observation keys ({self.name} format), "
                                   f"got {type(message).__name__}")
        top = [self.images_key] if self.images_key else [*self.cameras, *self.dropped]
        expected = [*top, *(key for key, _ in self.state), "prompt"]
        unknown = sorted(map(str, set(message) - set(expected) - set(EXTENSION_KEYS)))
        if unknown:
            raise RequestError(
                "", f"unknown key(s) {unknown} for the {self.name} format; expected {expected} "
                f"(optional: {list(EXTENSION_KEYS)})"
            )
        images = self._images(message, shape)
        parts = []
        for key, width in self.state:
            if key not in message:
                raise RequestError(key, "missing")
            parts.append(check_vector(message[key], key, width if width is not None else shape.state_dim))
        state = parts[0] if len(parts) == 1 else np.concatenate(parts).astype(np.float32)
        prompt = _prompt(message, shape)
        stamped = "timestamp" in message
        timestamp = _timestamp(message["timestamp"]) if stamped else 0.0
        noise = _noise(message["noise"], shape) if "noise" in message else None
        guidance = _guidance(message["rtc"]) if "rtc" in message else None
        obs = RawObservation(images=images, state=state, prompt=prompt, timestamp=timestamp)
        return PolicyRequest(obs=obs, noise=noise, guidance=guidance, stamped=stamped)

    def _images(self, message: Mapping[str, Any], shape: PolicyShape) -> dict[str, np.ndarray]:
        if self.images_key:
            if self.images_key not in message:
                raise RequestError(
                    self.images_key, f"missing; expected a map of cameras {list(self.cameras)}")
            source = message[self.images_key]
            if not isinstance(source, Mapping):
                raise RequestError(self.images_key, f"expected a map of cameras, got {type(source).__name__}")
            unknown = sorted(map(str, set(source) - set(self.cameras) - set(self.dropped)))
            if unknown:
                raise RequestError(
                    self.images_key, f"unknown camera(s) {unknown}; expected {list(self.cameras)}"
                )
        else:
            source = message
        slots = shape.camera_slots
        images = {}
        for camera, slot in self.cameras.items():
            name = self.camera_name(camera)
            if camera not in source:
                if camera in self.required:
                    raise RequestError(name, "missing")
                continue
            image = check_image(source[camera], name)
            if slots is not None and slot not in slots:
                if self.name == "slots":
                    raise RequestError(name, f"the checkpoint has no such camera slot; it has {list(slots)}")
                continue  # an optional camera the checkpoint has no slot for
            images[slot] = image
        if not images:
            names = [self.camera_name(c) for c, s in self.cameras.items() if slots is None or s in slots]
            raise RequestError(self.images_key or "", f"no camera image; send at least one of {names}")
        return images


ALOHA = ObsFormat(
    name="aloha",
    cameras={"cam_high": BASE, "cam_left_wrist": LEFT_WRIST, "cam_right_wrist": RIGHT_WRIST},
    required=("cam_high",),
    state=(("state", 14),),
    images_key="images",
    dropped=("cam_low",),
    description="openpi's ALOHA policies (pi0_aloha_*): bimanual, 14 joints",
)
DROID = ObsFormat(
    name="droid",
    cameras={"observation/exterior_image_1_left": BASE, "observation/wrist_image_left": LEFT_WRIST},
    required=("observation/exterior_image_1_left", "observation/wrist_image_left"),
    state=(("observation/joint_position", 7), ("observation/gripper_position", 1)),
    description="openpi's DROID policies (pi0*_droid): Franka, 7 joints + gripper",
)
LIBERO = ObsFormat(
    name="libero",
    cameras={"observation/image": BASE, "observation/wrist_image": LEFT_WRIST},
    required=("observation/image", "observation/wrist_image"),
    state=(("observation/state", 8),),
    description="openpi's LIBERO policies (pi0*_libero): 8-dim state",
)
SLOTS = ObsFormat(
    name="slots",
    cameras={key: key for key in CAMERA_KEYS},
    required=(),
    state=(("state", None),),
    images_key="images",
    description="vla_ros's own: cameras keyed by model slot, the checkpoint's state dims",
)

FORMATS: dict[str, ObsFormat] = {f.name: f for f in (ALOHA, DROID, LIBERO, SLOTS)}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)


def get_format(name: str) -> ObsFormat:
    """The format called `name` (ConfigError naming --obs-format otherwise)."""
    if name not in FORMATS:
        raise ConfigError("--obs-format", f"got {name!r}; expected one of {list(FORMAT_NAMES)}")
    return FORMATS[name]


def to_request(obs: RawObservation, fmt: ObsFormat | str = SLOTS, noise: np.ndarray | None = None) -> dict:
    """The request dict a client sends for `obs` (camera slots as keys) in format `fmt`; the inverse of parse.

    For clients and tests: the slots of `obs.images` map back to the format's camera keys and the
    state is split into the format's parts.
    """
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    by_slot = {slot: camera for camera, slot in fmt.cameras.items()}
    cameras = {by_slot[slot]: image for slot, image in obs.images.items() if slot in by_slot}
    request: dict[str, Any] = {fmt.images_key: cameras} if fmt.images_key else dict(cameras)
    state = np.asarray(obs.state, dtype=np.float32)
    start = 0
    for key, width in fmt.state:
        end = len(state) if width is None else start + width
        request[key] = state[start:end]
        start = end
    request["prompt"] = obs.prompt
    if obs.timestamp:
        request["timestamp"] = float(obs.timestamp)
    if noise is not None:
        request["noise"] = np.asarray(noise, dtype=np.float32)
    return request
