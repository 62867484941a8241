"""Integrated gradients to a hidden layer (method.md sections 3 and 4).

For a layer with activations a(x) and an output f (the value, one policy logit, or the
sum of the logits of an action group):

    IG(x) = a(x) * (1/n) * sum_{k=1..n} grad_a f((k/n) * a(x))

-- zero baseline *at the layer*, straight path, right Riemann sum. For the `input` layer
the plain gradient of f with respect to the observation is returned instead.

Every output of the network is a row of a *readout* over [value, logit_0, ..., logit_A-1],
so a target is a readout vector and IG, being linear in f, is linear in the readout:
policy attribution computes one forward pass per integration step shared by every
output, then one backward pass per output over that shared graph, and action groups are
sums of action attributions, never recomputed.

The computation is plain PyTorch autograd, the same code on every device: the layer's
activations, the n scaled copies of a batch of frames stacked into one batch,
`forward_from`, and `torch.autograd.grad` once per output over that shared graph. It runs
where the policy's parameters are (CPU or CUDA); results come back as NumPy on the CPU.
docs/engine.md gives the measurements behind this choice.

Public functions validate their arguments and raise `AnalysisError` subclasses with a
message that says what to do. Layouts at the boundary are NHWC; inside, the policy's NCHW
path (`activations_nchw` / `forward_from_nchw`) is used and results are converted once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from gallery.errors import GalleryError

INPUT_LAYER = "input"
#: Arrows that define the action groups, in order; the last group has none of them.
GROUP_BUTTONS = ("RIGHT", "LEFT", "UP", "DOWN")
NO_ARROW_GROUP = "none"
#: Layer elements (scaled copies x h x w x c) per forward pass: bounds the memory of a
#: pass (the autograd graph holds a few times this many floats, about 1 GB at clear's 1a).
#: Larger passes are faster on the CPU too (coinrun.jd, 64 frames at 1a: 2^22 elements
#: 5.3-9.7 s, 2^25 3.2 s). On a GPU whose memory runs out, passes halve until they fit.
ELEMENTS_PER_PASS = 1 << 25

Progress = Callable[[int, int], None]
"""Called as progress(done, total) with counts of observations."""


class AnalysisError(GalleryError):
    """Inputs the analysis cannot use (layers, observations, targets, settings)."""


class UnknownLayerError(AnalysisError):
    """A layer the policy does not offer."""


class ObservationError(AnalysisError):
    """Observations of the wrong shape, type or range."""


@dataclass(frozen=True)
class ActionGroup:
    """Actions sharing an arrow button: attribution to the sum of their logits."""

    name: str
    actions: tuple[int, ...]


Target = str | int | Sequence[int] | ActionGroup
"""'value', an action index, a sequence of action indices (their logits summed) or an
ActionGroup."""


class FeatureSpace(Protocol):
    """What multi-path attribution needs of a fitted NMF (gallery.method.nmf.LayerNMF)."""

    n_features: int

    def transform(self, x: np.ndarray) -> np.ndarray: ...

    def inverse_transform(self, y: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class MultiPath:
    """Multi-path attribution: average IG over paths through NMF feature space.

    Each path splits the features into two halves; along the path one half grows as
    alpha^2 and the other as 1 - (1 - alpha)^2 (then the roles swap), the residual
    outside the features linearly. All splits are used unless `max_paths` is set, in
    which case that many paths are drawn with `seed`.
    """

    features: FeatureSpace
    max_paths: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class PolicyAttribution:
    """Attribution (N, h, w, c) to the value, every action and every action group."""

    value: np.ndarray
    actions: np.ndarray
    """(A, N, h, w, c)"""
    groups: tuple[ActionGroup, ...]
    group_attributions: np.ndarray
    """(G, N, h, w, c), in the order of `groups`"""


def action_groups(action_names: Sequence[str]) -> list[ActionGroup]:
    """The groups of actions whose button combination includes RIGHT / LEFT / UP / DOWN /
    none of those, in that order; groups of fewer than two actions are dropped.

    Names are button combinations joined by '+', e.g. 'RIGHT+UP'; '()' or '' has none.
    """
    buttons = [{b.strip().upper() for b in name.split("+")} for name in action_names]
    members = [[i for i, bs in enumerate(buttons) if arrow in bs] for arrow in GROUP_BUTTONS]
    members.append([i for i, bs in enumerate(buttons) if not bs & set(GROUP_BUTTONS)])
    names = list(GROUP_BUTTONS) + [NO_ARROW_GROUP]
    return [ActionGroup(n, tuple(m)) for n, m in zip(names, members) if len(m) > 1]


def integrated_gradients(policy: torch.nn.Module, obs: Any, layer: str, target: Target = "value",
                         steps: int = 10, *, multi_path: MultiPath | None = None,
                         progress: Progress | None = None) -> np.ndarray:
    """Integrated gradients of `target` to `layer`, as numpy (N, h, w, c) float32.

    `obs` is (N, H, W, C), float in [0, 1] or uint8 (divided by 255), numpy or torch.
    For layer 'input' the plain gradient with respect to the observation is returned.
    """
    _check_steps(steps)
    obs_t = prepare_observations(policy, obs)
    check_layer(policy, layer)
    readout = readout_matrix(policy, [target])
    if multi_path is not None:
        if layer == INPUT_LAYER:
            raise AnalysisError("multi-path attribution needs a hidden layer, not 'input'")
        return _multi_path_attribution(policy, obs_t, layer, readout[0], steps, multi_path,
                                       progress)
    batches = _attribution_batches(policy, obs_t, layer, readout, steps, progress=progress)
    return _collect(batches, (1, len(obs_t)) + layer_shape(policy, layer))[0]


def input_gradients(policy: torch.nn.Module, obs: Any, target: Target = "value") -> np.ndarray:
    """Gradient of `target` with respect to the observations, numpy (N, H, W, C)."""
    return integrated_gradients(policy, obs, INPUT_LAYER, target, steps=1)


def policy_attribution(policy: torch.nn.Module, obs: Any, layer: str, steps: int = 10, *,
                       groups: Sequence[ActionGroup] | None = None,
                       progress: Progress | None = None) -> PolicyAttribution:
    """Attribution to the value, every action and every action group at once.

    One forward pass per integration step is shared by all outputs (each output then
    costs one backward pass); group attributions are sums of action attributions (IG is
    linear in f).
    """
    _check_steps(steps)
    obs_t = prepare_observations(policy, obs)
    check_layer(policy, layer)
    groups = tuple(action_groups(policy.action_names) if groups is None else groups)
    readout = readout_matrix(policy, ["value"] + list(range(policy.num_actions)))
    batches = _attribution_batches(policy, obs_t, layer, readout, steps, progress=progress)
    everything = _collect(batches, (len(readout), len(obs_t)) + layer_shape(policy, layer))
    group_attr = np.zeros((len(groups),) + everything.shape[1:], np.float32)
    for g, group in enumerate(groups):  # row 0 is the value, row 1 + a action a
        for a in group.actions:
            group_attr[g] += everything[1 + a]
    return PolicyAttribution(everything[0], everything[1:], groups, group_attr)


def readout_matrix(policy: torch.nn.Module, targets: Sequence[Target]) -> Tensor:
    """(O, A + 1) float32: row o selects target o from [value, logit_0, ..., logit_A-1]."""
    num_actions = int(policy.num_actions)
    rows = torch.zeros(len(targets), num_actions + 1)
    for row, target in enumerate(targets):
        for column in _readout_columns(target, num_actions):
            rows[row, column] += 1.0
    return rows


def attribution_batches(policy: torch.nn.Module, obs: Any, layer: str, readout: Tensor,
                        steps: int = 10, *, progress: Progress | None = None
                        ) -> Iterator[tuple[slice, np.ndarray]]:
    """Attribution of every readout row, a batch of observations at a time.

    Yields (observation slice, (O, B, h, w, c) float32) so that callers can reduce each
    batch before the next is computed (bounded memory for long trajectories).
    """
    _check_steps(steps)
    obs_t = prepare_observations(policy, obs)
    check_layer(policy, layer)
    yield from _attribution_batches(policy, obs_t, layer, readout, steps, progress=progress)


# --- validation -------------------------------------------------------------------------

def policy_device(policy: torch.nn.Module) -> torch.device:
    """The device of the policy's parameters or buffers (CPU for a policy without any)."""
    return _policy_tensor_kind(policy)[0]


