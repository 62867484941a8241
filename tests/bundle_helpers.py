"""Small synthetic bundles and attributions shared by the bundle and fuzz tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gallery import bundle as bundles


def synthetic_attribution(frames=5, h=10, w=12, k=3, seed=3):
    """Sparse signed features (frames, h, w, k) and residual (frames, h, w), float32."""
    rng = np.random.default_rng(seed)
    mask = rng.random((frames, h, w, k)) < 0.25
    features = (rng.normal(0, 1, (frames, h, w, k)) * mask).astype(np.float32)
    residual = (rng.normal(0, 0.2, (frames, h, w)) * (rng.random((frames, h, w)) < 0.5)
                ).astype(np.float32)
    return features, residual


def write_small_bundle(root: Path, *, frames: int = 6, side: int = 16, grid_side: int = 4,
                       features: int = 3, extra: int = 20, grid: bool = True,
                       action_names: tuple[str, ...] = ("LEFT", "RIGHT", "RIGHT+UP", "()"),
                       image_effort: str = "best", created: str = "now") -> dict[str, Any]:
    """Two trajectories of `frames` (side x side) observations, one layer "conv" of
    grid_side x grid_side positions with value attribution, a legend and (with `grid`)
    feature views over `extra` extra observations; returns the written index."""
    rng = np.random.default_rng(5)
    writer = bundles.BundleWriter(root, model={"id": "m", "title": "M"},
                                  outputs=[bundles.value_output()],
                                  action_names=list(action_names), image_effort=image_effort)
    for _ in range(2):
        writer.add_trajectory(bundles.TrajectoryData(
            observations=rng.integers(0, 255, (frames, side, side, 3), dtype=np.uint8),
            actions=rng.integers(0, len(action_names), frames), rewards=np.zeros(frames),
            firsts=np.eye(1, frames, 0)[0], dones=np.zeros(frames),
            logits=rng.normal(size=(frames, len(action_names))), values=rng.normal(size=frames),
            advantages=rng.normal(size=frames)))
    writer.set_bookmarks([bundles.BookmarkEntry(1, 2, 0.5)], [bundles.BookmarkEntry(0, 3, 0.25)])
    writer.add_layer(bundles.LayerSpec("conv", (grid_side, grid_side, 2 * features),
                                       "attribution", features))
    for e in range(2):
        f, r = synthetic_attribution(frames=frames, h=grid_side, w=grid_side, k=features,
                                     seed=e)
        writer.add_attribution("conv", e, "value", f, r)
    writer.add_legend("conv", rng.random((features, 2 * grid_side, 2 * grid_side, 4)))
    if grid:
        writer.add_extra_observations(rng.integers(0, 255, (extra, side, side, 3),
                                                   dtype=np.uint8))
        centres = np.arange(grid_side) + 0.5
        for k in range(features):
            writer.add_feature_views("conv", k, [bundles.FeatureGrid(
                1.0, rng.integers(0, extra, (grid_side, grid_side)),
                rng.random((grid_side, grid_side)), centres, centres,
                (grid_side, grid_side))], expand_mults=(1, 2), observation_shape=(side, side))
    return writer.finish({"created": created})
