"""Both tokenizer forms (SentencePiece, Hugging Face tokenizer.json), the finder, and the two prompt styles.

The Hugging Face form is made here from the tiny SentencePiece model by
transformers' own conversion (what `AutoTokenizer.from_pretrained` does with
a directory holding `tokenizer.model` and a GemmaTokenizer
`tokenizer_config.json`, as LeRobot loads PaliGemma's), then saved as
`tokenizer.json` and read back by `PromptTokenizer` with the `tokenizers`
library alone.
"""

import json
import shutil

import numpy as np
import pytest

from vla_ros.errors import CheckpointError, ConfigError
from vla_ros.observation.tokenizer import (
    BOS_ID,
    EOS_ID,
    find_tokenizer,
    PAD_ID,
    PromptTokenizer,
    train_tokenizer,
)

# Unicode (byte fallback), digits, punctuation, whitespace runs, tabs,
# underscores, inner and trailing newlines, empty, and long prompts that
# overflow 48 tokens.
PROMPTS = [
    "pick up the red block",
    "Greif den Würfel, 日本 ✓",
    "Ünïcödé façade — “quotes” ‘x’ … emoji 🤖!",
    "123 4567 -1 255; 0.5, 1e-3",
    "Turn the faucet on (slowly) and off again?! [x] {y} <z> a/b\\c @#$%^&*=+~`|",
    "  two  spaces  and a\ttab ",
    "pick_up the block \n",
    "a\nb\n\nc",
    "",
    "   ",
    "\n",
    "Sort the objects by colour: red, green and blue! " * 6,
    "x" * 150,
]
STATES = [
    np.array([0.3, -0.2, 5.0, 0.1]),
    np.array([-1.5, -1.0, 0.0, 0.999, 1.0]),
    np.linspace(-1.0, 1.0, 32),
]
LAYOUTS = [("pi0", 48), ("pi05", 200), ("pi0", 8), ("pi05", 20)]  # the short ones truncate


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(sp_model, hf_source_dir, tokenizer_json, transformers_tokenizer)."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    sp_model = train_tokenizer(root / "sp" / "tokenizer.model")
    # A Hugging Face tokenizer directory as PaliGemma's looks before conversion:
    # tokenizer.model plus a GemmaTokenizer config naming the special pieces.
    source = root / "hf_source"
    source.mkdir()
    shutil.copy(sp_model, source / "tokenizer.model")
    (source / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
    }))
    hf = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    hf.save_pretrained(str(root / "hf"))
    tokenizer_json = root / "hf" / "tokenizer.json"
    return sp_model, source, tokenizer_json, hf


def test_conversion_is_a_real_bpe_tokenizer_json(converted):
    # A broken conversion (an empty vocabulary, or BOS appended as a new id)
    # must not pass as a Hugging Face tokenizer.
    _, _, tokenizer_json, _ = converted
    data = json.loads(tokenizer_json.read_text())
    assert data["model"]["type"] == "BPE" and data["model"]["byte_fallback"]
    assert len(data["model"]["vocab"]) >= 512 and len(data["model"]["merges"]) > 100
    tok = PromptTokenizer(tokenizer_json, 48, "pi0")
    assert tok.kind == "tokenizer.json" and tok.source == tokenizer_json
    assert tok.vocab_size >= 512


@pytest.mark.parametrize("style", ["openpi", "lerobot"])
@pytest.mark.parametrize("fmt, max_len", LAYOUTS)
def test_tokenizer_json_gives_the_sentencepiece_ids(converted, fmt, max_len, style):
    sp_model, _, tokenizer_json, _ = converted
    sp = PromptTokenizer(sp_model, max_len, fmt, style)
    hf = PromptTokenizer(tokenizer_json, max_len, fmt, style)
    assert sp.kind == "sentencepiece"
    states = STATES if fmt == "pi05" else [None]
    truncated = 0
    for prompt in PROMPTS:
        for state in states:
            want = sp.encode_ids(prompt, state)
            assert hf.encode_ids(prompt, state) == want, (prompt, state)
            assert want[0] == BOS_ID and EOS_ID not in want[1:]
            tokens, mask = hf.tokenize(prompt, state)
            sp_tokens, sp_mask = sp.tokenize(prompt, state)
            np.testing.assert_array_equal(tokens, sp_tokens)
            np.testing.assert_array_equal(mask, sp_mask)
            truncated += len(want) > max_len
            if len(want) <= max_len:
                assert hf.decode(tokens) == sp.decode(sp_tokens)
    assert truncated > 0  # the long prompts did get cut


