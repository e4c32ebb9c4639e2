"""The training loop, its outputs, and the whole `vla-ros train` run (`train_from_bags`).

What a run writes to OUT (the project's checkpoint layout, loadable by
`Policy.from_checkpoint`, `vla-ros export`, `replay` and the node):

- model.safetensors, config.json (config.json["trained"] says how; a run of
  0 steps stays marked untrained);
- the prompt tokenizer (tokenizer.model) the samples were tokenized with;
- assets/<policy.asset_id or "robot">/norm_stats.json: the statistics of
  the training data (`vla_ros.training.dataset.compute_norm_stats`);
- loss.png (training loss per step, its moving average, the held-out loss),
  loss.csv, and train_meta.json (the exact command, seed, steps, losses,
  bags, sample counts, timings).

The optimizer is AdamW (betas 0.9 / 0.95, eps 1e-8, weight decay 0.01:
LeRobot 0.6.1's pi0 preset, which decays every parameter, here only the
matrices; openpi's decay is 1e-10) with
the gradient norm clipped at 1.0, a linear warm-up over the first tenth of
the steps (at most 100) and a cosine decay to a tenth of --lr.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
import shutil
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from vla_ros.training.dataset import TrainingSet
from vla_ros.training.loss import flow_matching_loss, sample_time

DEFAULT_ASSET_ID = 'robot'
META_FILE = 'train_meta.json'
PLOT_FILE = 'loss.png'
CSV_FILE = 'loss.csv'
LOSS_DIMS = ('all', 'robot')
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.01
GRAD_CLIP = 1.0
MAX_WARMUP = 100
FINAL_LR_FRACTION = 0.1
VAL_SAMPLES = 64


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """How to train (the `vla-ros train` flags).

    loss_dims: 'all' averages the loss over the model's 32 dims (openpi),
    'robot' over the robot's action dims only (LeRobot 0.6.1).
    """

    steps: int = 1000
    batch_size: int = 8
    lr: float = 3e-3
    seed: int = 0
    weight_decay: float = WEIGHT_DECAY
    grad_clip: float = GRAD_CLIP
    loss_dims: str = 'all'
    eval_every: int = 50
    num_threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        from vla_ros.errors import ConfigError

        for name in ('steps', 'batch_size', 'eval_every'):
            value = getattr(self, name)
            low = 0 if name == 'steps' else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f'--{name.replace("_", "-")}',
                                  f'expected an integer >= {low}, got {value!r}')
        for name in ('lr', 'grad_clip'):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f'--{name.replace("_", "-")}', f'expected a number > 0, got {value!r}')
        if self.loss_dims not in LOSS_DIMS:
            raise ConfigError('--loss-dims', f'expected one of {list(LOSS_DIMS)}, got {self.loss_dims!r}')


@dataclasses.dataclass
class TrainHistory:
    """Per-step training losses, (step, loss) of the held-out set, and the wall time."""

    losses: list[float] = dataclasses.field(default_factory=list)
    val: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    def smoothed(self, window: int | None = None) -> np.ndarray:
        """Moving average of the training loss (window: a tenth of the steps, 1..50)."""
        losses = np.asarray(self.losses, dtype=np.float64)
        if losses.size == 0:
            return losses
        window = window or int(min(50, max(1, losses.size // 10)))
        kernel = np.ones(window) / window
        padded = np.concatenate([np.full(window - 1, losses[0]), losses])
        return np.convolve(padded, kernel, mode='valid')

    def start_loss(self, count: int = 5) -> float | None:
        """The mean of the first `count` losses."""
        return float(np.mean(self.losses[:count])) if self.losses else None

    def final_loss(self, count: int | None = None) -> float | None:
        """The mean of the last `count` losses (default: the last tenth, 1..50 steps)."""
        if not self.losses:
            return None
        count = count or int(min(50, max(1, len(self.losses) // 10)))
        return float(np.mean(self.losses[-count:]))


def to_torch(data: TrainingSet, index: np.ndarray, compact: bool = True) -> dict[str, torch.Tensor]:
    """The samples `index` of a TrainingSet as a batch of torch tensors.

    compact: leave out the camera slots that no sample of the batch has and
    the prompt padding after the batch's longest prompt. Masked tokens take
    no position and are no key (`Pi0Model.joint_velocity`), so the loss is
    the same, at a fraction of the cost (each camera slot is 256 tokens).
    """
    masks = data.image_masks[index]
    token_masks = data.token_masks[index]
    cameras = np.flatnonzero(masks.any(axis=0)) if compact else np.arange(masks.shape[1])
    if cameras.size == 0:
        cameras = np.arange(masks.shape[1])
    length = token_masks.shape[1]
    if compact and token_masks.any():
        length = int(np.flatnonzero(token_masks.any(axis=0)).max()) + 1
    return {
        'images': torch.from_numpy(np.ascontiguousarray(data.images[index][:, cameras])),
        'image_masks': torch.from_numpy(masks[:, cameras]),
        'tokens': torch.from_numpy(data.tokens[index][:, :length].astype(np.int64)),
        'token_masks': torch.from_numpy(np.ascontiguousarray(token_masks[:, :length])),
        'state': torch.from_numpy(data.state[index]),
        'actions': torch.from_numpy(data.actions[index]),
    }


def learning_rate(step: int, options: TrainOptions) -> float:
    """The learning rate of `step` (0-based): linear warm-up, then cosine decay to a tenth."""
    warmup = min(MAX_WARMUP, max(1, options.steps // 10))
    if step < warmup:
        return options.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, options.steps - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return options.lr * (FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * cosine)


@torch.no_grad()
def evaluate(model, data: TrainingSet, batch_size: int, action_dims: int | None, seed: int = 0) -> float:
    """The loss over (at most VAL_SAMPLES of) `data` with fixed noise and times: comparable between calls."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    count = min(len(data), VAL_SAMPLES)
    index = np.sort(rng.permutation(len(data))[:count])
    total = 0.0
    for start in range(0, count, batch_size):
        part = index[start:start + batch_size]
        batch = to_torch(data, part)
        noise = torch.randn(batch['actions'].shape, generator=generator)
        t = sample_time(len(part), rng)
        total += float(flow_matching_loss(model, batch, noise, t, action_dims)) * len(part)
    return total / count


