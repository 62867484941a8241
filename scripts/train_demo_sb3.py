"""Train the demo zoo's Stable-Baselines3 model: PPO with SB3's CnnPolicy on CoinRun.

    PYTHONPATH=. .venv/bin/python scripts/train_demo_sb3.py --steps 50000 -o coinrun-sb3.zip

The environments are the gallery's own (gallery.environments.make_vec_env: Procgen CoinRun,
easy levels, 64x64 RGB), seen by SB3 through a small VecEnv (below), so that the gallery
records the agent in the game it trained in and can put it beside the project's own
CoinRun agents on the same trajectories. The network is SB3's NatureCNN (another
architecture than the clear CNN); the hyperparameters are Procgen's PPO ones (gamma 0.999,
lambda 0.95, 3 epochs, 8 minibatches, lr 5e-4, entropy 0.01) at 16 x 128 steps a batch,
and the feature extractor is 256 wide (not 512), which keeps the zip (weights and Adam's
state) under the zoo's 5 MB per model. The zip is SB3's own format, which the gallery reads
natively (gallery/models/sb3.py).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv

from gallery.environments import EnvSpec, make_vec_env


class GalleryVecEnv(VecEnv):
    """The gallery's gym3-style environments (observe/act, automatic resets) as SB3's VecEnv;
    each finished episode's return and length go into `info["episode"]` as SB3's Monitor
    would put them, so that SB3's log shows the mean return."""

    def __init__(self, spec: EnvSpec, num_envs: int, seed: int):
        self.env = make_vec_env(spec, num_envs, seed)
        h, w, c = self.env.observation_shape
        super().__init__(num_envs, spaces.Box(0, 255, (h, w, c), np.uint8),
                         spaces.Discrete(len(self.env.action_names)))
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, int)
        self.actions = None

    def reset(self):
        return self.env.observe()[1]

    def step_async(self, actions):
        self.actions = np.asarray(actions)

    def step_wait(self):
        self.env.act(self.actions)
        reward, obs, first = self.env.observe()
        self.returns += reward
        self.lengths += 1
        infos = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(first):
            infos[i]["episode"] = {"r": float(self.returns[i]), "l": int(self.lengths[i])}
            infos[i]["terminal_observation"] = obs[i]
        self.returns[first] = 0.0
        self.lengths[first] = 0
        return obs, np.asarray(reward, np.float32), np.asarray(first, bool), infos

    def close(self):
        self.env.close()

    def get_attr(self, attr_name, indices=None):
        return [getattr(self, attr_name)] * self.num_envs

    def set_attr(self, attr_name, value, indices=None):
        setattr(self, attr_name, value)

    def env_method(self, method_name, *args, indices=None, **kwargs):
        raise NotImplementedError(method_name)

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * self.num_envs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="coinrun")
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()

    spec = EnvSpec.from_args({"env_kind": "procgen", "env_name": args.env,
                              "distribution_mode": "easy"})
    env = GalleryVecEnv(spec, args.num_envs, args.seed)
    model = PPO("CnnPolicy", env, n_steps=128, n_epochs=3, batch_size=256,
                learning_rate=5e-4, gamma=0.999, gae_lambda=0.95, clip_range=0.2,
                ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5,
                policy_kwargs={"features_extractor_kwargs": {"features_dim": args.features}},
                seed=args.seed, device="cpu", verbose=1)
    start = time.perf_counter()
    model.learn(total_timesteps=args.steps)
    model.save(args.output)
    print(f"trained {model.num_timesteps} steps in {time.perf_counter() - start:.0f} s: "
          f"{args.output}")


if __name__ == "__main__":
    main()
