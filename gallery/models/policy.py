"""Policies: a network plus what it means (observations, actions, layers) -- the public API.

Every public method takes and returns NHWC tensors (the checkpoints' convention);
the `_nchw` variants skip the layout conversions for hot loops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gallery.environments import PROCGEN_COMBOS, atari_action_names, combo_name
from gallery.errors import CheckpointError, GalleryError
from gallery.models.checkpoint import Checkpoint, read_checkpoint
from gallery.models.layers import LayerOptions, bottlenecks, offered_layers
from gallery.models.networks import GraphNetwork, Node, build_network

COINRUN_OLD_ACTIONS = ("()", "RIGHT", "LEFT", "UP", "RIGHT+UP", "LEFT+UP", "DOWN", "A", "B")


def default_action_names(args: dict[str, Any], n_actions: int) -> list[str]:
    """Action names known without creating the environment (Procgen), else generic ones."""
    if args.get("env_kind") == "procgen":
        if args.get("env_name") == "coinrun_old" and n_actions == len(COINRUN_OLD_ACTIONS):
            return list(COINRUN_OLD_ACTIONS)
        if n_actions == len(PROCGEN_COMBOS):
            return [combo_name(c) for c in PROCGEN_COMBOS]
    if args.get("env_kind") == "atari":
        names = _atari_action_names(str(args.get("env_id") or args.get("env_name") or ""))
        if names is not None and len(names) == n_actions:
            return names
    return [f"action {i}" for i in range(n_actions)]


def _atari_action_names(env_id: str) -> list[str] | None:
    try:
        return list(atari_action_names(env_id))
    except Exception:  # the game may not exist here; names are then generic
        return None


class LayerError(GalleryError):
    """A layer name that the policy does not offer."""


@dataclass(frozen=True)
class AffineSplit:
    """A layer read only by an affine map, z = linear(a) + bias (NCHW), and the rest of the
    network from z: `rest(z)` gives (logits, value)."""

    linear: Callable[[Tensor], Tensor]
    bias: Tensor
    rest: Callable[[Tensor], tuple[Tensor, Tensor]]


class PolicyBase(nn.Module):
    """An actor-critic policy over image observations: the interface every analysis uses.

    `policy(obs)` maps observations (N, H, W, C) float in [0, 1] to logits (N, A) and
    value (N,). Layers offered for attribution are `layer_names`. Subclasses implement
    `forward`, `activations_nchw`, `forward_from_nchw` and fill the attributes below.
    """

    architecture: str
    args: dict[str, Any]
    action_names: list[str]
    observation_shape: tuple[int, int, int]
    layer_shapes: dict[str, tuple[int, ...]]
    source: str = ""
    sha256: str = ""
    training_steps: int | None = None
    """Environment steps the agent was trained for, when the file says."""

    @property
    def layer_names(self) -> list[str]:
        return list(self.layer_shapes)

    @property
    def num_actions(self) -> int:
        return len(self.action_names)

    @property
    def gamma(self) -> float:
        return float(self.args.get("gamma", 0.999))

    @property
    def lam(self) -> float:
        return float(self.args.get("lambda", 0.95))

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> dict[str, Any]:
        """What `gallery inspect` shows."""
        keys = ["env_kind", "env_name" if self.args.get("env_kind") != "atari" else "env_id",
                "distribution_mode", "num_levels", "frame_stack"]
        env = {k: self.args.get(k) for k in keys}
        return {
            "source": self.source, "sha256": self.sha256, "architecture": self.architecture,
            "environment": {k: v for k, v in env.items() if v is not None},
            "observation_shape": list(self.observation_shape),
            "actions": list(self.action_names),
            "layers": [{"name": k, "shape": list(v)} for k, v in self.layer_shapes.items()],
            "parameters": self.parameter_count(),
        }

    def activations(self, obs: Tensor, layer: str) -> Tensor:
        """Activations of `layer` for observations `obs`, (N, h, w, c)."""
        return _to_nhwc(self.activations_nchw(obs, layer))

    def forward_from(self, acts: Tensor, layer: str, obs: Tensor | None = None
                     ) -> tuple[Tensor, Tensor]:
        """Logits and value computed from `layer`'s activations (N, h, w, c)."""
        return self.forward_from_nchw(_to_nchw(acts), layer, obs)

    def activations_nchw(self, obs: Tensor, layer: str) -> Tensor:
        raise NotImplementedError

    def forward_from_nchw(self, acts: Tensor, layer: str, obs: Tensor | None = None
                          ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def affine_split(self, layer: str) -> AffineSplit | None:
        """The affine map that alone reads `layer`, when the policy knows one (a
        bottleneck feeding a convolution); None otherwise."""
        return None

    def _unknown_layer(self, layer: str) -> LayerError:
        return LayerError(f"no layer {layer!r}; this policy offers "
                          f"{', '.join(self.layer_names) or 'none'} (and 'input')")


class Policy(PolicyBase):
    """A policy whose network is one of the rl-clarity graphs (clear, impala, nature)."""

    def __init__(self, network: GraphNetwork, *, args: dict[str, Any], action_names: list[str],
                 observation_shape: tuple[int, int, int],
                 layer_options: LayerOptions = LayerOptions(), source: str = "",
                 sha256: str = ""):
        super().__init__()
        self.network = network
        self.args = args
        self.action_names = action_names
        self.observation_shape = observation_shape
        self.source, self.sha256 = source, sha256
        shapes = self._node_shapes()
        self._layers: dict[str, Node] = {n.label: n for n in offered_layers(
            network.nodes, {k: len(s) + 1 for k, s in shapes.items()}, layer_options)}
        self.layer_shapes = {label: _hwc(shapes[n.name]) for label, n in self._layers.items()}
        self._bottlenecks = bottlenecks(network.nodes)
        self.eval()

    @property
    def architecture(self) -> str:  # type: ignore[override]
        return self.network.architecture

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        latent, _ = self.network.run(_to_nchw(obs))
        return self.network.heads(latent)

    def activations_nchw(self, obs: Tensor, layer: str) -> Tensor:
        node = self._node(layer)
        x = _to_nchw(obs)
        if node.op == "input":
            return x
        _, kept = self.network.run(x, keep=frozenset([node.name]), until=node.name)
        return kept[node.name]

    def forward_from_nchw(self, acts: Tensor, layer: str, obs: Tensor | None = None
                          ) -> tuple[Tensor, Tensor]:
        """As `forward_from`, NCHW. `obs` is needed only for layers that are not bottlenecks."""
        node = self._node(layer)
        if node.op == "input":
            latent, _ = self.network.run(acts)
        else:
            if obs is None and node.name not in self._bottlenecks:
                raise LayerError(f"layer {layer!r} is not a bottleneck: pass the observations")
            x = None if obs is None else _to_nchw(obs)
            latent, _ = self.network.run(x, start=node.name, start_value=acts)
        return self.network.heads(latent)

    def affine_split(self, layer: str) -> AffineSplit | None:
        node = self._node(layer)
        consumer = self.network.affine_consumer(node.name)
        if node.op == "input" or consumer is None or node.name not in self._bottlenecks:
            return None
        name, module = consumer

        def rest(z: Tensor) -> tuple[Tensor, Tensor]:  # the consumer is a bottleneck too
            return self.network.heads(self.network.run(None, start=name, start_value=z)[0])

        return AffineSplit(module.linear, module.bias_nchw(), rest)

    def _node(self, layer: str) -> Node:
        if layer == "input":
            return self.network.nodes[0]
        try:
            return self._layers[layer]
        except KeyError:
            raise self._unknown_layer(layer) from None

    @torch.no_grad()
    def _node_shapes(self) -> dict[str, tuple[int, ...]]:
        h, w, c = self.observation_shape
        _, values = self.network.run(torch.zeros(1, c, h, w),
                                     keep=frozenset(n.name for n in self.network.nodes))
        return {k: tuple(v.shape[1:]) for k, v in values.items()}


def _to_nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


def _to_nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1) if x.dim() == 4 else x