def train_model(model, data: TrainingSet, options: TrainOptions, val: TrainingSet | None = None,
                robot_dims: int | None = None,
                on_step: Callable[[int, float], None] | None = None) -> TrainHistory:
    """Train `model` (fp32, in place) on `data` with the flow-matching loss; returns the history.

    Batches are drawn without replacement within an epoch (a fresh
    permutation each epoch); noise, flow times and batches follow
    `options.seed`. Ctrl-C stops the loop and returns what was done so far
    (history.interrupted).
    """
    from tqdm import tqdm

    threads = torch.get_num_threads()
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    action_dims = robot_dims if options.loss_dims == 'robot' else None
    model.float().train()
    params = [p for p in model.parameters()]
    for param in params:
        param.requires_grad_(True)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]  # norm scales (zero-centred) and biases
    optimizer = torch.optim.AdamW(
        [{'params': decay, 'weight_decay': options.weight_decay}, {'params': no_decay, 'weight_decay': 0.0}],
        lr=options.lr, betas=BETAS, eps=EPS)
    history = TrainHistory()
    order = np.zeros(0, dtype=np.int64)
    bar = tqdm(total=options.steps, desc='train', unit='step', dynamic_ncols=True, leave=False,
               disable=not options.progress)
    started = time.perf_counter()
    try:
        for step in range(options.steps):
            if order.size < options.batch_size:
                order = np.concatenate([order, rng.permutation(len(data))])
                if order.size < options.batch_size:  # fewer samples than a batch: repeat them
                    order = np.resize(order, options.batch_size)
            index, order = order[:options.batch_size], order[options.batch_size:]
            batch = to_torch(data, index)
            noise = torch.randn(batch['actions'].shape, generator=generator)
            t = sample_time(len(index), rng)
            for group in optimizer.param_groups:
                group['lr'] = learning_rate(step, options)
            loss = flow_matching_loss(model, batch, noise, t, action_dims)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                from vla_ros.errors import VlaRosError

                raise VlaRosError(f'the training loss became {value} at step {step + 1}; lower --lr')
            history.losses.append(value)
            if val is not None and ((step + 1) % options.eval_every == 0 or step + 1 == options.steps):
                model.eval()
                history.val.append((step + 1, evaluate(model, val, options.batch_size, action_dims)))
                model.train()
            if on_step is not None:
                on_step(step + 1, value)
            bar.update(1)
            postfix = {'loss': f'{history.smoothed()[-1]:.4f}'}
            if history.val:
                postfix['val'] = f'{history.val[-1][1]:.4f}'
            bar.set_postfix(postfix, refresh=False)
    except KeyboardInterrupt:
        history.interrupted = True
    finally:
        bar.close()
        history.seconds = time.perf_counter() - started
        model.eval()
        for param in params:
            param.requires_grad_(False)
        torch.set_num_threads(threads)
    return history


