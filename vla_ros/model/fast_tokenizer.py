"""FAST action tokenizer of pi0-FAST: DCT, quantization and BPE over integer symbols.

A normalized action chunk (H, D) becomes a short list of token ids and back
(docs/model.md, "pi0-FAST action tokens"):

    encode: orthonormal DCT-II along time -> * scale -> round -> - min_token
            -> one character chr(k) per integer, flattened row-major over
            (frequency, dim) -> BPE (Hugging Face `tokenizers`) -> ids
    decode: ids -> BPE decode -> characters -> ord -> reshape (H, D)
            -> + min_token -> / scale -> inverse DCT along time

The files are those of the published FAST tokenizer directory:
``processor_config.json`` (``scale``, ``min_token``, ``vocab_size``,
``action_dim``, ``time_horizon``) and ``tokenizer.json`` (loaded with
``tokenizers.Tokenizer.from_file``; no Python from the directory is ever run).
Unlike the reference processor, a sequence that does not decode to exactly
H x D coefficients raises ActionDecodeError instead of returning zeros.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Iterable, Sequence

import numpy as np
from tokenizers import decoders, models, pre_tokenizers, processors, Tokenizer, trainers

from vla_ros.errors import ActionDecodeError, CheckpointError, ConfigError

PROCESSOR_CONFIG_FILE = 'processor_config.json'
TOKENIZER_FILE = 'tokenizer.json'
# pi0-FAST keeps the last 128 ids of the PaliGemma vocabulary free and puts the
# FAST ids right below them, counting down.
FAST_SKIP_TOKENS = 128
DEFAULT_SCALE = 10.0
DEFAULT_VOCAB_SIZE = 1024
_REPLACEMENT_CHAR = '\ufffd'


# --- DCT -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix C (n, n), float64: coefficients = C @ signal.

    C[k, t] = sqrt(2 / n) * cos(pi * (2 t + 1) * k / (2 n)), row k = 0 scaled by
    1 / sqrt(2); the same transform as scipy.fft.dct(type=2, norm="ortho").
    C is orthogonal, so the inverse (DCT-III, ortho) is C.T.
    """
    if n < 1:
        raise ValueError(f'DCT length must be >= 1, got {n}')
    t = np.arange(n, dtype=np.float64)
    k = t[:, None]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2.0 * t[None, :] + 1.0) * k / (2.0 * n))
    c[0] /= np.sqrt(2.0)
    c.setflags(write=False)
    return c


def dct_time(actions: np.ndarray) -> np.ndarray:
    """Orthonormal DCT-II of (H, D) along axis 0 (time), one transform per action dim."""
    actions = np.asarray(actions, dtype=np.float64)
    return dct_matrix(actions.shape[0]) @ actions


def idct_time(coefficients: np.ndarray) -> np.ndarray:
    """Inverse of dct_time: (H, D) DCT coefficients -> (H, D) signal."""
    coefficients = np.asarray(coefficients, dtype=np.float64)
    return dct_matrix(coefficients.shape[0]).T @ coefficients


# --- PaliGemma vocabulary mapping ------------------------------------------------------------

def fast_to_paligemma(fast_ids, vocab_size: int, skip: int = FAST_SKIP_TOKENS) -> np.ndarray:
    """FAST ids -> PaliGemma ids: ``vocab_size - 1 - skip - fast_id`` (int64 array).

    FAST id 0 is the highest id below the ``skip`` reserved ones at the top of the
    vocabulary; larger FAST ids go further down.
    """
    return (vocab_size - 1 - skip) - np.asarray(fast_ids, dtype=np.int64)


def paligemma_to_fast(pg_ids, vocab_size: int, skip: int = FAST_SKIP_TOKENS,
                      fast_vocab_size: int | None = None) -> np.ndarray:
    """Inverse of fast_to_paligemma (the same formula: the map is an involution).

    With ``fast_vocab_size``, a PaliGemma id outside the FAST block (a text token,
    or one of the ``skip`` reserved ids) raises ActionDecodeError.
    """
    fast = (vocab_size - 1 - skip) - np.asarray(pg_ids, dtype=np.int64)
    if fast_vocab_size is not None and fast.size:
        bad = (fast < 0) | (fast >= fast_vocab_size)
        if bad.any():
            pos = int(np.flatnonzero(bad.reshape(-1))[0])
            raise ActionDecodeError(
                f'generated token {int(np.asarray(pg_ids).reshape(-1)[pos])} at position {pos} is not a FAST '
                f'action token (FAST block is PaliGemma ids {vocab_size - skip - fast_vocab_size}'
                f'..{vocab_size - 1 - skip})')
    return fast


# --- tokenizer -------------------------------------------------------------------------------

