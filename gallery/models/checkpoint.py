"""rl-clarity checkpoints: read safely, validate, and describe (checkpoint-format.md)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gallery.environments import PROCGEN_GAMES
from gallery.errors import CheckpointError
from gallery.models.safe_pickle import safe_load

#: Defaults of the `args` keys that matter (checkpoint-format.md).
ARG_DEFAULTS: dict[str, Any] = {
    "env_kind": "procgen",
    "cnn": "clear",
    "stack_channels": "16_32_32",
    "emb_size": 256,
    "use_lstm": 0,
    "gamma": 0.999,
    "lambda": 0.95,
    "frame_stack": 1,
    "use_sticky_actions": 0,
}

_MAX_DEPTH = 32
#: Values (in containers) a checkpoint may hold, counting a container referenced twice
#: twice: the pickle memo can share one list many times over ("billion laughs"), which
#: anything walking the data (the model page's provenance) would expand.
_MAX_ITEMS = 1_000_000


@dataclass
class Checkpoint:
    """The contents of a checkpoint file, validated."""

    path: str
    sha256: str
    params: dict[str, np.ndarray]
    args: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    time: float | None = None

    @property
    def arch(self) -> str:
        return str(self.args["cnn"])

    @property
    def env_name(self) -> str:
        kind = self.args["env_kind"]
        return str(self.args.get("env_name") if kind == "procgen" else self.args.get("env_id"))

    def observation_shape(self) -> tuple[int, int, int]:
        """(H, W, C) the network takes: 64x64x3 for Procgen, 84x84x1 for Atari, x frame_stack."""
        stack = int(self.args.get("frame_stack") or 1)
        if self.args["env_kind"] == "atari":
            return (84, 84, stack)
        return (64, 64, 3 * stack)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _depth(value: Any, where: str = "<checkpoint>") -> int:
    """Nesting depth of containers, computed without recursion; raises CheckpointError when
    the containers hold more than _MAX_ITEMS values with shared references expanded."""
    deepest, stack, count = 0, [(value, 1)], 0
    while stack:
        item, d = stack.pop()
        count += 1
        if count > _MAX_ITEMS:
            raise CheckpointError(where, f"containers hold more than {_MAX_ITEMS} values "
                                  "(counting each reference to a shared container)")
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, (list, tuple)):
            deepest = max(deepest, d)
            if d > _MAX_DEPTH:
                return d
            stack.extend((v, d + 1) for v in item)
    return deepest


def _short(value: Any) -> str:
    """repr of a value from a file, cut short for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_SCALARS = (str, bool, int, float, type(None))


def _check_args(path: str, args: dict[str, Any]) -> dict[str, Any]:
    full = dict(ARG_DEFAULTS)
    full.update({k: v for k, v in args.items() if v is not None or k not in ARG_DEFAULTS})
    for key in (*ARG_DEFAULTS, "env_name", "env_id"):
        if not isinstance(full.get(key), _SCALARS):
            raise CheckpointError(path, f"args.{key} is a {type(full[key]).__name__}; "
                                  "expected a number or a string")
    if full.get("use_lstm"):
        raise CheckpointError(path, "args.use_lstm is set: recurrent policies are not "
                              "supported (the original interfaces did not support them either)")
    if full["cnn"] not in ("clear", "impala", "nature"):
        raise CheckpointError(path, f"args.cnn is {_short(full['cnn'])}; expected one of "
                              "'clear', 'impala', 'nature'")
    kind = full["env_kind"]
    if kind == "procgen":
        name = full.get("env_name")
        if name not in PROCGEN_GAMES and name != "coinrun_old":
            raise CheckpointError(path, f"args.env_name is {_short(name)}, not a known Procgen "
                                  f"game (one of {', '.join(PROCGEN_GAMES)}, or coinrun_old)")
    elif kind == "atari":
        if not isinstance(full.get("env_id"), str) or not full["env_id"]:
            raise CheckpointError(path, "args.env_id must name the Atari game (e.g. 'breakout')")
    else:
        raise CheckpointError(path, f"args.env_kind is {_short(kind)}; expected 'procgen' or "
                              "'atari'")
    return full


def _check_params(path: str, params: Any) -> dict[str, np.ndarray]:
    if not isinstance(params, dict) or not params:
        raise CheckpointError(path, "'params' must be a non-empty dict of TensorFlow variable "
                              "names to arrays")
    checked = {}
    for name, value in params.items():
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            raise CheckpointError(path, f"params[{_short(name)}] is not a numpy array")
        if not np.issubdtype(value.dtype, np.floating):
            raise CheckpointError(path, f"params[{_short(name)}] has dtype {value.dtype}, "
                                  "expected float")
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf
            value = value.astype(np.float32, copy=False)
        if not np.all(np.isfinite(value)):
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            raise CheckpointError(path, f"params[{_short(name)}] has {bad} NaN/inf values "
                                  "(as float32)")
        checked[name] = value
    return checked


def _time(value: Any) -> float | None:
    """The save time as a finite float, else None (a 400-digit int is not a time)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint file; never runs code from it."""
    path = Path(path)
    data = safe_load(path)
    where = str(path)
    if not isinstance(data, dict):
        raise CheckpointError(where, f"top level is a {type(data).__name__}, expected a dict "
                              "with 'params' and 'args'")
    if _depth(data, where) > _MAX_DEPTH:
        raise CheckpointError(where, f"containers nested deeper than {_MAX_DEPTH} levels")
    missing = [k for k in ("params", "args") if k not in data]
    if missing:
        raise CheckpointError(where, f"missing {' and '.join(repr(k) for k in missing)} "
                              "(an rl-clarity checkpoint is a dict with 'params' and 'args')")
    if not isinstance(data["args"], dict):
        raise CheckpointError(where, "'args' must be a dict")
    args = _check_args(where, data["args"])
    params = _check_params(where, data["params"])
    extra = data.get("extra") if isinstance(data.get("extra"), dict) else {}
    return Checkpoint(where, sha256_of(path), params, args, extra, _time(data.get("time")))
