"""The flow-matching loss of pi0 / pi0.5, as the reference implementations train them.

With actions A (normalized, zero-padded to the model's 32 dims), noise
e ~ N(0, I) and a flow time t per sample:

    x_t = t * e + (1 - t) * A        u_t = e - A        loss = mean((v_t(x_t, t) - u_t)^2)

t ~ Beta(1.5, 1) * 0.999 + 0.001 (openpi's `sample_beta(1.5, 1) * 0.999 +
0.001`; LeRobot 0.6.1's `time_sampling_beta_alpha` 1.5, `_beta` 1.0,
`_scale` 0.999, `_offset` 0.001), and v_t comes from one joint pass over the
prefix and the suffix without a cache (`Pi0Model.joint_velocity`), the
graph both references train. Inference integrates the same field from t = 1
to t = 0 (docs/model.md, "Sampling").

Which dims are averaged: openpi averages the squared error over all 32 dims
(`jnp.mean(jnp.square(v_t - u_t), axis=-1)`), the padded ones included,
where the target is the noise itself; LeRobot 0.6.1 (`PI0Policy.forward`)
drops the padded dims (`losses[:, :, :original_action_dim]`) before the
mean. `action_dims=None` is openpi's; `action_dims=D` LeRobot's.
"""

from __future__ import annotations

import numpy as np
import torch

BETA_ALPHA = 1.5
BETA_BETA = 1.0
TIME_SCALE = 0.999
TIME_OFFSET = 0.001


def sample_time(batch: int, rng: np.random.Generator) -> torch.Tensor:
    """Flow times (batch,) float32: Beta(1.5, 1) * 0.999 + 0.001, in [0.001, 1)."""
    beta = rng.beta(BETA_ALPHA, BETA_BETA, size=batch)
    return torch.from_numpy(beta * TIME_SCALE + TIME_OFFSET).float()


def noisy_actions(actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(x_t, u_t) for actions and noise (B, H, A) at times t (B,)."""
    t = t[:, None, None]
    return t * noise + (1.0 - t) * actions, noise - actions


def flow_matching_loss(model, batch: dict, noise: torch.Tensor, t: torch.Tensor,
                       action_dims: int | None = None) -> torch.Tensor:
    """The mean squared error of the predicted velocity, a scalar tensor.

    batch: torch tensors images, image_masks, tokens, token_masks, state
    (B, ...) as `Policy.preprocess` makes them, and actions (B, H, 32)
    normalized. action_dims: average over the first action_dims dims only
    (LeRobot); None averages over all (openpi).
    """
    actions = batch['actions']
    x_t, u_t = noisy_actions(actions, noise, t)
    v_t = model.joint_velocity(batch['images'], batch['image_masks'], batch['tokens'], batch['token_masks'],
                               x_t, t, batch['state'])
    error = (v_t.float() - u_t).square()
    if action_dims is not None:
        error = error[..., :action_dims]
    return error.mean()
