"""Stable-Baselines3 zips, trained here with SB3 itself on real Atari Breakout frames.

The gallery reads them natively (gallery.models.sb3) without unpickling anything; its policy must
give SB3's own logits and values on real frames, and every kind of zip it cannot explain
must be refused with an error naming the file and the fix.
"""

from __future__ import annotations

import io
import json
import zipfile

import gymnasium
import numpy as np
import pytest
import torch

sb3 = pytest.importorskip("stable_baselines3")

from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack  # noqa: E402

from gallery import load_policy  # noqa: E402
from gallery.environments import EnvSpec, make_atari_env  # noqa: E402
from gallery.errors import CheckpointError, GalleryError  # noqa: E402
from gallery.models.adapters import load_any  # noqa: E402

BREAKOUT = {"env_kind": "atari", "env_id": "BreakoutNoFrameskip-v4"}


def breakout_env(n: int = 2) -> VecFrameStack:
    # the gallery's own DeepMind preprocessing (the same as SB3's make_atari_env, which
    # needs OpenCV), four frames stacked as SB3's users do
    spec = EnvSpec.from_args(BREAKOUT)
    return VecFrameStack(DummyVecEnv([lambda: make_atari_env(spec)] * n), 4)


def real_frames(model, steps: int = 24) -> np.ndarray:
    """Channel-first uint8 frames (N, 4, 84, 84), as SB3's policy receives them."""
    env = model.get_env()
    env.seed(1)
    obs, frames = env.reset(), []
    rng = np.random.default_rng(0)
    for _ in range(steps):
        frames.append(obs)
        obs, _, _, _ = env.step(rng.integers(0, 4, size=env.num_envs))
    return np.concatenate(frames)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A PPO agent with one shared extractor and an A2C agent with one per head, each
    trained for 256 and 128 steps on Breakout and saved with model.save."""
    folder = tmp_path_factory.mktemp("sb3")
    ppo = sb3.PPO("CnnPolicy", breakout_env(), n_steps=64, batch_size=64, n_epochs=1,
                  seed=0, device="cpu")
    ppo.learn(256)
    ppo.save(folder / "ppo.zip")
    a2c = sb3.A2C("CnnPolicy", breakout_env(), n_steps=8, seed=0, device="cpu",
                  policy_kwargs={"share_features_extractor": False,
                                 "net_arch": {"pi": [64], "vf": [32]}})
    a2c.learn(128)
    a2c.save(folder / "a2c.zip")
    return {"ppo": (ppo, folder / "ppo.zip"), "a2c": (a2c, folder / "a2c.zip")}


@pytest.mark.parametrize("name", ["ppo", "a2c"])
def test_outputs_equal_sb3_on_real_frames(trained, name):
    model, path = trained[name]
    policy = load_policy(path, env=BREAKOUT)
    frames = real_frames(model)
    assert frames.std() > 0  # real game frames, not blank ones
    with torch.no_grad():
        obs_t, _ = model.policy.obs_to_tensor(frames)
        want_logits = model.policy.get_distribution(obs_t).distribution.logits
        want_value = model.policy.predict_values(obs_t)[:, 0]
        logits, value = policy(torch.from_numpy(frames.transpose(0, 2, 3, 1)).float() / 255)
    torch.testing.assert_close(torch.log_softmax(logits, -1), want_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(value, want_value, rtol=0, atol=1e-5)
    assert policy.action_names == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    assert policy.observation_shape == (84, 84, 4)
    assert policy.args["frame_stack"] == 4
    assert policy.gamma == pytest.approx(model.gamma)
    assert policy.lam == pytest.approx(model.gae_lambda)
    assert policy.training_steps == model.num_timesteps


def test_layers_are_hookable_relus(trained):
    model, path = trained["ppo"]
    policy = load_policy(path, env=BREAKOUT)
    assert policy.layer_names == ["conv1", "conv2", "conv3"]
    obs = torch.from_numpy(real_frames(model, 8).transpose(0, 2, 3, 1)).float() / 255
    logits, value = policy(obs)
    for layer in policy.layer_names:
        acts = policy.activations(obs, layer)
        assert acts.min() >= 0 and acts.max() > 0
        l2, v2 = policy.forward_from(acts, layer)  # a bottleneck: no observations needed
        torch.testing.assert_close(l2, logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(v2, value, rtol=0, atol=1e-5)


def test_separate_extractors_need_the_observations(trained):
    model, path = trained["a2c"]
    policy = load_policy(path, env=BREAKOUT)
    assert policy.layer_names == [f"{h}_conv{i}" for h in ("vf", "pi") for i in (1, 2, 3)]
    obs = torch.from_numpy(real_frames(model, 8).transpose(0, 2, 3, 1)).float() / 255
    logits, value = policy(obs)
    acts = policy.activations(obs, "vf_conv3")
    assert policy.needs_observations("vf_conv3")
    with pytest.raises(GalleryError, match="not a bottleneck"):
        policy.forward_from(acts, "vf_conv3")
    l2, v2 = policy.forward_from(acts, "vf_conv3", obs)
    torch.testing.assert_close(v2, value, rtol=0, atol=1e-5)
    torch.testing.assert_close(l2, logits, rtol=0, atol=1e-5)
    # the value does not depend on the policy head's torso
    _, v3 = policy.forward_from(torch.zeros_like(policy.activations(obs, "pi_conv3")),
                                "pi_conv3", obs)
    torch.testing.assert_close(v3, value, rtol=0, atol=1e-5)


def test_nothing_is_unpickled(trained, monkeypatch):
    """The zip's cloudpickled fields are never decoded, and weights use weights_only."""
    import pickle

    _, path = trained["ppo"]

    def refuse(*args, **kwargs):
        raise AssertionError("pickle.loads called")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    policy = load_any(str(path), env=BREAKOUT)
    assert policy.num_actions == 4
    assert calls == [True]


