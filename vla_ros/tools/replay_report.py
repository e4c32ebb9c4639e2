"""What a replay produced, compared with what the robot did: metrics, CSV, plots, a bag.

`ReplayRecord` is filled by `vla_ros.tools.replay` (offline or live) and
`write_report` turns it into OUT_DIR:

    trajectory_bag/    rosbag2 of the produced JointTrajectory messages (and
                       the diagnostics), at the bag times they were produced
    commands.csv       one row per produced command: time, target time, hold
                       flag, then cmd_<joint> and ref_<joint> for every joint
    metrics.json       per-joint MAE / RMSE against the reference, smoothness
                       (max step, mean squared jerk), latency p50 / p99, counts
    plots/joints.png   per joint: commanded vs reference over time
    plots/latency.png  histogram of inference latencies (live: the node's p50 / p99
                       and a histogram of the time between received trajectories)
    plots/model_inputs.png  contact sheet of the letterboxed model inputs at a few
                       times, one column per camera slot titled with its topic:
                       the camera-to-slot mapping at a glance
    summary.txt        the table printed on stdout

`write_comparison` writes a comparison of aggregation modes instead
(`vla-ros replay --compare-aggregation`): comparison.md / .csv / .json (per
mode and latency: the largest and mean jump of the plan at chunk boundaries,
from the controller's ``boundary_jumps()``, max step, mean squared jerk, MAE /
RMSE against the reference), plots/comparison.png (one joint's commanded
trajectory per mode at ~200 ms with the reference; the jumps and the jerk as
bars) and runs/<mode>_<latency>ms/ (each run's metrics.json and commands.csv).

Everything is written into a hidden sibling directory that is renamed to
OUT_DIR at the very end, so a failure never leaves a half-written OUT_DIR.

Reference: the bag's recorded command (the JointTrajectory the robot got,
its first point at its target time) when the bag has one, else the
recorded joint states; each produced command (its first point, due one
control period after it was produced) is compared with the reference
interpolated at the command's target time.
"""

from __future__ import annotations

from collections.abc import Sequence
import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from vla_ros.errors import VlaRosError
from vla_ros.tools.file_modes import staged_directory

CSV_NAME = 'commands.csv'
METRICS_NAME = 'metrics.json'
BAG_NAME = 'trajectory_bag'
PLOTS_DIR = 'plots'
SUMMARY_NAME = 'summary.txt'
SHEET_NAME = 'model_inputs.png'


class ReportError(VlaRosError):
    """The replay outputs cannot be written."""


class ModelInputSheet:
    """The model's input images at a few bag times, for the contact sheet.

    For each of ``samples`` times spread over [start, end], the first frame
    of every camera slot at or after that time, letterboxed to the model's
    square input exactly as the policy receives it (``resize_with_pad``).
    ``needs(key, t)`` says whether a frame of ``key`` at bag time ``t`` is
    wanted, so a caller decodes only those frames; ``add`` also takes a
    zero-argument callable that decodes later (live replay keeps its
    real-time loop free of image work), and ``letterboxed`` does the work.
    """

    def __init__(self, slots: Sequence[tuple[str, str]], start: float, end: float, size: int = 224,
                 samples: int = 4, method: str = 'openpi'):
        self.slots = tuple(slots)  # (camera slot, topic), in configuration order
        self.size = int(size)
        self.method = method  # the policy's resize convention (policy.image_resize)
        span = max(end - start, 0.0)
        self.times = [start + span * (i + 0.5) / samples for i in range(samples)]
        self.frames: list[dict[str, tuple[float, np.ndarray]]] = [{} for _ in self.times]

    def needs(self, key: str, t: float) -> bool:
        return any(t >= ts and key not in got for ts, got in zip(self.times, self.frames))

    def add(self, key: str, rgb: Any, t: float) -> None:
        """Offer a frame (uint8 RGB, or a callable returning one) of ``key`` at bag time ``t``."""
        for ts, got in zip(self.times, self.frames):
            if t >= ts and key not in got:
                got[key] = (t, rgb)

    def letterboxed(self) -> list[dict[str, tuple[float, np.ndarray | None]]]:
        """Per sample time: slot -> (bag time, the model input; None if it could not be decoded)."""
        from vla_ros.observation.image import resize_with_pad

        done: dict[int, np.ndarray | None] = {}
        out = []
        for got in self.frames:
            row = {}
            for key, (t, image) in got.items():
                if id(image) not in done:
                    try:
                        done[id(image)] = resize_with_pad(image() if callable(image) else image, self.size,
                                                          self.size, self.method)
                    except Exception:  # an undecodable frame: the node reports it; the sheet shows a gap
                        done[id(image)] = None
                row[key] = (t, done[id(image)])
            out.append(row)
        return out


