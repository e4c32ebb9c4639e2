"""Masks and positions of the pi0 / pi0.5 token layouts against hand-written tables."""

import torch

from vla_ros.model import masks

T, F = True, False


def test_prefix_mask_with_masked_camera_and_prompt_padding():
    # Two cameras of 2 tokens each, the second masked, then 3 language slots with 1 pad.
    pad = torch.tensor([[T, T, F, F, T, T, F]])
    mask = masks.attention_mask(pad, torch.zeros_like(pad))
    row = [T, T, F, F, T, T, F]  # every query sees exactly the real keys
    assert mask[0].tolist() == [row] * 7
    assert masks.prefix_positions(pad)[0].tolist() == [0, 1, 1, 1, 2, 3, 3]


def test_pi0_suffix_layout():
    # pi0 suffix: state token (ar=1), first action (ar=1), two more actions (ar=0).
    ar = masks.suffix_ar_mask(1, 3, pi05=False)
    assert ar[0].tolist() == [T, T, F, F]
    prefix_pad = torch.tensor([[T, F, T]])
    suffix_pad = torch.ones(1, 4, dtype=torch.bool)
    mask = masks.suffix_attention_mask(prefix_pad, suffix_pad, ar)
    expected = [
        # prefix keys | state, a0, a1, a2
        [T, F, T, T, F, F, F],  # the state token sees the prefix and itself
        [T, F, T, T, T, T, T],  # actions see prefix, state and all actions
        [T, F, T, T, T, T, T],
        [T, F, T, T, T, T, T],
    ]
    assert mask[0].tolist() == expected
    assert masks.suffix_positions(prefix_pad, suffix_pad)[0].tolist() == [2, 3, 4, 5]


def test_pi05_suffix_layout():
    ar = masks.suffix_ar_mask(1, 3, pi05=True)
    assert ar[0].tolist() == [T, F, F]
    prefix_pad = torch.tensor([[T, T, F, F]])
    mask = masks.suffix_attention_mask(prefix_pad, torch.ones(1, 3, dtype=torch.bool), ar)
    assert mask[0].tolist() == [[T, T, F, F, T, T, T]] * 3
    assert masks.suffix_positions(prefix_pad, torch.ones(1, 3, dtype=torch.bool))[0].tolist() == [2, 3, 4]


def test_joint_mask_prefix_never_sees_suffix():
    pad = torch.tensor([[T, T, F, T, T, T]])
    ar = torch.tensor([[F, F, F, T, T, F]])  # prefix (3) + pi0 suffix (state, a0, a1)
    mask = masks.attention_mask(pad, ar)[0].tolist()
    assert mask[0] == [T, T, F, F, F, F]
    assert mask[2] == [T, T, F, F, F, F]  # a padding query still reads only real prefix keys
    assert mask[3] == [T, T, F, T, F, F]
    assert mask[4] == [T, T, F, T, T, T]
    assert mask[5] == [T, T, F, T, T, T]
