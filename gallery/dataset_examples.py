"""Feature visualisation by dataset examples (method.md section 7).

For one feature of a layer, `acts` (N, h, w) are its amounts (the NMF transform of the
layer's activations) over N observations. A layer position (i, j) covers a ph x pw patch
of an observation (ph = H / h, pw = W / w); a patch `expand_mult` cells wide is centred on
a position, on observations padded with a light checkerboard (0.75 / 1.0 alternating per
pixel) so that patches at the border stay whole. Each patch's alpha is its activation over
the largest one shown; `rescale_opacity` then lifts weak patches.

- `feature_thumbnail`: the legend image, 16 observations at their best positions, 4x4.
- `feature_view`: the popup image, one patch per cell of the (resampled) activation grid,
  each from the observation that activates that cell most; with the grid of observation
  indices, so that a click can reveal the whole observation.

Images are RGBA float32 (rows, cols, 4) in [0, 1]. Rounding of patch edges is half to even
in observation coordinates (the reference tool rounded in padded coordinates; with the
even paddings it used for Procgen layers the two agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .attribution import AnalysisError

#: Lowest opacity of a shown patch after `rescale_opacity`.
MIN_OPACITY = 15 / 255
#: Checkerboard values of the padding (even and odd pixels).
CHECKER = (0.75, 1.0)


class FeatureVisualisationError(AnalysisError):
    """A feature visualisation that cannot be made from the given inputs."""


@dataclass(frozen=True)
class FeatureImage:
    """An RGBA image of dataset examples and the observation index behind each patch."""

    image: np.ndarray
    """(rows, cols, 4) float32 in [0, 1]"""
    indices: np.ndarray
    """(grid_h, grid_w) int: observation index of each patch"""


def feature_thumbnail(acts: np.ndarray, observations: np.ndarray, *, num_mult: int = 4,
                      expand_mult: float = 4, max_rep: int | None = None) -> FeatureImage:
    """The legend image of a feature: num_mult x num_mult patches (defaults 4 x 4).

    Each observation's best position (argmax over h, w) is found with no position used by
    more than `max_rep` (default num_mult) observations; the top num_mult^2 observations by
    that activation are arranged by position (rows by h, within a row by w).
    Opacity: `rescale_opacity(max_scale=1, keep_zeros=True)`.
    """
    acts = _check_acts(acts, observations)
    n, h, w = acts.shape
    if n < num_mult**2:
        raise FeatureVisualisationError(
            f"a {num_mult}x{num_mult} thumbnail needs at least {num_mult**2} observations, "
            f"got {n}: collect more observations or lower num_mult")
    positions = assign_with_max_repetition(acts.reshape(n, h * w).T,
                                           max_rep=num_mult if max_rep is None else max_rep,
                                           strict=True)
    pos_h, pos_w = np.divmod(positions, w)
    best = acts[np.arange(n), pos_h, pos_w]
    top = np.argsort(-best, kind="stable")[:num_mult**2]
    by_position = np.lexsort((pos_w[top], pos_h[top])).reshape(num_mult, num_mult)
    for row in by_position:
        row[:] = row[np.argsort(pos_w[top][row], kind="stable")]
    indices = top[by_position]
    centres = np.stack([pos_h[indices] + 0.5, pos_w[indices] + 0.5], axis=-1)
    image = _assemble(observations, indices, centres, best[indices], (h, w), expand_mult,
                      crop_to_smallest=True)
    return FeatureImage(rescale_opacity(image, max_scale=1, keep_zeros=True), indices)


def feature_view(acts: np.ndarray, observations: np.ndarray, *, subdiv_mult: float = 1,
                 expand_mult: float = 4, top_frac: float = 0.1) -> FeatureImage:
    """The popup image of a feature for one (subdiv_mult, expand_mult).

    The (h, w) activation grid is resampled by `subdiv_mult` (linear interpolation,
    edge-padded); every cell gets the observation that activates it most, no observation
    used more than ceil(cells / (N * top_frac)) times; the patch is centred on the cell.
    Opacity: `rescale_opacity(max_scale=10)`.
    """
    acts = _check_acts(acts, observations)
    if not subdiv_mult > 0 or not expand_mult > 0:
        raise FeatureVisualisationError(f"subdiv_mult and expand_mult must be > 0, got "
                                        f"{subdiv_mult} and {expand_mult}")
    grid, centres = resample_grid(acts, subdiv_mult)
    n, gh, gw = grid.shape
    max_rep = math.ceil(gh * gw / (n * top_frac))
    chosen = assign_with_max_repetition(grid.reshape(n, gh * gw), max_rep=max_rep,
                                        strict=False).reshape(gh, gw)
    cell_acts = grid[chosen, np.arange(gh)[:, None], np.arange(gw)[None, :]]
    image = _assemble(observations, chosen, centres, cell_acts, acts.shape[1:], expand_mult,
                      crop_to_smallest=False)
    return FeatureImage(rescale_opacity(image, max_scale=10), chosen)


def resample_grid(acts: np.ndarray, subdiv_mult: float) -> tuple[np.ndarray, np.ndarray]:
    """Activations on a grid `subdiv_mult` times as fine, and the cells' centres.

    Returns (N, gh, gw) activations and (gh, gw, 2) centres in layer cells (a position
    (i, j) has centre (i + 0.5, j + 0.5)). The grid is edge-padded by one cell, zoomed by
    `subdiv_mult - (subdiv_mult - 1) / (size + 2)` with linear interpolation (so that the
    padded grid's ends map onto each other), and the padding is cropped again.
    """
    _, h, w = acts.shape
    zoom_h = subdiv_mult - (subdiv_mult - 1) / (h + 2)
    zoom_w = subdiv_mult - (subdiv_mult - 1) / (w + 2)
    padded = np.pad(acts, [(0, 0), (1, 1), (1, 1)], mode="edge")
    grid = ndimage.zoom(padded, [1, zoom_h, zoom_w], order=1, mode="nearest")[:, 1:-1, 1:-1]
    if grid.size == 0:
        raise FeatureVisualisationError(f"subdiv_mult {subdiv_mult} is too small for "
                                        f"{h}x{w} activations: no grid cell is left")
    cells = np.indices((h + 2, w + 2)).transpose(1, 2, 0).astype(np.float64)
    centres = ndimage.zoom(cells, [zoom_h, zoom_w, 1], order=1, mode="nearest")
    return grid, centres[1:-1, 1:-1] - 0.5


def assign_with_max_repetition(scores: np.ndarray, *, max_rep: float, strict: bool
                               ) -> np.ndarray:
    """For every item (column of `scores`, (choices, items)) the choice (row) it scores
    best, with no choice taken by more than `max_rep` items.

    Greedy, in rounds i = 1, 2, ...: items on an over-full choice are moved, weakest
    first (by their current score), to their i-th best choice until the choice holds
    `max_rep` items; rounds stop when nothing moves, after the last rank (`strict`), or
    one round later going back to the best choice (not strict), as in the reference tool.
    Equal scores rank the lower choice first, and of equally strong items the lower index
    moves first. When the choices cannot hold every item some stay over-full.
    """
    scores = np.asarray(scores)
    n_choices, n_items = scores.shape
    if max_rep <= 0:
        raise FeatureVisualisationError(f"max_rep must be > 0, not {max_rep}")
    choice = np.argmax(scores, axis=0)  # the first of equal maxima: the lowest index
    counts = np.bincount(choice, minlength=n_choices)
    rankings: dict[int, np.ndarray] = {}
    items = np.arange(n_items)
    for rank in range(1, n_choices + (0 if strict else 1)):
        strength = scores[choice, items]
        weakest_first = np.argsort(strength, kind="stable")
        grouped = weakest_first[np.argsort(choice[weakest_first], kind="stable")]
        group_choice = choice[grouped]
        starts = np.searchsorted(group_choice, group_choice, side="left")
        place = np.arange(n_items) - starts  # 0 for the weakest item of each choice
        moving = grouped[place < counts[group_choice] - max_rep]
        if len(moving) == 0:
            break
        new = _ranked_choices(scores, moving, rank % n_choices, rankings)
        np.subtract.at(counts, choice[moving], 1)
        np.add.at(counts, new, 1)
        choice[moving] = new
    return choice


def _ranked_choices(scores: np.ndarray, items: np.ndarray, rank: int,
                    cache: dict[int, np.ndarray]) -> np.ndarray:
    """The `rank`-th best choice of each item (stable: ties rank the lower index first)."""
    missing = [i for i in items.tolist() if i not in cache]
    if missing:
        order = np.argsort(-scores[:, missing], axis=0, kind="stable")
        cache.update(zip(missing, order.T))
    return np.array([cache[i][rank] for i in items.tolist()], dtype=np.intp)


def rescale_opacity(images: np.ndarray, *, min_opacity: float = MIN_OPACITY,
                    opaque_frac: float = 0.1, max_scale: float = 10,
                    keep_zeros: bool = False) -> np.ndarray:
    """Lift weak alphas of RGBA images (..., H, W, 4).

    threshold = max(the (1 - opaque_frac) percentile of alphas, max alpha / max_scale)
    (1 if 0); alpha = min(1, min_opacity + alpha (1 - min_opacity) / threshold); with
    `keep_zeros`, zero alphas stay zero.
    """
    images = np.array(images, dtype=np.float32)
    alpha = images[..., 3]
    flat = alpha.reshape(alpha.shape[:-2] + (-1,))
    threshold = np.maximum(np.percentile(flat, (1 - opaque_frac) * 100, axis=-1),
                           flat.max(axis=-1) / max_scale)
    threshold = np.where(threshold == 0, 1.0, threshold)[..., None, None]
    rescaled = np.minimum(1.0, min_opacity + alpha * (1 - min_opacity) / threshold)
    if keep_zeros:
        rescaled = np.where(alpha == 0, 0.0, rescaled)
    images[..., 3] = rescaled
    return images


def rgb_frames(observations: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) float32 in [0, 1] of observations shown to people.

    uint8 is divided by 255; one channel is repeated as grey; a stack of frames (C a
    multiple of 3, or grey frames) shows its last frame.
    """
    obs = np.asarray(observations)
    obs = obs.astype(np.float32) / 255 if obs.dtype == np.uint8 else obs.astype(np.float32)
    c = obs.shape[-1]
    if c % 3 == 0:
        return obs[..., c - 3:]
    return np.repeat(obs[..., c - 1:], 3, axis=-1)


def patch_bounds(centre: float, cell: float, expand_mult: float) -> tuple[int, int]:
    """[start, stop) pixels of a patch `expand_mult` cells wide centred at `centre` cells."""
    return (int(round((centre - 0.5 * expand_mult) * cell)),
            int(round((centre + 0.5 * expand_mult) * cell)))


def extract_patch(frame: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]
                  ) -> np.ndarray:
    """RGB float32 of frame[rows, cols] (an observation (H, W, C), see `rgb_frames`), with
    the checkerboard wherever the patch leaves the frame."""
    (top, bottom), (left, right) = rows, cols
    ys, xs = np.arange(top, bottom), np.arange(left, right)
    parity = (ys[:, None] + xs[None, :]) % 2
    patch = np.where(parity == 1, CHECKER[1], CHECKER[0]).astype(np.float32)
    patch = np.repeat(patch[..., None], 3, axis=-1)
    y0, y1 = max(top, 0), min(bottom, frame.shape[0])
    x0, x1 = max(left, 0), min(right, frame.shape[1])
    if y0 < y1 and x0 < x1:
        patch[y0 - top:y1 - top, x0 - left:x1 - left] = rgb_frames(frame[y0:y1, x0:x1])
    return patch


