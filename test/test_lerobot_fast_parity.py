"""vla_ros' pi0-FAST against LeRobot 0.6.1's own PI0FastPolicy (test/fixtures/lerobot_0_6_1/pi0fast).

The fixture (its README.md says how it was made) holds LeRobot's prompt ids,
model-input images, greedy generated ids (KV-cache and no-cache paths) and
top-5 logits per step for two observations, plus LeRobot's detokenization of
a well-formed and a truncated token row. The weights are not committed: they
are rebuilt here from `weights_recipe.json` (test/lerobot_fast_weights.py),
bit for bit what LeRobot saved (checked by sha256).

The greedy check feeds LeRobot's own model inputs to vla_ros' network with
LeRobot's layout: the 200 right-padded prompt ids followed by one more BOS
(LeRobot appends it after the padding), first token read at that BOS, each
new token at the next position, stop at "|".
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
import shutil

import lerobot_fast_weights as weights
import numpy as np
import pytest

FOLDER = Path(__file__).resolve().parent / "fixtures" / "lerobot_0_6_1" / "pi0fast"
OBSERVATIONS = ("full", "missing")


@functools.lru_cache(maxsize=None)
def meta() -> dict:
    return json.loads((FOLDER / "expected_meta.json").read_text())


def _load(name: str, observation: str):
    return np.load(FOLDER / meta()["observations"][observation]["files"][name])


@pytest.fixture(scope="module")
def lerobot_dir(tmp_path_factory) -> Path:
    """The LeRobot checkpoint folder: rebuilt model.safetensors beside the committed LeRobot files."""
    folder = tmp_path_factory.mktemp("lerobot_pi0fast")
    path = weights.write_model_safetensors(folder, weights.load_recipe(FOLDER))
    for item in FOLDER.iterdir():
        if item.name.startswith(("config", "policy_")):
            shutil.copyfile(item, folder / item.name)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == meta()["weights"]["lerobot_model_safetensors_sha256"], "the recipe no longer rebuilds it"
    return folder


def _parser():
    from vla_ros.model.fast_tokenizer import ActionTokenParser, FastActionTokenizer

    m = meta()
    return ActionTokenParser(
        FastActionTokenizer.load(str(FOLDER / "fast_tokenizer")), vocab_size=m["text_vocab_size"],
        skip=m["fast_skip_tokens"], prefix_ids=m["action_prefix_ids"], end_id=m["special_ids"]["bar"],
        horizon=m["n_action_steps"], action_dim=m["action_dim"])


def test_detokenize_well_formed_matches_lerobot():
    files = meta()["detokenize"]["files"]
    tokens = np.load(FOLDER / files["well_formed_tokens"])
    ours = _parser().decode(tokens)
    expected = np.load(FOLDER / files["well_formed_normalized"])
    assert float(np.abs(np.asarray(ours, np.float64) - expected).max()) <= 1e-6


def test_malformed_rows_raise_where_lerobot_returns_actions():
    from vla_ros.errors import ActionDecodeError

    files = meta()["detokenize"]["files"]
    with pytest.raises(ActionDecodeError):  # LeRobot: zero-padded DCT coefficients, no error
        _parser().decode(np.load(FOLDER / files["truncated_tokens"]))
    with pytest.raises(ActionDecodeError):  # LeRobot: AssertionError, or zeros (= the mean) unchecked
        _parser().decode(_load("generated", "full"))


def _greedy(model, observation: str):
    """vla_ros' greedy ids and per-step logits on LeRobot's own model inputs, in LeRobot's layout."""
    import torch

    m, case = meta(), meta()["observations"][observation]
    with np.load(FOLDER / case["files"]["images"]) as f:
        pixels, image_masks = np.ascontiguousarray(f["images"].transpose(0, 2, 3, 1)), f["masks"]
    bos = m["special_ids"]["bos"]
    tokens = np.concatenate([_load("tokens", observation), [bos]])  # LeRobot appends BOS after the padding
    token_mask = np.concatenate([_load("token_mask", observation), [True]])
    from vla_ros.engines.decode import ConcatCacheDecoder

    history: list = []
    with torch.no_grad():
        cache, first = model.prefix(
            torch.from_numpy(pixels)[None], torch.from_numpy(image_masks)[None],
            torch.from_numpy(tokens)[None], torch.from_numpy(token_mask)[None])
        result = ConcatCacheDecoder(model, m["max_decoding_steps"]).generate(
            cache, first, stop_ids=(m["special_ids"]["bar"],), logits_out=history)
    ids = result.ids if result.stop is None else np.append(result.ids, result.stop)  # LeRobot keeps "|"
    return ids, torch.stack(history)[:, 0]


