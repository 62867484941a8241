"""Stable-Baselines3 zips (PPO, A2C with `CnnPolicy`), read natively and safely.

An SB3 zip holds `policy.pth` (the policy's state dict, saved with torch.save) and `data`
(JSON). Some of `data`'s fields are cloudpickled (":serialized:"): those are never decoded
here -- unpickling them would run code from the file. What the gallery needs is in the
plain JSON beside them: the observation space's `dtype` and `_shape`, the action space's
`n` and the algorithm's `gamma` and `gae_lambda`; the weights are read with
`torch.load(weights_only=True)`. The network is rebuilt from SB3's public architecture
(NatureCNN feature extractors, shared or separate, an optional MLP extractor, the action
and value heads) and checked against the state dict, key by key and shape by shape.

The zip does not say which environment the agent was trained in: name it with `env:` in
the manifest (`env: {env_kind: atari, env_id: BreakoutNoFrameskip-v4}`) or `--env`.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gallery.errors import CheckpointError

#: SB3's activation classes as the readable JSON names them (policy_kwargs.activation_fn).
ACTIVATIONS = {"Tanh": nn.Tanh, "ReLU": nn.ReLU, "LeakyReLU": nn.LeakyReLU, "ELU": nn.ELU,
               "SiLU": nn.SiLU, "GELU": nn.GELU, "Sigmoid": nn.Sigmoid}
MAX_DATA_BYTES = 64 << 20
MAX_POLICY_BYTES = 2 << 30


def is_sb3_zip(path: str | Path) -> bool:
    """Whether `path` is a zip archive with SB3's `data` and `policy.pth` members; a file
    that starts as a zip but cannot be read as one is an error (a damaged download)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return False
    except OSError:
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise CheckpointError(str(path), f"damaged zip ({err}); if it is a Stable-Baselines3 "
                              "model, save the model again (model.save) or download it "
                              "again") from None
    return {"data", "policy.pth"} <= names


class NatureCNN(nn.Module):
    """SB3's NatureCNN, module for module (so that its state dict keys match); each ReLU is
    a module, so that its output can be read and replaced with a forward hook."""

    def __init__(self, channels: int, n_flatten: int, features: int):
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten())
        self.linear = nn.Sequential(nn.Linear(n_flatten, features), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.cnn(x))


class MlpExtractor(nn.Module):
    def __init__(self, policy_net: nn.Sequential, value_net: nn.Sequential):
        super().__init__()
        self.policy_net, self.value_net = policy_net, value_net


class SB3ActorCritic(nn.Module):
    """SB3's ActorCriticCnnPolicy without its distribution: NCHW obs -> (logits, value)."""

    def __init__(self, pi_extractor: NatureCNN, vf_extractor: NatureCNN | None,
                 mlp: MlpExtractor, action_net: nn.Linear, value_net: nn.Linear):
        super().__init__()
        self.pi_features_extractor = pi_extractor
        self.vf_features_extractor = vf_extractor  # None: shared with the policy's
        self.mlp_extractor = mlp
        self.action_net, self.value_net = action_net, value_net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pi = self.pi_features_extractor(x)
        vf = pi if self.vf_features_extractor is None else self.vf_features_extractor(x)
        logits = self.action_net(self.mlp_extractor.policy_net(pi))
        return logits, self.value_net(self.mlp_extractor.value_net(vf))[:, 0]