def _assemble(observations: np.ndarray, indices: np.ndarray, centres: np.ndarray,
              patch_acts: np.ndarray, layer_hw: tuple[int, int], expand_mult: float, *,
              crop_to_smallest: bool) -> np.ndarray:
    """Patches of `observations[indices[i, j]]` centred at `centres[i, j]`, with alphas
    patch_acts / max(patch_acts), as one RGBA image (a grid of rows and columns)."""
    frames_h, frames_w = observations.shape[1:3]
    cell_h, cell_w = frames_h / layer_hw[0], frames_w / layer_hw[1]
    gh, gw = indices.shape
    rows = [[patch_bounds(centres[i, j, 0], cell_h, expand_mult) for j in range(gw)]
            for i in range(gh)]
    cols = [[patch_bounds(centres[i, j, 1], cell_w, expand_mult) for j in range(gw)]
            for i in range(gh)]
    if crop_to_smallest:  # thumbnails: every patch cut to the smallest patch's size
        heights = [min(b - a for row in rows for a, b in row)] * gh
        widths = [min(b - a for row in cols for a, b in row)] * gw
    else:  # full views: a cell's rows depend on i only, its columns on j only
        heights = [rows[i][0][1] - rows[i][0][0] for i in range(gh)]
        widths = [cols[0][j][1] - cols[0][j][0] for j in range(gw)]
    top = np.concatenate([[0], np.cumsum(heights)])
    left = np.concatenate([[0], np.cumsum(widths)])
    image = np.zeros((top[-1], left[-1], 4), dtype=np.float32)
    largest = float(np.max(patch_acts)) if np.size(patch_acts) else 0.0
    alphas = np.asarray(patch_acts, dtype=np.float64) / (largest if largest != 0 else 1.0)
    for i in range(gh):
        for j in range(gw):
            patch = extract_patch(observations[indices[i, j]], rows[i][j], cols[i][j])
            patch = patch[:heights[i], :widths[j]]
            image[top[i]:top[i + 1], left[j]:left[j + 1], :3] = patch
            image[top[i]:top[i + 1], left[j]:left[j + 1], 3] = alphas[i, j]
    return image


def _check_acts(acts: np.ndarray, observations: np.ndarray) -> np.ndarray:
    acts = np.asarray(acts)
    if acts.ndim != 3:
        raise FeatureVisualisationError(f"feature activations must be (N, h, w), got shape "
                                        f"{acts.shape}")
    obs_shape = np.shape(observations)
    if len(obs_shape) != 4 or obs_shape[0] != acts.shape[0]:
        raise FeatureVisualisationError(f"observations must be (N, H, W, C) with N = "
                                        f"{acts.shape[0]} like the activations, got shape "
                                        f"{obs_shape}")
    if acts.shape[0] == 0:
        raise FeatureVisualisationError("no observations to take examples from")
    if not np.all(np.isfinite(acts)):
        raise FeatureVisualisationError("feature activations contain NaN or infinite values")
    return acts
