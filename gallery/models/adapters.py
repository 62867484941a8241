"""Bring your own PyTorch actor-critic: adapters named as `module:factory`.

A factory is any function `factory(checkpoint: str | None) -> ExternalModel` in an
importable module (installed, or a file in the current folder). It builds the user's
network (CleanRL, Stable-Baselines3, their own code), loads its weights, and declares what
the gallery needs to know: observation format, action names and the layers to offer.
The factory is the user's own code, named by the user; checkpoint files are still never
unpickled by the gallery (a factory should load weights with
`torch.load(path, weights_only=True)` or safetensors).
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gallery.errors import GalleryError
from gallery.models.policy import LayerError, PolicyBase

ADAPTER_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class AdapterError(GalleryError):
    """An adapter cannot be imported, or what it returned is not usable."""


@dataclass
class ExternalModel:
    """What an adapter's factory returns."""

    module: nn.Module
    """The user's network; `module(obs)` is called on observations in `obs_layout`."""
    layers: dict[str, str]
    """Display name -> dotted path of the submodule whose (N, C, H, W) output is offered."""
    observation_shape: tuple[int, int, int]
    """(H, W, C) of one observation."""
    action_names: list[str]
    """One name per action, e.g. button combinations 'LEFT+UP'."""
    outputs: Callable[[Any], tuple[Tensor, Tensor]] | None = None
    """Maps the module's output to (logits (N, A), value (N,)); default: it returns that pair."""
    obs_layout: str = "NHWC"
    """Layout `module` expects: 'NHWC' or 'NCHW'."""
    obs_scale: float = 1.0
    """`module` is given obs * obs_scale (255.0 for networks that take byte-range pixels)."""
    args: dict[str, Any] = field(default_factory=dict)
    """Environment and training facts: env_kind, env_name, gamma, lambda, ..."""
    architecture: str = "external"
    partial_layers: tuple[str, ...] = ()
    """Offered layers that some output bypasses (e.g. one torso per head): the gallery then
    passes the observations too when it replaces them. Leave empty for bottlenecks."""