def _hwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape


def policy_from_checkpoint(ckpt: Checkpoint, layer_options: LayerOptions = LayerOptions()
                           ) -> Policy:
    """Build the PyTorch policy for a validated checkpoint."""
    args = ckpt.args
    obs_shape = ckpt.observation_shape()
    network, problems = build_network(args["cnn"], ckpt.params, obs_shape,
                                      str(args["stack_channels"]), int(args["emb_size"]))
    if problems:
        shown = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
        raise CheckpointError(ckpt.path, f"does not match the {args['cnn']} architecture "
                              f"(args.cnn) on {obs_shape} observations: {shown}")
    n_actions = network.pi.weight.shape[0]
    return Policy(network, args=args, action_names=default_action_names(args, n_actions),
                  observation_shape=obs_shape, layer_options=layer_options,
                  source=ckpt.path, sha256=ckpt.sha256)


#: What the entrance reads, for error messages.
FORMATS = ("rl-clarity checkpoints (.jd, written with joblib)",
           "Stable-Baselines3 zips (PPO/A2C with CnnPolicy)",
           "any PyTorch model through an adapter (--adapter module:factory, docs/adapters.md)")


def load_policy(path: str | Path | None, layer_options: LayerOptions = LayerOptions(), *,
                adapter: str | None = None, env: dict[str, Any] | None = None,
                sha256: str | None = None, cache_dir: str | Path | None = None
                ) -> PolicyBase:
    """THE entrance for a model, safely: an rl-clarity checkpoint, a Stable-Baselines3 zip,
    or (with `adapter`, `module:factory`) any PyTorch model; `path` is a file, a file:// or
    http(s):// URL, or None for an adapter without weights.

    `env` names the environment where the file does not (an SB3 zip never does), e.g.
    {"env_kind": "atari", "env_id": "BreakoutNoFrameskip-v4"}; it is merged into the
    policy's `args` and gives its action names.

    A URL is fetched into the gallery's content-addressed cache (gallery.models.fetch: `cache_dir`,
    else $GALLERY_CACHE, else the user cache folder). With `sha256` the file is verified and,
    once cached, loaded without network; without it the download is not verified (a warning
    says so) and is fetched again each time."""
    local = None if path is None else _local_file(str(path), sha256, cache_dir)
    if adapter:
        from gallery.models.adapters import load_adapter

        policy: PolicyBase = load_adapter(adapter, None if local is None else str(local))
    elif local is None:
        raise CheckpointError("(none)", "no checkpoint given; name a file, or an adapter")
    else:
        from gallery.models.sb3 import is_sb3_zip, load_sb3

        if is_sb3_zip(local):
            policy = load_sb3(local, env)
        else:
            checkpoint = _read_known(local)
            policy = policy_from_checkpoint(checkpoint, layer_options)
            policy.training_steps = _training_steps(checkpoint.extra)
    if env:
        apply_env(policy, env)
    return policy


