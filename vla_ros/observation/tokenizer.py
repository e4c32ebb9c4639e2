r"""Prompt (and, for pi0.5, state) -> fixed-length language tokens.

The token layouts follow (docs/preprocessing.md, "Prompt tokens") exactly, because the policy
only understands prompts laid out the way it was trained:

- pi0:   BOS + tokens(text) + tokens("\n"), padded to 48.
- pi0.5: BOS + tokens("Task: {text}, State: {bins};\nAction: "), padded to
  200, where `bins` is the normalized state discretized into 256 bins.

The real tokenizer is PaliGemma's SentencePiece model shipped beside the
checkpoint. `train_tokenizer` makes a small stand-in with the same special
ids for tests and tiny checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
import io
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import sentencepiece

from vla_ros.errors import CheckpointError, ConfigError, ObservationError

_LOG = logging.getLogger(__name__)

PromptFormat = Literal["pi0", "pi05"]
PROMPT_FORMATS: tuple[str, ...] = ("pi0", "pi05")

# PaliGemma's special ids; the model's embedding rows are laid out for them.
PAD_ID = 0
EOS_ID = 1
BOS_ID = 2
UNK_ID = 3

NUM_STATE_BINS = 256
# Left edges of 256 equal bins over [-1, 1].
_STATE_BIN_EDGES = np.linspace(-1.0, 1.0, NUM_STATE_BINS + 1)[:-1]


def clean_prompt(prompt: str) -> str:
    """Normalize an instruction the way the training data was: trim, '_' and newlines -> space."""
    return prompt.strip().replace("_", " ").replace("\n", " ")


def discretize_state(state: np.ndarray) -> np.ndarray:
    """Map a normalized state (D,) to int bin indices, 0..255 inside [-1, 1].

    Bin i covers [-1 + i/128, -1 + (i+1)/128) and everything from 1 - 1/128
    up, including values above 1, lands in 255. Values below -1 give -1: that
    is what the reference formula `digitize(x, edges) - 1` yields, in openpi's
    training as well, for states below the 1% quantile, so it is kept rather
    than clipped.

    Raises:
        ObservationError: if the state is not 1-D or holds NaN / inf.
    """
    state = np.asarray(state)
    if state.ndim != 1:
        raise ObservationError(f"state: got shape {state.shape}; expected a 1-D vector (D,)")
    if not np.all(np.isfinite(state)):
        raise ObservationError(f"state: contains NaN or inf: {state.tolist()}")
    return np.digitize(state, bins=_STATE_BIN_EDGES) - 1


class PromptTokenizer:
    """SentencePiece tokenizer that lays prompts out for pi0 or pi0.5.

    Args:
        model_path: SentencePiece `.model` file (PaliGemma's for real
            checkpoints, or one made by `train_tokenizer`).
        max_len: token budget (48 for pi0, 200 for pi0.5).
        fmt: "pi0" or "pi05".
    """

    def __init__(self, model_path: str | Path, max_len: int, fmt: PromptFormat) -> None:
        if fmt not in PROMPT_FORMATS:
            raise ConfigError("fmt", f"got {fmt!r}; expected one of {list(PROMPT_FORMATS)}")
        if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 2:
            raise ConfigError(
                "max_len", f"got {max_len!r}; expected an int >= 2 (BOS plus at least one token)"
            )
        path = Path(model_path)
        if not path.is_file():
            raise CheckpointError(
                f"tokenizer model '{path}' not found; ship the SentencePiece model"
                " (paligemma_tokenizer.model) beside the checkpoint"
            )
        processor = sentencepiece.SentencePieceProcessor()
        try:
            processor.load(str(path))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"tokenizer model '{path}' is not a SentencePiece model: {exc}") from exc
        if processor.bos_id() != BOS_ID or processor.pad_id() != PAD_ID:
            raise CheckpointError(
                f"tokenizer model '{path}' has bos_id={processor.bos_id()}, pad_id={processor.pad_id()};"
                f" expected PaliGemma's bos_id={BOS_ID}, pad_id={PAD_ID}"
            )
        self._sp = processor
        self._max_len = int(max_len)
        self._fmt: PromptFormat = fmt
        self._warned_lengths: set[int] = set()

    @property
    def vocab_size(self) -> int:
        """Number of pieces in the SentencePiece model (the embedding must have as many rows)."""
        return int(self._sp.get_piece_size())

    @property
    def max_len(self) -> int:
        return self._max_len

    @property
    def fmt(self) -> PromptFormat:
        return self._fmt

    def encode_ids(self, prompt: str, state: np.ndarray | None = None) -> list[int]:
        r"""Token ids for the prompt before padding/truncation (BOS included).

        An empty (or whitespace-only) prompt is allowed: pi0 then gives
        BOS + "\n" and pi0.5 gives the template with an empty task, which is
        what the model would see for a missing instruction.
        """
        if not isinstance(prompt, str):
            raise ObservationError(f"prompt: got {type(prompt).__name__}; expected str")
        text = clean_prompt(prompt)
        if self._fmt == "pi0":
            # The state goes to the action expert as a continuous token in
            # pi0, so it is deliberately not part of the text.
            return self._sp.encode(text, add_bos=True) + self._sp.encode("\n")
        if state is None:
            raise ObservationError("pi0.5 prompts embed the normalized state; got state=None")
        bins = " ".join(str(int(b)) for b in discretize_state(state))
        return self._sp.encode(f"Task: {text}, State: {bins};\nAction: ", add_bos=True)

    def tokenize(self, prompt: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize and pad to `max_len`.

        Args:
            prompt: the instruction.
            state: pi0.5 only (ignored for pi0): the NORMALIZED, UNPADDED
                state (D,); it is discretized into the prompt.

        Returns:
            (tokens int32 (max_len,), mask bool (max_len,)): real tokens first,
            then zeros (PAD) with mask False. An empty prompt is allowed (see
            `encode_ids`). A prompt longer than `max_len`
            is cut to `max_len` (logged once per distinct length), like the
            reference implementation.
        """
        ids = self.encode_ids(prompt, state)
        if len(ids) > self._max_len:
            if len(ids) not in self._warned_lengths:
                self._warned_lengths.add(len(ids))
                _LOG.warning(
                    "prompt is %d tokens, more than max_len=%d: truncating (the model sees a cut prompt)",
                    len(ids),
                    self._max_len,
                )
            ids = ids[: self._max_len]
        tokens = np.full((self._max_len,), PAD_ID, dtype=np.int32)
        tokens[: len(ids)] = ids
        mask = np.zeros((self._max_len,), dtype=bool)
        mask[: len(ids)] = True
        return tokens, mask

    def decode(self, tokens: Iterable[int]) -> str:
        """Text of token ids; PAD, BOS and EOS decode to nothing."""
        return self._sp.decode([int(t) for t in tokens])


