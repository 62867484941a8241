"""Adapter example: a CleanRL Procgen agent (`ppo_procgen.py`: IMPALA torso, actor and critic
heads), with the module names of CleanRL's network, so its saved state dicts load as they are.

    gallery inspect runs/agent.pt --adapter examples.adapters.cleanrl_procgen:make

CleanRL applies ReLU as functions, which forward hooks cannot see; here each ReLU is a
module (the arithmetic is the same), so the gallery can offer its output:

- `out`: the ReLU after the last ConvSequence (CleanRL flattens, then applies ReLU; the
  ReLU comes first here, which is the same elementwise), a bottleneck;
- `seq0`, `seq1`, `seq2`: the ReLU at the entrance of each ConvSequence's first residual
  block. A skip connection bypasses it, so it is declared in `partial_layers` (the gallery
  then passes the observations too).

Every offered layer is the output of a ReLU: NMF explains non-negative activations only.
The factory loads weights with `torch.load(..., weights_only=True)`, which never runs code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gallery.environments import PROCGEN_COMBOS, combo_name
from gallery.models.adapters import ExternalModel


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu0, self.relu1 = nn.ReLU(), nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv1(self.relu1(self.conv0(self.relu0(x))))


class ConvSequence(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res_block0 = ResidualBlock(out_channels)
        self.res_block1 = ResidualBlock(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.res_block1(self.res_block0(self.pool(self.conv(x))))


class Agent(nn.Module):
    """Takes uint8-range frames (N, 64, 64, 3); returns (logits, value)."""

    def __init__(self, n_actions: int = 15, depths: tuple[int, ...] = (16, 32, 32)):
        super().__init__()
        sequences, c = [], 3
        for d in depths:
            sequences.append(ConvSequence(c, d))
            c = d
        # CleanRL: Sequential(*sequences, Flatten, ReLU, Linear, ReLU); ReLU and Flatten
        # swapped (same values, same state dict keys)
        self.network = nn.Sequential(*sequences, nn.ReLU(), nn.Flatten(),
                                     nn.Linear(c * 8 * 8, 256), nn.ReLU())
        self.actor = nn.Linear(256, n_actions)
        self.critic = nn.Linear(256, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.network(x.permute(0, 3, 1, 2) / 255.0)
        return self.actor(hidden), self.critic(hidden)[:, 0]


def make(checkpoint: str | None) -> ExternalModel:
    agent = Agent()
    if checkpoint:
        agent.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    sequences = {f"seq{i}": f"network.{i}.res_block0.relu0" for i in range(3)}
    return ExternalModel(
        module=agent,
        layers={**sequences, "out": "network.3"},
        partial_layers=tuple(sequences),
        observation_shape=(64, 64, 3),
        action_names=[combo_name(c) for c in PROCGEN_COMBOS],
        obs_layout="NHWC",
        obs_scale=255.0,
        args={"env_kind": "procgen", "env_name": "coinrun", "distribution_mode": "easy",
              "gamma": 0.999, "lambda": 0.95},
        architecture="cleanrl-impala",
    )
