"""Seeded weights (and the padded stand-in vocabulary) of the LeRobot pi0-FAST parity fixture.

The fixture in test/fixtures/lerobot_0_6_1/pi0fast/ is a tiny LeRobot 0.6.1
pi0-FAST whose two vocabulary matrices (embed_tokens and lm_head, 257152 x 64
float32 each) are far too big to commit. Instead every parameter comes from a
recipe (``weights_recipe.json``: the seed and, per key, its shape, scale and
offset), pure numpy, so that scripts/make_lerobot_fixtures.py (inside a LeRobot
venv) and the tests (here) build the same bits:

    for the i-th key in sorted order:
        rng = numpy.random.default_rng([seed, i])
        value = (offset + scale * rng.standard_normal(shape)).astype(float32)

(`standard_normal` draws float64; the product and sum are float64, then one
rounding to float32.) The scale and offset of a key follow `scale_offset`:
matrices std 1/sqrt(fan_in) (the language model's q_proj and k_proj 3x that, so
that attention is peaked and the greedy ids react to single prompt tokens and
pixels instead of averaging ~970 prefix tokens away), biases std 0.1, SigLIP
LayerNorm weights 1 + 0.1 n, Gemma RMSNorm weights 0.1 n (Gemma multiplies by
1 + w).

`write_model_safetensors` writes the ``model.safetensors`` LeRobot's
`save_pretrained` wrote for that policy (same keys, shapes, dtype and values;
the fixture script checks the tensors, and the bytes, against LeRobot's file).

`padded_tokenizer_json` reproduces the Hugging Face tokenizer the fixture
script gave LeRobot: the committed 512-piece stand-in, with never-produced
pieces appended up to PaliGemma's 257152 ids (LeRobot maps FAST ids with the
tokenizer's `vocab_size`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

RECIPE_FILE = "weights_recipe.json"
MATRIX_GAIN = 1.0
ATTENTION_GAIN = 3.0
BIAS_STD = 0.1
NORM_STD = 0.1


def scale_offset(key: str, shape) -> tuple[float, float]:
    """(scale, offset) of one parameter of LeRobot's PI0FastPytorch, from its key and shape."""
    shape = tuple(int(d) for d in shape)
    leaf = key.rsplit(".", 1)[-1]
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        gain = ATTENTION_GAIN if "language_model" in key and leaf == "weight" \
            and key.endswith(("q_proj.weight", "k_proj.weight")) else MATRIX_GAIN
        return gain / math.sqrt(fan_in), 0.0
    if leaf == "bias":
        return BIAS_STD, 0.0
    if "vision_tower" in key:  # SigLIP LayerNorm: x * w + b
        return NORM_STD, 1.0
    return NORM_STD, 0.0  # Gemma RMSNorm: x * (1 + w)


def make_recipe(shapes: dict, seed: int) -> dict:
    """The recipe (JSON-ready) for a {key: shape} mapping: keys sorted, one entry per key."""
    entries = []
    for key in sorted(shapes):
        shape = [int(d) for d in shapes[key]]
        scale, offset = scale_offset(key, shape)
        entries.append({"key": key, "shape": shape, "scale": scale, "offset": offset})
    return {"seed": int(seed), "dtype": "float32", "keys": entries}


def load_recipe(path) -> dict:
    """A recipe from ``weights_recipe.json`` (a file, or a folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / RECIPE_FILE
    return json.loads(path.read_text())


def generate(recipe: dict) -> dict[str, np.ndarray]:
    """Every parameter of the recipe as a float32 array, in sorted key order."""
    keys = [entry["key"] for entry in recipe["keys"]]
    if keys != sorted(keys):
        raise ValueError("recipe keys must be in sorted order (the index i seeds each key)")
    seed = int(recipe["seed"])
    arrays = {}
    for index, entry in enumerate(recipe["keys"]):
        rng = np.random.default_rng([seed, index])
        draw = rng.standard_normal(tuple(entry["shape"]))
        arrays[entry["key"]] = (float(entry["offset"]) + float(entry["scale"]) * draw).astype(np.float32)
    return arrays


def write_model_safetensors(folder, recipe: dict | None = None) -> Path:
    """Write ``<folder>/model.safetensors`` from the recipe (default: the one in `folder`)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    if recipe is None:
        recipe = load_recipe(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors"
    save_file(generate(recipe), str(path))  # no metadata, as LeRobot's save_model writes it
    return path


def pad_piece(index: int, vocab_size: int) -> str:
    """The name of appended piece `index`: PaliGemma's <locNNNN> / <segNNN> at the top, <fillNNNNNN> below."""
    top_loc = vocab_size - 128 - 1024
    if index >= vocab_size - 128:
        return f"<seg{index - (vocab_size - 128):03d}>"
    if index >= top_loc:
        return f"<loc{index - top_loc:04d}>"
    return f"<fill{index:06d}>"


def padded_tokenizer_json(tokenizer_json: str, vocab_size: int = 257152) -> str:
    """A Hugging Face tokenizer.json with pieces appended to the model vocabulary up to `vocab_size`.

    The appended pieces have no merges (BPE) and names no text contains, so
    encoding is unchanged; they only make `vocab_size` and id <-> token
    conversion cover the whole PaliGemma id range.
    """
    data = json.loads(tokenizer_json)
    model = data["model"]
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"expected a BPE tokenizer.json, got model type {model.get('type')!r}")
    vocab = model["vocab"]
    start = len(vocab)
    if sorted(vocab.values()) != list(range(start)):
        raise ValueError("tokenizer.json vocabulary ids are not 0..n-1")
    if start > vocab_size:
        raise ValueError(f"tokenizer has {start} pieces, more than {vocab_size}")
    for index in range(start, vocab_size):
        name = pad_piece(index, vocab_size)
        if name in vocab:
            raise ValueError(f"padding piece {name!r} already in the vocabulary")
        vocab[name] = index
    return json.dumps(data, ensure_ascii=False)
