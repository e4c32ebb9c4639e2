"""Teacher-force a tiny pi0-FAST so that it writes one fixed action chunk for any observation.

An untrained pi0fast-tiny decodes garbage, which the policy turns into an
ActionDecodeError on every inference: good for testing the failure path, no
use for testing the path where actions reach the robot. `fit_to_chunk` trains
the language model (fp32, CPU, a few seconds) so that greedy decoding writes
``Action: <FAST tokens of one smooth target chunk>|`` then EOS whatever the
images, state and prompt are. The result is "fitted to one chunk": it ignores
its observation, so it is no policy; its checkpoint stays marked untrained.

The training sequence is laid out exactly as the runtimes decode it
(model/pi0_fast.py, engines/decode.py StaticDecoder):

- the prefix (image tokens of the present cameras, then the real prompt
  tokens) attends bidirectionally at RoPE positions 0 .. n - 1; masked
  cameras and prompt padding take no positions and no keys, so the prefix is
  built compacted (only real tokens), which gives the same numbers as the
  padded layout of inference;
- generated token k sits at position n + gap + k (gap 1 in the openpi layout,
  engines/factory.py OPENPI_DECODE_POSITION_GAP) and attends to the prefix and
  to the generated tokens before it;
- the first generated token is predicted from the last real prompt token,
  token k + 1 from generated token k.

What keeps it fast (seconds on one CPU core) and robust:

- the target is a smooth chunk whose tokens each determine the next one
  (`fit_target`, `ambiguous_successors`): the model needs no sense of where in
  the sequence it is, which it would have to read from a prefix-dependent
  context;
- frozen: the vision tower and projector (fresh random frames go through them
  without gradients), the token embedding and the LM head tied to it; only
  the Gemma layers and the final norm train, the final norm's scale (which
  sets the logits' scale against the frozen head) with a larger step;
- the training softmax runs over a few thousand candidate rows, not 257k;
  the checks run over the full vocabulary and the rows that come close join
  the candidates;
- mostly one camera per sample (each one more costs 256 tokens), a loss term
  that pulls the hidden states of the batch's observations together, and
  held-out observations that fall short replayed in training;
- every few steps the teacher-forced argmax over fresh observations is
  checked (with every position right, that is exactly what greedy decoding
  produces) and training stops once every position is right by a margin,
  twice in a row.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# Words of the random prompts (the stand-in tokenizer spells them with pieces of its own).
_WORDS = (
    "pick", "up", "the", "red", "blue", "green", "cube", "cup", "bowl", "towel", "drawer", "open",
    "close", "put", "place", "move", "push", "fold", "grab", "lift", "stack", "blocks", "on", "in",
    "left", "right", "warm", "plate", "box", "lid", "sponge", "marker", "bottle", "and", "to",
)
DEFAULT_MAX_STEPS = 400
CAMERA_DECAY = 2.0
EOS_ID = 1


@dataclasses.dataclass(frozen=True)
class FitReport:
    """How a fit went.

    steps: optimizer steps taken; loss: the last training loss (mean
    cross-entropy per generated token); margin: the smallest held-out logit
    margin (target logit minus the best other one) at the last check;
    converged: every held-out position right by at least the required margin;
    seconds: wall time of the fit; num_tokens: generated tokens of the target
    (EOS included).
    """

    steps: int
    loss: float
    margin: float
    converged: bool
    seconds: float
    num_tokens: int

    def to_dict(self) -> dict:
        """JSON-ready (config.json "fit")."""
        out = dataclasses.asdict(self)
        for key in ("loss", "margin", "seconds"):
            out[key] = round(float(out[key]), 4) if np.isfinite(out[key]) else None
        return out


def ambiguous_successors(ids: Sequence[int]) -> int:
    """How many steps of `ids` follow a token that, somewhere else in `ids`, is followed by another token.

    0 means the next token is a function of the current one alone: greedy
    decoding needs no notion of where in the sequence it is, which the tiny
    model learns in a few steps and keeps for any prefix.
    """
    successor: dict[int, int] = {}
    clashes = 0
    for current, following in zip(ids[:-1], ids[1:]):
        clashes += successor.setdefault(int(current), int(following)) != int(following)
    return clashes


TARGET_CANDIDATES = 1000
TARGET_SCALES = (1.0, 0.5, 0.25, 0.15, 0.1)


def fit_target(fast, horizon: int, dims: int, seed: int) -> np.ndarray:
    """The chunk to fit (horizon, dims), normalized: a smooth trajectory on the FAST quantization grid.

    It is the FAST round trip of a smooth chunk (make_tiny.smooth_trajectories),
    so decoding its tokens gives it back exactly (to float precision) and a
    fitted model's decoded chunk can be compared with it directly. Among
    `TARGET_CANDIDATES` chunks of the seed, at full amplitude, else at the
    first smaller one of `TARGET_SCALES` where some chunk has none, it is the
    one whose tokens have the fewest ambiguous successors
    (`ambiguous_successors`), then the fewest tokens. With none, every token
    determines the next (found at full amplitude up to ~8 action dims, at
    0.15 for 14, at 0.1 to 0.05 for 20 to 32).
    """
    from vla_ros.tools.make_tiny import smooth_trajectories

    chunks = smooth_trajectories(TARGET_CANDIDATES, horizon, dims, seed + 7919)
    best, best_key = None, None
    for rank, scale in enumerate(TARGET_SCALES):
        for chunk in chunks:
            try:
                ids = [int(i) for i in fast.encode(chunk * scale)]
            except ValueError:  # a coefficient outside the tokenizer's alphabet
                continue
            key = (ambiguous_successors(ids + [-1]), rank, len(ids))
            if best_key is None or key < best_key:
                best, best_key = chunk * scale, key
        if best_key is not None and best_key[0] == 0:
            break
    if best is None:
        raise ValueError(f"no smooth chunk of {horizon} x {dims} encodes with this FAST tokenizer")
    return fast.decode(fast.encode(best), time_horizon=horizon, action_dim=dims).astype(np.float32)


class _Observations:
    """Random observations as compacted prefix embeddings (no grad), images through the frozen tower.

    Every sample gets fresh frames of random sizes and kinds (the node's
    mid-grey warm-up frame, constant colours, noise, gradients, stripes,
    coarse blocks), resized with padding as the policy does; 1 to all camera
    slots; a random prompt (known words, made-up words, empty); a random
    normalized state (zeros, within and beyond [-1, 1]).
    """

    def __init__(self, model, tokenizer, dims: int, rng: np.random.Generator):
        self.model = model
        self.tokenizer = tokenizer
        self.dims = dims
        self.rng = rng
        self.cameras = model.cfg.num_cameras
        self.size = model.cfg.vision.image_size
        weights = CAMERA_DECAY ** -np.arange(self.cameras)  # fewer cameras are cheaper (256 tokens each)
        self.weights = weights / weights.sum()

    def cameras_to_sample(self) -> int:
        return 1 + int(self.rng.choice(self.cameras, p=self.weights))

    def frame(self) -> np.ndarray:
        rng = self.rng
        height, width = (int(v) for v in rng.integers(32, 481, 2))
        kind = int(rng.integers(0, 6))
        if kind == 0:
            value = 128 if rng.random() < 0.5 else int(rng.integers(0, 256))
            return np.full((height, width, 3), value, np.uint8)
        if kind == 1:
            return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        if kind == 2:
            ramp = np.linspace(0.0, 255.0, height)[:, None, None] * rng.uniform(0.0, 1.0, 3)
            return np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8)
        if kind == 3:
            return np.broadcast_to(rng.integers(0, 256, (1, width, 3)), (height, width, 3)).astype(np.uint8)
        blocks = rng.integers(0, 256, (int(rng.integers(2, 9)),) * 2 + (3,)).astype(np.uint8)
        scale = -(-max(height, width) // blocks.shape[0])
        return np.kron(blocks, np.ones((scale, scale, 1), np.uint8))[:height, :width]

    def prompt(self) -> str:
        rng = self.rng
        if rng.random() < 0.1:
            return ""
        words = []
        for _ in range(int(rng.integers(1, 12))):
            if rng.random() < 0.7:
                words.append(str(rng.choice(_WORDS)))
            else:
                letters = rng.integers(ord("a"), ord("z") + 1, int(rng.integers(1, 9)))
                words.append("".join(chr(c) for c in letters))
        return " ".join(words)

    def state(self) -> np.ndarray:
        if self.rng.random() < 0.15:
            return np.zeros(self.dims, np.float32)
        return self.rng.uniform(-1.5, 1.5, self.dims).astype(np.float32)

    @torch.no_grad()
    def sample(self, cameras: int | None = None) -> torch.Tensor:
        """One observation's prefix embeddings (n, W): the present cameras' tokens, the real prompt tokens."""
        from vla_ros.observation.image import prepare_images

        cameras = cameras or self.cameras_to_sample()
        keys = [str(k) for k in range(cameras)]
        images, _ = prepare_images({k: self.frame() for k in keys}, keys, self.size)
        image_tokens = self.model.embed_images(torch.from_numpy(images)[None])[0]
        ids = self.tokenizer.encode_ids(self.prompt(), self.state())[: self.tokenizer.max_len]
        text = self.model.embed_text(torch.tensor([ids], dtype=torch.int64))[0]
        return torch.cat([image_tokens, text], dim=0)


def _batch(prefixes: Sequence[torch.Tensor], generated: torch.Tensor, gap: int):
    """Embeddings (B, L, W), attention mask (B, L, L), positions (B, L) and the predicting rows (B, T).

    Each row: prefix (n_i) then the generated inputs (T - 1), padded at the end.
    """
    from vla_ros.model import masks

    steps = generated.shape[0]
    lengths = [p.shape[0] for p in prefixes]
    width = generated.shape[1]
    total = max(lengths) + steps
    batch = len(prefixes)
    embs = generated.new_zeros(batch, total, width)
    pad = torch.zeros(batch, total, dtype=torch.bool)
    ar = torch.zeros(batch, total, dtype=torch.bool)
    positions = torch.zeros(batch, total, dtype=torch.int64)
    rows = torch.zeros(batch, steps + 1, dtype=torch.int64)
    for b, (prefix, n) in enumerate(zip(prefixes, lengths)):
        embs[b, :n] = prefix
        embs[b, n:n + steps] = generated
        pad[b, :n + steps] = True
        ar[b, n:] = True
        positions[b, :n] = torch.arange(n)
        positions[b, n:n + steps] = n + gap + torch.arange(steps)
        rows[b] = torch.arange(n - 1, n + steps)
    return embs, masks.attention_mask(pad, ar), positions, rows


def _hidden(model, embs, mask, positions, rows) -> torch.Tensor:
    """Final-normed hidden states (B, T, W) of the rows that predict the targets."""
    from vla_ros.model.gemma import joint_forward

    outputs, _ = joint_forward(model.stacks, [embs], [None], mask, positions)
    return torch.gather(outputs[0], 1, rows[..., None].expand(-1, -1, outputs[0].shape[-1]))


def teacher_forced_logits(
    model, prefix: torch.Tensor, sequence: Sequence[int], position_gap: int
) -> torch.Tensor:
    """The fp32 logits (T, V) with which the fit scores `sequence` (T ids) after one compacted prefix (n, W).

    Row 0 predicts sequence[0] from the last prompt token; row k + 1 predicts
    sequence[k + 1] from generated token k, which sits at RoPE position
    n + position_gap + k: what the decode runtimes compute token by token.
    """
    with torch.no_grad():
        generated = model.embed_text(torch.as_tensor(list(sequence)[:-1], dtype=torch.int64)[None])[0]
        return model.logits(_hidden(model, *_batch([prefix], generated, position_gap)))[0]


class _Candidates:
    """The vocabulary rows the training softmax runs over: a sample of the 257k, grown by hard negatives.

    The full softmax over PaliGemma's vocabulary costs ~20x more than the
    whole model; the held-out checks run over the full vocabulary, and every
    row that comes close to a target there joins the candidates.
    """

    def __init__(self, weight: torch.Tensor, target: torch.Tensor, generator: torch.Generator, sample: int,
                 text_vocab: int):
        self.weight = weight
        vocab = weight.shape[0]
        always = torch.cat([
            target.flatten(),
            torch.arange(min(text_vocab, vocab)),  # the text pieces the tokenizer can write
            torch.randint(0, vocab, (min(sample, vocab),), generator=generator),
        ])
        self.target = target
        self._set(always)

    def _set(self, ids: torch.Tensor) -> None:
        self.ids = torch.unique(ids)
        self.rows = self.weight[self.ids].detach().clone()
        self.local = torch.searchsorted(self.ids, self.target)

    def add(self, ids: torch.Tensor) -> None:
        self._set(torch.cat([self.ids, ids.flatten()]))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden.to(self.rows.dtype), self.rows).float()


@torch.no_grad()
def _check(model, prefixes: Sequence[torch.Tensor], generated: torch.Tensor, target: torch.Tensor, gap: int,
           margin: float, hard: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out margins (B,) over the full vocabulary, and the rows that came closest where they fall short.

    The margin of an observation is the smallest (target logit - best other
    logit) over its positions; the rows are the `hard` best other ones of
    every position whose margin is below `margin`, (short positions, hard).
    """
    logits = model.logits(_hidden(model, *_batch(prefixes, generated, gap)))
    index = target.expand(len(prefixes), -1)[..., None]
    right = logits.gather(2, index)[..., 0]
    others = logits.scatter_(2, index, -torch.inf)
    margins = right - others.amax(dim=2)
    return margins.amin(dim=1), others[margins < margin].topk(hard, dim=1).indices


