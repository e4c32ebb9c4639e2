"""Prompt layouts for pi0 / pi0.5, state discretization and the stand-in tokenizer."""

import logging
import time

import numpy as np
import pytest

from vla_ros.errors import CheckpointError, ConfigError, ObservationError
from vla_ros.observation.tokenizer import discretize_state, PromptTokenizer, train_tokenizer


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tiny.model")


def test_trained_model_has_paligemma_special_ids(model_path):
    tok = PromptTokenizer(model_path, 48, "pi0")
    assert tok.vocab_size == 512
    sp = tok._sp
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "</s>", "<s>", "<unk>"]
    assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)


def test_training_is_fast_and_deterministic(tmp_path, model_path):
    start = time.perf_counter()
    again = train_tokenizer(tmp_path / "sub" / "again.model")
    assert time.perf_counter() - start < 5.0
    assert again.read_bytes() == model_path.read_bytes()


def test_training_rejects_tiny_vocab(tmp_path):
    with pytest.raises(ConfigError) as err:
        train_tokenizer(tmp_path / "x.model", vocab_size=100)
    assert err.value.parameter == "vocab_size"


def test_pi0_layout(model_path):
    tok = PromptTokenizer(model_path, 48, "pi0")
    tokens, mask = tok.tokenize("  pick_up the\nred block  ")
    assert tokens.shape == (48,) and tokens.dtype == np.int32
    assert mask.shape == (48,) and mask.dtype == np.bool_
    n = int(mask.sum())
    assert mask[:n].all() and not mask[n:].any()
    assert tokens[0] == 2  # BOS
    assert tokens[n - 1] == tok._sp.piece_to_id("\n")  # the "start of answer" token
    assert (tokens[n:] == 0).all()
    assert tok.decode(tokens[:n]) == "pick up the red block\n"
    # Padding and BOS decode to nothing.
    assert tok.decode(tokens) == "pick up the red block\n"


def test_pi0_ignores_state(model_path):
    tok = PromptTokenizer(model_path, 48, "pi0")
    a, _ = tok.tokenize("open the drawer")
    b, _ = tok.tokenize("open the drawer", np.array([0.3, -0.2]))
    np.testing.assert_array_equal(a, b)


def test_pi0_empty_prompt_is_bos_and_newline(model_path):
    tok = PromptTokenizer(model_path, 8, "pi0")
    tokens, mask = tok.tokenize("   ")
    newline = tok._sp.piece_to_id("\n")
    np.testing.assert_array_equal(tokens, [2, newline, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(mask, [True, True, False, False, False, False, False, False])


def test_pi05_layout(model_path):
    tok = PromptTokenizer(model_path, 200, "pi05")
    state = np.array([-1.0, 0.0, 0.999, 1.5], dtype=np.float32)
    tokens, mask = tok.tokenize("fold_the towel\n", state)
    n = int(mask.sum())
    assert tokens[0] == 2
    assert (tokens[n:] == 0).all() and not mask[n:].any()
    assert tok.decode(tokens[:n]) == "Task: fold the towel, State: 0 128 255 255;\nAction: "


def test_pi05_requires_state(model_path):
    tok = PromptTokenizer(model_path, 200, "pi05")
    with pytest.raises(ObservationError, match="state"):
        tok.tokenize("fold the towel")


def test_any_text_round_trips_through_byte_fallback(model_path):
    tok = PromptTokenizer(model_path, 200, "pi0")
    tokens, mask = tok.tokenize("Greif den Würfel, 日本 ✓")
    assert 3 not in tokens.tolist()  # no <unk>
    assert tok.decode(tokens[mask]) == "Greif den Würfel, 日本 ✓\n"


def test_truncation_keeps_prefix_and_warns_once_per_length(model_path, caplog):
    tok = PromptTokenizer(model_path, 200, "pi0")
    full_tokens, full_mask = tok.tokenize("stack the box on the plate then wipe the table")
    n = int(full_mask.sum())
    assert n > 5
    short = PromptTokenizer(model_path, 5, "pi0")
    with caplog.at_level(logging.WARNING, logger="vla_ros.observation.tokenizer"):
        tokens, mask = short.tokenize("stack the box on the plate then wipe the table")
        short.tokenize("stack the box on the plate then wipe the table")
        short.tokenize("stack the box on the plate then wipe the table and the bowl")
    np.testing.assert_array_equal(tokens, full_tokens[:5])
    assert mask.all()
    warnings = [r for r in caplog.records if "truncating" in r.getMessage()]
    assert len(warnings) == 2
    assert f"{n} tokens" in warnings[0].getMessage()


@pytest.mark.parametrize(
    "value, expected",
    [
        (-1.0, 0),  # first left edge
        (-0.9921876, 0),  # just below edge 1 = -1 + 1/128
        (-0.9921875, 1),  # exactly edge 1
        (-1e-9, 127),  # just below edge 128 = 0
        (0.0, 128),
        (0.9921874, 254),  # just below the last edge 1 - 1/128
        (0.9921875, 255),
        (1.0, 255),
        (7.0, 255),  # beyond 1: digitize puts it past the last edge
        (-1.0000001, -1),  # beyond -1: digitize gives 0, minus 1 (kept as the reference does)
    ],
)
def test_discretize_state_edges(value, expected):
    assert discretize_state(np.array([value]))[0] == expected


def test_discretize_state_rejects_bad_input():
    with pytest.raises(ObservationError, match="1-D"):
        discretize_state(np.zeros((2, 2)))
    with pytest.raises(ObservationError, match="NaN"):
        discretize_state(np.array([0.0, np.nan]))


def test_constructor_errors(model_path, tmp_path):
    with pytest.raises(ConfigError) as err:
        PromptTokenizer(model_path, 48, "pi1")
    assert err.value.parameter == "fmt"
    with pytest.raises(ConfigError) as err:
        PromptTokenizer(model_path, 0, "pi0")
    assert err.value.parameter == "max_len"
    with pytest.raises(CheckpointError, match="not found"):
        PromptTokenizer(tmp_path / "missing.model", 48, "pi0")
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a SentencePiece model"):
        PromptTokenizer(garbage, 48, "pi0")