def _bpe_pipeline() -> Tokenizer:
    """Empty byte-level BPE, configured as tokenizers' ByteLevelBPETokenizer() (the reference's)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _optional_positive_int(config: dict, key: str, path: str) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f'{path}: "{key}" must be a positive integer or null, got {value!r}')
    return value


class FastActionTokenizer:
    """FAST tokenizer: normalized action chunk (H, D) <-> FAST token ids.

    ``time_horizon`` / ``action_dim`` come from the arguments, else from
    processor_config.json (null in the published universal tokenizer, so pass
    them there); decode needs both.
    """

    def __init__(self, tokenizer: Tokenizer, *, scale: float, min_token: int,
                 vocab_size: int | None = None, time_horizon: int | None = None,
                 action_dim: int | None = None):
        scale = float(scale)
        if not math.isfinite(scale) or scale <= 0.0:
            raise ConfigError('scale', f'must be a finite number > 0, got {scale!r}')
        self.tokenizer = tokenizer
        self.scale = scale
        self.min_token = int(min_token)
        self.vocab_size = int(vocab_size) if vocab_size is not None else tokenizer.get_vocab_size()
        self.time_horizon = time_horizon
        self.action_dim = action_dim

    @property
    def num_ids(self) -> int:
        """Number of ids the BPE model actually has; valid ids are 0..num_ids - 1."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    # -- files --------------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: str, *, time_horizon: int | None = None,
             action_dim: int | None = None) -> 'FastActionTokenizer':
        """Read ``processor_config.json`` and ``tokenizer.json`` from a FAST tokenizer directory."""
        config_path = os.path.join(directory, PROCESSOR_CONFIG_FILE)
        tokenizer_path = os.path.join(directory, TOKENIZER_FILE)
        for path in (config_path, tokenizer_path):
            if not os.path.isfile(path):
                raise CheckpointError(f'FAST tokenizer: {path} is missing (a FAST tokenizer directory holds '
                                      f'{PROCESSOR_CONFIG_FILE} and {TOKENIZER_FILE})')
        try:
            with open(config_path, encoding='utf-8') as f:
                config = json.load(f)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f'{config_path}: not readable JSON ({exc})') from None
        if not isinstance(config, dict):
            raise CheckpointError(f'{config_path}: expected a JSON object')
        for key in ('scale', 'min_token'):
            if key not in config:
                raise CheckpointError(f'{config_path}: "{key}" is missing')
        scale, min_token = config['scale'], config['min_token']
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise CheckpointError(f'{config_path}: "scale" must be a number > 0, got {scale!r}')
        if isinstance(min_token, bool) or not isinstance(min_token, int):
            raise CheckpointError(f'{config_path}: "min_token" must be an integer, got {min_token!r}')
        try:
            tokenizer = Tokenizer.from_file(tokenizer_path)
        except Exception as exc:  # tokenizers raises a bare Exception for malformed files
            raise CheckpointError(f'{tokenizer_path}: not a tokenizers file ({exc})') from None
        return cls(
            tokenizer, scale=scale, min_token=min_token,
            vocab_size=_optional_positive_int(config, 'vocab_size', config_path),
            time_horizon=time_horizon or _optional_positive_int(config, 'time_horizon', config_path),
            action_dim=action_dim or _optional_positive_int(config, 'action_dim', config_path))

    def save(self, directory: str) -> None:
        """Write ``processor_config.json`` and ``tokenizer.json`` (the published field names)."""
        os.makedirs(directory, exist_ok=True)
        scale = int(self.scale) if float(self.scale).is_integer() else self.scale
        config = {
            'processor_class': 'UniversalActionProcessor',
            'scale': scale,
            'min_token': self.min_token,
            'vocab_size': self.vocab_size,
            'time_horizon': self.time_horizon,
            'action_dim': self.action_dim,
        }
        with open(os.path.join(directory, PROCESSOR_CONFIG_FILE), 'w', encoding='utf-8') as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write('\n')
        self.tokenizer.save(os.path.join(directory, TOKENIZER_FILE))

    # -- training -----------------------------------------------------------------------------

    @classmethod
    def train(cls, chunks: Iterable[np.ndarray] | np.ndarray, *, vocab_size: int = DEFAULT_VOCAB_SIZE,
              scale: float = DEFAULT_SCALE, min_frequency: int = 2,
              directory: str | None = None) -> 'FastActionTokenizer':
        """Fit min_token and a BPE vocabulary on normalized chunks, each (H, D) of one shape.

        The BPE is trained as the reference processor's ``fit`` does: byte-level BPE
        with every symbol chr(0)..chr(max - min) in the initial alphabet. Writes the
        two files to ``directory`` when given.

        Raises:
            ValueError: no chunks, chunks of different shapes or non-finite values,
                or more distinct symbols (max - min + 1) than ``vocab_size``.
        """
        chunks = [np.asarray(c, dtype=np.float64) for c in chunks]
        if not chunks:
            raise ValueError('FAST tokenizer training needs at least one action chunk')
        shape = chunks[0].shape
        if len(shape) != 2 or any(c.shape != shape for c in chunks):
            raise ValueError(f'FAST tokenizer training needs chunks of one (H, D) shape; got {shape} and '
                             f'{sorted({c.shape for c in chunks})}')
        stacked = np.stack(chunks)
        if not np.isfinite(stacked).all():
            raise ValueError('FAST tokenizer training chunks contain NaN or inf')
        quantized = np.around(np.einsum('kt,ntd->nkd', dct_matrix(shape[0]), stacked) * float(scale))
        min_token, max_token = int(quantized.min()), int(quantized.max())
        alphabet_size = max_token - min_token + 1
        if alphabet_size > vocab_size:
            raise ValueError(f'FAST vocab_size {vocab_size} is smaller than the {alphabet_size} distinct '
                             f'quantized coefficients ({min_token}..{max_token}); raise vocab_size or lower '
                             f'scale (now {scale})')
        symbols = (quantized - min_token).astype(np.int64).reshape(len(chunks), -1)
        tokenizer = _bpe_pipeline()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False, special_tokens=[],
            initial_alphabet=[chr(i) for i in range(alphabet_size)], max_token_length=10000)
        tokenizer.train_from_iterator((''.join(map(chr, row)) for row in symbols), trainer=trainer)
        result = cls(tokenizer, scale=scale, min_token=min_token, vocab_size=vocab_size,
                     time_horizon=shape[0], action_dim=shape[1])
        if directory is not None:
            result.save(directory)
        return result

    # -- encode / decode ----------------------------------------------------------------------

    def quantize(self, actions: np.ndarray) -> np.ndarray:
        """(H, D) normalized actions -> (H, D) int64 rounded DCT coefficients * scale."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2:
            raise ValueError(f'FAST encode takes one (H, D) action chunk, got shape {actions.shape}')
        if self.time_horizon is not None and self.action_dim is not None \
                and actions.shape != (self.time_horizon, self.action_dim):
            raise ValueError(f'FAST encode: chunk shape {actions.shape} is not the tokenizer\'s '
                             f'({self.time_horizon}, {self.action_dim})')
        if not np.isfinite(actions).all():
            raise ValueError('FAST encode: action chunk contains NaN or inf')
        return np.around(dct_time(actions) * self.scale).astype(np.int64)

    def encode(self, actions: np.ndarray) -> list[int]:
        """(H, D) normalized action chunk -> FAST token ids.

        Raises:
            ValueError: wrong shape, non-finite values, or a coefficient outside the
                symbol range of this tokenizer (the chunk is not normalized the way
                the tokenizer was trained; the reference silently clips or drops it).
        """
        symbols = self.quantize(actions).reshape(-1) - self.min_token
        if symbols.min() < 0:
            raise ValueError(f'FAST encode: a DCT coefficient is {int(symbols.min() + self.min_token)} * '
                             f'1/scale, below min_token {self.min_token}; is the chunk normalized?')
        text = ''.join(map(chr, symbols.tolist()))
        ids = self.tokenizer.encode(text).ids
        if self.tokenizer.decode(ids, skip_special_tokens=False) != text:
            raise ValueError('FAST encode: the chunk has DCT coefficients the BPE vocabulary cannot '
                             f'represent (largest symbol {int(symbols.max())}); is the chunk normalized?')
        return ids

    def decode(self, ids: Sequence[int], *, time_horizon: int | None = None,
               action_dim: int | None = None) -> np.ndarray:
        """FAST token ids -> (H, D) float64 normalized actions.

        Raises:
            ActionDecodeError: empty sequence, an id outside the vocabulary, ids that
                do not decode to whole symbols, or a symbol count other than H x D.
            ConfigError: H or D unknown (not passed here, nor in the constructor
                or processor_config.json).
        """
        horizon = time_horizon or self.time_horizon
        dims = action_dim or self.action_dim
        if not horizon or not dims:
            raise ConfigError('time_horizon/action_dim', 'FAST decode needs the action horizon and '
                                                         'dimension; pass them to load() or decode()')
        try:
            ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        except (TypeError, ValueError):
            raise ActionDecodeError(f'FAST decode: token ids are not integers: {ids!r:.80}') from None
        if not ids:
            raise ActionDecodeError('FAST decode: no action tokens were generated')
        num_ids = self.num_ids
        for pos, i in enumerate(ids):
            if not 0 <= i < num_ids:
                raise ActionDecodeError(f'FAST decode: token {i} at position {pos} is outside the FAST '
                                        f'vocabulary 0..{num_ids - 1}')
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        if _REPLACEMENT_CHAR in text:
            raise ActionDecodeError(f'FAST decode: the {len(ids)} tokens do not form whole symbols '
                                    '(a multi-byte symbol is cut off)')
        expected = horizon * dims
        if len(text) != expected:
            raise ActionDecodeError(f'FAST decode: {len(ids)} tokens decode to {len(text)} DCT coefficients, '
                                    f'expected {horizon} x {dims} = {expected}')
        symbols = np.fromiter((ord(c) for c in text), dtype=np.int64, count=expected)
        coefficients = (symbols + self.min_token).reshape(horizon, dims) / self.scale
        return idct_time(coefficients)


# --- where a checkpoint keeps its FAST tokenizer ------------------------------------------------

FAST_TOKENIZER_DIRS = ('fast_tokenizer', 'action_tokenizer', 'assets/fast_tokenizer')


def find_fast_tokenizer(checkpoint: str | os.PathLike, override: str | None = None):
    """The FAST tokenizer directory: `override` (policy.action_tokenizer), else one beside the checkpoint."""
    from pathlib import Path

    if override:
        path = Path(override).expanduser()
        if not (path / PROCESSOR_CONFIG_FILE).is_file():
            raise CheckpointError(f'policy.action_tokenizer {path} is not a FAST tokenizer directory '
                                  f'(no {PROCESSOR_CONFIG_FILE})')
        return path
    checkpoint = Path(checkpoint)
    for name in FAST_TOKENIZER_DIRS:
        if (checkpoint / name / PROCESSOR_CONFIG_FILE).is_file():
            return checkpoint / name
    raise CheckpointError(
        f'{checkpoint}: no FAST action tokenizer (looked for {", ".join(FAST_TOKENIZER_DIRS)}/ holding '
        f'{PROCESSOR_CONFIG_FILE} and {TOKENIZER_FILE}); put it there or point policy.action_tokenizer at it')


# --- generated PaliGemma tokens -> action chunk ------------------------------------------------

ACTION_PREFIX_TEXT = 'Action: '
END_OF_ACTION_PIECE = '|'


class ActionTokenParser:
    """The text pi0-FAST writes, ``Action: <FAST tokens>|`` (then EOS), -> a normalized chunk (H, D).

    ``prefix_ids`` are the text tokenizer's ids of "Action: " and ``end_id``
    its id of the piece "|". Unlike the references (which fall back to zeros,
    i.e. the dataset mean after unnormalizing), every malformed sequence raises
    ActionDecodeError naming what was wrong: no "Action: " marker, no "|"
    marker, a text token among the action tokens, or a FAST sequence of the
    wrong length.
    """

    def __init__(self, fast: FastActionTokenizer, *, vocab_size: int, skip: int = FAST_SKIP_TOKENS,
                 prefix_ids: Sequence[int], end_id: int, horizon: int, action_dim: int):
        if not prefix_ids:
            raise ConfigError('tokenizer', f'the text tokenizer gives no ids for {ACTION_PREFIX_TEXT!r}')
        self.fast = fast
        self.vocab_size = int(vocab_size)
        self.skip = int(skip)
        self.prefix_ids = tuple(int(i) for i in prefix_ids)
        self.end_id = int(end_id)
        self.horizon = int(horizon)
        self.action_dim = int(action_dim)

    def action_ids(self, ids: Sequence[int]) -> np.ndarray:
        """The FAST ids between the markers."""
        ids = [int(i) for i in ids]
        n = len(self.prefix_ids)
        if tuple(ids[:n]) != self.prefix_ids:
            raise ActionDecodeError(
                f'the decoded tokens do not start with {ACTION_PREFIX_TEXT!r} (ids {list(self.prefix_ids)}); '
                f'got {ids[:n]} ({len(ids)} tokens)')
        body = ids[n:]
        if self.end_id not in body:
            raise ActionDecodeError(
                f'no end-of-action marker {END_OF_ACTION_PIECE!r} (id {self.end_id}) in {len(ids)} decoded '
                'tokens (the decoding budget ran out, or the sequence ended early)')
        body = body[:body.index(self.end_id)]
        return paligemma_to_fast(body, self.vocab_size, self.skip, fast_vocab_size=self.fast.num_ids)

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        """Generated PaliGemma ids (stop token included or not) -> (H, D) float32 normalized actions."""
        fast_ids = self.action_ids(ids)
        actions = self.fast.decode(fast_ids, time_horizon=self.horizon, action_dim=self.action_dim)
        return actions.astype(np.float32)

    def encode(self, actions: np.ndarray) -> list[int]:
        """The training target of a chunk (H, D): ``Action: <FAST ids as PaliGemma ids>|`` (no EOS)."""
        fast_ids = self.fast.encode(actions)
        pg_ids = fast_to_paligemma(fast_ids, self.vocab_size, self.skip).tolist()
        return [*self.prefix_ids, *pg_ids, self.end_id]
