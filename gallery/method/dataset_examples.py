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
  indices, so that a click can reveal the whole observation. `feature_grid` (which
  observation where) and `render_grid` (the image for one expand_mult) are its halves.

Images are RGBA float32 (rows, cols, 4) in [0, 1]. Rounding of patch edges is half to even
in observation coordinates (the reference tool rounded in padded coordinates; with the
even paddings it used for Procgen layers the two agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gallery.method.attribution import AnalysisError

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
    image = _assemble(observations, indices, centres, best[indices], (h, w), expand_mult)
    return FeatureImage(rescale_opacity(image, max_scale=1, keep_zeros=True), indices)


@dataclass(frozen=True)
class FeatureGrid:
    """The layout of a full feature view, before any patch is cut: for every cell of the
    resampled grid, the observation shown there and how strongly it activates the cell."""

    subdiv_mult: float
    indices: np.ndarray
    """(gh, gw) int: observation index of each cell"""
    activations: np.ndarray
    """(gh, gw) float32: that observation's activation at the cell"""
    centres: np.ndarray
    """(gh, gw, 2) cell centres in layer cells (position (i, j) has centre (i + .5, j + .5))"""
    layer_hw: tuple[int, int]


def feature_view(acts: np.ndarray, observations: np.ndarray, *, subdiv_mult: float = 1,
                 expand_mult: float = 4, top_frac: float = 0.1) -> FeatureImage:
    """The popup image of a feature for one (subdiv_mult, expand_mult).

    The (h, w) activation grid is resampled by `subdiv_mult` (linear interpolation,
    edge-padded); every cell gets the observation that activates it most, no observation
    used more than ceil(cells / (N * top_frac)) times; the patch is centred on the cell.
    Opacity: `rescale_opacity(max_scale=10)`. (`feature_grid` once and `render_grid` per
    expand_mult does the same with the grid computed once.)
    """
    return render_grid(feature_grid(acts, observations, subdiv_mult=subdiv_mult,
                                    top_frac=top_frac), observations, expand_mult=expand_mult)


def feature_grid(acts: np.ndarray, observations: np.ndarray, *, subdiv_mult: float = 1,
                 top_frac: float = 0.1) -> FeatureGrid:
    """Which observation each cell of the resampled grid shows (see `feature_view`)."""
    acts = _check_acts(acts, observations)
    if not subdiv_mult > 0:
        raise FeatureVisualisationError(f"subdiv_mult must be > 0, not {subdiv_mult}")
    chosen, cell_acts, centres = grid_choices(acts.transpose(1, 2, 0), subdiv_mult, top_frac)
    return FeatureGrid(subdiv_mult, chosen, cell_acts, centres, (acts.shape[1], acts.shape[2]))


def grid_choices(cells: np.ndarray, subdiv_mult: float, top_frac: float = 0.1
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The observation each cell of the resampled grid shows, its activation there and the
    cells' centres ((gh, gw), (gh, gw), (gh, gw, 2)), from activations with the
    observations last (h, w, N): contiguous, they are resampled without a copy."""
    cells_first, centres = _resample_cells_first(cells, subdiv_mult)
    gh, gw, n = cells_first.shape
    max_rep = math.ceil(gh * gw / (n * top_frac))
    scores = cells_first.reshape(gh * gw, n).T  # (choices, items), a view
    chosen = assign_with_max_repetition(scores, max_rep=max_rep, strict=False)
    cell_acts = scores[chosen, np.arange(gh * gw)]
    return chosen.reshape(gh, gw), cell_acts.reshape(gh, gw), centres


def render_grid(grid: FeatureGrid, observations: np.ndarray, *, expand_mult: float = 4
                ) -> FeatureImage:
    """The full view of a feature grid with patches `expand_mult` cells wide."""
    if not expand_mult > 0:
        raise FeatureVisualisationError(f"expand_mult must be > 0, not {expand_mult}")
    image = _assemble_grid(observations, grid, expand_mult)
    return FeatureImage(rescale_opacity(image, max_scale=10), grid.indices)


def resample_grid(acts: np.ndarray, subdiv_mult: float) -> tuple[np.ndarray, np.ndarray]:
    """Activations on a grid `subdiv_mult` times as fine, and the cells' centres.

    Returns (N, gh, gw) activations and (gh, gw, 2) centres in layer cells (a position
    (i, j) has centre (i + 0.5, j + 0.5)). The grid is edge-padded by one cell, zoomed by
    `subdiv_mult - (subdiv_mult - 1) / (size + 2)` with linear interpolation (so that the
    padded grid's ends map onto each other), and the padding is cropped again -- the
    reference tool's use of scipy.ndimage.zoom(order=1), computed separably.
    """
    cells_first, centres = _resample_cells_first(np.asarray(acts).transpose(1, 2, 0),
                                                 subdiv_mult)
    return cells_first.transpose(2, 0, 1), centres


def _resample_cells_first(cells: np.ndarray, subdiv_mult: float
                          ) -> tuple[np.ndarray, np.ndarray]:
    """`resample_grid` with the observations last, in (h, w, N) and out (gh, gw, N) float32,
    contiguous."""
    h, w, _ = cells.shape
    rows = _zoom_coordinates(h + 2, subdiv_mult - (subdiv_mult - 1) / (h + 2))
    cols = _zoom_coordinates(w + 2, subdiv_mult - (subdiv_mult - 1) / (w + 2))
    if len(rows) <= 2 or len(cols) <= 2:
        raise FeatureVisualisationError(f"subdiv_mult {subdiv_mult} is too small for "
                                        f"{h}x{w} activations: no grid cell is left")
    padded = np.pad(np.asarray(cells, dtype=np.float32), [(1, 1), (1, 1), (0, 0)], mode="edge")
    grid = _lerp(_lerp(padded, rows[1:-1], axis=0), cols[1:-1], axis=1)
    centres = np.stack(np.meshgrid(rows[1:-1] - 0.5, cols[1:-1] - 0.5, indexing="ij"), -1)
    return np.ascontiguousarray(grid), centres


def _zoom_coordinates(size: int, zoom: float) -> np.ndarray:
    """Input coordinates sampled by scipy.ndimage.zoom (grid_mode=False) along one axis:
    round(size * zoom) points spread evenly from the first to the last input."""
    out = int(round(size * zoom))
    if out <= 1:
        return np.zeros(max(out, 0))
    return np.arange(out) * ((size - 1) / (out - 1))


def _lerp(x: np.ndarray, coordinates: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of `x` at fractional `coordinates` along `axis`."""
    low = np.clip(np.floor(coordinates).astype(int), 0, x.shape[axis] - 1)
    high = np.minimum(low + 1, x.shape[axis] - 1)
    frac = (coordinates - low).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = len(coordinates)
    frac = frac.reshape(shape)
    return np.take(x, low, axis=axis) * (1 - frac) + np.take(x, high, axis=axis) * frac


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


#: Length of the ranking prefix `_ranked_choices` computes per item (more on demand).
RANKED_PREFIX = 16


def _ranked_choices(scores: np.ndarray, items: np.ndarray, rank: int,
                    cache: dict[int, np.ndarray]) -> np.ndarray:
    """The `rank`-th best choice of each item (stable: ties rank the lower index first)."""
    missing = [i for i in items.tolist() if i not in cache]
    if missing:
        # Only a prefix of each ranking is needed (moves stop after a few rounds): the
        # choices scoring at least the RANKED_PREFIX-th best, ties included, stably sorted
        # by score are exactly the first entries of the full stable ranking.
        negated = -scores[:, missing]
        prefix = min(RANKED_PREFIX, len(scores))
        kth = np.partition(negated, prefix - 1, axis=0)[prefix - 1]
        for column, item in enumerate(missing):
            candidates = np.flatnonzero(negated[:, column] <= kth[column])
            cache[item] = candidates[np.argsort(negated[candidates, column], kind="stable")]
    out = np.empty(len(items), dtype=np.intp)
    for n, item in enumerate(items.tolist()):
        ranking = cache[item]
        if rank >= len(ranking):  # beyond the prefix: the full ranking, once
            ranking = cache[item] = np.argsort(-scores[:, item], kind="stable")
        out[n] = ranking[rank]
    return out


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
              patch_acts: np.ndarray, layer_hw: tuple[int, int], expand_mult: float
              ) -> np.ndarray:
    """Thumbnail: patches of `observations[indices[i, j]]`, each centred at its own
    `centres[i, j]` and cut to the smallest patch's size, with alphas
    patch_acts / max(patch_acts), as one RGBA image."""
    cell_h = observations.shape[1] / layer_hw[0]
    cell_w = observations.shape[2] / layer_hw[1]
    gh, gw = indices.shape
    bounds = [[(patch_bounds(centres[i, j, 0], cell_h, expand_mult),
                patch_bounds(centres[i, j, 1], cell_w, expand_mult)) for j in range(gw)]
              for i in range(gh)]
    ph = min(r[1] - r[0] for row in bounds for r, _ in row)
    pw = min(c[1] - c[0] for row in bounds for _, c in row)
    image = np.zeros((gh * ph, gw * pw, 4), dtype=np.float32)
    alphas = _alphas(patch_acts)
    for i in range(gh):
        for j in range(gw):
            rows, cols = bounds[i][j]
            patch = extract_patch(observations[indices[i, j]], rows, cols)[:ph, :pw]
            image[i * ph:(i + 1) * ph, j * pw:(j + 1) * pw, :3] = patch
            image[i * ph:(i + 1) * ph, j * pw:(j + 1) * pw, 3] = alphas[i, j]
    return image


def _assemble_grid(observations: np.ndarray, grid: FeatureGrid, expand_mult: float
                   ) -> np.ndarray:
    """Full view: a patch per cell, centred on the cell, as one RGBA image.

    A cell's rows depend on its grid row only and its columns on its grid column only, so
    every output pixel maps to (cell, source row, source column) separably and the image
    is one gather.
    """
    frames_h, frames_w = observations.shape[1:3]
    row_cells, src_rows = _separable_patches(grid.centres[:, 0, 0],
                                             frames_h / grid.layer_hw[0], expand_mult)
    col_cells, src_cols = _separable_patches(grid.centres[0, :, 1],
                                             frames_w / grid.layer_hw[1], expand_mult)
    which = grid.indices[row_cells[:, None], col_cells[None, :]]
    inside = ((src_rows >= 0) & (src_rows < frames_h))[:, None] & \
        ((src_cols >= 0) & (src_cols < frames_w))[None, :]
    pixels = rgb_frames(observations[which, np.clip(src_rows, 0, frames_h - 1)[:, None],
                                     np.clip(src_cols, 0, frames_w - 1)[None, :]])
    parity = (src_rows[:, None] + src_cols[None, :]) % 2
    checker = np.where(parity == 1, CHECKER[1], CHECKER[0]).astype(np.float32)
    rgb = np.where(inside[..., None], pixels, checker[..., None])
    alpha = _alphas(grid.activations)[row_cells[:, None], col_cells[None, :]]
    return np.concatenate([rgb, alpha[..., None].astype(np.float32)], axis=-1)


def _separable_patches(centres: np.ndarray, cell: float, expand_mult: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """For the patches centred at `centres` laid side by side along one axis: the cell
    and the source pixel of every output pixel."""
    bounds = [patch_bounds(c, cell, expand_mult) for c in centres]
    cells = np.concatenate([np.full(b - a, i) for i, (a, b) in enumerate(bounds)])
    sources = np.concatenate([np.arange(a, b) for a, b in bounds])
    return cells.astype(int), sources.astype(int)


def _alphas(patch_acts: np.ndarray) -> np.ndarray:
    """Activation over the largest shown (1 if that is 0), float64."""
    acts = np.asarray(patch_acts, dtype=np.float64)
    largest = float(acts.max()) if acts.size else 0.0
    return acts / (largest if largest != 0 else 1.0)


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