def read_sb3_zip(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The readable JSON of `data` and the state dict of `policy.pth`, nothing unpickled."""
    fix = "save the model again with SB3's model.save(...) and pass that zip"
    try:
        with zipfile.ZipFile(path) as z:
            members = {i.filename: i for i in z.infolist()}
            for name, limit in (("data", MAX_DATA_BYTES), ("policy.pth", MAX_POLICY_BYTES)):
                if name not in members:
                    raise CheckpointError(str(path), f"not a Stable-Baselines3 zip: no {name!r} "
                                          f"member (it has {', '.join(members) or 'none'}); "
                                          f"{fix}")
                if members[name].file_size > limit:
                    raise CheckpointError(str(path), f"{name} is {members[name].file_size:,} "
                                          f"bytes, more than the {limit:,} read")
            data_bytes = z.read("data")
            policy_bytes = z.read("policy.pth")
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(str(path), f"damaged zip ({err}); {fix}") from None
    try:
        data = json.loads(data_bytes)
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(str(path), f"the zip's `data` is not JSON ({err}); {fix}") \
            from None
    if not isinstance(data, dict):
        raise CheckpointError(str(path), f"the zip's `data` is not a JSON object; {fix}")
    try:
        state = torch.load(io.BytesIO(policy_bytes), map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses anything but tensors and containers
        raise CheckpointError(str(path), f"policy.pth cannot be read as plain weights "
                              f"({type(err).__name__}: {str(err)[:200]}); {fix}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(str(path), "policy.pth is not a state dict of tensors; " + fix)
    return data, state


def _space(data: dict[str, Any], name: str) -> dict[str, Any]:
    space = data.get(name)
    return space if isinstance(space, dict) else {}


def _space_kind(space: dict[str, Any]) -> str:
    """'Box', 'Discrete', ... from the readable ':type:' text "<class '...box.Box'>"."""
    match = re.search(r"\.(\w+)'>$", str(space.get(":type:", "")))
    return match.group(1) if match else "unknown"


def _policy_class(data: dict[str, Any]) -> str:
    """The policy's class name, from the readable text of its `__init__` (never unpickled)."""
    cls = data.get("policy_class")
    text = str(cls.get("__init__", "")) if isinstance(cls, dict) else ""
    match = re.search(r"<function (\w+)\.__init__", text)
    return match.group(1) if match else "unknown"


def _torso(state: dict[str, Tensor], prefix: str) -> NatureCNN | None:
    """The NatureCNN whose weights are under `prefix`, or None when there are none."""
    keys = [f"{prefix}.cnn.0.weight", f"{prefix}.cnn.2.weight", f"{prefix}.cnn.4.weight",
            f"{prefix}.linear.0.weight"]
    if any(k not in state for k in keys):
        return None
    conv0, linear = state[keys[0]], state[keys[3]]
    return NatureCNN(conv0.shape[1], linear.shape[1], linear.shape[0])


def _mlp(state: dict[str, Tensor], prefix: str, activation: type[nn.Module]) -> nn.Sequential:
    """SB3's MlpExtractor branch: Linear, activation, Linear, activation, ..."""
    layers: list[nn.Module] = []
    index = 0
    while f"{prefix}.{index}.weight" in state:
        weight = state[f"{prefix}.{index}.weight"]
        layers += [nn.Linear(weight.shape[1], weight.shape[0]), activation()]
        index += 2
    return nn.Sequential(*layers)


def _activation(path: str, data: dict[str, Any]) -> type[nn.Module]:
    kwargs = data.get("policy_kwargs")
    text = kwargs.get("activation_fn") if isinstance(kwargs, dict) else None
    if text is None:
        return nn.Tanh  # SB3's default for ActorCriticPolicy
    match = re.search(r"\.(\w+)'>$", str(text))
    if not match or match.group(1) not in ACTIVATIONS:
        raise CheckpointError(path, f"policy_kwargs.activation_fn is {text!r}; the gallery "
                              f"knows {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[match.group(1)]


def _readable_kwarg(data: dict[str, Any], key: str, default: Any) -> Any:
    kwargs = data.get("policy_kwargs")
    return kwargs.get(key, default) if isinstance(kwargs, dict) else default


def build_sb3_model(path: str, data: dict[str, Any], state: dict[str, Tensor]
                    ) -> tuple[SB3ActorCritic, dict[str, Any]]:
    """The network of an SB3 CnnPolicy zip, weights loaded, and what the zip says about it
    (observation shape (H, W, C), number of actions, gamma, lambda, ...)."""
    cls = _policy_class(data)
    obs_space, act_space = _space(data, "observation_space"), _space(data, "action_space")
    act_kind = _space_kind(act_space)
    if any("lstm" in k for k in state) or "Recurrent" in cls:
        raise CheckpointError(path, f"a recurrent policy ({cls}): the gallery explains "
                              "feed-forward policies only (PPO or A2C with CnnPolicy)")
    if act_kind != "Discrete" or "log_std" in state:
        raise CheckpointError(path, f"the action space is {act_kind}: the gallery explains "
                              "policies with discrete actions (a Discrete action space) only")
    try:
        n_actions = int(act_space["n"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(path, "the zip's data has no readable action_space.n; save it "
                              "with Stable-Baselines3 2.x") from None
    shape = obs_space.get("_shape", obs_space.get("shape"))
    dtype = obs_space.get("dtype")
    pi = _torso(state, "pi_features_extractor") or _torso(state, "features_extractor")
    if pi is None:
        if any(k.startswith("mlp_extractor.") for k in state) and not any(
                ".cnn." in k for k in state):
            raise CheckpointError(path, f"an MLP policy ({cls}, observations {shape}): the "
                                  "gallery explains image policies; train with "
                                  "'CnnPolicy' on image observations")
        raise CheckpointError(path, f"{cls} has no NatureCNN feature extractor "
                              "(features_extractor.cnn.* weights): the gallery reads SB3's "
                              "CnnPolicy; for another extractor write an adapter "
                              "(docs/adapters.md)")
    if _space_kind(obs_space) != "Box" or not isinstance(shape, list) or len(shape) != 3:
        raise CheckpointError(path, f"observation space {_space_kind(obs_space)} {shape}: "
                              "expected an image Box (C, H, W)")
    channels, height, width = (int(d) for d in shape)
    conv0 = state[next(k for k in state if k.endswith("features_extractor.cnn.0.weight"))]
    if channels != conv0.shape[1]:
        raise CheckpointError(path, f"observations {shape} but the first convolution takes "
                              f"{conv0.shape[1]} channels: expected channel-first images")
    vf = _torso(state, "vf_features_extractor")
    if vf is not None and all(torch.equal(state[f"pi_features_extractor.{k}"],
                                          state[f"vf_features_extractor.{k}"])
                              for k in pi.state_dict()):
        vf = None  # one extractor shared by both heads (SB3 saves it under three names)
    has_mlp = any(k.startswith("mlp_extractor.") for k in state)
    activation = _activation(path, data) if has_mlp else nn.Tanh
    mlp = MlpExtractor(_mlp(state, "mlp_extractor.policy_net", activation),
                       _mlp(state, "mlp_extractor.value_net", activation))
    latent_pi = _last_width(mlp.policy_net, pi)
    latent_vf = _last_width(mlp.value_net, vf or pi)
    model = SB3ActorCritic(pi, vf, mlp, nn.Linear(latent_pi, n_actions), nn.Linear(latent_vf, 1))
    _load_checked(path, model, state, cls)
    normalize = _readable_kwarg(data, "normalize_images", True)
    facts = {
        "policy_class": cls, "n_actions": n_actions, "dtype": dtype,
        "observation_shape": (height, width, channels),
        "shared_extractor": vf is None,
        "obs_scale": 255.0 if normalize is False else 1.0,
        "gamma": data.get("gamma"), "gae_lambda": data.get("gae_lambda"),
        "num_timesteps": data.get("num_timesteps"),
    }
    return model, facts


def _last_width(mlp: nn.Sequential, torso: NatureCNN) -> int:
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else torso.linear[0].out_features


def _load_checked(path: str, model: SB3ActorCritic, state: dict[str, Tensor], cls: str
                  ) -> None:
    """Load `state` into `model`, every tensor accounted for: SB3 stores the shared
    extractor under `features_extractor`, `pi_features_extractor` and (shared)
    `vf_features_extractor`; those aliases must equal what the model uses."""
    ours = model.state_dict()
    mapped: dict[str, Tensor] = {}
    problems = []
    for key, value in state.items():
        target = key
        if key.startswith("features_extractor."):
            target = "pi_features_extractor." + key[len("features_extractor."):]
        elif key.startswith("vf_features_extractor.") and model.vf_features_extractor is None:
            target = "pi_features_extractor." + key[len("vf_features_extractor."):]
        if target not in ours:
            problems.append(f"unexpected weight {key} {tuple(value.shape)}")
        elif tuple(ours[target].shape) != tuple(value.shape):
            problems.append(f"{key} is {tuple(value.shape)}, the architecture needs "
                            f"{tuple(ours[target].shape)}")
        elif target in mapped and not torch.equal(mapped[target], value):
            problems.append(f"{key} differs from the shared extractor's weights")
        else:
            mapped[target] = value
    problems += [f"missing weight {k}" for k in ours if k not in mapped]
    if problems:
        shown = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
        raise CheckpointError(path, f"policy.pth does not match SB3's {cls} with a NatureCNN "
                              f"extractor: {shown}. The gallery reads PPO/A2C CnnPolicy zips; "
                              "for other networks write an adapter (docs/adapters.md)")
    model.load_state_dict(mapped, strict=True)


def load_sb3(path: str | Path, env: dict[str, Any] | None = None) -> Any:
    """The gallery policy of an SB3 PPO/A2C CnnPolicy zip; `env` names its environment
    (the zip does not)."""
    from gallery.models.adapters import AdapterPolicy, ExternalModel
    from gallery.models.checkpoint import sha256_of
    from gallery.models.policy import default_action_names

    path = str(path)
    data, state = read_sb3_zip(path)
    model, facts = build_sb3_model(path, data, state)
    height, width, channels = facts["observation_shape"]
    kind = "atari" if (height, width) == (84, 84) else "procgen"
    per_frame = 1 if kind == "atari" else 3
    args: dict[str, Any] = {"env_kind": kind, **(env or {})}
    if args["env_kind"] == "procgen":
        per_frame = 3
    elif args["env_kind"] == "atari":
        per_frame = 1
    if channels % per_frame == 0 and channels // per_frame > 1:
        args.setdefault("frame_stack", channels // per_frame)
    for key, name in (("gamma", "gamma"), ("gae_lambda", "lambda")):
        if isinstance(facts[key], (int, float)):
            args[name] = float(facts[key])
    if facts["shared_extractor"]:
        layers = {f"conv{i + 1}": f"pi_features_extractor.cnn.{2 * i + 1}" for i in range(3)}
        partial: tuple[str, ...] = ()
    else:  # each head has its own torso: its layers are bottlenecks of that head only
        layers = {f"{head}_conv{i + 1}": f"{head}_features_extractor.cnn.{2 * i + 1}"
                  for head in ("vf", "pi") for i in range(3)}
        partial = tuple(layers)
    external = ExternalModel(
        module=model, layers=layers, observation_shape=(height, width, channels),
        action_names=default_action_names(args, facts["n_actions"]),
        obs_layout="NCHW", obs_scale=facts["obs_scale"], args=args,
        architecture=f"sb3-{facts['policy_class']}-nature-cnn",
        partial_layers=partial)
    policy = AdapterPolicy(external, source=path, sha256=sha256_of(path))
    if isinstance(facts["num_timesteps"], int):
        policy.training_steps = facts["num_timesteps"]
    return policy
