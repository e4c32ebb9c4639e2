"""pi0-FAST: the model, the static-cache decode stage and its references, prompts, checkpoints.

The must-hold of issue 11: the decode runtime with a static cache equals a
decode that recomputes the whole sequence without a cache (greedy ids
identical, logits within 1e-4 in fp32) for at least 32 steps.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
import torch

from vla_ros.engines.decode import (
    _cut_at_stop,
    ConcatCacheDecoder,
    gumbel_choice,
    StaticDecoder,
)
from vla_ros.errors import ActionDecodeError, ConfigError
from vla_ros.model.checkpoint import (
    config_from_checkpoint,
    EMBED_KEY,
    LM_HEAD_KEY,
    load_model,
    random_model,
    save_checkpoint,
)
from vla_ros.model.config import DecodeConfig, get_config, PolicyConfig
from vla_ros.model.pi0_fast import last_real_index, Pi0FastModel

STEPS = 33  # the issue asks for at least 32
SHORT = 16


def _model(scale: float = 0.3, seed: int = 0) -> Pi0FastModel:
    """pi0fast-tiny with weights large enough that greedy decoding wanders over the vocabulary."""
    generator = torch.Generator().manual_seed(seed)
    model = random_model(get_config("pi0fast-tiny"), seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            std = 0.1 if "norm" in name else scale
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model.eval()


def _inputs(seed: int = 0, cameras=(True, False, True), prompt_len: int = 17):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 255, (1, 3, 224, 224, 3), dtype=torch.uint8, generator=generator)
    image_masks = torch.tensor([cameras])
    tokens = torch.zeros(1, 200, dtype=torch.long)
    tokens[0, :prompt_len] = torch.randint(3, 500, (prompt_len,), generator=generator)
    tokens[0, 0] = 2
    return images, image_masks, tokens, tokens != 0


@pytest.fixture(scope="module")
def model():
    return _model()


def _static(model, inputs, max_new=64, **kwargs) -> StaticDecoder:
    cache, first = model.prefix(*inputs)
    decoder = StaticDecoder(model, max_new, **kwargs)
    decoder.prefix_keys.copy_(cache.keys)
    decoder.prefix_values.copy_(cache.values)
    decoder.prefix_pad.copy_(cache.pad_mask)
    decoder.start(first)
    return decoder


def test_static_cache_decode_equals_recomputing_without_cache(model):
    inputs = _inputs()
    ids_ref, logits_ref = model.generate_no_cache(*inputs, STEPS, stop_ids=())
    decoder = _static(model, inputs)
    logits = [decoder.first_logits.clone()]
    for _ in range(STEPS - 1):
        decoder.step()
        logits.append(decoder.logits.clone())
    ids = decoder.history[:STEPS]
    assert len(set(ids.tolist())) > STEPS // 2, "degenerate decode: the check would be weak"
    assert torch.equal(ids, ids_ref[0])
    worst = max(float((a - b).abs().max()) for a, b in zip(logits, logits_ref))
    assert worst <= 1e-4, worst
    # And through generate(): the same ids.
    again = _static(model, inputs).generate(max_new_tokens=STEPS)
    assert again.ids.tolist() == ids_ref[0].tolist() and again.stop is None


def test_concatenating_cache_equals_static_and_honours_the_position_gap(model):
    inputs = _inputs(seed=1, cameras=(True, True, True), prompt_len=30)
    cache, first = model.prefix(*inputs)
    for gap in (0, 1):
        concat = ConcatCacheDecoder(model, SHORT, position_gap=gap).generate(cache, first)
        static = _static(model, inputs, position_gap=gap).generate(max_new_tokens=SHORT)
        assert concat.ids.tolist() == static.ids.tolist()
    with_gap = _static(model, inputs, position_gap=1).generate(max_new_tokens=SHORT).ids
    assert with_gap[0] == concat.ids[0]  # the first token comes from the prefix, before any position
    assert with_gap.tolist() != ConcatCacheDecoder(model, SHORT).generate(cache, first).ids.tolist()


def test_prefix_padding_and_masked_cameras_do_not_change_the_decode(model):
    """Masked cameras and prompt padding take no positions: dropping them gives the same tokens."""
    images, image_masks, tokens, token_masks = _inputs(seed=2)
    full = _static(model, (images, image_masks, tokens, token_masks)).generate(max_new_tokens=24)
    keep = image_masks[0]
    real = token_masks[0]
    compact = (images[:, keep], image_masks[:, keep], tokens[:, real], token_masks[:, real])
    cache, first = model.prefix(*compact)
    short = ConcatCacheDecoder(model, 24).generate(cache, first)
    assert full.ids.tolist() == short.ids.tolist()


def test_generation_stops_at_a_stop_token_and_excludes_it(model):
    inputs = _inputs(seed=3)
    ids = _static(model, inputs).generate(max_new_tokens=SHORT).ids.tolist()
    stop = ids[10]
    first = ids.index(stop)
    for check_every in (1, 8):  # GPUs read the history every few tokens: same result
        decoder = _static(model, inputs)
        result = decoder.generate(stop_ids=(stop,), max_new_tokens=SHORT, check_every=check_every)
        assert result.ids.tolist() == ids[:first]
        assert result.stop == stop and result.num_tokens == first + 1
    assert _cut_at_stop(np.array([5, 6, 7]), {9}).stop is None


def test_gumbel_max_samples_the_softmax_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 3.0]])
    generator = torch.Generator().manual_seed(0)
    draws = 20000
    counts = np.zeros(5)
    for value in gumbel_choice(logits.expand(draws, -1), 0.7, generator).tolist():
        counts[value] += 1
    expected = torch.softmax(logits[0] / 0.7, dim=0).numpy()
    # 4 standard errors of a binomial proportion.
    assert np.all(np.abs(counts / draws - expected) < 4 * np.sqrt(expected * (1 - expected) / draws))


def test_temperature_sampling_in_the_static_step_is_seeded(model):
    inputs = _inputs(seed=4)
    runs = [_static(model, inputs, temperature=1.0, seed=7).generate(max_new_tokens=16).ids
            for _ in range(2)]
    assert runs[0].tolist() == runs[1].tolist()
    greedy = _static(model, inputs).generate(max_new_tokens=16).ids
    assert runs[0].tolist() != greedy.tolist()
    cache, first = model.prefix(*inputs)  # the reference engine samples too, seeded the same way
    concat = [ConcatCacheDecoder(model, 16, temperature=1.0, seed=7).generate(cache, first).ids
              for _ in range(2)]
    assert concat[0].tolist() == concat[1].tolist() != greedy.tolist()


def test_last_real_index():
    pad = torch.tensor([[True, True, False, True, False], [True, False, False, False, False]])
    assert last_real_index(pad).tolist() == [3, 0]


# --- config and checkpoints ------------------------------------------------------------------

def test_pi0fast_configs():
    for name in ("pi0fast", "pi0fast-tiny"):
        cfg = get_config(name)
        assert cfg.is_fast and cfg.variant == "pi0fast" and cfg.expert is None and cfg.state_in_prompt
        sizes = (cfg.vocab_size, cfg.max_token_len, cfg.action_horizon, cfg.action_dim)
        assert sizes == (257152, 200, 50, 32)
        assert cfg.decode.max_decoding_steps == 256 and cfg.decode.fast_skip_tokens == 128
        assert PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    tiny, pi0 = get_config("pi0fast-tiny"), get_config("pi0-tiny")
    assert (tiny.vision, tiny.prefix) == (pi0.vision, pi0.prefix)
    with pytest.raises(ConfigError, match="expert"):
        PolicyConfig("x", False, tiny.vision, tiny.prefix, None)
    with pytest.raises(ConfigError, match="pi05"):
        PolicyConfig("x", True, tiny.vision, tiny.prefix, None, decode=DecodeConfig())
    with pytest.raises(ConfigError, match="decode.max_decoding_steps"):
        DecodeConfig(max_decoding_steps=0)


def test_tied_head_is_saved_once_and_loaded_tied(tmp_path):
    model = random_model(get_config("pi0fast-tiny"), seed=3)
    assert model.head_is_tied
    save_checkpoint(model, tmp_path)
    names = load_file(str(tmp_path / "model.safetensors")).keys()
    assert EMBED_KEY in names and LM_HEAD_KEY not in names
    loaded, cfg = load_model(tmp_path)
    assert cfg.is_fast and loaded.head_is_tied
    bf16, _ = load_model(tmp_path, dtype=torch.bfloat16)
    assert bf16.head_is_tied and bf16.lm_head.weight.dtype == torch.bfloat16


def test_untied_head_is_loaded_as_its_own_tensor(tmp_path, caplog):
    """LeRobot's pi0-FAST saves lm_head apart from the embedding: the logits must use the head."""
    model = random_model(get_config("pi0fast-tiny"), seed=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state[LM_HEAD_KEY] = torch.randn_like(state[EMBED_KEY]) * 0.05
    # The openpi layout without vla_ros' resolved config: sizes from the shapes.
    save_file({f"model.{k}": v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"type": "pi0fast", "max_token_len": 200}))
    with caplog.at_level("WARNING"):
        cfg = config_from_checkpoint(tmp_path)
    assert cfg.is_fast and cfg.vocab_size == 257152 and cfg.prefix == get_config("pi0fast-tiny").prefix
    assert "names no action_horizon / chunk_size: using pi0fast's 50" in caplog.text
    loaded, _ = load_model(tmp_path)
    assert not loaded.head_is_tied
    assert torch.equal(loaded.lm_head.weight, state[LM_HEAD_KEY])
    hidden = torch.randn(1, cfg.prefix.width)
    assert torch.allclose(loaded.logits(hidden), hidden @ state[LM_HEAD_KEY].T, atol=1e-5)