def _policy_tensor_kind(policy: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """(device, floating-point type) of the policy's first parameter or buffer: CPU and
    float32 for a policy without any (or with integer ones only)."""
    tensor = next(itertools.chain(policy.parameters(), policy.buffers()), None)
    if tensor is None:
        return torch.device("cpu"), torch.float32
    return tensor.device, tensor.dtype if tensor.is_floating_point() else torch.float32


def prepare_observations(policy: torch.nn.Module, obs: Any) -> Tensor:
    """Observations as an NHWC tensor in [0, 1] on the policy's device and in its
    floating-point type (float32, or float64 for a policy made `.double()`), checked
    against the policy. uint8 is divided by 255; floats must lie in [0, 1]."""
    device, dtype = _policy_tensor_kind(policy)
    array = _validated_observations(policy, obs)
    if array.dtype == np.uint8:  # divided in the policy's type, on its device
        return torch.from_numpy(array).to(device).to(dtype) / 255
    return torch.from_numpy(array).to(device, dtype)


def _validated_observations(policy: torch.nn.Module, obs: Any) -> np.ndarray:
    if isinstance(obs, Tensor):
        obs = obs.detach().cpu()
        array = obs.numpy() if obs.dtype != torch.bfloat16 else obs.float().numpy()
    else:
        array = np.asarray(obs)
    expected = tuple(getattr(policy, "observation_shape", array.shape[1:]))
    if array.ndim != 4 or tuple(array.shape[1:]) != expected:
        raise ObservationError(f"observations must be (N, {', '.join(map(str, expected))}) "
                               f"(NHWC), got shape {tuple(array.shape)}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype.kind != "f":
        raise ObservationError(f"observations must be uint8 or float in [0, 1], "
                               f"got dtype {array.dtype}")
    if array.size and not np.all(np.isfinite(array)):
        raise ObservationError("observations contain NaN or infinite values")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ObservationError(f"float observations must lie in [0, 1], found "
                               f"[{array.min():.4g}, {array.max():.4g}]; divide uint8 "
                               "frames by 255 (or pass them as uint8)")
    return np.ascontiguousarray(array, dtype=np.float32)


def check_layer(policy: torch.nn.Module, layer: str) -> None:
    """Raise UnknownLayerError naming the layers on offer unless `layer` is one of them."""
    names = list(policy.layer_names)
    if layer != INPUT_LAYER and layer not in names:
        raise UnknownLayerError(f"no layer {layer!r}; this policy offers "
                                f"{', '.join(map(repr, names)) or 'no layers'} and 'input'")


def layer_shape(policy: torch.nn.Module, layer: str) -> tuple[int, int, int]:
    """(h, w, c) of a layer's activations ('input': the observation shape)."""
    if layer == INPUT_LAYER:
        return tuple(policy.observation_shape)  # type: ignore[return-value]
    return tuple(policy.layer_shapes[layer])  # type: ignore[return-value]


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise AnalysisError(f"integration steps must be an integer >= 1, not {steps!r}")


def _readout_columns(target: Target, num_actions: int) -> list[int]:
    if isinstance(target, str):
        if target == "value":
            return [0]
        raise AnalysisError(f"unknown target {target!r}: use 'value', an action index "
                            f"(0..{num_actions - 1}) or a list of action indices")
    if isinstance(target, ActionGroup):
        target = target.actions
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        actions = [int(target)]
    elif isinstance(target, Sequence) and target and all(
            isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in target):
        actions = [int(a) for a in target]
    else:
        raise AnalysisError(f"target must be 'value', an action index or a non-empty list of "
                            f"action indices, not {target!r}")
    bad = [a for a in actions if not 0 <= a < num_actions]
    if bad:
        raise AnalysisError(f"action index {bad[0]} out of range: the policy has "
                            f"{num_actions} actions (0..{num_actions - 1})")
    return [a + 1 for a in actions]


# --- computation ------------------------------------------------------------------------

def _attribution_batches(policy: torch.nn.Module, obs: Tensor, layer: str, readout: Tensor,
                         steps: int, *, progress: Progress | None = None,
                         elements_per_pass: int = ELEMENTS_PER_PASS
                         ) -> Iterator[tuple[slice, np.ndarray]]:
    """(observation slice, (O, B, h, w, c) float32 NumPy) a batch of frames at a time."""
    h, w, c = layer_shape(policy, layer)
    copies = 1 if layer == INPUT_LAYER else steps  # scaled copies of each frame
    needs_obs = layer != INPUT_LAYER and _needs_observations(policy, layer, obs)
    start = 0
    while start < len(obs):
        items = max(1, elements_per_pass // (h * w * c))
        frames = max(1, items // copies)
        chunk = slice(start, min(start + frames, len(obs)))
        try:
            if layer == INPUT_LAYER:
                grads = _gradients(policy, obs[chunk], readout)
            else:
                grads = _integrated_gradients(policy, obs[chunk], layer, readout, steps,
                                              max(1, min(steps, items)), needs_obs)
        except torch.cuda.OutOfMemoryError:
            if elements_per_pass <= h * w * c:
                raise AnalysisError(
                    f"one integration step of layer {layer!r} ({h}x{w}x{c}) does not fit "
                    f"in the memory of {obs.device}; use --device cpu") from None
            elements_per_pass //= 2  # smaller passes, then the same batch again
            torch.cuda.empty_cache()
            continue
        yield chunk, grads.cpu().numpy()
        start = chunk.stop
        if progress is not None:
            progress(chunk.stop, len(obs))


def _integrated_gradients(policy: torch.nn.Module, obs: Tensor, layer: str, readout: Tensor,
                          steps: int, steps_per_pass: int, needs_obs: bool) -> Tensor:
    """(O, B, h, w, c): acts * (1/n) sum_k grad f(k/n acts) for every readout row f, the
    k/n-scaled copies of the batch stacked into passes of `steps_per_pass` steps.

    When the layer is read only by an affine map z = L(a) + b (`policy.affine_split`),
    the passes start after it: L(k/n a) + b = k/n L(a) + b, so L runs once per frame,
    and grad_a f = L^T grad_z f, so the summed gradients go back through L once. At
    clear's 2a (read by 2b's convolution, most of the network's work after it) that is
    a third of the work."""
    known = getattr(policy, "affine_split", None)
    split = known(layer) if known is not None and not needs_obs else None
    with torch.no_grad():
        acts = policy.activations_nchw(obs, layer)
        start = acts if split is None else split.linear(acts)
    total = torch.zeros((len(readout),) + tuple(start.shape), dtype=acts.dtype,
                        device=acts.device)
    for first in range(1, steps + 1, steps_per_pass):
        alphas = torch.arange(first, min(first + steps_per_pass, steps + 1),
                              dtype=acts.dtype, device=acts.device) / steps
        scaled = (alphas.view(-1, 1, 1, 1, 1) * start).flatten(0, 1)
        if split is not None:
            scaled = scaled + split.bias
        scaled.requires_grad_(True)
        extra = (obs.repeat(len(alphas), 1, 1, 1),) if needs_obs else ()
        with torch.enable_grad():
            logits, value = (policy.forward_from_nchw(scaled, layer, *extra) if split is None
                             else split.rest(scaled))
            outputs = torch.cat([value[:, None], logits], dim=1)
            for o, grad in enumerate(_readout_gradients(outputs, scaled, readout)):
                total[o] += grad.unflatten(0, (len(alphas), len(start))).sum(dim=0)
    if split is not None:  # back through L once: its gradient does not depend on the point
        point = acts.detach().requires_grad_(True)
        with torch.enable_grad():
            mapped = split.linear(point)
            total = torch.stack([torch.autograd.grad(mapped, point, g, retain_graph=True)[0]
                                 for g in total])
    return (acts * total / steps).permute(0, 1, 3, 4, 2)


def _gradients(policy: torch.nn.Module, obs: Tensor, readout: Tensor) -> Tensor:
    """(O, B, H, W, C): gradient of every readout row with respect to the observations."""
    x = obs.clone().requires_grad_(True)
    with torch.enable_grad():
        logits, value = policy(x)
        return torch.stack(list(_readout_gradients(torch.cat([value[:, None], logits], dim=1),
                                                   x, readout)))


def _readout_gradients(outputs: Tensor, inputs: Tensor, readout: Tensor) -> Iterator[Tensor]:
    """For every row o of `readout`, the gradient (inputs.shape) of sum_batch(outputs @
    readout[o]): one backward pass per row over the one forward graph, yielded as it comes
    (a caller that sums them holds one at a time)."""
    rows = outputs @ readout.to(device=outputs.device, dtype=outputs.dtype).T  # (batch, O)
    for o in range(len(readout)):
        yield torch.autograd.grad(rows[:, o].sum(), inputs,
                                  retain_graph=o < len(readout) - 1)[0]


def _needs_observations(policy: torch.nn.Module, layer: str, obs: Tensor) -> bool:
    """Whether `forward_from_nchw` needs the observations too (layers that are not
    bottlenecks, e.g. the ReLU at the entry of an IMPALA residual block, whose skip
    connection bypasses it)."""
    ask = getattr(policy, "needs_observations", None)
    if callable(ask):
        return bool(ask(layer))
    if len(obs) == 0:
        return False
    probe = obs[:1]
    with torch.no_grad():
        acts = policy.activations_nchw(probe, layer)
        try:
            policy.forward_from_nchw(acts, layer)
        except (GalleryError, ValueError):
            return True
    return False


def _multi_path_attribution(policy: torch.nn.Module, obs: Tensor, layer: str, readout: Tensor,
                            steps: int, options: MultiPath, progress: Progress | None
                            ) -> np.ndarray:
    """Average over NMF-space paths of sum_k (p_k - p_{k-1}) * grad f(p_k), NHWC."""
    needs_obs = _needs_observations(policy, layer, obs)
    splits = _path_splits(options.features.n_features, options.max_paths, options.seed)
    out = []
    frames = max(1, ELEMENTS_PER_PASS // int(np.prod(layer_shape(policy, layer))))
    for start in range(0, len(obs), frames):
        batch = obs[start:start + frames]
        with torch.no_grad():
            acts = policy.activations_nchw(batch, layer).permute(0, 2, 3, 1).cpu().numpy()
        reduced = options.features.transform(acts)
        residual = acts - options.features.inverse_transform(reduced)
        total = np.zeros_like(acts)
        for slow in splits:
            previous = np.zeros_like(acts)
            for k in range(1, steps + 1):
                alpha = k / steps
                coordinates = _path_coordinates(slow, alpha)
                point = (options.features.inverse_transform(reduced * coordinates)
                         + residual * alpha).astype(np.float32)
                grad = _gradient_at(policy, layer, point, readout, batch if needs_obs else None)
                total += (point - previous) * grad
                previous = point
        out.append(total / max(1, len(splits)))
        if progress is not None:
            progress(min(start + frames, len(obs)), len(obs))
    if not out:
        return np.zeros((0,) + layer_shape(policy, layer), np.float32)
    return np.concatenate(out)


def _gradient_at(policy: torch.nn.Module, layer: str, point_nhwc: np.ndarray, readout: Tensor,
                 obs: Tensor | None) -> np.ndarray:
    x = torch.from_numpy(point_nhwc).to(policy_device(policy)).permute(0, 3, 1, 2)
    x = x.contiguous().requires_grad_(True)
    with torch.enable_grad():
        logits, value = policy.forward_from_nchw(x, layer, *(() if obs is None else (obs,)))
        (grad,) = _readout_gradients(torch.cat([value[:, None], logits], dim=1), x,
                                     readout[None])
    return grad.permute(0, 2, 3, 1).cpu().numpy()


def _path_splits(n_features: int, max_paths: int | None, seed: int) -> list[np.ndarray]:
    """(K,) masks of the features that grow slowly (as alpha^2) along each path."""
    combos = list(itertools.combinations(range(n_features), n_features // 2))
    if n_features % 2 == 0:
        combos = [c for c in combos if 0 in c]  # the complement covers the other half
    rng = np.random.default_rng(seed)
    if max_paths is not None:
        if max_paths < 1:
            raise AnalysisError(f"max_paths must be >= 1, not {max_paths}")
        chosen = rng.choice(len(combos), size=min((max_paths + 1) // 2, len(combos)),
                            replace=False)
        combos = [combos[i] for i in chosen]
    masks = []
    for i, combo in enumerate(combos):
        mask = np.zeros(n_features)
        mask[list(combo)] = 1.0
        sides = [False, True]
        if max_paths is not None and 2 * i + 1 == max_paths:
            sides = [bool(rng.integers(2))]
        masks += [1.0 - mask if complement else mask for complement in sides]
    return masks


def _path_coordinates(slow: np.ndarray, alpha: float) -> np.ndarray:
    """Feature multipliers at `alpha`: slow features alpha^2, the others 1 - (1 - alpha)^2."""
    return slow * alpha**2 + (1.0 - slow) * (1.0 - (1.0 - alpha) ** 2)


def _collect(batches: Iterable[tuple[slice, np.ndarray]], shape: tuple[int, ...]
             ) -> np.ndarray:
    """(O, N, ...) float32: every batch's attribution (O, B, ...) copied into place."""
    out = np.empty(shape, np.float32)
    for chunk, batch in batches:
        out[:, chunk] = batch
    return out