def plot_losses(history: TrainHistory, path: str | Path, title: str = '') -> Path:
    """loss.png: the per-step loss, its moving average and the held-out loss, log scale."""
    import matplotlib

    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(1, len(history.losses) + 1)
    if steps.size:
        ax.plot(steps, history.losses, color='tab:blue', alpha=0.3, lw=0.8, label='training loss')
        ax.plot(steps, history.smoothed(), color='tab:blue', lw=1.8, label='moving average')
    if history.val:
        v_steps, v_losses = zip(*history.val)
        ax.plot(v_steps, v_losses, 'o-', color='tab:orange', ms=3, label='held-out loss')
    ax.set_yscale('log')
    ax.set_xlabel('step')
    ax.set_ylabel('flow-matching loss (MSE of the velocity)')
    ax.set_title(title or 'vla-ros train')
    ax.grid(True, which='both', alpha=0.3)
    if steps.size or history.val:
        ax.legend(loc='upper right', fontsize=8)
    else:
        ax.text(0.5, 0.5, 'no training steps (--steps 0)', ha='center', transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_loss_csv(history: TrainHistory, path: str | Path) -> Path:
    val = dict(history.val)
    lines = ['step,loss,val_loss']
    for step, loss in enumerate(history.losses, start=1):
        lines.append(f"{step},{loss:.6g},{'' if step not in val else format(val[step], '.6g')}")
    Path(path).write_text('\n'.join(lines) + '\n')
    return Path(path)


# ------------------------------------------------------------ the whole run ---

@dataclasses.dataclass
class TrainResult:
    """What `train_from_bags` did: the checkpoint, its statistics, the history and the metadata written."""

    out: Path
    stats: dict
    history: TrainHistory
    meta: dict
    samples: int
    val_samples: int


def _flow_config(init: str, image_size: int | None = None):
    """(named config or None, checkpoint dir or None, PolicyConfig) of --init; refuses what cannot train."""
    from vla_ros.errors import CheckpointError, ConfigError
    from vla_ros.model.config import get_config, NAMED_CONFIGS

    if init in NAMED_CONFIGS:
        cfg, directory = get_config(init), None
        if image_size is not None:
            vision = dataclasses.replace(cfg.vision, image_size=image_size)  # checks the patch size
            cfg = dataclasses.replace(cfg, vision=vision)
    else:
        from vla_ros.model.checkpoint import config_from_checkpoint
        from vla_ros.model.lerobot_layout import read_lerobot_config

        directory = Path(init)
        if not directory.is_dir():
            names = ', '.join(sorted(NAMED_CONFIGS))
            raise ConfigError('--init',
                              f'{init!r} is neither a named config ({names}) nor a checkpoint directory')
        if read_lerobot_config(directory) is not None:
            raise CheckpointError(
                f'{directory} is a LeRobot policy directory; `vla-ros train` continues from checkpoints in '
                'the openpi / vla_ros layout only (fine-tune LeRobot policies with LeRobot)')
        cfg = config_from_checkpoint(directory)
        if image_size is not None and image_size != cfg.vision.image_size:
            raise ConfigError('--image-size', f'{directory} was trained at {cfg.vision.image_size} pixels; '
                                              'the image size of a checkpoint cannot change')
    if getattr(cfg, 'variant', '') not in ('pi0', 'pi05'):
        raise ConfigError('--init', f'{init}: `vla-ros train` trains flow-matching pi0 / pi0.5 models; '
                                    f'this is a {getattr(cfg, "variant", type(cfg).__name__)} model')
    return (None if directory else init), directory, cfg


def _write_init(out: Path, named: str | None, directory: Path | None, seed: int, dims: int,
                asset_id: str, stats: dict, image_size: int | None = None) -> None:
    """The starting checkpoint in `out` (random weights of a named config, or a copy), with `stats`.

    Random weights are `vla-ros make-tiny`'s (its layout, tokenizer and init); `image_size` replaces
    the named config's image size (a multiple of the 14-pixel patch).
    """
    from vla_ros.observation.normalize import save_norm_stats

    if named is not None:
        from vla_ros.tools.make_tiny import make_tiny_checkpoint

        make_tiny_checkpoint(out, named, seed=seed, dims=dims, asset_id=asset_id)
        if image_size is not None:
            from vla_ros.model.checkpoint import config_from_checkpoint, random_model, save_checkpoint

            cfg = config_from_checkpoint(out)  # the named config with the trained tokenizer's vocabulary
            cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, image_size=image_size))
            save_checkpoint(random_model(cfg, seed=seed), out, extra_config={'untrained': True, 'seed': seed})
    else:
        from vla_ros.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE
        from vla_ros.observation.tokenizer import find_tokenizer

        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(directory / WEIGHTS_FILE, out / WEIGHTS_FILE)
        shutil.copy2(directory / CONFIG_FILE, out / CONFIG_FILE)
        tokenizer = find_tokenizer(directory)
        shutil.copy2(tokenizer, out / tokenizer.name)
    shutil.rmtree(out / 'assets', ignore_errors=True)
    (out / 'norm_stats.json').unlink(missing_ok=True)
    save_norm_stats(out / 'assets' / asset_id / 'norm_stats.json', stats)