def test_a_pi0_type_on_fast_weights_is_refused(tmp_path):
    model = random_model(get_config("pi0fast-tiny"), seed=5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != LM_HEAD_KEY},
              str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"type": "pi0"}))
    with pytest.raises(Exception, match="no action expert"):
        config_from_checkpoint(tmp_path)


# --- prompts, action text and the Policy facade ------------------------------------------------

def test_fast_prompt_layouts(tiny_fast_checkpoint):
    from vla_ros.observation.tokenizer import BOS_ID, PromptTokenizer

    state = np.array([-1.0, 0.0, 0.5, 0.999], dtype=np.float32)
    openpi = PromptTokenizer(tiny_fast_checkpoint / "tokenizer.model", 200, "pi0fast", "openpi")
    lerobot = PromptTokenizer(tiny_fast_checkpoint / "tokenizer.model", 201, "pi0fast", "lerobot")
    prompt = "  Pick_up the Cube\n"
    ids = openpi.encode_ids(prompt, state)
    assert ids[0] == BOS_ID
    assert openpi.decode(ids) == "Task: pick up the cube, State: 0 128 192 255;\n"
    expected = "Task: Pick up the Cube, State: 0 128 192 255;\n"
    assert lerobot.decode(lerobot.encode_ids(prompt, state)) == expected
    tokens, mask = lerobot.tokenize(prompt, state)
    assert tokens.shape == (201,) and tokens[-1] == BOS_ID and mask[-1] and not mask[-2]
    tokens, mask = openpi.tokenize(prompt, state)
    assert tokens.shape == (200,) and not mask[-1]
    long = "word " * 300  # truncation keeps the appended BOS
    tokens, mask = lerobot.tokenize(long, state)
    assert mask.all() and tokens[-1] == BOS_ID and tokens[0] == BOS_ID
    assert openpi.piece_id("|") is not None and openpi.piece_id("no such piece") is None