@pytest.mark.parametrize("fmt, max_len", [("pi0", 48), ("pi05", 200), ("pi0", 8)])
def test_lerobot_style_matches_the_transformers_call_lerobot_makes(converted, fmt, max_len):
    # LeRobot: Pi0NewLineProcessor (pi0) or Pi05PrepareStateTokenizerProcessorStep
    # (pi0.5) builds the text, then TokenizerProcessorStep calls the tokenizer so.
    from vla_ros.observation.tokenizer import clean_prompt, discretize_state

    sp_model, source, tokenizer_json, hf = converted
    state = STATES[1]
    texts = []
    for prompt in PROMPTS:
        if fmt == "pi0":
            texts.append(prompt if prompt.endswith("\n") else prompt + "\n")
        else:
            bins = " ".join(map(str, discretize_state(state)))
            texts.append(f"Task: {clean_prompt(prompt)}, State: {bins};\nAction: ")
    out = hf(texts, max_length=max_len, truncation=True, padding="max_length", padding_side="right",
             return_tensors="np")
    # tokenizer.json, tokenizer.model and the Hugging Face directory (read as its tokenizer.model)
    for path in (tokenizer_json, sp_model, source):
        tok = PromptTokenizer(path, max_len, fmt, style="lerobot")
        for i, prompt in enumerate(PROMPTS):
            tokens, mask = tok.tokenize(prompt, state if fmt == "pi05" else None)
            np.testing.assert_array_equal(tokens, out["input_ids"][i], err_msg=f"{path.name}: {prompt!r}")
            np.testing.assert_array_equal(mask, out["attention_mask"][i].astype(bool))


def test_tokenizer_json_ignores_saved_truncation_and_padding(converted, tmp_path):
    # A saved tokenizer.json may carry truncation / padding settings (e.g. from a
    # batch call before saving); the prompt layout must not be cut or padded by them.
    from tokenizers import Tokenizer

    sp_model, _, tokenizer_json, _ = converted
    raw = Tokenizer.from_file(str(tokenizer_json))
    raw.enable_truncation(max_length=6)
    raw.enable_padding(length=6, pad_id=PAD_ID, pad_token="<pad>")
    path = tmp_path / "tokenizer.json"
    raw.save(str(path))
    assert json.loads(path.read_text())["truncation"]["max_length"] == 6
    prompt = "stack the box on the plate then wipe the table"
    want = PromptTokenizer(sp_model, 48, "pi0").encode_ids(prompt)
    assert len(want) > 6
    assert PromptTokenizer(path, 48, "pi0").encode_ids(prompt) == want
    assert PromptTokenizer(path, 48, "pi0").encode_ids("") == [BOS_ID, want[-1]]


def test_tokenizer_json_is_recognized_by_content(converted, tmp_path):
    sp_model, _, tokenizer_json, _ = converted
    renamed = tmp_path / "paligemma.tokenizer"
    shutil.copy(tokenizer_json, renamed)
    tok = PromptTokenizer(renamed, 48, "pi0")
    assert tok.kind == "tokenizer.json"
    want = PromptTokenizer(sp_model, 48, "pi0").encode_ids("open the drawer")
    assert tok.encode_ids("open the drawer") == want


def test_bad_tokenizer_json_is_refused(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    garbage = tmp_path / "tokenizer.json"
    garbage.write_text('{"not": "a tokenizer"}')
    with pytest.raises(CheckpointError, match="is not a Hugging Face tokenizer.json"):
        PromptTokenizer(garbage, 48, "pi0")
    # A valid file with another model's special ids (Llama's: <unk> 0, <s> 1, </s> 2).
    other = tmp_path / "llama" / "tokenizer.json"
    other.parent.mkdir()
    Tokenizer(WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3}, unk_token="<unk>")).save(str(other))
    with pytest.raises(CheckpointError, match="expected PaliGemma's '<bos>' at 2 and '<pad>' at 0"):
        PromptTokenizer(other, 48, "pi0")