def _stats_json(stats: dict) -> dict:
    return {key: value.to_json() for key, value in stats.items()}


def train_from_bags(
    bags: Sequence[str | Path],
    config_path: str | Path,
    init: str,
    out: str | Path,
    options: TrainOptions = TrainOptions(),
    *,
    val_bags: Sequence[str | Path] = (),
    sample_rate: float = 10.0,
    action_source: str = 'auto',
    command_topic: str | None = None,
    prompt: str | None = None,
    force: bool = False,
    image_size: int | None = None,
    command: str = '',
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Read the bags, compute the statistics, train, and write the checkpoint to `out` (module docstring)."""
    from vla_ros.errors import ConfigError
    from vla_ros.model.checkpoint import load_model, save_checkpoint
    from vla_ros.observation.transforms import make_transform
    from vla_ros.policy import check_config_fits, Policy, read_spec
    from vla_ros.tools import bag_io
    from vla_ros.tools.file_modes import make_readable
    from vla_ros.tools.make_tiny import _prepare_out
    from vla_ros.training.dataset import (build_training_set, compute_norm_stats, read_bag_samples,
                                          to_policy_convention)

    started = time.perf_counter()
    out = Path(out)
    if not bags:
        raise ConfigError('--bags', 'give at least one bag to train on')
    config = bag_io.load_config(config_path)
    named, directory, cfg = _flow_config(init, image_size)
    dims = config.policy.action_dims or config.num_joints
    if dims > cfg.action_dim or config.num_joints > cfg.action_dim:
        raise ConfigError('joint_names',
                          f"{config.num_joints} joints do not fit the model's {cfg.action_dim} dims")
    if directory is not None and directory.resolve() == out.resolve():
        raise ConfigError('--out', f'{out} is the --init checkpoint; write the continued one elsewhere')
    _prepare_out(out, force)

    def read(paths):
        samples = []
        for path in paths:
            s = read_bag_samples(path, config, cfg.action_horizon, sample_rate, action_source, command_topic,
                                 prompt)
            log(f'  {path}: {len(s.times)} samples ({s.skipped} sample times without an observation), '
                f"targets from {s.signal_kind} '{s.signal_topic}'")
            samples.append(s)
        return samples

    log(f'reading {len(bags)} bag(s) at {sample_rate:g} samples/s')
    train_samples = read(bags)
    val_samples = read(val_bags) if val_bags else []
    transform = make_transform(config.policy.robot_transform)
    pi = [to_policy_convention(transform, s.states, s.chunks) for s in train_samples]
    stats = compute_norm_stats(np.concatenate([p[0] for p in pi]), np.concatenate([p[1] for p in pi]))
    asset_id = config.policy.asset_id or DEFAULT_ASSET_ID
    _write_init(out, named, directory, options.seed, dims, asset_id, stats, image_size)

    policy_options = dataclasses.replace(config.policy.to_policy_options(), device='cpu', precision='fp32',
                                         engine='reference', suffix='reference', seed=0, num_threads=None)
    for warning in check_config_fits(read_spec(out, policy_options), config, checkpoint_from='--init'):
        if 'untrained' not in warning:
            log(f'warning: {warning}')
    policy = Policy.from_checkpoint(out, policy_options)
    log('preprocessing the observations as the policy does (Policy.preprocess)')
    data = build_training_set(policy, config, train_samples, sample_rate, prompt)
    val = build_training_set(policy, config, val_samples, sample_rate, prompt) if val_samples else None
    log(f'{len(data)} training samples' + (f', {len(val)} held-out' if val is not None else '')
        + f'; {options.steps} steps of {options.batch_size}')
    model, _ = load_model(out, dtype=torch.float32, device='cpu')
    history = train_model(model, data, options, val, robot_dims=dims)
    steps_done = len(history.losses)

    meta = {
        'command': command,
        'init': str(init),
        'config': str(config_path),
        'bags': [str(b) for b in bags],
        'val_bags': [str(b) for b in val_bags],
        'seed': options.seed,
        'steps': steps_done,
        'steps_requested': options.steps,
        'interrupted': history.interrupted,
        'batch_size': options.batch_size,
        'lr': options.lr,
        'weight_decay': options.weight_decay,
        'grad_clip': options.grad_clip,
        'loss_dims': options.loss_dims,
        'sample_rate': sample_rate,
        'action_rate': config.policy.action_rate,
        'action_space': config.policy.action_space,
        'action_horizon': cfg.action_horizon,
        'image_size': cfg.vision.image_size,
        'action_sources': sorted({f'{s.signal_kind} {s.signal_topic}' for s in train_samples}),
        'samples': len(data),
        'val_samples': 0 if val is None else len(val),
        'start_loss': history.start_loss(),
        'final_loss': history.final_loss(),
        'last_loss': history.losses[-1] if history.losses else None,
        'val_loss': history.val[-1][1] if history.val else None,
        'train_seconds': round(history.seconds, 3),
        'total_seconds': None,
        'torch': torch.__version__,
    }
    trained = steps_done > 0
    extra: dict[str, Any] = {'trained': {k: meta[k] for k in ('steps', 'seed', 'final_loss', 'samples')}}
    if not trained:
        extra['untrained'] = True
    save_checkpoint(model, out, extra_config=extra)
    plot_losses(history, out / PLOT_FILE, f'vla-ros train: {init}, {len(data)} samples, seed {options.seed}')
    write_loss_csv(history, out / CSV_FILE)
    meta['total_seconds'] = round(time.perf_counter() - started, 3)
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + '\n')
    make_readable(out)
    return TrainResult(out, stats, history, meta, len(data), 0 if val is None else len(val))