def _local_file(text: str, sha256: str | None, cache_dir: str | Path | None) -> Path:
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif text.startswith(("http://", "https://")):
        return _fetch_url(text, sha256, cache_dir)
    elif "://" in text:
        raise CheckpointError(text, "only paths, file://, http:// and https:// URLs are "
                              "supported")
    if sha256:
        from gallery.models.fetch import sha256_file

        actual = sha256_file(text)
        if actual != sha256.lower():
            raise CheckpointError(text, f"sha256 is {actual}, expected {sha256}")
    return Path(text)


def _read_known(path: Path) -> Checkpoint:
    """The rl-clarity checkpoint at `path`; a file of another format gets an error that
    lists the formats the gallery reads and how to name an adapter."""
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as err:
        if "joblib/pickle" not in err.problem:
            raise
        hint = ""
        if _is_torch_zip(path):
            hint = ("; it looks like a file written by torch.save (a PyTorch state dict or "
                    "model): name the adapter that builds its network, e.g. `gallery inspect "
                    f"{path} --adapter examples.adapters.cleanrl_procgen:make`")
        raise CheckpointError(path, f"{err.problem}. The gallery reads "
                              + "; ".join(FORMATS) + hint) from None
    return checkpoint


def _is_torch_zip(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _training_steps(extra: dict[str, Any]) -> int | None:
    for key in ("steps", "total_steps", "timesteps"):
        value = extra.get(key)
        if isinstance(value, int) or (hasattr(value, "item") and hasattr(value, "dtype")
                                      and value.dtype.kind in "iu" and value.ndim == 0):
            return int(value)
    return None


def apply_env(policy: PolicyBase, env: dict[str, Any]) -> None:
    """Merge `env` into the policy's args; generic action names become the game's."""
    policy.action_names = action_names_in(policy, env)
    policy.args = {**policy.args, **env}


def action_names_in(policy: PolicyBase, env: dict[str, Any]) -> list[str]:
    """The policy's action names, the game's where the file named none and `env` names
    the game (without changing the policy, which may be shared by several models)."""
    generic = [f"action {i}" for i in range(policy.num_actions)]
    if list(policy.action_names) == generic:
        return default_action_names({**policy.args, **env}, policy.num_actions)
    return list(policy.action_names)


def _fetch_url(url: str, sha256: str | None, cache_dir: str | Path | None) -> Path:
    """The local, cached copy of the checkpoint at `url` (gallery.models.fetch)."""
    import logging
    import tempfile
    import urllib.request

    from gallery.models.fetch import Cache, FetchError, FetchPolicy, download, resolve_cache_dir

    cache = Cache(resolve_cache_dir(cache_dir))
    if sha256:
        sha256 = sha256.lower()
        return cache.get(sha256) or download(url, sha256, cache, FetchPolicy())
    logging.getLogger(__name__).warning("%s: loading without a sha256: the download is not "
                                        "verified (pass sha256=... to verify and cache it)",
                                        url)
    cache.folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.folder) as tmp:
        target = Path(tmp) / "checkpoint"
        try:
            with urllib.request.urlopen(url, timeout=FetchPolicy.timeout) as response, \
                    open(target, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    if out.tell() > FetchPolicy.max_bytes:
                        raise FetchError(f"{url}: more than {FetchPolicy.max_bytes:,} bytes")
        except OSError as err:
            raise FetchError(f"{url}: download failed ({getattr(err, 'reason', err)})") \
                from None
        return cache.path(cache.add(target))
