"""Flow-matching training of small pi0 / pi0.5 policies from rosbags, on a CPU (`vla-ros train`).

- `dataset`: observations assembled by the node's code from the bags, target
  action chunks at the profile's action rate, statistics of the data;
- `loss`: the flow-matching loss of the reference implementations;
- `trainer`: AdamW loop, loss plot, and the checkpoint in the project's layout.

For small policies; fine-tuning full pi0 / pi0.5 belongs to openpi or
LeRobot (docs/training.md).
"""
