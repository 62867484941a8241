"""Independent TensorFlow reference of the three rl-clarity networks, and of attribution.

Written from checkpoint-format.md with TensorFlow's own NHWC ops -- `tf.nn.conv2d` with
"SAME"/"VALID" padding, `tf.nn.avg_pool2d` "SAME" for the clear net's L2 pool,
`tf.nn.max_pool2d` "SAME" for IMPALA, dense layers as matmuls -- so that it shares no code
and no padding arithmetic with gallery's PyTorch port.

The forward pass can *replace* the value of one offered layer, the way the original tool
fed a tensor through `feed_dict` in TensorFlow 1: everything downstream of that ReLU sees
the given activations, everything else (an IMPALA block's skip connection, which bypasses
the ReLU) still sees the observation. `tf_integrated_gradients` is method.md section 4
on top of that.

Run it with TF_ENABLE_ONEDNN_OPTS=0: oneDNN's float32 fast paths reorder sums, so results
would depend on the CPU and the build. This module sets it (before TensorFlow is imported)
when it is unset; that only works if nothing imported TensorFlow earlier.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

PI = "ppo2_model/pi/"
CLEAR_LAYERS = ("1a", "2a", "2b", "3a", "4a")
NATURE_LAYERS = ("c1", "c2", "c3")

Target = str | int | Sequence[int]


def layer_names(ckpt: dict[str, Any]) -> list[str]:
    """Names of the layers offered for attribution, in network order.

    IMPALA's are `stack<s>/block<b>` (the ReLU at the entry of residual block b of stack s,
    both from 1), the same display names gallery uses.
    """
    args = ckpt["args"]
    cnn = args.get("cnn", "clear")
    if cnn == "clear":
        return list(CLEAR_LAYERS)
    if cnn == "nature":
        return list(NATURE_LAYERS)
    depths = _depths(args)
    return [f"stack{s}/block{b}" for s in range(1, len(depths) + 1) for b in (1, 2)]


def _depths(args: dict[str, Any]) -> list[int]:
    return [int(d) for d in str(args.get("stack_channels", "16_32_32")).split("_") if d]


def to_float_obs(obs: np.ndarray) -> np.ndarray:
    """uint8 frames become float32 in [0, 1] (cast, then /255, as the TF graph did)."""
    obs = np.asarray(obs)
    if obs.dtype == np.uint8:
        return obs.astype(np.float32) / np.float32(255.0)
    return obs.astype(np.float32)


class _Taps:
    """Records offered activations; substitutes one of them when asked to."""

    def __init__(self, replace: str | None, value: tf.Tensor | None):
        self.replace, self.value = replace, value
        self.acts: dict[str, tf.Tensor] = {}

    def __call__(self, name: str, x: tf.Tensor) -> tf.Tensor:
        if name == self.replace:
            x = self.value
        self.acts[name] = x
        return x


class TFNetwork:
    """The torso and heads of one checkpoint, as TensorFlow constants."""

    def __init__(self, ckpt: dict[str, Any], dtype: Any = tf.float32):
        self.args = ckpt["args"]
        self.cnn = self.args.get("cnn", "clear")
        self.dtype = dtype
        self.p = {k: tf.constant(np.asarray(v, np.float32), dtype) for k, v in
                  ckpt["params"].items()}
        self.layers = layer_names(ckpt)

    # -- building blocks -------------------------------------------------------------
    def _conv(self, x: tf.Tensor, kernel: str, bias: str, stride: int = 1,
              padding: str = "SAME") -> tf.Tensor:
        b = tf.reshape(self.p[bias], [-1])  # nature keeps (1, nf, 1, 1)
        return tf.nn.conv2d(x, self.p[kernel], strides=stride, padding=padding) + b

    def _dense(self, x: tf.Tensor, kernel: str, bias: str) -> tf.Tensor:
        return tf.matmul(x, self.p[kernel]) + self.p[bias]

    @staticmethod
    def _l2_pool(x: tf.Tensor, k: int = 2) -> tf.Tensor:
        return tf.sqrt(tf.nn.avg_pool2d(tf.square(x), ksize=k, strides=k, padding="SAME")
                       + 1e-8)

    @staticmethod
    def _flatten(x: tf.Tensor) -> tf.Tensor:
        return tf.reshape(x, [tf.shape(x)[0], -1])  # NHWC order: (h, w, c)

    # -- torsos ------------------------------------------------------------------------
    def _clear(self, x: tf.Tensor, tap: _Taps) -> tf.Tensor:
        for scope, pool in zip(CLEAR_LAYERS, (True, False, True, True, True), strict=True):
            x = tap(scope, tf.nn.relu(self._conv(
                x, f"{PI}{scope}/conv2d/kernel:0", f"{PI}{scope}/conv2d/bias:0")))
            if pool:
                x = self._l2_pool(x)
        x = tf.nn.relu(self._dense(self._flatten(x), f"{PI}dense/kernel:0", f"{PI}dense/bias:0"))
        return tf.nn.relu(self._dense(x, f"{PI}dense_1/kernel:0", f"{PI}dense_1/bias:0"))

    def _impala(self, x: tf.Tensor, tap: _Taps) -> tf.Tensor:
        k = 0

        def conv(inp: tf.Tensor) -> tf.Tensor:
            nonlocal k
            out = self._conv(inp, f"{PI}layer_{k}/kernel:0", f"{PI}layer_{k}/bias:0")
            k += 1
            return out

        for s, _depth in enumerate(_depths(self.args), start=1):
            x = tf.nn.max_pool2d(conv(x), ksize=3, strides=2, padding="SAME")
            for b in (1, 2):
                inner = tap(f"stack{s}/block{b}", tf.nn.relu(x))
                x = x + conv(tf.nn.relu(conv(inner)))
        x = tf.nn.relu(self._flatten(x))
        return tf.nn.relu(self._dense(x, f"{PI}layer_{k}/kernel:0", f"{PI}layer_{k}/bias:0"))

    def _nature(self, x: tf.Tensor, tap: _Taps) -> tf.Tensor:
        for scope, stride in zip(NATURE_LAYERS, (4, 2, 1), strict=True):
            x = tap(scope, tf.nn.relu(self._conv(
                x, f"{PI}{scope}/w:0", f"{PI}{scope}/b:0", stride=stride, padding="VALID")))
        return tf.nn.relu(self._dense(self._flatten(x), f"{PI}fc1/w:0", f"{PI}fc1/b:0"))

    def __call__(self, obs: tf.Tensor, replace: str | None = None,
                 value: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor, dict]:
        """obs: float32 NHWC in [0, 1]. Returns logits (N, A), value (N,), activations."""
        tap = _Taps(replace, value)
        torso = {"clear": self._clear, "impala": self._impala, "nature": self._nature}[self.cnn]
        latent = torso(obs, tap)
        logits = self._dense(latent, f"{PI}w:0", f"{PI}b:0")
        value_out = self._dense(latent, "ppo2_model/vf/w:0", "ppo2_model/vf/b:0")[:, 0]
        return logits, value_out, tap.acts


def tf_forward(ckpt: dict[str, Any], obs: np.ndarray, dtype: Any = tf.float32
               ) -> dict[str, Any]:
    """Logits, value and every offered layer's activations (NHWC) for a batch of frames.

    `obs` is uint8 (N, H, W, C) or float in [0, 1]. Returns numpy arrays:
    {"logits": (N, A), "value": (N,), "activations": {name: (N, h, w, c)}} with the
    activations in network order. `dtype=tf.float64` evaluates the same float32 weights
    and frames in double precision, to measure float32 rounding on either side.
    """
    net = TFNetwork(ckpt, dtype)
    logits, value, acts = net(tf.constant(to_float_obs(obs), dtype))
    return {"logits": logits.numpy(), "value": value.numpy(),
            "activations": {name: acts[name].numpy() for name in net.layers}}


def _score(logits: tf.Tensor, value: tf.Tensor, target: Target) -> tf.Tensor:
    """Per-example output f: the value, one logit, or the sum of a group of logits."""
    if isinstance(target, str):
        if target != "value":
            raise ValueError(f"target must be 'value', an action index or a list, not {target!r}")
        return value
    if isinstance(target, (int, np.integer)):
        return logits[:, int(target)]
    return tf.reduce_sum(tf.gather(logits, [int(t) for t in target], axis=1), axis=1)


def tf_input_gradients(ckpt: dict[str, Any], obs: np.ndarray, target: Target,
                       dtype: Any = tf.float32) -> np.ndarray:
    """d f / d obs for obs as float in [0, 1], NHWC (the "input" layer: plain gradients)."""
    net = TFNetwork(ckpt, dtype)
    x = tf.constant(to_float_obs(obs), dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits, value, _ = net(x)
        score = tf.reduce_sum(_score(logits, value, target))
    return tape.gradient(score, x).numpy()


def tf_integrated_gradients(ckpt: dict[str, Any], obs: np.ndarray, layer: str,
                            target: Target = "value", steps: int = 10,
                            dtype: Any = tf.float32) -> np.ndarray:
    """Integrated gradients of f to `layer` (method.md section 4), NHWC like the layer.

    IG = a(x) * (1/n) sum_{k=1..n} grad_a f((k/n) a(x)): baseline zero activations at the
    layer, right Riemann sum. The scaled activations replace the layer's value while the rest
    of the graph still sees the observation (as the original's feed_dict did). For layer
    "input" this returns plain gradients with respect to the observation instead.
    """
    if layer == "input":
        return tf_input_gradients(ckpt, obs, target, dtype)
    net = TFNetwork(ckpt, dtype)
    if layer not in net.layers:
        raise ValueError(f"unknown layer {layer!r}; offered: {net.layers}")
    x = tf.constant(to_float_obs(obs), dtype)
    acts = net(x)[2][layer]
    total = tf.zeros_like(acts)
    for k in range(1, steps + 1):
        scaled = acts * tf.constant(k / steps, dtype)
        with tf.GradientTape() as tape:
            tape.watch(scaled)
            logits, value, _ = net(x, replace=layer, value=scaled)
            score = tf.reduce_sum(_score(logits, value, target))
        total += tape.gradient(score, scaled)
    return (acts * total / steps).numpy()


def tf_outputs_with_layer(ckpt: dict[str, Any], obs: np.ndarray, layer: str,
                          acts: np.ndarray, dtype: Any = tf.float32
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Logits and value when `layer`'s activations are replaced by `acts` (NHWC)."""
    net = TFNetwork(ckpt, dtype)
    logits, value, _ = net(tf.constant(to_float_obs(obs), dtype), replace=layer,
                           value=tf.constant(np.asarray(acts), dtype))
    return logits.numpy(), value.numpy()