def test_inspect_describes_the_zip(trained, capsys):
    from gallery.cli import main

    _, path = trained["ppo"]
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"].startswith("sb3-")
    assert info["observation_shape"] == [84, 84, 4]
    assert [layer["name"] for layer in info["layers"]] == ["conv1", "conv2", "conv3"]


# --- zips the gallery cannot explain ----------------------------------------------------


class TinyImageEnv(gymnasium.Env):
    """An image observation and a chosen action space (nothing is stepped)."""

    def __init__(self, action_space):
        self.observation_space = gymnasium.spaces.Box(0, 255, (84, 84, 1), np.uint8)
        self.action_space = action_space

    def reset(self, *, seed=None, options=None):
        return np.zeros((84, 84, 1), np.uint8), {}

    def step(self, action):
        return np.zeros((84, 84, 1), np.uint8), 0.0, True, False, {}


def test_mlp_policy_is_refused(tmp_path):
    path = tmp_path / "mlp.zip"
    sb3.PPO("MlpPolicy", "CartPole-v1", device="cpu").save(path)
    with pytest.raises(CheckpointError, match="MLP policy.*CnnPolicy") as err:
        load_policy(path)
    assert str(path) in str(err.value)


def test_continuous_actions_are_refused(tmp_path):
    path = tmp_path / "box.zip"
    env = TinyImageEnv(gymnasium.spaces.Box(-1, 1, (2,), np.float32))
    sb3.PPO("CnnPolicy", env, device="cpu", n_steps=8, batch_size=8).save(path)
    with pytest.raises(CheckpointError, match="Box.*discrete actions") as err:
        load_policy(path)
    assert str(path) in str(err.value)


def _rewrite(source, target, *, data=None, state=None):
    with zipfile.ZipFile(source) as z:
        members = {name: z.read(name) for name in z.namelist()}
    if data is not None:
        members["data"] = json.dumps(data(json.loads(members["data"]))).encode()
    if state is not None:
        weights = state(torch.load(io.BytesIO(members["policy.pth"]), weights_only=True))
        buffer = io.BytesIO()
        torch.save(weights, buffer)
        members["policy.pth"] = buffer.getvalue()
    with zipfile.ZipFile(target, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)


def test_recurrent_policy_is_refused(trained, tmp_path):
    # an LSTM as sb3-contrib's RecurrentPPO saves it, added to a real zip
    path = tmp_path / "recurrent.zip"
    _rewrite(trained["ppo"][1], path, state=lambda s: {
        **s, "lstm_actor.weight_ih_l0": torch.zeros(1024, 512)})
    with pytest.raises(CheckpointError, match="recurrent"):
        load_policy(path, env=BREAKOUT)


def test_architecture_is_checked_against_the_weights(trained, tmp_path):
    path = tmp_path / "wider.zip"
    _rewrite(trained["ppo"][1], path, state=lambda s: {
        **s, "action_net.weight": torch.zeros(4, 256)})
    with pytest.raises(CheckpointError, match=r"action_net.weight is \(4, 256\)"):
        load_policy(path, env=BREAKOUT)
    path = tmp_path / "missing.zip"
    _rewrite(trained["ppo"][1], path, state=lambda s: {
        k: v for k, v in s.items() if not k.startswith("value_net")})
    with pytest.raises(CheckpointError, match="missing weight value_net"):
        load_policy(path, env=BREAKOUT)


def test_damaged_zips_are_clear(trained, tmp_path):
    source = trained["ppo"][1].read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(source[: len(source) // 2])
    with pytest.raises(CheckpointError, match="damaged zip.*save the model again") as err:
        load_policy(cut)
    assert str(cut) in str(err.value)
    bad = tmp_path / "code.zip"
    with zipfile.ZipFile(trained["ppo"][1]) as z, zipfile.ZipFile(bad, "w") as out:
        for name in z.namelist():
            content = z.read(name)
            if name == "policy.pth":
                buffer = io.BytesIO()
                torch.save({"x": TinyImageEnv}, buffer)  # a class: not plain weights
                content = buffer.getvalue()
            out.writestr(name, content)
    with pytest.raises(CheckpointError, match="cannot be read as plain weights"):
        load_policy(bad)


def test_an_unknown_file_lists_the_formats(tmp_path, capsys):
    from gallery.cli import main

    path = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(2)}, path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Stable-Baselines3" in err and "--adapter" in err and "torch.save" in err
