"""Robot observation -> model inputs: images, prompt tokens, normalized state; and actions back.

Order of use: robot transform `inputs` -> `prepare_images` / normalize and
pad the state -> tokenize the prompt (pi0.5 embeds the normalized state);
after the model: unnormalize the actions -> slice to the robot's dims ->
robot transform `outputs`.
"""

from vla_ros.observation.image import prepare_images, resize_with_pad, to_model_range
from vla_ros.observation.normalize import load_norm_stats, Normalizer, NormStats, pad_to_dim, save_norm_stats
from vla_ros.observation.tokenizer import discretize_state, PromptTokenizer, train_tokenizer
from vla_ros.observation.transforms import AlohaTransform, IdentityTransform, make_transform, RobotTransform

__all__ = [
    "AlohaTransform",
    "IdentityTransform",
    "NormStats",
    "Normalizer",
    "PromptTokenizer",
    "RobotTransform",
    "discretize_state",
    "load_norm_stats",
    "make_transform",
    "pad_to_dim",
    "prepare_images",
    "resize_with_pad",
    "save_norm_stats",
    "to_model_range",
    "train_tokenizer",
]