@pytest.fixture(scope="module")
def fast_policy(tiny_fast_checkpoint):
    from vla_ros.policy import Policy, PolicyOptions

    return Policy.from_checkpoint(tiny_fast_checkpoint, PolicyOptions(max_decoding_steps=32))


def test_action_text_round_trip_and_named_failures(fast_policy):
    from vla_ros.tools.make_tiny import smooth_trajectories

    parser = fast_policy.action_parser
    chunk = smooth_trajectories(1, 50, 8, seed=99)[0]  # like the tokenizer's training data, not in it
    ids = parser.encode(chunk)
    assert min(ids[3:-1]) >= 257152 - 128 - parser.fast.num_ids and max(ids[3:-1]) <= 257152 - 129
    decoded = parser.decode([*ids, 1])  # EOS after "|" is ignored
    assert decoded.shape == (50, 8)
    assert np.abs(decoded - chunk).max() <= 0.5 / parser.fast.scale * np.sqrt(8)  # quantization bound
    prefix, body, end = list(parser.prefix_ids), ids[len(parser.prefix_ids):-1], parser.end_id
    cases = {
        "do not start with 'Action: '": body + [end],
        "no end-of-action marker": prefix + body,
        "not a FAST action token": prefix + body[:3] + [100] + body[3:] + [end],
        "expected 50 x 8": prefix + body[:-2] + [end],
    }
    for message, sequence in cases.items():
        with pytest.raises(ActionDecodeError, match=message):
            parser.decode(sequence)