def _assert_matches_lerobot(model, observation: str) -> None:
    import torch

    case = meta()["observations"][observation]
    ids, logits = _greedy(model, observation)
    expected = _load("generated", observation)[: case["generated_tokens"]]
    assert ids.tolist() == expected.tolist()
    with np.load(FOLDER / case["files"]["top_logits"]) as top:
        values = logits.gather(1, torch.from_numpy(top["ids"])).numpy()
        assert float(np.abs(values - top["values"]).max()) <= 1e-4


@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_network_greedy_ids_match_lerobot(observation):
    """Pi0FastModel built for pi0fast-tiny, given the recipe's weights with LeRobot's untied head."""
    torch = pytest.importorskip("torch")
    pi0_fast = pytest.importorskip("vla_ros.model.pi0_fast")
    from vla_ros.model.config import get_config

    model = pi0_fast.Pi0FastModel(get_config("pi0fast-tiny"))
    head = model.paligemma_with_expert.paligemma.lm_head
    head.weight = torch.nn.Parameter(torch.empty_like(head.weight))  # LeRobot's head is its own tensor
    state = {key[len("model."):]: torch.from_numpy(value)
             for key, value in weights.generate(weights.load_recipe(FOLDER)).items()}
    model.load_state_dict(state, strict=True)
    _assert_matches_lerobot(model.eval(), observation)


def test_load_model_reads_the_lerobot_directory(lerobot_dir):
    """The same through load_model: sizes from the weights (config.json says gemma_2b), head untied."""
    pytest.importorskip("vla_ros.model.pi0_fast")
    from vla_ros.model.checkpoint import load_model

    model, cfg = load_model(lerobot_dir)
    assert cfg.is_fast and not model.head_is_tied
    _assert_matches_lerobot(model, "full")


# --- end to end through Policy.from_checkpoint, from the raw observation ------------------------

@pytest.fixture(scope="module")
def lerobot_policy(lerobot_dir):
    """The LeRobot directory as a user would point vla_ros at it, with the tokenizers beside it."""
    from vla_ros.policy import Policy, PolicyOptions

    for name in ("tokenizer", "fast_tokenizer"):
        if not (lerobot_dir / name).exists():
            shutil.copytree(FOLDER / name, lerobot_dir / name)
    options = PolicyOptions(device="cpu", precision="fp32", max_decoding_steps=meta()["max_decoding_steps"])
    return Policy.from_checkpoint(lerobot_dir, options)


def _raw_observation(policy, observation: str):
    from vla_ros.types import RawObservation

    case = meta()["observations"][observation]
    spec = policy.spec
    by_source = dict(zip(spec.camera_sources, spec.camera_keys))
    with np.load(FOLDER / case["files"]["observation"]) as f:
        cameras = [key for key in f.files if key.startswith("observation.images.")]
        images = {by_source[key.split(".")[-1]]: f[key] for key in cameras}
        return RawObservation(images=images, state=f["state"].copy(), prompt=str(f["prompt"]), timestamp=1.0)


@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_policy_prompt_state_and_greedy_ids_match_lerobot(lerobot_policy, observation):
    """Our own preprocessing (LeRobot conventions chosen from the directory) and decode engine."""
    policy = lerobot_policy
    spec = policy.spec
    assert (spec.variant, spec.provenance.source, spec.prompt_style) == ("pi0fast", "lerobot", "lerobot")
    assert spec.max_token_len == meta()["tokenizer_max_length"] + 1  # the appended BOS
    inputs, _ = policy.preprocess(_raw_observation(policy, observation))
    bos = meta()["special_ids"]["bos"]
    assert inputs.tokens.astype(np.int64).tolist() == [*_load("tokens", observation).tolist(), bos]
    assert inputs.token_masks.tolist() == [*_load("token_mask", observation).tolist(), True]
    state = _load("state", observation)
    assert float(np.abs(inputs.state[: state.shape[-1]] - state.reshape(-1)).max()) <= 1e-5
    policy.engine.encode_prefix(inputs)
    result = policy.engine.decode(policy._stop_ids)
    case = meta()["observations"][observation]
    expected = _load("generated", observation)[: case["generated_tokens"]]
    assert result.ids.tolist() == expected.tolist() and result.stop is None
