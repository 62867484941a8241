"""Features matched across the models of a comparison, and the models' interfaces on one
shared set of recorded trajectories.

Every model of a comparison gets an interface built on the SAME rollouts (trajectories and
extra observations recorded once, from one environment seed, by the comparison's first
model; `interface_builder(..., rollouts=<its builder>)` in gallery.pipeline.interface).
Each model's NMF features, read back from the interface's unit store, are applied to a
sample of the shared frames (`feature_activations`); for every layer present in all
models, each feature of the first model is paired with the most similar feature of each
other model, by the Pearson correlation of the feature activations over the shared frames
(per position when the layers have the same spatial shape, else per frame, averaged over
positions).

Models of different games (`game`) cannot share trajectories: a comparison of them shows
each model's own interface, and its features unmatched.

`feature_similarity`, `match_layer` and `legend_thumbnails` are pure (numpy, Pillow).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Shared frames the feature activations are compared on (evenly spaced over all of them).
MATCH_FRAMES = 64


def game(result: Any) -> tuple[str, str, tuple[int, ...]]:
    """What a built model (a `gallery.site.ModelResult`) plays: its environment's kind and
    game, and the shape of its observations. Models of one game can be evaluated on one
    another's frames; models of different games (CoinRun and Breakout, or one game at two
    frame stacks) cannot. Environment options (distribution mode, levels) do not count:
    their frames are the same kind."""
    return game_of(result.environment or {}, result.observation_shape)


def game_of(environment: dict[str, Any], observation_shape: Sequence[int]
            ) -> tuple[str, str, tuple[int, ...]]:
    """`game` of an environment's options (`EnvSpec.to_dict()`) and an observation shape."""
    return (str(environment.get("env_kind", "")), str(environment.get("env_name", "")),
            tuple(int(n) for n in observation_shape))


def by_game(results: Sequence[Any]) -> dict[tuple[str, str, tuple[int, ...]], list[int]]:
    """The indices of `results` by `game`, games in the order they first appear."""
    out: dict[tuple[str, str, tuple[int, ...]], list[int]] = {}
    for index, result in enumerate(results):
        out.setdefault(game(result), []).append(index)
    return out


def describe_game(key: tuple[str, str, tuple[int, ...]]) -> str:
    """'procgen coinrun, 64 × 64 × 3 observations'."""
    kind, name, shape = key
    return f"{kind} {name}, {' × '.join(map(str, shape))} observations"


def different_games_note(games: dict[tuple[str, str, tuple[int, ...]], list[str]]) -> str:
    """The note of a comparison across games, from {game: [model titles]}."""
    listed = "; ".join(f"{', '.join(titles)}: {describe_game(key)}"
                       for key, titles in games.items())
    return ("These models play different games: each interface shows its own trajectories, "
            f"and their features are shown unmatched ({listed}).")


def sample_frames(observations: np.ndarray, limit: int = MATCH_FRAMES) -> np.ndarray:
    """Up to `limit` frames (N, H, W, C), evenly spaced, of trajectories (E, T, H, W, C)."""
    flat = observations.reshape(-1, *observations.shape[2:])
    index = np.unique(np.linspace(0, len(flat) - 1, min(limit, len(flat))).round().astype(int))
    return flat[index]