@dataclasses.dataclass
class ReplayRecord:
    """Everything a replay observed, in bag time (seconds, absolute ROS time).

    commands: one row per produced trajectory: (time it was produced, target
        time of its first point, first point positions (D,), is_hold).
    reference_times / reference_positions: (N,) and (N, D) of the reference
        signal (see module docstring), in joint_names order.
    messages: (time_ns, topic, msgtype, rclpy message) to write into the bag.
    latencies: seconds from observation to chunk arrival, one per chunk
        (offline); live mode has only the node's own p50 / p99 in
        reported_latency_ms.
    """

    mode: str
    joint_names: tuple[str, ...]
    start_time: float
    end_time: float
    control_rate: float
    reference_kind: str = 'joint_states'
    reference_topic: str = ''
    reference_times: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    reference_positions: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    command_times: list[float] = dataclasses.field(default_factory=list)
    target_times: list[float] = dataclasses.field(default_factory=list)
    command_positions: list[np.ndarray] = dataclasses.field(default_factory=list)
    command_holds: list[bool] = dataclasses.field(default_factory=list)
    latencies: list[float] = dataclasses.field(default_factory=list)
    chunks: int = 0
    skipped_actions: int | None = None
    inference_failures: int = 0
    reported_latency_ms: tuple[float | None, float | None] | None = None  # (p50, p99) from the node (live)
    receive_periods_ms: list[float] = dataclasses.field(default_factory=list)  # live: between trajectories
    messages: list[tuple[int, str, str, Any]] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    model_inputs: ModelInputSheet | None = None

    def add_command(self, time: float, target_time: float, positions: np.ndarray, is_hold: bool) -> None:
        self.command_times.append(float(time))
        self.target_times.append(float(target_time))
        self.command_positions.append(np.asarray(positions, dtype=np.float64).copy())
        self.command_holds.append(bool(is_hold))

    @property
    def duration(self) -> float:
        return self.end_time - self.start_time


def _percentile(values: Sequence[float], q: float) -> float | None:
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def interpolate_reference(record: ReplayRecord, times: np.ndarray) -> np.ndarray:
    """Reference positions (len(times), D) at `times`; NaN outside the reference's time span."""
    ref_t = np.asarray(record.reference_times, dtype=np.float64)
    ref_p = np.asarray(record.reference_positions, dtype=np.float64)
    dims = len(record.joint_names)
    out = np.full((times.size, dims), np.nan)
    if ref_t.size == 0:
        return out
    order = np.argsort(ref_t, kind='stable')
    ref_t, ref_p = ref_t[order], ref_p[order]
    inside = (times >= ref_t[0]) & (times <= ref_t[-1])
    for j in range(dims):
        out[inside, j] = np.interp(times[inside], ref_t, ref_p[:, j])
    return out


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def compute_metrics(record: ReplayRecord) -> dict[str, Any]:
    """metrics.json content (see module docstring); JSON-ready, NaN written as null."""
    names = list(record.joint_names)
    dims = len(names)
    n = len(record.command_times)
    positions = np.asarray(record.command_positions, dtype=np.float64).reshape(n, dims)
    targets = np.asarray(record.target_times, dtype=np.float64)
    holds = np.asarray(record.command_holds, dtype=bool)
    reference = interpolate_reference(record, targets)
    active = ~holds & np.isfinite(reference).all(axis=1)
    errors = positions[active] - reference[active]
    period = 1.0 / record.control_rate
    steps = np.abs(np.diff(positions, axis=0)) if n > 1 else np.zeros((0, dims))
    jerk = np.diff(positions, n=3, axis=0) / period ** 3 if n > 3 else np.zeros((0, dims))

    per_joint = {}
    for j, name in enumerate(names):
        err = errors[:, j]
        per_joint[name] = {
            'mae': _finite_or_none(np.mean(np.abs(err))) if err.size else None,
            'rmse': _finite_or_none(np.sqrt(np.mean(err ** 2))) if err.size else None,
            'max_step': _finite_or_none(steps[:, j].max()) if steps.size else None,
            'mean_squared_jerk': _finite_or_none(np.mean(jerk[:, j] ** 2)) if jerk.size else None,
        }
    expected = int(round(record.duration * record.control_rate))
    latencies_ms = [1e3 * x for x in record.latencies]
    latency = {
        'source': (f"simulated, {record.info.get('latency_model', 'fixed')}" if record.mode == 'offline'
                   else 'node diagnostics'),
        'count': len(latencies_ms),
        'p50': _percentile(latencies_ms, 50),
        'p99': _percentile(latencies_ms, 99),
        'max': max(latencies_ms) if latencies_ms else None,
    }
    if not latencies_ms and record.reported_latency_ms is not None:
        latency['p50'], latency['p99'] = record.reported_latency_ms
    return {
        'mode': record.mode,
        'reference': {'kind': record.reference_kind, 'topic': record.reference_topic,
                      'samples': int(len(record.reference_times))},
        'bag_time': {'start': record.start_time, 'end': record.end_time, 'duration': record.duration},
        'control_rate': record.control_rate,
        'counts': {
            'trajectories': n,
            'expected_trajectories': expected,
            'compared': int(active.sum()),
            'chunks': int(record.chunks),
            'skipped_actions': None if record.skipped_actions is None else int(record.skipped_actions),
            'holds': int(holds.sum()),
            'inference_failures': int(record.inference_failures),
        },
        'latency_ms': latency,
        'overall': {
            'mae': _finite_or_none(np.mean(np.abs(errors))) if errors.size else None,
            'rmse': _finite_or_none(np.sqrt(np.mean(errors ** 2))) if errors.size else None,
            'max_step': _finite_or_none(steps.max()) if steps.size else None,
            'mean_squared_jerk': _finite_or_none(np.mean(jerk ** 2)) if jerk.size else None,
        },
        'joints': per_joint,
        'info': record.info,
    }