# --- the two prompt conventions ---------------------------------------------


@pytest.fixture(scope="module")
def sp_model(converted):
    return converted[0]


def test_lerobot_pi0_appends_newline_to_the_raw_task(sp_model):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_model))
    lerobot = PromptTokenizer(sp_model, 48, "pi0", style="lerobot")
    openpi = PromptTokenizer(sp_model, 48, "pi0")
    prompt = "pick_up the block "
    assert lerobot.encode_ids(prompt) == [BOS_ID, *sp.encode("pick_up the block \n")]
    assert openpi.encode_ids(prompt) == [BOS_ID, *sp.encode("pick up the block"), *sp.encode("\n")]
    tokens, mask = lerobot.tokenize(prompt)
    assert lerobot.decode(tokens) == "pick_up the block \n"  # no strip, '_' kept
    assert openpi.decode(openpi.tokenize(prompt)[0]) == "pick up the block\n"


def test_lerobot_pi0_keeps_newlines_and_adds_none_when_present(sp_model):
    newline = PromptTokenizer(sp_model, 48, "pi0").encode_ids("")[-1]
    lerobot = PromptTokenizer(sp_model, 48, "pi0", style="lerobot")
    ends = lerobot.encode_ids("open the drawer\n")
    assert ends == lerobot.encode_ids("open the drawer")  # "\n" is not doubled
    assert ends.count(newline) == 1 and ends[-1] == newline
    inner = lerobot.encode_ids("open\nthe drawer")
    assert inner.count(newline) == 2  # the inner newline is kept, not made a space
    assert lerobot.encode_ids("") == [BOS_ID, newline]
    assert lerobot.decode(lerobot.tokenize("  go\n\n")[0]) == "  go\n\n"


def test_styles_agree_on_clean_pi0_prompts_and_on_pi05(sp_model):
    for prompt in ("pick up the red block", "Insert the peg into the socket."):
        assert (PromptTokenizer(sp_model, 48, "pi0", "lerobot").encode_ids(prompt)
                == PromptTokenizer(sp_model, 48, "pi0", "openpi").encode_ids(prompt))
    # pi0.5: LeRobot copies openpi's format, cleaning included.
    state = np.array([0.3, -0.2, -1.5])
    lerobot = PromptTokenizer(sp_model, 200, "pi05", "lerobot")
    openpi = PromptTokenizer(sp_model, 200, "pi05", "openpi")
    prompt = "  fold_the towel\n"
    assert lerobot.encode_ids(prompt, state) == openpi.encode_ids(prompt, state)
    text = lerobot.decode(lerobot.tokenize(prompt, state)[0])
    assert text == "Task: fold the towel, State: 166 102 -1;\nAction: "


def test_style_is_validated(sp_model):
    with pytest.raises(ConfigError) as err:
        PromptTokenizer(sp_model, 48, "pi0", style="hf")
    assert err.value.parameter == "style"
    assert PromptTokenizer(sp_model, 48, "pi0").style == "openpi"


# --- finding the tokenizer --------------------------------------------------


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_finder_order_beside_the_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    # openpi's paligemma_tokenizer.model first, beside the checkpoint and then in assets/*/ (the order
    # before LeRobot support), then the Hugging Face files.
    expected = [
        _touch(ckpt / "paligemma_tokenizer.model"),
        _touch(ckpt / "assets" / "robot" / "paligemma_tokenizer.model"),
        _touch(ckpt / "assets" / "zebra" / "paligemma_tokenizer.model"),
        _touch(ckpt / "tokenizer.model"),
        _touch(ckpt / "tokenizer.json"),
        _touch(ckpt / "tokenizer" / "paligemma_tokenizer.model"),
        _touch(ckpt / "tokenizer" / "tokenizer.model"),
        _touch(ckpt / "tokenizer" / "tokenizer.json"),
        _touch(ckpt / "assets" / "robot" / "tokenizer.model"),
        _touch(ckpt / "assets" / "robot" / "other.model"),  # the only *.model left
    ]
    for path in expected:
        assert find_tokenizer(ckpt) == path
        assert find_tokenizer(ckpt, "") == path  # an unset parameter
        path.unlink()
    with pytest.raises(CheckpointError):
        find_tokenizer(ckpt)


