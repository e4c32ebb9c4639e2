r"""Prompt (and, for pi0.5, state) -> fixed-length language tokens.

The token layouts follow (docs/preprocessing.md, "Prompt tokens") exactly, because the policy
only understands prompts laid out the way it was trained:

- pi0, openpi:   BOS + tokens(cleaned text) + tokens("\n"), padded to 48.
- pi0, LeRobot:  BOS + tokens(raw text + "\n"), padded to 48.
- pi0.5 (both):  BOS + tokens("Task: {cleaned text}, State: {bins};\nAction: "),
  padded to 200, where `bins` is the normalized state discretized into 256 bins.
- SmolVLA (LeRobot): the tokenizer's own encoding of text + "\n" (its
  post-processor decides any BOS), cut to 48 on the tokenizer's truncation
  side, padded to 48 with a mask (LeRobot pads to the longest prompt only).

The real tokenizer is PaliGemma's, shipped beside the checkpoint (or named by
`policy.tokenizer`) and never downloaded: openpi's SentencePiece
`paligemma_tokenizer.model`, or the Hugging Face files of
google/paligemma-3b-pt-224 (`tokenizer.json`, or `tokenizer.model`).
`train_tokenizer` makes a small stand-in with the same special ids for tests
and tiny checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
import io
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import sentencepiece

from vla_ros.errors import CheckpointError, ConfigError, ObservationError

_LOG = logging.getLogger(__name__)

PromptFormat = Literal["pi0", "pi05", "pi0fast", "smolvla"]
PROMPT_FORMATS: tuple[str, ...] = ("pi0", "pi05", "pi0fast", "smolvla")
PromptStyle = Literal["openpi", "lerobot"]
PROMPT_STYLES: tuple[str, ...] = ("openpi", "lerobot")

# PaliGemma's special ids; the model's embedding rows are laid out for them.
PAD_ID = 0
EOS_ID = 1
BOS_ID = 2
UNK_ID = 3

NUM_STATE_BINS = 256
# Left edges of 256 equal bins over [-1, 1].
_STATE_BIN_EDGES = np.linspace(-1.0, 1.0, NUM_STATE_BINS + 1)[:-1]

# Tokenizer files, in the order they are looked for in a directory.
SENTENCEPIECE_FILES: tuple[str, ...] = ("paligemma_tokenizer.model", "tokenizer.model")
HF_TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_FILES: tuple[str, ...] = (*SENTENCEPIECE_FILES, HF_TOKENIZER_FILE)
TOKENIZER_SUBDIR = "tokenizer"

# Where a PaliGemma tokenizer comes from (for the error message).
_TOKENIZER_SOURCES = (
    "get openpi's paligemma_tokenizer.model (gs://big_vision/paligemma_tokenizer.model, cached by openpi"
    " as ~/.cache/openpi/big_vision/paligemma_tokenizer.model) or the tokenizer files of"
    " google/paligemma-3b-pt-224 (tokenizer.json or tokenizer.model, what LeRobot loads from the Hugging"
    " Face Hub) for pi0 and pi0.5 alike"
)


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


# --- finding the tokenizer ----------------------------------------------------


def _tokenizer_in(directory: Path) -> Path | None:
    """The first of TOKENIZER_FILES in `directory`, else in its `tokenizer/` subdirectory."""
    for folder in (directory, directory / TOKENIZER_SUBDIR):
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def find_tokenizer(
    directory: str | Path, override: str | os.PathLike[str] | None = None, *, named: str | None = None
) -> Path:
    """The tokenizer file for a checkpoint, never fetched.

    `named` is the tokenizer the checkpoint names (LeRobot's
    `tokenizer_processor.tokenizer_name`, a Hub id); only the error mentions it.

    Order:

    1. `override` (`policy.tokenizer`; None or "" means unset): a file is
       taken as it is; in a directory, the first of `paligemma_tokenizer.model`,
       `tokenizer.model`, `tokenizer.json`, then the same in its `tokenizer/`
       subdirectory. Nothing else is searched when it is set.
    2. openpi's `paligemma_tokenizer.model` in `directory`, then in
       `directory/assets/*/` (where openpi checkpoints keep it);
    3. beside the checkpoint: `tokenizer.model`, `tokenizer.json` in
       `directory`, then the three files in `directory/tokenizer/`;
    4. `tokenizer.model` in `directory/assets/*/`;
    5. the only `*.model` file in `directory` or `directory/assets/*/`.

    Returns:
        a file: a SentencePiece model or a Hugging Face `tokenizer.json`, as
        `PromptTokenizer` reads it.

    Raises:
        CheckpointError: nothing found, in one line: which file is needed,
            where it was looked for, where to get it, and `policy.tokenizer`.
    """
    need = "PaliGemma's tokenizer, one of " + ", ".join(TOKENIZER_FILES)
    if named:
        need += f", from {named!r}, the tokenizer the checkpoint's preprocessor names"
    if override is not None and str(override) != "":
        path = Path(override).expanduser()
        if path.is_file():
            return path
        found = _tokenizer_in(path) if path.is_dir() else None
        if found is not None:
            return found
        where = (
            f"looked in {path} and {path / TOKENIZER_SUBDIR}" if path.is_dir() else "that path does not exist"
        )
        raise CheckpointError(
            f"no tokenizer at policy.tokenizer '{path}': need {need}; {where};"
            f" {_TOKENIZER_SOURCES}, and point policy.tokenizer at the file or its directory"
        )
    directory = Path(directory)
    openpi = SENTENCEPIECE_FILES[0]  # paligemma_tokenizer.model
    for candidate in (directory / openpi, *sorted(directory.glob(f"assets/*/{openpi}"))):
        if candidate.is_file():
            return candidate
    found = _tokenizer_in(directory)
    if found is not None:
        return found
    for name in SENTENCEPIECE_FILES[1:]:
        in_assets = sorted(p for p in directory.glob(f"assets/*/{name}") if p.is_file())
        if in_assets:
            return in_assets[0]
    models = sorted(directory.glob("*.model")) + sorted(directory.glob("assets/*/*.model"))
    if len(models) == 1:
        return models[0]
    several = [p.relative_to(directory).as_posix() for p in models]
    several = f" (several other *.model files, none chosen: {several})" if several else ""
    raise CheckpointError(
        f"no tokenizer for checkpoint {directory}: need {need}; looked in {directory},"
        f" {directory / TOKENIZER_SUBDIR} and {directory / 'assets'}/*{several};"
        f" {_TOKENIZER_SOURCES}, and put it beside the checkpoint or point policy.tokenizer at it"
    )


def _is_json(path: Path) -> bool:
    """A `.json` name, or text that starts like a JSON object (a SentencePiece model is binary protobuf)."""
    if path.suffix.lower() == ".json":
        return True
    with path.open("rb") as handle:
        return handle.read(64).lstrip().startswith(b"{")


def _load_sentencepiece(path: Path) -> sentencepiece.SentencePieceProcessor:
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
    return processor


def _load_tokenizer_json(path: Path, paligemma: bool = True) -> Any:
    """A `tokenizers.Tokenizer` from a local tokenizer.json: data only, no Hub, no code run.

    paligemma: check PaliGemma's special ids (pi0 family); SmolVLA's tokenizer has its own.
    """
    try:
        import tokenizers
    except ImportError as exc:
        raise CheckpointError(
            f"tokenizer '{path}' is a Hugging Face tokenizer.json, which needs the 'tokenizers' package"
            f" (it comes with transformers): {exc}"
        ) from exc
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a plain Exception for any bad file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"tokenizer '{path}' is not a Hugging Face tokenizer.json: {reason}") from exc
    # A saved file may carry truncation / padding settings; the layout here does both itself.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    if not paligemma:
        return tokenizer
    pad, bos = tokenizer.id_to_token(PAD_ID), tokenizer.id_to_token(BOS_ID)
    if pad != "<pad>" or bos not in ("<bos>", "<s>"):
        raise CheckpointError(
            f"tokenizer '{path}' has {bos!r} at id {BOS_ID} and {pad!r} at id {PAD_ID};"
            f" expected PaliGemma's '<bos>' at {BOS_ID} and '<pad>' at {PAD_ID}"
        )
    return tokenizer


class PromptTokenizer:
    r"""PaliGemma tokenizer that lays prompts out for pi0 or pi0.5, as openpi or LeRobot did in training.

    Two forms of the tokenizer give the same ids (for text that does not
    spell a special token such as "<bos>", which only the Hugging Face form
    reads as that token, as LeRobot does):

    - a SentencePiece model (openpi's `paligemma_tokenizer.model`, the
      `tokenizer.model` of a Hugging Face tokenizer directory, or one made by
      `train_tokenizer`), read with `sentencepiece`;
    - a Hugging Face `tokenizer.json`, read with the `tokenizers` library
      from the local file only (no Hub, no code run).

    `fmt` is the model family's layout and `style` the training code's
    prompt convention; only pi0 differs between the styles:

    - `style="openpi"` (openpi checkpoints): the text is cleaned (trimmed,
      '_' and newlines -> space); pi0 is BOS + tokens(text) + tokens("\n").
    - `style="lerobot"` (LeRobot checkpoints): pi0 takes the raw task,
      appends "\n" unless it already ends with one, and is
      BOS + tokens(task + "\n"), as LeRobot's `Pi0NewLineProcessor` and
      tokenizer step do (no trimming, '_' kept).
    - pi0.5 is BOS + tokens("Task: {cleaned text}, State: {bins};\nAction: ")
      in both styles: LeRobot copies openpi's format, cleaning included.
    - pi0-FAST is BOS + tokens("Task: {text}, State: {bins};\n"): the model
      writes "Action: " itself. openpi lower-cases the text, trims it and
      turns '_' into spaces (newlines stay); LeRobot cleans it as for pi0.5
      (no lower-casing) and appends a second BOS after the padded prompt,
      from which it decodes: here the last of the `max_len` slots (so a
      LeRobot checkpoint's tokenizer_max_length 200 is `max_len` 201).
    - SmolVLA (`fmt="smolvla"`, LeRobot only): the tokenizer's own encoding
      of task + "\n" (special tokens as its post-processor adds them), cut
      to `max_len` on the side its tokenizer_config.json names, then padded
      with its pad token and mask False (the model skips masked tokens).

    Otherwise: BOS (id 2) first, no EOS, pad id 0 up to `max_len`, and a
    longer prompt cut to its first `max_len` tokens.

    Args:
        model_path: a SentencePiece model file, a `tokenizer.json` file, or a
            directory holding one (looked up as `find_tokenizer` does).
        max_len: token budget (48 for pi0, 200 for pi0.5).
        fmt: "pi0" or "pi05".
        style: "openpi" (default) or "lerobot".
    """

    def __init__(
        self, model_path: str | Path, max_len: int, fmt: PromptFormat, style: PromptStyle = "openpi"
    ) -> None:
        if fmt not in PROMPT_FORMATS:
            raise ConfigError("fmt", f"got {fmt!r}; expected one of {list(PROMPT_FORMATS)}")
        if style not in PROMPT_STYLES:
            raise ConfigError("style", f"got {style!r}; expected one of {list(PROMPT_STYLES)}")
        if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 2:
            raise ConfigError(
                "max_len", f"got {max_len!r}; expected an int >= 2 (BOS plus at least one token)"
            )
        path = Path(model_path).expanduser()
        if path.is_dir():
            path = find_tokenizer(path)
        if not path.is_file():
            raise CheckpointError(
                f"tokenizer model '{path}' not found; ship PaliGemma's tokenizer"
                f" ({', '.join(TOKENIZER_FILES)}) beside the checkpoint or point policy.tokenizer at it"
            )
        self._sp: sentencepiece.SentencePieceProcessor | None = None
        self._hf: Any = None
        self._pad_id = PAD_ID
        if fmt == "smolvla":
            if not _is_json(path):
                raise CheckpointError(
                    f"tokenizer '{path}' is not a Hugging Face tokenizer.json; SmolVLA needs its VLM's"
                    " tokenizer.json (policy.tokenizer)"
                )
            self._hf = _load_tokenizer_json(path, paligemma=False)
            self._pad_id = self._configure_smolvla(path, int(max_len))
        elif _is_json(path):
            self._hf = _load_tokenizer_json(path)
        else:
            self._sp = _load_sentencepiece(path)
        self._source = path
        self._max_len = int(max_len)
        self._fmt: PromptFormat = fmt
        self._style: PromptStyle = style
        self._warned_lengths: set[int] = set()

    def _configure_smolvla(self, path: Path, max_len: int) -> int:
        """Truncation as the Hugging Face tokenizer does it (tokenizer_config.json's side); the pad id.

        The `tokenizers` library truncates before its post-processor adds
        special tokens, keeping room for them, as transformers does.
        """
        import json

        settings: dict = {}
        config_path = path.parent / "tokenizer_config.json"
        if config_path.is_file():
            try:
                settings = json.loads(config_path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from exc
        side = settings.get("truncation_side", "right")
        if side not in ("left", "right"):
            raise CheckpointError(f"{config_path}: truncation_side must be 'left' or 'right', got {side!r}")
        self._hf.enable_truncation(max_len, direction=side)
        pad = settings.get("pad_token")
        pad_id = self._hf.token_to_id(pad) if isinstance(pad, str) else None
        return PAD_ID if pad_id is None else int(pad_id)

    @property
    def vocab_size(self) -> int:
        """One more than the largest id the tokenizer can give (the embedding must have as many rows)."""
        if self._sp is not None:
            return int(self._sp.get_piece_size())
        return int(self._hf.get_vocab_size(with_added_tokens=True))

    @property
    def max_len(self) -> int:
        return self._max_len

    @property
    def fmt(self) -> PromptFormat:
        return self._fmt

    @property
    def style(self) -> PromptStyle:
        return self._style

    @property
    def source(self) -> Path:
        """The tokenizer file that was loaded."""
        return self._source

    @property
    def kind(self) -> str:
        """Which form `source` is: "sentencepiece" or "tokenizer.json"."""
        return "sentencepiece" if self._sp is not None else "tokenizer.json"

    def _encode(self, text: str) -> list[int]:
        """Ids of `text` alone: no BOS, no EOS."""
        if self._sp is not None:
            return list(self._sp.encode(text))
        return list(self._hf.encode(text, add_special_tokens=False).ids)

    def encode_ids(self, prompt: str, state: np.ndarray | None = None) -> list[int]:
        r"""Token ids for the prompt before padding/truncation (BOS included).

        An empty (or whitespace-only) prompt is allowed: pi0 then gives
        BOS + "\n" (BOS + the whitespace + "\n" in the LeRobot style) and
        pi0.5 gives the template with an empty task, which is what the model
        would see for a missing instruction.
        """
        if not isinstance(prompt, str):
            raise ObservationError(f"prompt: got {type(prompt).__name__}; expected str")
        if self._fmt == "smolvla":
            # LeRobot's SmolVLA newline step, then the tokenizer with its special tokens (already
            # truncated to max_len here, as LeRobot's tokenizer step does).
            text = prompt if prompt.endswith("\n") else prompt + "\n"
            return list(self._hf.encode(text, add_special_tokens=True).ids)
        if self._fmt == "pi0":
            # The state goes to the action expert as a continuous token in
            # pi0, so it is deliberately not part of the text.
            if self._style == "lerobot":
                return [BOS_ID, *self._encode(prompt if prompt.endswith("\n") else prompt + "\n")]
            return [BOS_ID, *self._encode(clean_prompt(prompt)), *self._encode("\n")]
        if state is None:
            raise ObservationError(f"{self._fmt} prompts embed the normalized state; got state=None")
        bins = " ".join(str(int(b)) for b in discretize_state(state))
        if self._fmt == "pi0fast":
            if self._style == "lerobot":
                text = clean_prompt(prompt)
            else:  # openpi's FASTTokenizer: lower-cased, '_' -> space, newlines kept
                text = prompt.lower().strip().replace("_", " ")
            return [BOS_ID, *self._encode(f"Task: {text}, State: {bins};\n")]
        return [BOS_ID, *self._encode(f"Task: {clean_prompt(prompt)}, State: {bins};\nAction: ")]

    @property
    def appends_bos(self) -> bool:
        """LeRobot's pi0-FAST: a second BOS after the padded prompt, in the last slot."""
        return self._fmt == "pi0fast" and self._style == "lerobot"

    def encode_text(self, text: str) -> list[int]:
        """Ids of `text` alone (no BOS / EOS), as the model would write it."""
        return self._encode(text)

    def piece_id(self, piece: str) -> int | None:
        """The id of the vocabulary piece spelled exactly `piece` (e.g. "|"), None if there is none."""
        if self._sp is not None:
            index = int(self._sp.piece_to_id(piece))
            return None if index == self._sp.unk_id() and piece != self._sp.id_to_piece(index) else index
        return self._hf.token_to_id(piece)

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
        budget = self._max_len - 1 if self.appends_bos else self._max_len
        if len(ids) > budget:
            if len(ids) not in self._warned_lengths:
                self._warned_lengths.add(len(ids))
                _LOG.warning(
                    "prompt is %d tokens, more than max_len=%d: truncating (the model sees a cut prompt)",
                    len(ids),
                    budget,
                )
            ids = ids[:budget]
        tokens = np.full((self._max_len,), self._pad_id, dtype=np.int32)
        tokens[: len(ids)] = ids
        mask = np.zeros((self._max_len,), dtype=bool)
        mask[: len(ids)] = True
        if self.appends_bos:
            tokens[-1], mask[-1] = BOS_ID, True
        return tokens, mask

    def decode(self, tokens: Iterable[int]) -> str:
        """Text of token ids; PAD, BOS and EOS decode to nothing."""
        ids = [int(t) for t in tokens]
        if self._sp is not None:
            return self._sp.decode(ids)
        if self._fmt == "smolvla":
            return self._hf.decode(ids, skip_special_tokens=True)
        kept = [i for i in ids if i not in (PAD_ID, EOS_ID, BOS_ID)]
        return self._hf.decode(kept, skip_special_tokens=False)


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
