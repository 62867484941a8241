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

Public functions validate their arguments and raise `AnalysisError` subclasses with a
message that says what to do; the private ones compute. Layouts at the boundary are NHWC;
inside, the policy's NCHW fast path (`activations_nchw` / `forward_from_nchw`) is used and
results are converted once, at the end.
"""

from __future__ import annotations

import contextvars
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .allocator import keep_freed_memory
from .errors import GalleryError

INPUT_LAYER = "input"
#: Arrows that define the action groups, in order; the last group has none of them.
GROUP_BUTTONS = ("RIGHT", "LEFT", "UP", "DOWN")
NO_ARROW_GROUP = "none"
#: Layer elements (items x h x w x c) per forward pass, for one output and for several
#: (whose backward passes re-read the pass's tensors): measured on a 2-core CPU, see
#: docs/analysis.md (`benchmarks/bench_passes.py`, re-measured once `gallery.allocator`
#: stopped every large tensor from costing fresh pages: larger passes now pay).
ELEMENTS_PER_PASS = 1 << 23
ELEMENTS_PER_PASS_MANY = 1 << 20

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
    """What multi-path attribution needs of a fitted NMF (gallery.nmf.LayerNMF)."""

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
    return _collect(batches, (1, len(obs_t)) + layer_shape(policy, layer))[0][0]


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
    everything, group_attr = _collect(
        batches, (len(readout), len(obs_t)) + layer_shape(policy, layer),
        [[1 + a for a in g.actions] for g in groups])  # row 0 is the value
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

def prepare_observations(policy: torch.nn.Module, obs: Any) -> Tensor:
    """Observations as a float32 NHWC tensor in [0, 1], checked against the policy.

    uint8 is divided by 255; floats must lie in [0, 1]. Every attribution starts here, so
    this is also where the process's allocator is told to keep freed memory
    (`gallery.allocator`: no fresh zeroed pages for every tensor).
    """
    keep_freed_memory()
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
        return torch.from_numpy(array.astype(np.float32) / np.float32(255))
    if array.dtype.kind != "f":
        raise ObservationError(f"observations must be uint8 or float in [0, 1], "
                               f"got dtype {array.dtype}")
    if array.size and not np.all(np.isfinite(array)):
        raise ObservationError("observations contain NaN or infinite values")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ObservationError(f"float observations must lie in [0, 1], found "
                               f"[{array.min():.4g}, {array.max():.4g}]; divide uint8 "
                               "frames by 255 (or pass them as uint8)")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


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
                         elements_per_pass: int | None = None, use_split: bool = True
                         ) -> Iterator[tuple[slice, np.ndarray]]:
    if elements_per_pass is None:
        elements_per_pass = ELEMENTS_PER_PASS if len(readout) == 1 else ELEMENTS_PER_PASS_MANY
    h, w, c = layer_shape(policy, layer)
    items = max(1, elements_per_pass // (h * w * c))
    if layer == INPUT_LAYER:
        frames, steps_per_pass = items, 1
    else:
        # the steps split into equal passes (10 steps in 8-item passes: 5 + 5, not 8 + 2)
        steps_per_pass = -(-steps // -(-steps // min(steps, items)))
        frames = max(1, items // steps_per_pass)
    needs_obs = layer != INPUT_LAYER and _needs_observations(policy, layer, obs)
    # Layers that need the observation too (not bottlenecks: IMPALA block entries) run the
    # whole network per step anyway, and there the hoisted consumer's different float32
    # rounding would flip near-ties of later max pools: they keep the plain path.
    split = _LayerSplit.find(policy, layer) if use_split and not needs_obs else None
    for start in range(0, len(obs), frames):
        chunk = slice(start, min(start + frames, len(obs)))
        token = _BATCHED.set(BATCHED_BACKWARD and h * w * c <= BATCHED_MAX_ELEMENTS)
        try:
            if layer == INPUT_LAYER:
                grads = _gradients(policy, obs[chunk], readout)
            else:
                grads = _integrated_gradients(policy, obs[chunk], layer, readout, steps,
                                              steps_per_pass, needs_obs, split)
        finally:
            _BATCHED.reset(token)
        yield chunk, grads.numpy()
        if progress is not None:
            progress(chunk.stop, len(obs))


def _integrated_gradients(policy: torch.nn.Module, obs: Tensor, layer: str, readout: Tensor,
                          steps: int, steps_per_pass: int, needs_obs: bool,
                          split: _LayerSplit | None = None) -> Tensor:
    """(O, B, h, w, c): IG of every readout row for a batch of observations."""
    with torch.no_grad():
        acts = policy.activations_nchw(obs, layer)
    x = obs.permute(0, 3, 1, 2) if needs_obs else None
    if split is not None:
        summed = split.summed_gradients(acts, x, readout, steps, steps_per_pass)
    else:
        summed = _summed_gradients(policy, layer, acts, obs if needs_obs else None, readout,
                                   steps, steps_per_pass)
    attr = acts * summed / steps
    return attr.permute(0, 1, 3, 4, 2)


def _summed_gradients(policy: torch.nn.Module, layer: str, acts: Tensor, obs: Tensor | None,
                      readout: Tensor, steps: int, steps_per_pass: int) -> Tensor:
    """(O,) + acts.shape: sum over k = 1..n of grad f(k/n * acts), for every readout row."""
    total = torch.zeros((len(readout),) + tuple(acts.shape))
    graph = _graph_node(policy, layer) if GRAPH_VJP else None
    for first in range(1, steps + 1, steps_per_pass):
        alphas = torch.arange(first, min(first + steps_per_pass, steps + 1)) / steps
        scaled = (alphas.view(-1, 1, 1, 1, 1) * acts).reshape((-1,) + tuple(acts.shape[1:]))
        extra = (obs.repeat(len(alphas), 1, 1, 1),) if obs is not None else ()
        if graph is not None:  # one backward sweep for every row (GraphNetwork)
            x = extra[0].permute(0, 3, 1, 2) if extra else None
            grads = graph[0].readout_vjps(graph[1], scaled, x, readout)
        else:
            scaled.requires_grad_(True)
            with torch.enable_grad():
                logits, value = policy.forward_from_nchw(scaled, layer, *extra)
                grads = _backward(torch.cat([value[:, None], logits], dim=1), scaled, readout)
        total += grads.reshape((len(readout), len(alphas)) + tuple(acts.shape)).sum(dim=1)
    return total


class _LayerSplit:
    """The network after a layer as tail(consumer(a)), where the consumer -- the layer's
    only consumer -- is affine (a convolution, or a dense layer, possibly after a flatten)
    or an L2 pool. Then the consumer runs once per batch instead of once per integration
    step, forwards and backwards (Captum, treating the network as a black box, cannot):

    - affine: consumer(alpha a) = alpha consumer(a) + (1 - alpha) consumer(0), and the
      Jacobian J is constant, so sum_k J^T g_k = J^T (sum_k g_k);
    - L2 pool, p(x) = sqrt(Q(x) + eps) with Q homogeneous of degree 2:
      sum_k J_p(alpha_k a)^T g_k = J_p(a)^T (p(a) * sum_k alpha_k g_k / p(alpha_k a)),
      because J_p(x)^T g = J_Q(x)^T (g / 2p(x)), J_Q(alpha a) = alpha J_Q(a) and
      J_Q(a)^T v = J_p(a)^T (2 p(a) v).

    Here g_k is the gradient of the output with respect to the consumer's value at step k.
    Exact (in float64 the two paths agree to 1e-6; in float32 both are within about 1e-4
    of float64, rounding differently); only for gallery's graph networks, whose nodes say
    what each operation is, and bottleneck layers; anything else takes the plain path.
    An affine consumer runs in float64 (once per batch; a convolution through the FFT), so
    that every step's value is the float32 rounding of the exact conv(a k/n): computing
    k/n conv(a) + (1 - k/n) conv(0) in float32 moved a near-tie of a later ReLU and put
    one TensorFlow parity case at 1.5e-4 instead of 8.7e-5
    (benchmarks/ig_parity_report.py).
    """

    def __init__(self, network: Any, layer_node: Any, start: Any, kind: str):
        self.network, self.layer_node, self.start, self.kind = network, layer_node, start, kind

    @classmethod
    def find(cls, policy: torch.nn.Module, layer: str) -> _LayerSplit | None:
        from .networks import GraphNetwork

        network = getattr(policy, "network", None)
        if not isinstance(network, GraphNetwork) or layer == INPUT_LAYER:
            return None
        matches = [n for n in network.nodes if n.label == layer]
        if len(matches) != 1:
            return None
        consumer = _only_consumer(network.nodes, matches[0])
        if consumer is not None and consumer.op == "flatten":
            after = _only_consumer(network.nodes, consumer)
            if after is not None and after.op == "dense":
                return cls(network, matches[0], after, "affine")
        elif consumer is not None and consumer.op in ("conv", "dense"):
            return cls(network, matches[0], consumer, "affine")
        elif consumer is not None and consumer.op == "l2pool":
            return cls(network, matches[0], consumer, "l2pool")
        return None

    def consumer(self, acts: Tensor) -> Tensor:
        """The consumer's value when the layer's activations are `acts`."""
        from . import networks

        if self.kind == "l2pool":
            return networks.l2_pool(acts)
        return self._module()(self._flat(acts))

    def _module(self) -> Any:
        from . import networks

        return self.network.layers[networks._key(self.start.name)]

    def _flat(self, acts: Tensor) -> Tensor:
        """The consumer's input: the activations, flattened when a flatten sits between."""
        if self.start.inputs[0] != self.layer_node.name:
            from . import networks

            return networks.flatten_nhwc(acts)
        return acts

    def consumer64(self, acts: Tensor) -> Tensor:
        """An affine consumer's value at `acts` in float64: a dense layer by a float64
        matrix product; a convolution through the FFT (float64's rounding, 1e-14 of the
        values; its float32 roundings equal a direct float64 convolution's on 2 million
        2a values), 4 times faster on this CPU than PyTorch's float64 convolution, which
        has no oneDNN kernel."""
        module = self._module()
        x = self._flat(acts).double()
        if x.dim() == 2:
            return F.linear(x, module.weight.double(), module.bias.double())
        if module.padding == "same":
            from .networks import _pad_same

            x = _pad_same(x, module.kernel, module.stride)
        k, stride = module.kernel, module.stride
        size = tuple(x.shape[2:])
        spectra = getattr(self, "_spectra", None)
        if spectra is None or spectra[0] != size:  # the flipped kernels' spectra, once,
            # as real (F, 2C, 2O) matrices acting on interleaved (re, im) pairs, so that
            # the complex product is one real batched product (PyTorch's complex bmm
            # loops over the matrices)
            kernels = torch.fft.rfft2(module.weight.double().flip(-1, -2), s=size)
            per = kernels.permute(2, 3, 1, 0).reshape(-1, kernels.shape[1], kernels.shape[0])
            blocks = torch.stack([torch.stack([per.real, per.imag], -1),
                                  torch.stack([-per.imag, per.real], -1)], 2)  # F,C,2,O,2
            spectra = self._spectra = (size, blocks.reshape(len(per), 2 * per.shape[1], -1))
        n, c = x.shape[:2]
        frequencies = torch.fft.rfft2(x).permute(2, 3, 0, 1).reshape(-1, n, c)
        pairs = torch.view_as_real(frequencies.contiguous()).reshape(len(frequencies), n, 2 * c)
        mixed = torch.view_as_complex(torch.bmm(pairs, spectra[1]).reshape(
            len(frequencies), n, -1, 2))  # (F, N, O)
        mixed = mixed.reshape(size[0], size[1] // 2 + 1, n, -1).permute(2, 3, 0, 1)
        # circular correlation of the padded input: positions from k - 1 on are exact
        full = torch.fft.irfft2(mixed, s=size)
        out = full[:, :, k - 1::stride, k - 1::stride]
        return out + module.bias.double()[:, None, None]

    def bias64(self, at_acts64: Tensor) -> Tensor:
        """An affine consumer's value at zero, its bias, shaped to broadcast over its
        output (a convolution of zeros with "SAME" or "VALID" padding is its bias)."""
        bias = self._module().bias.double()
        return bias.view((1, -1) + (1,) * (at_acts64.dim() - 2))

    def steps_values(self, at_acts64: Tensor, at_zero64: Tensor, alphas: Tensor,
                     dtype: torch.dtype) -> Tensor:
        """(len(alphas),) + shape: the consumer's value at alpha * acts, c(0) + alpha
        (c(a) - c(0)) in float64, rounded once to `dtype` (one fused operation a step)."""
        delta = at_acts64 - at_zero64
        z = torch.empty((len(alphas),) + tuple(at_acts64.shape), dtype=dtype)
        for i, alpha in enumerate(alphas.double().tolist()):
            torch.add(at_zero64, delta, alpha=alpha, out=z[i])
        return z

    def tail(self, z: Tensor, x: Tensor | None) -> Tensor:
        """[value, logits] (N, 1 + A) from the consumer's value `z`."""
        latent, _ = self.network.run(x, start=self.start.name, start_value=z)
        logits, value = self.network.heads(latent)
        return torch.cat([value[:, None], logits], dim=1)

    def summed_gradients(self, acts: Tensor, x: Tensor | None, readout: Tensor, steps: int,
                         steps_per_pass: int) -> Tensor:
        """(O,) + acts.shape: sum_k grad f(k/n * acts), as `_summed_gradients`."""
        affine = self.kind == "affine"
        with torch.no_grad():
            if affine:  # in float64, so that every step's value rounds once, as conv(a k/n)
                at_acts64 = self.consumer64(acts)
                at_zero64 = self.bias64(at_acts64)
                at_acts = at_acts64.to(acts.dtype)
            else:
                at_acts = self.consumer(acts)
        upstream = torch.zeros((len(readout),) + tuple(at_acts.shape))
        for first in range(1, steps + 1, steps_per_pass):
            alphas = torch.arange(first, min(first + steps_per_pass, steps + 1)) / steps
            a = alphas.view(-1, 1, 1, 1, 1) if at_acts.dim() == 4 else alphas.view(-1, 1, 1)
            with torch.no_grad():
                if affine:
                    z = self.steps_values(at_acts64, at_zero64, alphas, acts.dtype)
                else:
                    z = self.consumer((a * acts).reshape((-1,) + tuple(acts.shape[1:])))
                    z = z.reshape((len(alphas),) + tuple(at_acts.shape))
            flat = z.reshape((-1,) + tuple(at_acts.shape[1:]))
            xs = None if x is None else x.repeat(len(alphas), *([1] * (x.dim() - 1)))
            if GRAPH_VJP:
                grads = self.network.readout_vjps(self.start.name, flat, xs, readout)
            else:
                flat.requires_grad_(True)
                token = _BATCHED.set(None if _BATCHED.get() is None else BATCHED_BACKWARD
                                     and at_acts[0].numel() <= BATCHED_MAX_ELEMENTS)
                try:
                    with torch.enable_grad():
                        grads = _backward(self.tail(flat, xs), flat, readout)
                finally:
                    _BATCHED.reset(token)
            grads = grads.reshape((len(readout),) + tuple(z.shape))
            upstream += grads.sum(dim=1) if affine else (grads * (a / z)).sum(dim=1)
        if not affine:
            upstream = upstream * at_acts
            if acts.shape[2] % 2 == 0 and acts.shape[3] % 2 == 0:
                from .networks import even_l2_pool_vjp

                # the even pool's Jacobian^T for every row at once (its backward's arithmetic)
                return even_l2_pool_vjp(acts, at_acts, upstream)
        leaf = acts.clone().requires_grad_(True)
        with torch.enable_grad():
            return _vjps(self.consumer(leaf), leaf, upstream)


def _graph_node(policy: torch.nn.Module, layer: str) -> tuple[Any, str] | None:
    """(network, node name) of a hidden layer of a policy built on a GraphNetwork, whose
    backward sweep for many readout rows is `GraphNetwork.readout_vjps`; else None."""
    from .networks import GraphNetwork

    network = getattr(policy, "network", None)
    node = getattr(policy, "_node", None)
    if not isinstance(network, GraphNetwork) or node is None or layer == INPUT_LAYER:
        return None
    return network, node(layer).name


def _only_consumer(nodes: Sequence[Any], node: Any) -> Any:
    consumers = [n for n in nodes if node.name in n.inputs]
    return consumers[0] if len(consumers) == 1 else None


def _gradients(policy: torch.nn.Module, obs: Tensor, readout: Tensor) -> Tensor:
    """(O, B, H, W, C): gradient of every readout row with respect to the observations."""
    x = obs.clone().requires_grad_(True)
    with torch.enable_grad():
        logits, value = policy(x)
        return _backward(torch.cat([value[:, None], logits], dim=1), x, readout)


#: Where autograd runs the backward passes (policies not built on a GraphNetwork, the
#: input layer, or GRAPH_VJP off): the rows as one vmapped pass (`is_grads_batched`)
#: instead of one pass per row, for layers of at most BATCHED_MAX_ELEMENTS per
#: observation (measured faster for 32 x 32 x 32 layers, slower for 64 x 64 x 16).
BATCHED_BACKWARD = True
#: Backward passes over gallery's GraphNetworks by `GraphNetwork.readout_vjps` (every
#: readout row folded into the batch) instead of autograd (see docs/analysis.md).
GRAPH_VJP = True
BATCHED_MAX_ELEMENTS = 1 << 15
_BATCHED: contextvars.ContextVar[bool | None] = contextvars.ContextVar("batched",
                                                                      default=None)


def _backward(outputs: Tensor, inputs: Tensor, readout: Tensor) -> Tensor:
    """(O,) + inputs.shape: gradients of sum_batch(outputs @ readout[o]) for every o."""
    cotangents = readout[:, None, :].to(outputs.dtype).expand(len(readout), *outputs.shape)
    return _vjps(outputs, inputs, cotangents)


def _vjps(outputs: Tensor, inputs: Tensor, cotangents: Tensor) -> Tensor:
    """(O,) + inputs.shape: the vector-Jacobian products of `outputs` with respect to
    `inputs` for O cotangents (O,) + outputs.shape, over one shared forward graph: one
    batched backward pass (`BATCHED_BACKWARD`, for this layer's size) or one per row."""
    batched = _BATCHED.get()
    if len(cotangents) > 1 and (BATCHED_BACKWARD if batched is None else batched):
        (grads,) = torch.autograd.grad(outputs, inputs, cotangents.contiguous(),
                                       is_grads_batched=True)
        return grads
    return torch.stack([torch.autograd.grad(outputs, inputs, c,
                                            retain_graph=o < len(cotangents) - 1)[0]
                        for o, c in enumerate(cotangents)])


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
            acts = policy.activations_nchw(batch, layer).permute(0, 2, 3, 1).numpy()
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
    return _concatenate(out, layer_shape(policy, layer))


def _gradient_at(policy: torch.nn.Module, layer: str, point_nhwc: np.ndarray, readout: Tensor,
                 obs: Tensor | None) -> np.ndarray:
    x = torch.from_numpy(point_nhwc).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    with torch.enable_grad():
        logits, value = policy.forward_from_nchw(x, layer, *(() if obs is None else (obs,)))
        grad = _backward(torch.cat([value[:, None], logits], dim=1), x, readout[None])[0]
    return grad.permute(0, 2, 3, 1).numpy()


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


def _collect(batches: Iterable[tuple[slice, np.ndarray]], shape: tuple[int, ...],
             sums: Sequence[Sequence[int]] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(O, N, ...) float32: every batch's attribution (O, B, ...) copied into place as it
    comes, and (G, N, ...): the sums of the rows listed in `sums`, made batch by batch from
    the copied batch while it is in cache. (Concatenating the batches at the end and then
    summing the groups over the whole array read and wrote it several more times: policy
    attribution of 256 frames at 1a spent 4 of its 15 s on that.) Sums add their rows in
    the listed order, one after the other, as numpy's sum over the first axis of the
    stacked rows does."""
    out = np.empty(shape, np.float32)
    summed = np.empty((len(sums),) + shape[1:], np.float32)
    out_t = torch.from_numpy(out)  # (torch copies the batches: each is a transposed view,
    # and numpy copies those on one thread)
    for chunk, batch in batches:
        out_t[:, chunk].copy_(torch.from_numpy(batch))
        for g, rows in enumerate(sums):
            total = summed[g, chunk]
            if not rows:
                total.fill(0)
                continue
            np.copyto(total, out[rows[0], chunk])
            for row in rows[1:]:
                np.add(total, out[row, chunk], out=total)
    return out, summed


def _concatenate(parts: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    if not parts:
        return np.zeros(empty_shape, dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