def fit_to_chunk(
    model,
    tokenizer,
    parser,
    target: np.ndarray,
    *,
    seed: int = 0,
    max_steps: int = DEFAULT_MAX_STEPS,
    lr: float = 1e-2,
    batch_size: int = 2,
    position_gap: int | None = None,
    margin: float = 2.0,
    check_every: int = 10,
    held_out: int = 4,
    passes: int = 2,
    candidates: int = 4096,
    num_threads: int | None = 1,
    norm_lr: float = 20.0,
    invariance: float = 1.0,
    progress: Callable[[int, float, float], None] | None = None,
) -> FitReport:
    """Train `model` (a fp32 Pi0FastModel, in place) to decode `target` (H, D, normalized) for any input.

    `tokenizer` is the checkpoint's PromptTokenizer (pi0fast format), `parser`
    its ActionTokenParser; the sequence learned is ``parser.encode(target)``
    then EOS. `position_gap` defaults to the openpi layout's.

    Every `check_every` steps, `held_out` fresh observations (one with a single
    camera, one with every camera, the rest random) are checked over the full
    vocabulary; training stops once `passes` checks in a row find every
    position right by `margin` logits, or after `max_steps` (then `converged`
    is False). Held-out observations that fall short are replayed in training
    and the rows that came closest join the training softmax. `num_threads`
    sets torch's intra-op threads for the fit (the model is too small to gain
    from more; restored after). Deterministic for a given seed and thread count.
    """
    from vla_ros.engines.factory import OPENPI_DECODE_POSITION_GAP

    started = time.perf_counter()
    threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    gap = OPENPI_DECODE_POSITION_GAP if position_gap is None else int(position_gap)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    sequence = [*parser.encode(np.asarray(target)), EOS_ID]
    target_ids = torch.tensor(sequence, dtype=torch.int64)[None]
    model.float().train(False)
    for param in model.parameters():
        param.requires_grad_(False)
    trained = [p for name, p in model.language_model.named_parameters() if "embed_tokens" not in name]
    loss_value, worst, step, passed = float("nan"), -float("inf"), 0, 0
    try:
        for param in trained:
            param.requires_grad_(True)
        sampler = _Observations(model, tokenizer, parser.action_dim, rng)
        vocab = _Candidates(model.lm_head.weight, target_ids, generator, candidates, tokenizer.vocab_size)
        with torch.no_grad():
            generated = model.embed_text(target_ids[:, :-1])[0]
        head = model.language_model.norm.weight
        # The final norm's scale sets the logits' scale against the frozen (tied) head: it moves fastest.
        optimizer = torch.optim.Adam(
            [{"params": [p for p in trained if p is not head]}, {"params": [head], "lr": lr * norm_lr}], lr=lr
        )
        replay: list[torch.Tensor] = []  # held-out observations that fell short
        while step < max_steps and passed < passes:
            cameras = sampler.cameras_to_sample()  # one count per batch: no padding to the longest
            prefixes = [sampler.sample(cameras) for _ in range(batch_size)]
            if replay:
                prefixes[-1] = replay[int(rng.integers(len(replay)))]
            hidden = _hidden(model, *_batch(prefixes, generated, gap))
            logits = vocab.logits(hidden)
            loss = F.cross_entropy(logits.flatten(0, 1), vocab.local.expand(len(prefixes), -1).flatten())
            if invariance:
                spread = (hidden - hidden.mean(dim=0)).square().sum(dim=-1).mean()
                loss = loss + invariance * spread / hidden.detach().square().sum(dim=-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_value = float(loss.detach())
            if step % check_every == 0 and loss_value < 1.0:  # before that, every check fails
                checked = [sampler.sample(cameras=1 if i == 0 else (sampler.cameras if i == 1 else None))
                           for i in range(held_out)]
                margins, hard = _check(model, checked, generated, target_ids, gap, margin)
                worst = float(margins.min())
                short = margins < margin
                passed = 0 if bool(short.any()) else passed + 1
                replay.extend(p for p, bad in zip(checked, short.tolist()) if bad)
                vocab.add(hard)
            if progress is not None:
                progress(step, loss_value, worst)
    finally:
        for param in model.parameters():
            param.requires_grad_(False)
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - started
    report = FitReport(step, loss_value, worst, passed >= passes, seconds, len(sequence))
    log.info("fitted to one chunk: %s", report)
    return report


def checkpoint_parser(directory, cfg, dims: int):
    """The prompt tokenizer and action parser of a pi0-FAST checkpoint being written to `directory`.

    The same parts as `vla_ros.policy.make_action_parser` builds at load
    (openpi prompt style, the FAST tokenizer in fast_tokenizer/).
    """
    from pathlib import Path

    from vla_ros.model.fast_tokenizer import (
        ACTION_PREFIX_TEXT, ActionTokenParser, END_OF_ACTION_PIECE, FastActionTokenizer,
    )
    from vla_ros.observation.tokenizer import PromptTokenizer
    from vla_ros.tools.make_tiny import FAST_TOKENIZER_DIR, TOKENIZER_FILE

    directory = Path(directory)
    tokenizer = PromptTokenizer(directory / TOKENIZER_FILE, cfg.max_token_len, cfg.variant)
    fast = FastActionTokenizer.load(str(directory / FAST_TOKENIZER_DIR))
    parser = ActionTokenParser(
        fast,
        vocab_size=cfg.vocab_size,
        skip=cfg.decode.fast_skip_tokens,
        prefix_ids=tokenizer.encode_text(ACTION_PREFIX_TEXT),
        end_id=tokenizer.piece_id(END_OF_ACTION_PIECE),
        horizon=fast.time_horizon or cfg.action_horizon,
        action_dim=fast.action_dim or dims,
    )
    return tokenizer, parser


def fit_checkpoint_model(model, directory, dims: int, seed: int, max_steps: int, **options):
    """Fit `model` (being written to `directory`, tokenizers already there) to its chunk.

    Returns the normalized target chunk (H, D) and the FitReport. `options` go to `fit_to_chunk`.
    """
    tokenizer, parser = checkpoint_parser(directory, model.cfg, dims)
    target = fit_target(parser.fast, parser.horizon, parser.action_dim, seed)
    report = fit_to_chunk(model, tokenizer, parser, target, seed=seed, max_steps=max_steps, **options)
    return target, report
