"""Adapter example: a train-procgen-pytorch IMPALA agent, the layout procgen-tools' maze
models use (`embedder.block1.res1.conv1`, ..., `fc_policy`, `fc_value`).

    gallery inspect maze_I/model_rand_region_5.pth \\
        --adapter examples.adapters.procgen_tools_impala:make

Those checkpoints are dicts holding `model_state_dict` (and the optimiser's state); both
layouts are read here, with `torch.load(..., weights_only=True)`. The network takes
channel-first frames scaled to [0, 1]. Its ReLUs are modules here (the original applies
some as functions), so the gallery can hook them:

- `out`: the ReLU after block3, a bottleneck;
- `block1`, `block2`, `block3`: the ReLU at the entrance of each block's first residual
  unit, which its skip connection bypasses (declared in `partial_layers`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gallery.environments import PROCGEN_COMBOS, combo_name
from gallery.models.adapters import ExternalModel


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu2(self.conv1(self.relu1(x)))) + x


class ImpalaBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res1, self.res2 = ResidualBlock(out_channels), ResidualBlock(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.res2(self.res1(self.maxpool(self.conv(x))))


class ImpalaModel(nn.Module):
    def __init__(self, in_channels: int = 3, scale: int = 1):
        super().__init__()
        self.block1 = ImpalaBlock(in_channels, 16 * scale)
        self.block2 = ImpalaBlock(16 * scale, 32 * scale)
        self.block3 = ImpalaBlock(32 * scale, 32 * scale)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(32 * scale * 8 * 8, 256)
        self.fc_relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.block3(self.block2(self.block1(x))))
        return self.fc_relu(self.fc(x.flatten(1)))


class CategoricalPolicy(nn.Module):
    """Takes frames (N, 3, 64, 64) in [0, 1]; returns (logits, value)."""

    def __init__(self, n_actions: int = 15, scale: int = 1):
        super().__init__()
        self.embedder = ImpalaModel(3, scale)
        self.fc_policy = nn.Linear(256, n_actions)
        self.fc_value = nn.Linear(256, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.embedder(x)
        return self.fc_policy(hidden), self.fc_value(hidden)[:, 0]


def make(checkpoint: str | None, env_name: str = "maze") -> ExternalModel:
    state = None
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = state.get("model_state_dict", state)
    scale = 1 if state is None else state["embedder.block1.conv.weight"].shape[0] // 16
    policy = CategoricalPolicy(len(PROCGEN_COMBOS), scale)
    if state is not None:
        policy.load_state_dict(state)
    blocks = {f"block{i}": f"embedder.block{i}.res1.relu1" for i in (1, 2, 3)}
    return ExternalModel(
        module=policy,
        layers={**blocks, "out": "embedder.relu"},
        partial_layers=tuple(blocks),
        observation_shape=(64, 64, 3),
        action_names=[combo_name(c) for c in PROCGEN_COMBOS],
        obs_layout="NCHW",
        obs_scale=1.0,
        args={"env_kind": "procgen", "env_name": env_name, "distribution_mode": "easy",
              "gamma": 0.999, "lambda": 0.95},
        architecture="train-procgen-pytorch-impala",
    )