def _fmt(value: float | None, spec: str = '.4f') -> str:
    return '-' if value is None else format(value, spec)


def summary_table(metrics: dict[str, Any]) -> str:
    """A short human-readable table of the metrics."""
    counts = metrics['counts']
    latency = metrics['latency_ms']
    ref = metrics['reference']
    skipped = '-' if counts['skipped_actions'] is None else str(counts['skipped_actions'])
    lines = [
        f"replay ({metrics['mode']}): {metrics['bag_time']['duration']:.2f} s of bag time, "
        f"reference = {ref['kind']} ({ref['topic']})",
        f"  trajectories {counts['trajectories']} (expected ~{counts['expected_trajectories']} at "
        f"{metrics['control_rate']:g} Hz), chunks {counts['chunks']}, skipped actions {skipped}, "
        f"holds {counts['holds']}, inference failures {counts['inference_failures']}",
        f"  latency observation -> chunk p50 {_fmt(latency['p50'], '.1f')} ms, "
        f"p99 {_fmt(latency['p99'], '.1f')} ms "
        f"({latency['source']}{', %d chunks' % latency['count'] if latency['count'] else ''})",
    ]
    kinds = metrics.get('info', {}).get('inference_failure_kinds')
    if kinds:
        last = ' '.join(str(metrics['info'].get('last_inference_failure', '')).split())
        lines.append(f"  inference failures by kind: {', '.join(f'{k} {n}' for k, n in kinds.items())}; "
                     f"last: {last}")
    live = metrics.get('info', {}).get('live')
    if live:
        period = live['receive_period_ms']
        lines.append(f"  live ({live['clock']} clock, x{live['rate']:g}): trajectories received at "
                     f"{_fmt(live['received_rate_hz'], '.1f')} Hz, "
                     f"receive period p50 {_fmt(period['p50'], '.1f')} / "
                     f"p99 {_fmt(period['p99'], '.1f')} / max {_fmt(period['max'], '.1f')} ms")
    lines.append(f"  {'joint':<28}{'MAE':>10}{'RMSE':>10}{'max step':>10}{'jerk^2':>12}")
    for name, row in metrics['joints'].items():
        lines.append(f"  {name[:27]:<28}{_fmt(row['mae']):>10}{_fmt(row['rmse']):>10}"
                     f"{_fmt(row['max_step']):>10}{_fmt(row['mean_squared_jerk'], '.3g'):>12}")
    overall = metrics['overall']
    lines.append(f"  {'all joints':<28}{_fmt(overall['mae']):>10}{_fmt(overall['rmse']):>10}"
                 f"{_fmt(overall['max_step']):>10}{_fmt(overall['mean_squared_jerk'], '.3g'):>12}")
    return '\n'.join(lines)