def test_override_comes_first_and_is_the_only_place_searched(tmp_path):
    ckpt = tmp_path / "ckpt"
    _touch(ckpt / "paligemma_tokenizer.model")
    override_file = _touch(tmp_path / "elsewhere" / "my.model")
    assert find_tokenizer(ckpt, override_file) == override_file
    assert find_tokenizer(ckpt, str(override_file)) == override_file
    hf_dir = tmp_path / "paligemma-3b-pt-224"
    nested = _touch(hf_dir / "tokenizer" / "tokenizer.json")
    assert find_tokenizer(ckpt, hf_dir) == nested
    top = _touch(hf_dir / "tokenizer.json")
    assert find_tokenizer(ckpt, hf_dir) == top
    sp = _touch(hf_dir / "tokenizer.model")
    assert find_tokenizer(ckpt, hf_dir) == sp  # tokenizer.model before tokenizer.json
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError) as err:
        find_tokenizer(ckpt, empty)  # no fallback to the checkpoint's file
    message = str(err.value)
    assert "\n" not in message and f"policy.tokenizer '{empty}'" in message
    assert f"looked in {empty} and {empty / 'tokenizer'}" in message
    with pytest.raises(CheckpointError, match="does not exist"):
        find_tokenizer(ckpt, tmp_path / "missing")


def test_missing_tokenizer_is_one_line_that_says_what_where_and_how(tmp_path):
    ckpt = tmp_path / "ckpt"
    _touch(ckpt / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        find_tokenizer(ckpt)
    message = str(err.value)
    assert "\n" not in message
    for needed in ("paligemma_tokenizer.model", "tokenizer.model", "tokenizer.json"):  # which file
        assert needed in message
    for place in (str(ckpt), str(ckpt / "tokenizer"), str(ckpt / "assets")):  # where it looked
        assert place in message
    assert "gs://big_vision/paligemma_tokenizer.model" in message  # where it comes from
    assert "google/paligemma-3b-pt-224" in message
    assert "policy.tokenizer" in message  # how to point at it
    # The tokenizer a LeRobot preprocessor names goes into the hint.
    with pytest.raises(CheckpointError, match="'acme/tok', the tokenizer the checkpoint's preprocessor"):
        find_tokenizer(ckpt, named="acme/tok")
    with pytest.raises(CheckpointError, match=r"policy\.tokenizer '.*'acme/tok'"):
        find_tokenizer(ckpt, tmp_path / "missing", named="acme/tok")
    _touch(ckpt / "a.model")
    _touch(ckpt / "b.model")
    with pytest.raises(CheckpointError, match=r"several other \*\.model files.*'a\.model', 'b\.model'"):
        find_tokenizer(ckpt)


def test_prompt_tokenizer_takes_a_directory(converted, tmp_path):
    sp_model, source, tokenizer_json, _ = converted
    ckpt = tmp_path / "lerobot_ckpt"
    shutil.copy(tokenizer_json, _touch(ckpt / "tokenizer" / "tokenizer.json"))
    tok = PromptTokenizer(ckpt, 48, "pi0", "lerobot")
    assert tok.source == ckpt / "tokenizer" / "tokenizer.json" and tok.kind == "tokenizer.json"
    assert PromptTokenizer(source, 48, "pi0").kind == "sentencepiece"  # tokenizer.model comes first
    unrelated = _touch(tmp_path / "unrelated" / "notes.txt").parent
    with pytest.raises(CheckpointError, match="no tokenizer for checkpoint"):
        PromptTokenizer(unrelated, 48, "pi0")
