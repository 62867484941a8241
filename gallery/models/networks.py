"""The three rl-clarity torsos (clear, impala, nature) as small named graphs in PyTorch.

Each network is a list of `Node`s in topological order. Representing the graph (rather
than hard-coding a `forward`) lets one rule pick the layers offered for attribution exactly
as the original tool did on its TensorFlow graph (checkpoint-format.md), and lets
`run` start from, or override, any node.

Internal layout is NCHW; weights are converted from TensorFlow's HWIO once, here.
TensorFlow's "SAME" padding is asymmetric (the extra pixel goes after), and its average
pool divides by the number of valid elements: both are reproduced exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

PREFIX = "ppo2_model/pi/"

Initializer = Callable[[str, tuple[int, ...]], np.ndarray]


@dataclass(frozen=True)
class Node:
    """One operation of a network graph.

    `name` is the TensorFlow-style op name (`ppo2_model/pi/2b/Relu`); `label` is the short
    name shown to users (`2b`): the scope without the prefix and a trailing `/Relu`.
    """

    name: str
    op: str  # input | conv | relu | l2pool | maxpool | add | flatten | dense
    inputs: tuple[str, ...]

    @property
    def label(self) -> str:
        short = self.name.removeprefix(PREFIX)
        return short.removesuffix("/Relu") if short != "input" else "input"


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) along one axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: Tensor, kernel: int, stride: int, value: float = 0.0) -> Tensor:
    top, bottom = same_padding(x.shape[2], kernel, stride)
    left, right = same_padding(x.shape[3], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class Conv(nn.Module):
    """2-D convolution with TensorFlow "SAME" or "VALID" padding; weights given as HWIO."""

    def __init__(self, kernel_hwio: np.ndarray, bias: np.ndarray, stride: int, padding: str,
                 names: tuple[str, str] = ("", "")):
        super().__init__()
        self.names, self.bias_shape = names, bias.shape
        self.weight = nn.Parameter(torch.from_numpy(np.ascontiguousarray(
            kernel_hwio.transpose(3, 2, 0, 1))).float(), requires_grad=False)
        self.bias = nn.Parameter(torch.from_numpy(bias.reshape(-1).copy()).float(),
                                 requires_grad=False)
        self.kernel, self.stride, self.padding = kernel_hwio.shape[0], stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return self._convolve(x, self.bias)

    def linear(self, x: Tensor) -> Tensor:
        """The convolution without its bias (forward(x) = linear(x) + bias)."""
        return self._convolve(x, None)

    def _convolve(self, x: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding == "same":
            pads = same_padding(x.shape[2], self.kernel, self.stride) + same_padding(
                x.shape[3], self.kernel, self.stride)
            if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric: let the kernel pad
                return F.conv2d(x, self.weight, bias, self.stride, (pads[0], pads[2]))
            x = _pad_same(x, self.kernel, self.stride)
        return F.conv2d(x, self.weight, bias, self.stride)

    def bias_nchw(self) -> Tensor:
        return self.bias.view(-1, 1, 1)


class Dense(nn.Module):
    """y = x @ W + b with W stored as TensorFlow's (in, out)."""

    def __init__(self, kernel: np.ndarray, bias: np.ndarray, names: tuple[str, str] = ("", "")):
        super().__init__()
        self.names, self.bias_shape = names, bias.shape
        self.weight = nn.Parameter(torch.from_numpy(np.ascontiguousarray(kernel.T)).float(),
                                   requires_grad=False)
        self.bias = nn.Parameter(torch.from_numpy(bias.reshape(-1).copy()).float(),
                                 requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def linear(self, x: Tensor) -> Tensor:
        """The map without its bias (forward(x) = linear(x) + bias)."""
        return F.linear(x, self.weight)

    def bias_nchw(self) -> Tensor:
        return self.bias


def l2_pool(x: Tensor, size: int = 2) -> Tensor:
    """sqrt(avg_pool(x**2, "SAME") + 1e-8), dividing by the valid elements of each window."""
    if x.shape[2] % size == 0 and x.shape[3] % size == 0:  # no padding: full windows
        return torch.sqrt(F.avg_pool2d(x * x, size, size) + 1e-8)
    squared = _pad_same(x * x, size, size)
    summed = F.avg_pool2d(squared, size, size, divisor_override=1)
    ones = _pad_same(torch.ones_like(x[:1, :1]), size, size)
    counts = F.avg_pool2d(ones, size, size, divisor_override=1)
    return torch.sqrt(summed / counts + 1e-8)


def max_pool_same(x: Tensor, size: int = 3, stride: int = 2) -> Tensor:
    """TensorFlow "SAME" max pooling: padded positions never win."""
    return F.max_pool2d(_pad_same(x, size, stride, value=-math.inf), size, stride)


def flatten_nhwc(x: Tensor) -> Tensor:
    """Flatten in TensorFlow's (h, w, c) order so its dense kernels apply unchanged."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1) if x.dim() == 4 else x


_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "relu": F.relu,
    "l2pool": l2_pool,
    "maxpool": max_pool_same,
    "flatten": flatten_nhwc,
    "add": torch.add,
}


class GraphNetwork(nn.Module):
    """A torso given as nodes, plus the policy and value heads on its last node."""

    def __init__(self, architecture: str, nodes: list[Node], modules: dict[str, nn.Module],
                 pi: Dense, vf: Dense):
        super().__init__()
        self.architecture = architecture
        self.nodes = nodes
        self.index = {n.name: i for i, n in enumerate(nodes)}
        self.consumers = {n.name: [m for m in nodes if n.name in m.inputs] for n in nodes}
        self.layers = nn.ModuleDict({_key(k): m for k, m in modules.items()})
        self.pi, self.vf = pi, vf

    @property
    def latent(self) -> str:
        return self.nodes[-1].name

    def run(self, x: Tensor | None, *, start: str | None = None, start_value: Tensor | None = None,
            keep: frozenset[str] = frozenset(), until: str | None = None
            ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Evaluate the graph on NCHW input `x`.

        With `start`, that node's value is replaced by `start_value`; when `x` is None only
        the nodes downstream of `start` are evaluated (valid for bottleneck nodes). Returns
        the latent and the values of the nodes named in `keep`; any other value is dropped
        once its consumers have run, so a pass holds only what it still needs. With
        `until`, evaluation stops once that node is computed, and the latent is None.
        """
        values: dict[str, Tensor] = {}
        if x is not None:
            values[self.nodes[0].name] = x
        pending = {name: len(users) for name, users in self.consumers.items()}
        first = self.index[start] if start is not None and x is None else 0
        for node in self.nodes[first:]:
            if node.name == start:
                values[node.name] = start_value
            elif node.op != "input" and all(i in values for i in node.inputs):
                args = [values[i] for i in node.inputs]
                if node.op in ("conv", "dense"):
                    values[node.name] = self.layers[_key(node.name)](*args)
                else:
                    values[node.name] = _FUNCTIONS[node.op](*args)
                del args
            else:
                continue
            if node.name == until:
                return None, {k: values[k] for k in keep}
            for i in node.inputs:  # (a replaced start node's inputs count as used)
                pending[i] -= 1
                if not pending[i] and i not in keep and i in values:
                    del values[i]
        if self.latent not in values:
            raise ValueError(f"{start} is not a bottleneck: the observation is needed too")
        return values[self.latent], {k: values[k] for k in keep}

    def affine_consumer(self, name: str) -> tuple[str, Conv | Dense] | None:
        """(name, module) of the node that alone reads node `name`, when it is a
        convolution or a dense layer reading nothing else: an affine map of `name`'s
        value. None otherwise."""
        users = self.consumers[name]
        if len(users) == 1 and users[0].op in ("conv", "dense") and users[0].inputs == (name,):
            return users[0].name, self.layers[_key(users[0].name)]
        return None

    def heads(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        return self.pi(latent), self.vf(latent)[:, 0]


def _key(name: str) -> str:
    return name.replace("/", "__").replace(":", "_").replace(".", "_")


class NetworkBuilder:
    """Builds a GraphNetwork from TensorFlow variables, checking every name and shape."""

    def __init__(self, params: Mapping[str, np.ndarray], problems: list[str],
                 init: Initializer | None = None):
        self.params, self.problems, self.init = params, problems, init
        self.nodes: list[Node] = [Node(PREFIX + "input", "input", ())]
        self.modules: dict[str, nn.Module] = {}
        self.width = 0  # output width of the last dense layer: the heads' input

    @property
    def last(self) -> str:
        return self.nodes[-1].name

    def var(self, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
        full = self.full_name(name)
        value = self.params.get(full + ":0")
        if value is None and self.init is not None and None not in shape:
            return self.init(full + ":0", tuple(int(s) for s in shape))  # type: ignore[arg-type]
        if value is None:
            self.problems.append(f"missing variable {full}:0")
            return np.zeros([1 if s is None else s for s in shape], np.float32)
        if value.ndim != len(shape) or any(s is not None and s != v
                                           for s, v in zip(shape, value.shape)):
            want = tuple("?" if s is None else s for s in shape)
            self.problems.append(f"variable {full}:0 has shape {value.shape}, expected {want}")
            return np.zeros([1 if s is None else s for s in shape], np.float32)
        return value

    @staticmethod
    def full_name(name: str) -> str:
        return name if name.startswith("ppo2_model/") else PREFIX + name

    def names(self, scope: str, names: tuple[str, str]) -> tuple[str, str]:
        return (self.full_name(scope + names[0]) + ":0", self.full_name(scope + names[1]) + ":0")

    def add(self, name: str, op: str, inputs: tuple[str, ...] | None = None,
            module: nn.Module | None = None) -> str:
        self.nodes.append(Node(PREFIX + name, op, (self.last,) if inputs is None else inputs))
        if module is not None:
            self.modules[PREFIX + name] = module
        return PREFIX + name

    def conv(self, name: str, scope: str, depth_in: int, depth: int, kernel: int,
             stride: int = 1, padding: str = "same", names: tuple[str, str] = ("kernel", "bias"),
             bias_shape: tuple[int | None, ...] = (None,)) -> str:
        w = self.var(scope + names[0], (kernel, kernel, depth_in, depth))
        b = self.var(scope + names[1], bias_shape if bias_shape != (None,) else (depth,))
        return self.add(name, "conv",
                        module=Conv(w, b, stride, padding, self.names(scope, names)))

    def dense(self, name: str, scope: str, width_in: int | None, width: int,
              names: tuple[str, str] = ("kernel", "bias")) -> str:
        w = self.var(scope + names[0], (width_in, width))
        b = self.var(scope + names[1], (width,))
        self.width = width
        return self.add(name, "dense", module=Dense(w, b, self.names(scope, names)))


def _channels_in(params: Mapping[str, np.ndarray], name: str) -> int:
    kernel = params.get(PREFIX + name)
    return int(kernel.shape[2]) if kernel is not None and kernel.ndim == 4 else 3


def build_clear(b: NetworkBuilder, obs_shape: tuple[int, int, int]) -> None:
    h, w, c = obs_shape
    depth_in = c
    for scope, depth, kernel, pool in (("1a", 16, 7, True), ("2a", 32, 5, False),
                                       ("2b", 32, 5, True), ("3a", 32, 5, True),
                                       ("4a", 32, 5, True)):
        b.conv(f"{scope}/conv2d/Conv2D", f"{scope}/conv2d/", depth_in, depth, kernel)
        b.add(f"{scope}/Relu", "relu")
        if pool:
            b.add(f"{scope}/l2pool", "l2pool")
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        depth_in = depth
    b.add("flatten", "flatten")
    b.dense("dense/MatMul", "dense/", h * w * depth_in, 256)
    b.add("dense/Relu", "relu")
    b.dense("dense_1/MatMul", "dense_1/", 256, 512)
    b.add("dense_1/Relu", "relu")


def build_impala(b: NetworkBuilder, obs_shape: tuple[int, int, int], depths: list[int],
                 emb_size: int) -> None:
    h, w, depth_in = obs_shape
    k = 0
    for s, depth in enumerate(depths, start=1):
        b.conv(f"layer_{k}/Conv2D", f"layer_{k}/", depth_in, depth, 3)
        k += 1
        b.add(f"stack{s}/MaxPool", "maxpool")
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        for block in (1, 2):
            entry = b.last
            b.add(f"stack{s}/block{block}/Relu", "relu")
            b.conv(f"layer_{k}/Conv2D", f"layer_{k}/", depth, depth, 3)
            b.add(f"stack{s}/block{block}/Relu_1", "relu")
            b.conv(f"layer_{k + 1}/Conv2D", f"layer_{k + 1}/", depth, depth, 3)
            b.add(f"stack{s}/block{block}/add", "add", (entry, b.last))
            k += 2
        depth_in = depth
    b.add("flatten", "flatten")
    b.add("flatten/Relu", "relu")
    b.dense(f"layer_{k}/MatMul", f"layer_{k}/", h * w * depth_in, emb_size)
    b.add(f"layer_{k}/Relu", "relu")


def build_nature(b: NetworkBuilder, obs_shape: tuple[int, int, int]) -> None:
    h, w, depth_in = obs_shape
    for scope, depth, kernel, stride in (("c1", 32, 8, 4), ("c2", 64, 4, 2), ("c3", 64, 3, 1)):
        b.conv(f"{scope}/Conv2D", f"{scope}/", depth_in, depth, kernel, stride, "valid",
               names=("w", "b"), bias_shape=(1, depth, 1, 1))
        b.add(f"{scope}/Relu", "relu")
        h, w = (h - kernel) // stride + 1, (w - kernel) // stride + 1
        depth_in = depth
    b.add("flatten", "flatten")
    b.dense("fc1/MatMul", "fc1/", h * w * depth_in, 512, names=("w", "b"))
    b.add("fc1/Relu", "relu")


ARCHITECTURES = ("clear", "impala", "nature")


def build_network(cnn: str, params: Mapping[str, np.ndarray], obs_shape: tuple[int, int, int],
                  stack_channels: str = "16_32_32", emb_size: int = 256,
                  n_actions: int | None = None, init: Initializer | None = None
                  ) -> tuple[GraphNetwork, list[str]]:
    """Build the network named `cnn`; returns it and the list of problems found (if any).

    With `init`, variables absent from `params` are created by `init(name, shape)` (fresh
    networks for training; `n_actions` then sizes the policy head).
    """
    problems: list[str] = []
    b = NetworkBuilder(params, problems, init)
    if cnn == "clear":
        build_clear(b, obs_shape)
    elif cnn == "impala":
        depths = [int(d) for d in str(stack_channels).split("_") if d]
        build_impala(b, obs_shape, depths, int(emb_size))
    elif cnn == "nature":
        build_nature(b, obs_shape)
    else:
        raise ValueError(f"unknown cnn {cnn!r}")
    pi_w = b.var("ppo2_model/pi/w", (b.width, n_actions))
    pi = Dense(pi_w, b.var("ppo2_model/pi/b", (pi_w.shape[1],)), b.names("ppo2_model/pi/", ("w", "b")))
    vf = Dense(b.var("ppo2_model/vf/w", (b.width, 1)), b.var("ppo2_model/vf/b", (1,)),
               b.names("ppo2_model/vf/", ("w", "b")))
    return GraphNetwork(cnn, b.nodes, b.modules, pi, vf), problems


def export_params(network: GraphNetwork) -> dict[str, np.ndarray]:
    """The network's variables under their TensorFlow names and layouts (HWIO, (in, out))."""
    params: dict[str, np.ndarray] = {}
    for module in network.modules():
        if isinstance(module, Conv):
            kernel = module.weight.detach().permute(2, 3, 1, 0)
        elif isinstance(module, Dense):
            kernel = module.weight.detach().T
        else:
            continue
        params[module.names[0]] = kernel.contiguous().numpy().astype(np.float32)
        params[module.names[1]] = module.bias.detach().numpy().reshape(module.bias_shape).astype(
            np.float32)
    return params