def write_csv(record: ReplayRecord, path: Path) -> None:
    names = list(record.joint_names)
    targets = np.asarray(record.target_times, dtype=np.float64)
    reference = interpolate_reference(record, targets)
    with path.open('w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['time', 'target_time', 'hold']
                        + [f'cmd_{n}' for n in names] + [f'ref_{n}' for n in names])
        for i, time in enumerate(record.command_times):
            row = [f'{time - record.start_time:.6f}', f'{targets[i] - record.start_time:.6f}',
                   int(record.command_holds[i])]
            row += [f'{v:.6f}' for v in record.command_positions[i]]
            row += ['' if not math.isfinite(v) else f'{v:.6f}' for v in reference[i]]
            writer.writerow(row)


def _histogram(ax: Any, values_ms: np.ndarray) -> None:
    spread = float(np.ptp(values_ms))
    value_range = None if spread > 0 else (values_ms[0] - 5.0, values_ms[0] + 5.0)
    ax.hist(values_ms, bins=min(40, max(5, values_ms.size // 2)), range=value_range, color='tab:blue')
    for q, style in ((50, '--'), (99, ':')):
        value = float(np.percentile(values_ms, q))
        ax.axvline(value, color='k', ls=style, lw=1, label=f'p{q} {value:.1f} ms')
    ax.legend(fontsize=8)


def write_plots(record: ReplayRecord, metrics: dict[str, Any], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    names = list(record.joint_names)
    dims = len(names)
    n = len(record.command_times)
    t_cmd = np.asarray(record.target_times, dtype=np.float64) - record.start_time
    cmd = np.asarray(record.command_positions, dtype=np.float64).reshape(n, dims)
    holds = np.asarray(record.command_holds, dtype=bool)
    ref_t = np.asarray(record.reference_times, dtype=np.float64) - record.start_time
    ref_p = np.asarray(record.reference_positions, dtype=np.float64)

    cols = 2 if dims > 1 else 1
    rows = math.ceil(dims / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 1.8 * rows + 0.8), sharex=True, squeeze=False)
    for j in range(rows * cols):
        ax = axes[j // cols][j % cols]
        if j >= dims:
            ax.set_visible(False)
            continue
        if ref_t.size:
            ax.plot(ref_t, ref_p[:, j], color='0.4', lw=1.2, label=f'recorded ({record.reference_kind})')
        if n:
            ax.plot(t_cmd, cmd[:, j], color='tab:blue', lw=1.0, label='commanded')
            if holds.any():
                ax.plot(t_cmd[holds], cmd[holds, j], '.', color='tab:red', ms=2, label='hold')
        mae = metrics['joints'][names[j]]['mae']
        ax.set_title(f'{names[j]}  (MAE {_fmt(mae)})', fontsize=8)
        ax.tick_params(labelsize=7)
        if j == 0 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc='upper right')
    for ax in axes[-1]:
        ax.set_xlabel('bag time [s]', fontsize=8)
    fig.suptitle(f'commanded vs recorded ({record.mode} replay)', fontsize=10)
    fig.tight_layout()
    joints_png = directory / 'joints.png'
    fig.savefig(joints_png, dpi=80)
    plt.close(fig)

    latency_png = directory / 'latency.png'
    latencies_ms = np.round(np.asarray(record.latencies, dtype=np.float64) * 1e3, 3)
    periods_ms = np.asarray(record.receive_periods_ms, dtype=np.float64)
    panels = 2 if periods_ms.size else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 3.5), squeeze=False)
    ax = axes[0][0]
    if latencies_ms.size:
        _histogram(ax, latencies_ms)
    else:
        text = 'no per-chunk latencies recorded'
        if record.reported_latency_ms is not None:
            p50, p99 = record.reported_latency_ms
            text += f'\nthe node reports p50 {_fmt(p50, ".1f")} ms, p99 {_fmt(p99, ".1f")} ms'
        ax.text(0.5, 0.5, text, ha='center', va='center', transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel('latency from observation to chunk arrival [ms]')
    ax.set_ylabel('chunks')
    ax.set_title(f'inference latency ({record.mode} replay)', fontsize=10)
    if periods_ms.size:
        ax = axes[0][1]
        _histogram(ax, periods_ms)
        ax.axvline(1e3 / record.control_rate, color='tab:green', lw=1, label='control period')
        ax.legend(fontsize=8)
        ax.set_xlabel('time between received trajectories [ms]')
        ax.set_ylabel('trajectories')
        ax.set_title('control timing as received (live replay)', fontsize=10)
    fig.tight_layout()
    fig.savefig(latency_png, dpi=80)
    plt.close(fig)
    written = [joints_png, latency_png]
    if record.model_inputs is not None:
        written.append(write_contact_sheet(record.model_inputs, record.start_time, directory / SHEET_NAME))
    return written


def write_contact_sheet(sheet: ModelInputSheet, start_time: float, path: Path) -> Path:
    """One row per sample time, one column per camera slot (titled slot and topic)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows, cols = len(sheet.times), max(len(sheet.slots), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.5 * rows + 0.6), squeeze=False)
    for r, got in enumerate(sheet.letterboxed()):
        for c, (key, topic) in enumerate(sheet.slots):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if got.get(key, (0.0, None))[1] is not None:
                t, image = got[key]
                ax.imshow(image)
                ax.set_xlabel(f't = {t - start_time:.2f} s', fontsize=7)
            else:
                ax.set_facecolor('0.85')
                ax.text(0.5, 0.5, 'no frame\n(masked)', ha='center', va='center', fontsize=8,
                        transform=ax.transAxes)
            if r == 0:
                ax.set_title(f'{key}\n{topic}', fontsize=7)
    fig.suptitle(f'model inputs ({sheet.size}x{sheet.size}, letterboxed) by camera slot', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_bag(record: ReplayRecord, path: Path, storage: str = 'sqlite3') -> dict[str, int]:
    from vla_ros.tools.bag_io import BagWriter

    with BagWriter(path, storage) as writer:
        for time_ns, topic, msgtype, msg in sorted(record.messages, key=lambda m: m[0]):
            writer.write(topic, time_ns, msg, msgtype)
        return dict(writer.counts)


def prepare_out_dir(out_dir: Path, overwrite: bool = False) -> None:
    """Fail early (before any work) if OUT_DIR exists and may not be replaced."""
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ReportError(f'output directory {out_dir} exists and is not empty; choose a new one '
                          f'or pass --overwrite')


def write_report(record: ReplayRecord, out_dir: str | Path, storage: str = 'sqlite3',
                 overwrite: bool = False) -> dict[str, Any]:
    """Write all outputs into OUT_DIR atomically; returns the metrics."""
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, overwrite)
    with staged_directory(out_dir) as staging:
        metrics = compute_metrics(record)
        bag_counts = write_bag(record, staging / BAG_NAME, storage)
        metrics['outputs'] = {
            'bag': BAG_NAME, 'bag_storage': storage, 'bag_topics': bag_counts,
            'csv': CSV_NAME,
            'plots': [f'{PLOTS_DIR}/joints.png', f'{PLOTS_DIR}/latency.png']
            + ([f'{PLOTS_DIR}/{SHEET_NAME}'] if record.model_inputs is not None else []),
        }
        write_csv(record, staging / CSV_NAME)
        write_plots(record, metrics, staging / PLOTS_DIR)
        table = summary_table(metrics)
        (staging / SUMMARY_NAME).write_text(table + '\n')
        # metrics.json last: its presence marks a complete report
        (staging / METRICS_NAME).write_text(json.dumps(metrics, indent=2, sort_keys=False) + '\n')
    return metrics


# ------------------------------------------------------------ comparison ---
# `vla-ros replay --compare-aggregation MODES --latency-ms L1,L2,...`: the same bag,
# checkpoint and seed replayed offline once per (aggregation mode, fixed latency).

COMPARISON_MD = 'comparison.md'
COMPARISON_CSV = 'comparison.csv'
COMPARISON_JSON = 'comparison.json'
COMPARISON_PLOT = 'comparison.png'
RUNS_DIR = 'runs'
PLOT_LATENCY_MS = 200.0  # the latency the trajectory plot shows (the nearest one given)

# (key, markdown header, format) of a comparison row, in table order.
COMPARISON_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ('mode', 'aggregation', 's'),
    ('latency_ms', 'latency [ms]', 'g'),
    ('chunks', 'chunks', 'd'),
    ('boundary_jump_max', 'largest boundary jump', '.4f'),
    ('boundary_jump_mean', 'mean boundary jump', '.4f'),
    ('max_step', 'max step', '.4f'),
    ('mean_squared_jerk', 'mean squared jerk', '.3g'),
    ('mae', 'MAE vs recorded', '.4f'),
    ('rmse', 'RMSE vs recorded', '.4f'),
)


@dataclasses.dataclass
class ComparisonRun:
    """One offline replay of a comparison: its mode, latency, record, metrics and boundary jumps.

    boundary_jumps: the controller's per-chunk boundary jump summary
        (``PolicyController.boundary_jumps()``: last / max / mean / count), {} when unavailable.
    """

    mode: str
    latency_ms: float
    record: ReplayRecord
    metrics: dict[str, Any]
    boundary_jumps: dict[str, Any] = dataclasses.field(default_factory=dict)
    rtc_delay: int | None = None  # aggregation.mode rtc: the inference delay d (actions) at the end
    rtc_horizon: int | None = None  # aggregation.mode rtc: rtc.execution_horizon

    @property
    def name(self) -> str:
        return f'{self.mode}_{self.latency_ms:g}ms'

    def row(self) -> dict[str, Any]:
        """The comparison table's row (JSON-ready; None where there is no value)."""
        overall = self.metrics['overall']
        jumps = self.boundary_jumps or {}
        return {
            'mode': self.mode,
            'latency_ms': float(self.latency_ms),
            'chunks': int(self.metrics['counts']['chunks']),
            'boundary_jump_max': _finite_or_none(jumps.get('max')),
            'boundary_jump_mean': _finite_or_none(jumps.get('mean')),
            'boundary_jump_count': None if jumps.get('count') is None else int(jumps['count']),
            'max_step': overall['max_step'],
            'mean_squared_jerk': overall['mean_squared_jerk'],
            'mae': overall['mae'],
            'rmse': overall['rmse'],
            'holds': int(self.metrics['counts']['holds']),
            'inference_failures': int(self.metrics['counts']['inference_failures']),
            'rtc_delay': self.rtc_delay,
            'rtc_execution_horizon': self.rtc_horizon,
        }

    def rtc_warning(self) -> str | None:
        """Why an rtc run cannot differ from 'latest' (d >= execution_horizon), or None."""
        if self.rtc_delay is None or self.rtc_horizon is None or self.rtc_delay < self.rtc_horizon:
            return None
        return (f'rtc at {self.latency_ms:g} ms: the inference delay d = {self.rtc_delay} actions is >= '
                f'rtc.execution_horizon {self.rtc_horizon}, so no guided action is executed after the new '
                f'chunk takes over and rtc acts like latest; raise rtc.execution_horizon above d (up to the '
                f'rows the plan still covers when the next inference starts)')


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return '-'
    return value if spec == 's' else format(value, spec)


def comparison_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table (also what `vla-ros replay --compare-aggregation` prints)."""
    header = '| ' + ' | '.join(title for _, title, _ in COMPARISON_COLUMNS) + ' |'
    rule = '|' + '|'.join('---' if spec == 's' else '---:' for _, _, spec in COMPARISON_COLUMNS) + '|'
    lines = [header, rule]
    for row in rows:
        lines.append('| ' + ' | '.join(_cell(row[key], spec) for key, _, spec in COMPARISON_COLUMNS) + ' |')
    return '\n'.join(lines)


def _plot_latency(runs: Sequence[ComparisonRun]) -> float:
    latencies = sorted({run.latency_ms for run in runs})
    return min(latencies, key=lambda lat: (abs(lat - PLOT_LATENCY_MS), lat))


def _plot_joint(runs: Sequence[ComparisonRun]) -> int:
    """The joint whose commanded trajectories differ most between the modes (plotted)."""
    dims = len(runs[0].record.joint_names)
    lengths = [len(run.record.command_positions) for run in runs]
    n = min(lengths)
    if n == 0 or len(runs) < 2:
        return 0
    stacked = np.stack([np.asarray(run.record.command_positions[:n], dtype=np.float64).reshape(n, dims)
                        for run in runs])
    spread = np.ptp(stacked, axis=0).max(axis=0)  # per joint: the largest gap between modes at one time
    return int(np.argmax(spread))


def write_comparison_plot(runs: Sequence[ComparisonRun], path: Path) -> tuple[Path, float, str]:
    """One joint's commanded trajectory per mode at ~200 ms with the recorded command, plus the
    largest boundary jump and mean squared jerk per mode and latency as bars.

    Returns (path, the plotted latency in ms, the plotted joint).
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    latency = _plot_latency(runs)
    shown = [run for run in runs if run.latency_ms == latency]
    joint = _plot_joint(shown)
    record = shown[0].record
    name = record.joint_names[joint]
    modes = list(dict.fromkeys(run.mode for run in runs))
    latencies = sorted({run.latency_ms for run in runs})
    colors = {mode: f'C{i}' for i, mode in enumerate(modes)}

    fig = plt.figure(figsize=(12, 7.5))
    grid = fig.add_gridspec(2, 2, height_ratios=(1.3, 1.0))
    ax = fig.add_subplot(grid[0, :])
    ref_t = np.asarray(record.reference_times, dtype=np.float64) - record.start_time
    if ref_t.size:
        ax.plot(ref_t, np.asarray(record.reference_positions)[:, joint], color='k', ls='--', lw=1.2,
                label=f'recorded ({record.reference_kind})')
    for run in shown:
        n = len(run.record.command_positions)
        if not n:
            continue
        t = np.asarray(run.record.target_times, dtype=np.float64) - run.record.start_time
        cmd = np.asarray(run.record.command_positions, dtype=np.float64).reshape(n, -1)[:, joint]
        ax.plot(t, cmd, color=colors[run.mode], lw=1.1, label=run.mode)
    ax.set_xlabel('bag time [s]', fontsize=8)
    ax.set_ylabel(f'{name} [robot units]', fontsize=8)
    ax.set_title(f'commanded {name} at {latency:g} ms simulated latency (offline replay, same seed)',
                 fontsize=10)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc='upper right')

    width = 0.8 / max(len(modes), 1)
    table = {(run.mode, run.latency_ms): run.row() for run in runs}
    for col, (key, title) in enumerate((('boundary_jump_max', 'largest boundary jump'),
                                        ('mean_squared_jerk', 'mean squared jerk'))):
        ax = fig.add_subplot(grid[1, col])
        x = np.arange(len(latencies))
        for i, mode in enumerate(modes):
            values = [table.get((mode, lat), {}).get(key) for lat in latencies]
            heights = [np.nan if v is None else v for v in values]
            bars = ax.bar(x + (i - (len(modes) - 1) / 2) * width, heights, width, color=colors[mode],
                          label=mode)
            ax.bar_label(bars, labels=[_cell(v, '.2g') for v in values], fontsize=6)
        ax.set_xticks(x)
        ax.set_xticklabels([f'{lat:g} ms' for lat in latencies], fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        if col == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path, latency, name


def write_comparison(runs: Sequence[ComparisonRun], out_dir: str | Path, info: dict[str, Any] | None = None,
                     overwrite: bool = False) -> dict[str, Any]:
    """Write a comparison into OUT_DIR atomically; returns comparison.json's content.

    OUT_DIR/comparison.md (the table), comparison.csv, comparison.json,
    plots/comparison.png, and per run runs/<mode>_<latency>ms/ with its
    metrics.json and commands.csv.
    """
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, overwrite)
    rows = [run.row() for run in runs]
    table = comparison_table(rows)
    with staged_directory(out_dir) as staging:
        for run in runs:
            folder = staging / RUNS_DIR / run.name
            folder.mkdir(parents=True)
            write_csv(run.record, folder / CSV_NAME)
            (folder / METRICS_NAME).write_text(
                json.dumps({**run.metrics, 'boundary_jumps': run.boundary_jumps}, indent=2) + '\n')
        _, latency, joint = write_comparison_plot(runs, staging / PLOTS_DIR / COMPARISON_PLOT)
        with (staging / COMPARISON_CSV).open('w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ['mode'])
            writer.writeheader()
            for row in rows:
                writer.writerow({k: '' if v is None else v for k, v in row.items()})
        (staging / COMPARISON_MD).write_text(table + '\n')
        result = {
            'rows': rows,
            'warnings': [w for w in (run.rtc_warning() for run in runs) if w],
            'reference': runs[0].metrics['reference'] if runs else None,
            'bag_time': runs[0].metrics['bag_time'] if runs else None,
            'plot': {'file': f'{PLOTS_DIR}/{COMPARISON_PLOT}', 'latency_ms': latency, 'joint': joint},
            'info': dict(info or {}),
        }
        # comparison.json last: its presence marks a complete comparison
        (staging / COMPARISON_JSON).write_text(json.dumps(result, indent=2) + '\n')
    return result