def feature_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation (K1, K2) between the columns of a (N, K1) and b (N, K2); a
    constant column correlates 0 with everything."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (a.T @ b) / np.outer(na, nb)
    return np.clip(np.nan_to_num(corr, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)


def _columns(activations: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each model's (N, h, w, K) activations as (samples, K): positions as samples when the
    spatial shapes agree, else one sample per frame (the mean over positions)."""
    same = len({a.shape[1:3] for a in activations}) == 1
    return [a.reshape(-1, a.shape[-1]) if same else a.mean(axis=(1, 2))
            for a in activations]


def match_layer(activations: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """Rows of matched features for one layer: activations[m] is model m's (N, h, w, K_m)
    on the same N frames. One row per feature of the first model, with the most similar
    feature of every other model: {"feature": i, "matches": [{"feature": j, "similarity":
    r}, ...]} (one match per other model), best-matched rows first."""
    columns = _columns(activations)
    first = columns[0]
    rows = []
    for i in range(first.shape[1]):
        matches = []
        for other in columns[1:]:
            corr = feature_similarity(first[:, i:i + 1], other)[0]
            j = int(np.argmax(corr))
            matches.append({"feature": j, "similarity": round(float(corr[j]), 3)})
        rows.append({"feature": i, "matches": matches})
    rows.sort(key=lambda r: (-float(np.mean([m["similarity"] for m in r["matches"]])),
                             r["feature"]))
    return rows


def match_training(activations: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """Rows of matched features for one layer of checkpoints of one run, in checkpoint order
    (activations[-1]: the last checkpoint). Each feature of the LAST checkpoint is matched
    in every earlier one (where did the trained agent's feature come from?): {"feature": i
    of the last, "matches": [{"feature": j, "similarity": r} for each earlier checkpoint,
    in checkpoint order]}, best-matched rows first (as `match_layer`)."""
    anchored = match_layer([activations[-1], *activations[:-1]])
    return [{"feature": row["feature"], "matches": row["matches"]} for row in anchored]


def common_layers(layers: Sequence[Sequence[str]]) -> list[str]:
    """The layer names present in every list, in the first list's order."""
    rest = [set(names) for names in layers[1:]]
    return [name for name in layers[0] if all(name in s for s in rest)]


def legend_thumbnails(interface_dir: Path, out_dir: Path, prefix: str) -> dict[str, list[str]]:
    """Crop each layer's legend (bundle `layers[].legend`: K tiles side by side) into one PNG
    per feature in `out_dir`; returns {layer: [file name of feature k]}."""
    from PIL import Image

    bundle_dir = interface_dir / "bundle"
    index = json.loads((bundle_dir / "bundle.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    for li, layer in enumerate(index.get("layers", [])):
        legend = layer.get("legend")
        if not legend:
            continue
        h, w = legend["tile"]
        with Image.open(bundle_dir / legend["file"]) as image:
            image.load()
            names = []
            for k in range(int(layer["features"])):
                name = f"{prefix}-L{li}-f{k}.png"
                image.crop((k * w, 0, (k + 1) * w, h)).save(out_dir / name, optimize=True)
                names.append(name)
        files[str(layer["name"])] = names
    return files


def model_legends(interface_dir: Path, folder: Path) -> dict[str, list[Path]]:
    """The legend thumbnails of an interface, one PNG per feature, cropped once into
    `folder` (a cache folder named after the model's result key); {layer: [paths]}."""
    index = folder / "legends.json"
    if not index.is_file():
        partial = folder.with_name(folder.name + ".partial")
        files = legend_thumbnails(interface_dir, partial, "f")
        (partial / "legends.json").write_text(json.dumps(files))
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        partial.rename(folder)
    files = json.loads(index.read_text())
    return {layer: [folder / name for name in names] for layer, names in files.items()}


def feature_activations(builder: Any, frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per layer, the NMF feature activations (N, h, w, K) of `frames` (N, H, W, C) uint8,
    for a `gallery.pipeline.interface.InterfaceBuilder` that has run: its layers' NMF components
    are read back from its unit store (`plan().nmf`: layer -> unit key)."""
    import torch

    from gallery.method.attribution import prepare_observations
    from gallery.method.nmf import LayerNMF

    plan = builder.plan()
    out = {}
    for layer, key in plan.nmf.items():
        stored = builder.store.load(key)
        if stored is None:
            raise RuntimeError(f"the NMF of layer {layer} is missing from {builder.store.root}")
        nmf = LayerNMF(stored.arrays["components"])
        with torch.inference_mode():
            acts = np.concatenate([
                builder.policy.activations(prepare_observations(builder.policy,
                                                                frames[i:i + 64]), layer)
                .cpu().numpy()
                for i in range(0, len(frames), 64)])
        out[layer] = nmf.transform(np.maximum(acts, 0))
    return out