def test_untrained_fast_policy_fails_with_a_named_error_and_engines_agree(fast_policy, tiny_fast_checkpoint):
    from vla_ros.policy import Policy, PolicyOptions
    from vla_ros.types import RawObservation

    obs = RawObservation(
        images={"base_0_rgb": np.full((240, 320, 3), 90, np.uint8)},
        state=np.linspace(-0.5, 0.5, 8).astype(np.float32),
        prompt="pick up the cube",
        timestamp=3.0,
    )
    with pytest.raises(ActionDecodeError):
        fast_policy.infer(obs)
    inputs, _ = fast_policy.preprocess(obs)
    options = PolicyOptions(engine="reference", max_decoding_steps=32)
    reference = Policy.from_checkpoint(tiny_fast_checkpoint, options)
    results = []
    for policy in (fast_policy, reference):
        policy.engine.encode_prefix(inputs)
        results.append(policy.engine.decode(policy._stop_ids))
    assert results[0].ids.tolist() == results[1].ids.tolist() and len(results[0].ids) > 0
    assert fast_policy.engine.describe()["decode"] == "eager"
    assert fast_policy.spec.variant == "pi0fast"


def test_fast_policy_needs_its_fast_tokenizer(tiny_fast_checkpoint, tmp_path):
    import shutil

    from vla_ros.errors import CheckpointError
    from vla_ros.policy import Policy, PolicyOptions

    copy = tmp_path / "ck"
    shutil.copytree(tiny_fast_checkpoint, copy)
    shutil.move(copy / "fast_tokenizer", tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match="no FAST action tokenizer"):
        Policy.from_checkpoint(copy, PolicyOptions(max_decoding_steps=8))
    policy = Policy.from_checkpoint(
        copy, PolicyOptions(max_decoding_steps=8, action_tokenizer=str(tmp_path / "elsewhere"))
    )
    assert policy.action_parser.fast.num_ids <= 256


def test_packed_bf16_prefix_and_decode_run(tiny_fast_checkpoint):
    """A bf16 checkpoint on the CPU gets oneDNN-packed attention: the prefix's last-token query must work."""
    from vla_ros.engines import cpu_packed
    from vla_ros.policy import Policy, PolicyOptions
    from vla_ros.types import RawObservation

    if not cpu_packed.packing_available():
        pytest.skip("oneDNN packed linear ops unavailable in this torch build")
    options = PolicyOptions(precision="bf16", max_decoding_steps=6)
    policy = Policy.from_checkpoint(tiny_fast_checkpoint, options)
    assert policy.engine.describe()["packed_weights"]
    obs = RawObservation(images={"base_0_rgb": np.full((224, 224, 3), 90, np.uint8)},
                         state=np.zeros(8, np.float32), prompt="pick up the cube", timestamp=1.0)
    inputs, _ = policy.preprocess(obs)
    policy.engine.encode_prefix(inputs)
    result = policy.engine.decode(policy._stop_ids)
    assert result.num_tokens >= 1 and torch.isfinite(policy.engine.decoder.first_logits).all()


def test_budget_and_prompt_style_refusals(model, tiny_fast_checkpoint):
    from vla_ros.policy import Policy, PolicyOptions

    with pytest.raises(ValueError, match="at least 1"):
        _static(model, _inputs()).generate(max_new_tokens=0)
    one = _static(model, _inputs(), max_new=1).generate()
    assert one.num_tokens == 1
    with pytest.raises(ConfigError, match="policy.prompt_style"):
        options = PolicyOptions(prompt_style="lerobot", max_decoding_steps=4)
        Policy.from_checkpoint(tiny_fast_checkpoint, options)
