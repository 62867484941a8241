"""Adapter example: a CleanRL-style Procgen agent (IMPALA torso, separate actor/critic heads).

The agent below is written the way CleanRL's `ppo_procgen.py` structures its network: it
takes byte-range NHWC frames, permutes and scales them itself, and exposes `actor` and
`critic` heads. Plug it into the gallery without editing the package:

    gallery inspect runs/agent.pt --adapter examples.adapters.cleanrl_procgen:make

The factory loads weights with `torch.load(..., weights_only=True)`, which never runs code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gallery.adapters import ExternalModel
from gallery.environments import PROCGEN_COMBOS, combo_name


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ConvSequence(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res0, self.res1 = ResidualBlock(out_channels), ResidualBlock(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.res1(self.res0(self.pool(self.conv(x))))


class Agent(nn.Module):
    """Takes uint8-range frames (N, 64, 64, 3); returns (logits, value)."""

    def __init__(self, n_actions: int = 15, depths: tuple[int, ...] = (16, 32, 32)):
        super().__init__()
        layers, c = [], 3
        for d in depths:
            layers.append(ConvSequence(c, d))
            c = d
        self.torso = nn.Sequential(*layers)
        self.hidden = nn.Linear(c * 8 * 8, 256)
        self.actor = nn.Linear(256, n_actions)
        self.critic = nn.Linear(256, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.torso(x.permute(0, 3, 1, 2) / 255.0)
        h = torch.relu(self.hidden(torch.relu(h.flatten(1))))
        return self.actor(h), self.critic(h)[:, 0]


def make(checkpoint: str | None) -> ExternalModel:
    agent = Agent()
    if checkpoint:
        agent.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return ExternalModel(
        module=agent,
        # the output of each ConvSequence is a bottleneck (everything downstream passes it)
        layers={f"seq{i}": f"torso.{i}" for i in range(len(agent.torso))},
        observation_shape=(64, 64, 3),
        action_names=[combo_name(c) for c in PROCGEN_COMBOS],
        obs_layout="NHWC",
        obs_scale=255.0,
        args={"env_kind": "procgen", "env_name": "coinrun", "distribution_mode": "hard",
              "gamma": 0.999, "lambda": 0.95},
        architecture="cleanrl-impala",
    )