# --- a small stand-in tokenizer --------------------------------------------

_VERBS = ("pick up", "put", "place", "move", "push", "open", "close", "fold", "grab", "lift", "stack", "wipe")
_OBJECTS = (
    "the red block", "the blue cup", "the green bowl", "the towel", "the drawer", "the sponge",
    "the yellow banana", "the black marker", "the plate", "the lid", "the bottle", "the box",
)
_PLACES = (
    "on the table", "in the bowl", "into the drawer", "on the plate", "to the left", "to the right",
    "next to the cup", "in the sink", "on top of the box", "into the basket",
)
_EXTRA = (
    "Transfer the cube from the left arm to the right arm.",
    "Insert the peg into the socket.",
    "Hand over the object, then go back home.",
    "Do nothing; stay still and wait.",
    "Sort the objects by colour: red, green and blue!",
    "Turn the faucet on (slowly) and off again?",
    "Pour water from the mug into the glass",
    "Unzip the bag and take out the keys",
    "libero_spatial aloha_sim droid trossen franka widowx ur5 so100",
)


def _training_sentences(extra_text: Iterable[str]) -> Iterator[str]:
    """Deterministic corpus: robot instructions, every state bin, the pi0.5 template."""
    yield from (str(i) for i in range(NUM_STATE_BINS))
    yield "Task: State: Action: ; , \n"
    k = 0
    for verb in _VERBS:
        for obj in _OBJECTS:
            for place in _PLACES:
                sentence = f"{verb} {obj} {place}"
                yield sentence
                # A cheap, fixed pseudo-random state so digits and separators
                # appear in context, the way pi0.5 prompts use them.
                bins = " ".join(str((k * 37 + j * 101) % NUM_STATE_BINS) for j in range(8))
                yield f"Task: {sentence}, State: {bins};\nAction: "
                k += 1
    yield from _EXTRA
    yield from (str(t) for t in extra_text)


def train_tokenizer(out_path: str | Path, vocab_size: int = 512, extra_text: Iterable[str] = ()) -> Path:
    r"""Train a small SentencePiece BPE model with PaliGemma's special ids and write it.

    Ids: pad 0, eos 1, bos 2, unk 3; "\n" is a piece of its own and unknown
    characters fall back to their UTF-8 bytes, so any text encodes and decodes
    back exactly. Like PaliGemma's model it keeps the text as is (no Unicode
    normalization, no dummy prefix) and splits numbers into single digits.

    Training is single-threaded and the output holds no paths, so the same
    arguments give a byte-identical file. `vocab_size` is an upper bound: the
    built-in corpus reaches 512; with a larger request the model may stop
    short, so size embeddings from `PromptTokenizer.vocab_size`.

    Returns:
        the written path.
    """
    # 4 special ids + "\n" + 256 byte pieces must fit, plus room for characters.
    min_vocab = 300
    if (
        isinstance(vocab_size, bool)
        or not isinstance(vocab_size, (int, np.integer))
        or vocab_size < min_vocab
    ):
        raise ConfigError("vocab_size", f"got {vocab_size!r}; expected an int >= {min_vocab}")
    out = Path(out_path)
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=_training_sentences(extra_text),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=int(vocab_size),
        hard_vocab_limit=False,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        bos_id=BOS_ID,
        unk_id=UNK_ID,
        user_defined_symbols=["\n"],
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        num_threads=1,
        minloglevel=2,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buffer.getvalue())
    return out
