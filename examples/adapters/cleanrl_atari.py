"""Adapter example: a CleanRL Atari agent (`ppo_atari.py`: the Nature CNN, actor and critic
heads), with the module names of CleanRL's network, so its saved state dicts load as they are.

    gallery inspect runs/breakout.pt --adapter examples.adapters.cleanrl_atari:make

CleanRL trains on `BreakoutNoFrameskip-v4` with the DeepMind preprocessing (no-op reset,
max-and-skip 4, episodic life, fire reset, 84x84 grayscale) and 4 stacked frames; the
network takes them channel-first, byte-range (it divides by 255 itself). The ReLUs after
the three convolutions are modules of `network`, so they are offered as they are; each is
a bottleneck and non-negative.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gallery.environments import atari_action_names
from gallery.models.adapters import ExternalModel

ENV_ID = "BreakoutNoFrameskip-v4"


class Agent(nn.Module):
    """Takes uint8-range frames (N, 4, 84, 84); returns (logits, value)."""

    def __init__(self, n_actions: int):
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 512), nn.ReLU())
        self.actor = nn.Linear(512, n_actions)
        self.critic = nn.Linear(512, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.network(x / 255.0)
        return self.actor(hidden), self.critic(hidden)[:, 0]


def make(checkpoint: str | None) -> ExternalModel:
    names = list(atari_action_names(ENV_ID))
    agent = Agent(len(names))
    if checkpoint:
        agent.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return ExternalModel(
        module=agent,
        layers={"conv1": "network.1", "conv2": "network.3", "conv3": "network.5"},
        observation_shape=(84, 84, 4),
        action_names=names,
        obs_layout="NCHW",
        obs_scale=255.0,
        args={"env_kind": "atari", "env_id": ENV_ID, "frame_stack": 4,
              "gamma": 0.99, "lambda": 0.95},
        architecture="cleanrl-nature-cnn",
    )