class AdapterPolicy(PolicyBase):
    """A PolicyBase over an ExternalModel; layers are read and replaced with forward hooks."""

    def __init__(self, model: ExternalModel, source: str = "", sha256: str = ""):
        super().__init__()
        if model.obs_layout not in ("NHWC", "NCHW"):
            raise AdapterError(f"{source}: obs_layout must be 'NHWC' or 'NCHW'")
        self.model = model
        self.net = model.module.eval()
        self.architecture = model.architecture
        self.args = {"env_kind": "procgen", "gamma": 0.999, "lambda": 0.95, **model.args}
        self.action_names = list(model.action_names)
        self.observation_shape = tuple(model.observation_shape)  # type: ignore[assignment]
        self.source, self.sha256 = source, sha256
        modules = dict(self.net.named_modules())
        missing = [p for p in model.layers.values() if p not in modules]
        if missing:
            raise AdapterError(f"{source}: no submodule {', '.join(missing)}; the module has "
                               f"{', '.join(n for n in modules if n)}")
        self._modules_by_layer = {k: modules[v] for k, v in model.layers.items()}
        self.layer_shapes = self._layer_shapes()
        logits, _ = self(torch.zeros(1, *self.observation_shape))
        if logits.shape[-1] != len(self.action_names):
            raise AdapterError(f"{source}: {logits.shape[-1]} logits but "
                               f"{len(self.action_names)} action names")

    def _call(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        x = obs * self.model.obs_scale if self.model.obs_scale != 1.0 else obs
        if self.model.obs_layout == "NCHW":
            x = x.permute(0, 3, 1, 2)
        out = self.net(x)
        logits, value = self.model.outputs(out) if self.model.outputs else out
        return logits, value.reshape(-1)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self._call(obs)

    def activations_nchw(self, obs: Tensor, layer: str) -> Tensor:
        if layer == "input":
            return obs.permute(0, 3, 1, 2)
        captured: list[Tensor] = []
        handle = self._module(layer).register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            self._call(obs)
        finally:
            handle.remove()
        if len(captured) != 1:
            path = self.model.layers[layer]
            why = ("is never called by the network's forward (a functional call such as "
                   "torch.relu(x) cannot be hooked): make that step a module, e.g. "
                   "self.relu = nn.ReLU(), call it in forward and name it"
                   if not captured else
                   f"is called {len(captured)} times in one forward (one module reused): "
                   "give each use its own module instance")
            raise AdapterError(f"{self.source}: layer {layer!r}: submodule {path!r} {why}")
        return captured[0]

    def forward_from_nchw(self, acts: Tensor, layer: str, obs: Tensor | None = None
                          ) -> tuple[Tensor, Tensor]:
        if layer == "input":
            return self._call(acts.permute(0, 2, 3, 1))
        if obs is None:  # offered layers are bottlenecks: upstream values do not matter
            if layer in self.model.partial_layers:
                raise LayerError(f"layer {layer!r} is not a bottleneck: pass the observations")
            obs = torch.zeros(acts.shape[0], *self.observation_shape, dtype=acts.dtype)
        handle = self._module(layer).register_forward_hook(lambda m, i, o: acts)
        try:
            return self._call(obs)
        finally:
            handle.remove()

    def needs_observations(self, layer: str) -> bool:
        """Whether `forward_from_nchw` needs the observations for `layer`."""
        return layer in self.model.partial_layers

    def _module(self, layer: str) -> nn.Module:
        try:
            return self._modules_by_layer[layer]
        except KeyError:
            raise self._unknown_layer(layer) from None

    @torch.no_grad()
    def _layer_shapes(self) -> dict[str, tuple[int, ...]]:
        obs = torch.zeros(1, *self.observation_shape)
        shapes = {}
        for name in self.model.layers:
            a = self.activations_nchw(obs, name)
            if a.dim() != 4:
                raise AdapterError(f"{self.source}: layer {name!r} has shape {tuple(a.shape)}; "
                                   "offered layers must be 4-D (N, C, H, W)")
            shapes[name] = (a.shape[2], a.shape[3], a.shape[1])
        return shapes


def import_factory(spec: str) -> Callable[[str | None], ExternalModel]:
    """Import `module:factory`, looking in the current folder too."""
    if not ADAPTER_PATTERN.match(spec):
        raise AdapterError(f"adapter {spec!r} is not of the form module.path:function")
    module_name, func_name = spec.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise AdapterError(f"adapter {spec}: cannot import {module_name} ({err}); check the "
                           "module path, and run gallery from the folder that holds the "
                           "package or add that folder to PYTHONPATH") from None
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise AdapterError(f"adapter {spec}: {module_name} has no function {func_name}")
    return factory


def load_adapter(spec: str, checkpoint: str | None = None) -> AdapterPolicy:
    """Build a policy from the adapter `spec`, given the checkpoint path (or None)."""
    factory = import_factory(spec)
    where = f"adapter {spec}" + (f" on {checkpoint}" if checkpoint else "")
    try:
        # without weights the factory's network is its random initialisation: seeded, so
        # that every process (worker, MPI rank) builds the same network
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = factory(checkpoint)
    except GalleryError:
        raise
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only load failed" in str(err):
            raise AdapterError(
                f"{where}: the file is a whole pickled module (torch.save(model)), which "
                "cannot be loaded without running code from it. Where the model was trained, "
                "save its weights instead -- torch.save(model.state_dict(), 'weights.pt') -- "
                "and give that file; the factory loads it with "
                "torch.load(path, weights_only=True)") from None
        raise AdapterError(f"{where}: the factory cannot read the file ({err})") from None
    except Exception as err:  # the user's code: say where it failed, keep the cause
        raise AdapterError(f"{where}: the factory raised {type(err).__name__}: "
                           f"{str(err)[:300]}; run it in Python to see the traceback") from err
    if not isinstance(model, ExternalModel):
        raise AdapterError(f"adapter {spec} returned {type(model).__name__}, "
                           "expected gallery.models.adapters.ExternalModel")
    unknown = [p for p in model.partial_layers if p not in model.layers]
    if unknown:
        raise AdapterError(f"adapter {spec}: partial_layers {unknown} are not in layers")
    sha = ""
    if checkpoint and Path(checkpoint).is_file():
        from gallery.models.checkpoint import sha256_of
        sha = sha256_of(checkpoint)
    return AdapterPolicy(model, source=checkpoint or spec, sha256=sha)


def adapter_digest(spec: str) -> str:
    """The identity of an adapter that builds its network without weights: the sha256 of
    its name and its module's source (the code that makes the network)."""
    import hashlib
    import importlib.util

    module_name = spec.split(":")[0]
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise AdapterError(f"adapter {spec}: module {module_name!r} is not importable; "
                           "check the name and that its folder is on PYTHONPATH")
    digest = hashlib.sha256(spec.encode() + b"\n")
    digest.update(Path(found.origin).read_bytes())
    return digest.hexdigest()


def load_any(target: str | None, adapter: str | None = None,
             env: dict[str, Any] | None = None) -> PolicyBase:
    """A checkpoint (rl-clarity .jd or SB3 zip) path, or `module:factory`, or a checkpoint
    read through `adapter` (gallery.load_policy, the one entrance)."""
    from gallery.models.policy import load_policy

    if not adapter and target and ADAPTER_PATTERN.match(target) and not Path(target).exists():
        return load_policy(None, adapter=target, env=env)
    return load_policy(target, adapter=adapter, env=env)


def check_adapter(policy: AdapterPolicy, frames: Tensor | None = None,
                  tolerance: float = 1e-4) -> list[str]:
    """Check what the gallery assumes of an adapter's offered layers, on `frames` (N, H, W, C)
    in [0, 1] (real frames of its environment, see `environment_frames`): each layer's
    output is non-negative (NMF needs it); replacing it through the hook gives the module's
    own outputs; layers not in `partial_layers` are bottlenecks (the outputs do not depend
    on the observations once the layer is given). Returns the checks passed; raises
    AdapterError listing every problem, each with the layer and the fix."""
    if frames is None:
        frames = environment_frames(policy)
    passed, problems = [], []
    with torch.no_grad():
        logits, value = policy(frames)
        for layer in policy.layer_names:
            acts = policy.activations_nchw(frames, layer)
            low = float(acts.min())
            if low < 0:
                problems.append(
                    f"layer {layer!r} ({policy.model.layers[layer]}) goes negative on real "
                    f"frames (minimum {low:.4g}): NMF explains non-negative activations only; "
                    "offer the ReLU module that follows it instead")
            else:
                passed.append(f"{layer}: non-negative on {len(frames)} real frames "
                              f"(mean {float(acts.mean()):.4g})")
            gap = _output_gap(policy, acts, layer, frames, logits, value)
            if gap > tolerance:
                problems.append(f"layer {layer!r}: the outputs with the layer replaced by its "
                                f"own activations differ from the module's by {gap:.3g}: the "
                                "module's output must be used as returned (no in-place "
                                "changes after it)")
            else:
                passed.append(f"{layer}: outputs through the hook equal the module's "
                              f"(max difference {gap:.2g})")
            if layer in policy.model.partial_layers:
                passed.append(f"{layer}: declared partial (observations passed too)")
                continue
            gap = _output_gap(policy, acts, layer, torch.zeros_like(frames), logits, value)
            if gap > tolerance:
                problems.append(f"layer {layer!r} is not a bottleneck: given the layer, the "
                                f"outputs still depend on the observations (by {gap:.3g}), "
                                "e.g. through a skip connection or a second torso; offer a "
                                "layer that every path passes, or list it in partial_layers")
            else:
                passed.append(f"{layer}: a bottleneck (outputs depend on the observations "
                              "only through it)")
    if problems:
        raise AdapterError(f"{policy.source}: {len(problems)} problem(s) with the offered "
                           "layers:\n  " + "\n  ".join(problems))
    return passed


def _output_gap(policy: AdapterPolicy, acts: Tensor, layer: str, obs: Tensor, logits: Tensor,
                value: Tensor) -> float:
    """Largest difference between the module's outputs and those computed from `layer`'s
    activations `acts` with observations `obs` beside them."""
    other_logits, other_value = policy.forward_from_nchw(acts, layer, obs)
    return max(float((other_logits - logits).abs().max()),
               float((other_value - value).abs().max()))


def environment_frames(policy: PolicyBase, num_envs: int = 2, steps: int = 16,
                       seed: int = 0) -> Tensor:
    """Observations (N, H, W, C) in [0, 1] from running `policy` in its environment."""
    from gallery.environments import EnvSpec, make_vec_env

    spec = EnvSpec.from_args(policy.args)
    frames = []
    generator = torch.Generator().manual_seed(seed)
    with make_vec_env(spec, num_envs, seed) as env, torch.no_grad():
        for _ in range(steps):
            obs = torch.from_numpy(env.observe().obs).float() / 255
            frames.append(obs)
            logits, _ = policy(obs)
            env.act(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
                    [:, 0].numpy())
    return torch.cat(frames)
