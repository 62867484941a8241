"""Interface bundles: everything the browser viewer needs for one model (docs/bundle.md).

A bundle is a folder with an index, `bundle.json`, and data files it names:

- `trajectories/T<e>.json.gz`: actions, rewards, firsts, dones, logits, values, advantages;
- `frames/T<e>-<chunk>.webp`: the observations of a trajectory, tiled (lossless WebP);
- `attribution/L<l>/T<e>-<output>.gatr`: reduced attribution of one (layer, trajectory,
  output) in the compact format of `gallery.bundle.codec`;
- `features/L<l>/legend.webp` and `features/L<l>/f<k>.gfv`: the legend thumbnails and
  the full feature views as observation-index grids (with each cell's activation, to
  1/4095 of the largest, and centre; `encode_feature_views`), which the viewer lays out
  from the extra observations;
- `observations/extra-<chunk>.avif`: the extra observations the feature views refer to
  (lossy AVIF; `encode_extra`).

`BundleWriter` writes one file at a time as the analysis produces it (attribution for
policy outputs never has to be held in memory at once) and the index last, so a folder
with a `bundle.json` is complete. `read_bundle` loads the index and checks its version;
`validate_bundle` checks every file it names (presence, size, sha256, structure).

The format is versioned by FORMAT_VERSION; the viewer refuses bundles of another version.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import shutil
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from PIL import features as pil_features

from gallery.bundle import codec as attribution_codec
from gallery.errors import GalleryError
from gallery.method import rendering
from gallery.method.dataset_examples import patch_bounds

FORMAT_NAME = "gallery-interface-bundle"
#: Version of the bundle layout (bundle.json and the files it names).
FORMAT_VERSION = 2
INDEX_FILE = "bundle.json"
#: No file of a bundle may be larger (GitHub Pages allows 100 MB; we keep far below).
MAX_FILE_BYTES = 20 * 1024 * 1024
#: Frames per observation atlas image, and tiles per atlas row.
FRAMES_PER_ATLAS = 1024
ATLAS_COLUMNS = 32
#: Extra observations per atlas image (feature views refer to them), and tiles per row.
EXTRA_PER_ATLAS = 256
EXTRA_COLUMNS = 16

OutputKind = Literal["value", "action", "action_group"]
LayerKind = Literal["attribution", "gradients"]


class BundleError(GalleryError):
    """A bundle that cannot be written or read; the message names the file."""


# --- what goes in ---------------------------------------------------------------------


@dataclass(frozen=True)
class OutputSpec:
    """A network output attribution is computed for."""

    id: str
    """Stable identifier used in file names and deep links: 'value', 'action-3',
    'group-RIGHT'."""
    kind: OutputKind
    label: str
    actions: tuple[int, ...] = ()
    """The action (one) or the actions of the group; empty for the value."""


def value_output() -> OutputSpec:
    return OutputSpec("value", "value", "value function")


def action_outputs(action_names: Sequence[str]) -> list[OutputSpec]:
    return [OutputSpec(f"action-{i}", "action", f"{name} logit", (i,))
            for i, name in enumerate(action_names)]


def group_output(name: str, actions: Sequence[int], action_names: Sequence[str]) -> OutputSpec:
    members = " | ".join(action_names[a] for a in actions)
    return OutputSpec(f"group-{name}", "action_group", f"[ {members} ] logit sum",
                      tuple(int(a) for a in actions))


@dataclass
class TrajectoryData:
    """One recorded trajectory and the network's outputs along it; arrays indexed by step."""

    observations: np.ndarray
    """(T, H, W, C) uint8."""
    actions: np.ndarray
    rewards: np.ndarray
    firsts: np.ndarray
    dones: np.ndarray
    logits: np.ndarray
    """(T, A) float."""
    values: np.ndarray
    advantages: np.ndarray

    def __post_init__(self) -> None:
        t = len(self.observations)
        if self.observations.ndim != 4 or self.observations.dtype != np.uint8:
            raise BundleError("trajectory observations must be uint8 (T, H, W, C), got "
                              f"{self.observations.dtype} {self.observations.shape}")
        for name in ("actions", "rewards", "firsts", "dones", "values", "advantages"):
            if np.shape(getattr(self, name)) != (t,):
                raise BundleError(f"trajectory {name} must have shape ({t},), got "
                                  f"{np.shape(getattr(self, name))}")
        if np.ndim(self.logits) != 2 or len(self.logits) != t:
            raise BundleError(f"trajectory logits must be ({t}, A), got {np.shape(self.logits)}")


@dataclass(frozen=True)
class BookmarkEntry:
    trajectory: int
    step: int
    score: float


@dataclass(frozen=True)
class LayerSpec:
    """A layer attribution is shown for."""

    name: str
    shape: tuple[int, int, int]
    """(h, w, c) of the layer's activations (for 'input': the observation's)."""
    kind: LayerKind = "attribution"
    features: int = 8
    """K: NMF features (for 'input': the observation's channels)."""


@dataclass
class FeatureGrid:
    """The grid of one full dataset-example view of a feature (method.md section 7), for
    one subdiv_mult: the viewer lays out the patches for every expand_mult itself, exactly
    as `gallery.method.dataset_examples.feature_view` assembles its image."""

    subdiv_mult: float
    indices: np.ndarray
    """(gh, gw) int: the extra observation each cell's patch comes from."""
    acts: np.ndarray
    """(gh, gw) float >= 0: the feature's amount at each cell in that observation (stored
    as act / max to well under an 8-bit level of drawn alpha: `act_levels`)."""
    centre_rows: np.ndarray
    """(gh,) float: cell centres in layer cells (a row's centre is the same for all j)."""
    centre_cols: np.ndarray
    """(gw,) float: cell centres in layer cells."""
    layer_hw: tuple[int, int]
    """(h, w) of the layer."""


# --- feature-view files -----------------------------------------------------------------

#: First bytes of a feature-view file (features/L<l>/f<k>.gfv) and its layout's version.
FEATURE_MAGIC = b"GFVW"
FEATURE_FILE_VERSION = 1
#: A cell's amount is stored as round(act / max * levels) (max: the grid's largest), with
#: levels = ceil(ACT_LEVELS_NUMERATOR / T) for the smallest opacity threshold T of
#: `rescale_opacity` over the views drawn (`act_levels`; T >= 0.1, so at most 3000 levels).
#: The drawn opacity min(1, MIN_OPACITY + a (1 - MIN_OPACITY) / T) moves by at most
#: (1 - MIN_OPACITY) / T' (|da| + |dT|) when a = act / max and T (its weighted 90th
#: percentile, or 1/10) move by da and dT (T': the smaller of old and new threshold); both
#: move by at most half a level, so a drawn alpha moves by at most
#: 255 (1 - MIN_OPACITY) / (levels T - 1/2) < 0.81 of an 8-bit level: one level at most
#: once rounded.
ACT_LEVELS_NUMERATOR = 300
#: Symbols of a cell's observation index: the same as the cell to the left, above, the
#: previous grid's cell nearest in position (its parent), or a literal index that follows.
SAME_LEFT, SAME_UP, SAME_PARENT, LITERAL = 0, 1, 2, 3
#: Cells of one grid at most (a damaged or hostile header is refused before allocating).
MAX_GRID_CELLS = 1 << 22


def resampled_centres(size: int, cells: int) -> np.ndarray:
    """Centres (in layer cells) of the `cells` grid cells that
    `gallery.method.dataset_examples.resample_grid` makes along an axis of `size` layer cells:
    (i + 1) * ((size + 1) / (cells + 1)) - 0.5, bit for bit (the viewer computes the same
    double-precision expression)."""
    return np.arange(1, cells + 1) * ((size + 1) / (cells + 1)) - 0.5


def opacity_threshold(alphas: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                      layer_hw: tuple[int, int], observation_hw: tuple[int, int],
                      expand_mult: float) -> float:
    """The threshold `rescale_opacity(max_scale=10)` uses on the full view of a grid with
    cell alphas `alphas` (act / max) at `expand_mult`: the 90th percentile of the pixels'
    alphas (a cell counts its patch's pixels), at least max / 10, 1 if 0."""
    heights = [b - a for a, b in (patch_bounds(c, observation_hw[0] / layer_hw[0], expand_mult)
                                  for c in rows)]
    widths = [b - a for a, b in (patch_bounds(c, observation_hw[1] / layer_hw[1], expand_mult)
                                 for c in cols)]
    counts = np.outer(heights, widths).ravel()
    values = np.asarray(alphas, np.float64).ravel()
    if counts.sum() == 0:
        return 1.0
    threshold = max(float(np.percentile(np.repeat(values, counts), 90)), values.max() / 10)
    return threshold if threshold != 0 else 1.0


def act_levels(alphas: np.ndarray, rows: np.ndarray, cols: np.ndarray,
               layer_hw: tuple[int, int], observation_hw: tuple[int, int],
               expand_mults: Sequence[float]) -> int:
    """Levels to store a grid's act / max with (see ACT_LEVELS_NUMERATOR)."""
    smallest = min((opacity_threshold(alphas, rows, cols, layer_hw, observation_hw, e)
                    for e in expand_mults), default=0.1)
    return math.ceil(ACT_LEVELS_NUMERATOR / min(1.0, max(0.1, smallest)))


def _nearest(centres: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """For each centre, the index of the nearest parent centre (the first of equals)."""
    return np.abs(centres[:, None] - parent[None, :]).argmin(axis=1)


def _parent_indices(parent_indices: np.ndarray, parent_rows: np.ndarray,
                    parent_cols: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(gh, gw): for each cell of a grid with centres `rows` x `cols`, the observation
    index of the previous grid's cell nearest in position (what SAME_PARENT copies)."""
    return parent_indices[_nearest(rows, parent_rows)[:, None],
                          _nearest(cols, parent_cols)[None]]


def _byte_planes(values: np.ndarray, width: int) -> bytes:
    """Unsigned values as `width` byte planes, the most significant first."""
    v = np.asarray(values, dtype=np.uint64).ravel()
    return b"".join(((v >> np.uint64(8 * b)) & np.uint64(255)).astype(np.uint8).tobytes()
                    for b in reversed(range(width)))


def _from_planes(data: bytes, count: int, width: int) -> np.ndarray:
    planes = np.frombuffer(data, np.uint8, count * width).reshape(width, count)
    out = np.zeros(count, np.int64)
    for plane in planes:
        out = (out << 8) | plane
    return out


def encode_feature_views(feature: int, layer_hw: tuple[int, int],
                         observation_hw: tuple[int, int], expand_mults: Sequence[float],
                         grids: Sequence[FeatureGrid]) -> bytes:
    """The full views of one feature as a `.gfv` file (docs/bundle.md, "features").

    Layout: FEATURE_MAGIC, u32 n (little-endian), n bytes of JSON header, then one zlib
    stream holding per grid, in header order: the index symbols (a byte per cell, row by
    row; see SAME_LEFT ...), the literal indices (`index_bytes` byte planes, most
    significant first), the amounts (u16 as two byte planes, high first).
    """
    header_grids: list[dict[str, Any]] = []
    body: list[bytes] = []
    largest_index = max((int(np.max(g.indices)) for g in grids if np.size(g.indices)),
                        default=0)
    if largest_index >= 1 << 32:
        raise BundleError(f"extra observation index {largest_index} does not fit in 4 bytes")
    index_bytes = 2 if largest_index < 1 << 16 else 4
    parent: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    for g in grids:
        indices = np.asarray(g.indices, dtype=np.int64)
        acts = np.asarray(g.acts, dtype=np.float64)
        rows = np.asarray(g.centre_rows, dtype=np.float64)
        cols = np.asarray(g.centre_cols, dtype=np.float64)
        gh, gw = indices.shape
        largest = float(acts.max())
        alphas = acts / (largest if largest != 0 else 1.0)
        levels = act_levels(alphas, rows, cols, layer_hw, observation_hw, expand_mults)
        entry: dict[str, Any] = {"subdiv_mult": float(g.subdiv_mult), "shape": [gh, gw],
                                 "act_max": largest, "act_levels": levels}
        if not (np.array_equal(rows, resampled_centres(layer_hw[0], gh)) and
                np.array_equal(cols, resampled_centres(layer_hw[1], gw))):
            entry["centre_rows"] = rows.tolist()  # shortest round-trip decimals: exact
            entry["centre_cols"] = cols.tolist()
        symbols = np.full((gh, gw), LITERAL, np.uint8)
        if parent is not None:
            symbols[_parent_indices(*parent, rows, cols) == indices] = SAME_PARENT
        symbols[1:][indices[1:] == indices[:-1]] = SAME_UP
        symbols[:, 1:][indices[:, 1:] == indices[:, :-1]] = SAME_LEFT
        body += [symbols.tobytes(), _byte_planes(indices[symbols == LITERAL], index_bytes),
                 _byte_planes(np.round(alphas * levels).astype(np.int64), 2)]
        header_grids.append(entry)
        parent = (indices, rows, cols)
    raw = b"".join(body)
    header = {"version": FEATURE_FILE_VERSION, "feature": int(feature),
              "layer_shape": [int(layer_hw[0]), int(layer_hw[1])],
              "observation_shape": [int(observation_hw[0]), int(observation_hw[1])],
              "expand_mults": [float(e) for e in expand_mults], "index_bytes": index_bytes, "body_bytes": len(raw), "grids": header_grids}
    text = json.dumps(header, separators=(",", ":")).encode()
    return FEATURE_MAGIC + struct.pack("<I", len(text)) + text + zlib.compress(raw, 9)


def decode_feature_views(data: bytes) -> dict[str, Any]:
    """A `.gfv` file's header with its grids decoded: each grid gets `centre_rows`,
    `centre_cols` (float64), `indices` (gh, gw) int64 and `alphas` (gh, gw), the stored
    act / max. Raises BundleError on a damaged file."""
    try:
        return _decode_feature_views(data)
    except BundleError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, struct.error, zlib.error,
            RecursionError, OverflowError) as err:
        raise BundleError(f"damaged feature-view file ({type(err).__name__}: {err!s:.200})"
                          ) from None


def _decode_feature_views(data: bytes) -> dict[str, Any]:
    if data[:4] != FEATURE_MAGIC:
        raise BundleError("not a feature-view file (no GFVW magic)")
    (n,) = struct.unpack_from("<I", data, 4)
    if 8 + n > len(data):
        raise BundleError("feature-view header is cut short")
    header = json.loads(data[8:8 + n])
    if not isinstance(header, dict) or header.get("version") != FEATURE_FILE_VERSION:
        raise BundleError(f"feature-view file version {header.get('version')!r:.20}; this "
                          f"gallery reads version {FEATURE_FILE_VERSION}")
    h, w = (int(x) for x in header["layer_shape"])
    width = int(header["index_bytes"])
    if width not in (2, 4):
        raise BundleError("feature-view header: index_bytes must be 2 or 4")
    expected = int(header["body_bytes"])
    cells = [int(g["shape"][0]) * int(g["shape"][1]) for g in header["grids"]]
    if any(c <= 0 or c > MAX_GRID_CELLS for c in cells) or \
            not 3 * sum(cells) <= expected <= (3 + width) * sum(cells):
        raise BundleError("feature-view header: grid shapes and body size disagree")
    stream = zlib.decompressobj()
    body = stream.decompress(data[8 + n:], expected + 1)
    if len(body) != expected or not stream.eof:
        raise BundleError(f"feature-view body: {len(body)} bytes, the header says {expected}")
    at = 0
    parent: dict[str, Any] | None = None
    for grid in header["grids"]:
        gh, gw = int(grid["shape"][0]), int(grid["shape"][1])
        if "centre_rows" in grid:
            grid["centre_rows"] = np.array(grid["centre_rows"], np.float64)
            grid["centre_cols"] = np.array(grid["centre_cols"], np.float64)
            if grid["centre_rows"].shape != (gh,) or grid["centre_cols"].shape != (gw,):
                raise BundleError("feature-view grid: centres do not match its shape")
        else:
            grid["centre_rows"] = resampled_centres(h, gh)
            grid["centre_cols"] = resampled_centres(w, gw)
        symbols = np.frombuffer(body, np.uint8, gh * gw, at).reshape(gh, gw)
        at += gh * gw
        literal = symbols == LITERAL
        count = int(literal.sum())
        if at + count * width + 2 * gh * gw > len(body) or symbols.max() > LITERAL:
            raise BundleError("feature-view body is cut short or damaged")
        indices = np.full((gh, gw), -1, np.int64)
        indices[literal] = _from_planes(body[at:], count, width)
        at += count * width
        if parent is not None:
            nearest = _parent_indices(parent["indices"], parent["centre_rows"],
                                      parent["centre_cols"], grid["centre_rows"],
                                      grid["centre_cols"])
        elif (symbols == SAME_PARENT).any():
            raise BundleError("feature-view grid: the first grid has no parent")
        if (symbols[0] == SAME_UP).any() or (symbols[:, 0] == SAME_LEFT).any():
            raise BundleError("feature-view grid: a cell refers to one outside the grid")
        columns = np.arange(gw)
        for i in range(gh):
            row, sym = indices[i], symbols[i]
            if i:
                row[sym == SAME_UP] = indices[i - 1][sym == SAME_UP]
            if parent is not None:
                row[sym == SAME_PARENT] = nearest[i][sym == SAME_PARENT]
            source = np.maximum.accumulate(np.where(sym != SAME_LEFT, columns, 0))
            indices[i] = row[source]
        grid["indices"] = indices
        levels = int(grid["act_levels"])
        if not 0 < levels < 1 << 16:
            raise BundleError("feature-view grid: act_levels out of range")
        grid["alphas"] = _from_planes(body[at:], gh * gw, 2).reshape(gh, gw) / levels
        at += 2 * gh * gw
        parent = grid
    if at != len(body):
        raise BundleError("feature-view body is longer than its grids")
    return header


@dataclass(frozen=True)
class Presentation:
    """Viewer defaults that are not the science (interface.md "reference presentation")."""

    video_speed: float = 12.0
    attribution_weight: float = 0.9
    scrub_range: tuple[float, float] = rendering.SCRUB_RANGE
    scrubber_visible_duration: int = 256
    vis_subdiv_mult_default: float = 1.0
    vis_expand_mult_default: float = 4.0
    graph_colours: dict[str, str] = field(default_factory=lambda: {
        "value": "green", "action": "red", "action_group": "orange", "advantage": "blue"})


# --- writing ----------------------------------------------------------------------------


def _round(values: np.ndarray, digits: int = 6) -> list[Any]:
    """Nested lists of floats with `digits` significant digits (JSON stays small)."""
    arr = np.asarray(values, dtype=np.float64)
    flat = [float(f"{v:.{digits}g}") if np.isfinite(v) else None for v in arr.ravel()]
    return np.array(flat, dtype=object).reshape(arr.shape).tolist()


def display_frames(observations: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB to show: grey for one channel; the last frame of a stack."""
    obs = np.asarray(observations)
    channels = obs.shape[-1]
    if channels == 3:
        return obs
    if channels == 1 or channels % 3 != 0:
        return np.repeat(obs[..., -1:], 3, axis=-1)
    return obs[..., -3:]


#: WebP lossless settings: (method, quality). libwebp's slowest setting (method 6, quality
#: 100) makes observation atlases about half the size of the fast one, at ~20x the time.
EFFORT = {"best": (6, 100), "fast": (1, 30)}


#: The extra observations (dataset examples only) are lossy AVIF: quality, encoder speed
#: and chroma subsampling. On CoinRun's 16 atlases these settings make a third of the bytes
#: of the lossy WebP (quality 80) used before, at a lower mean error in every atlas (3.84
#: against 4.32/255 over all; docs/bundle.md). Full-resolution chroma (4:4:4) lowers the
#: error far more than it costs; speed 6 takes about a second per atlas (speed 4: 9 s for
#: 7-10% less); quality 32 and below would be smaller still, but worse than the WebP in some
#: atlases. One encoder thread: libaom's output depends on the thread count, and bundles
#: are reproducible.
EXTRA_QUALITY = 34
EXTRA_SPEED = 6
EXTRA_SUBSAMPLING = "4:4:4"
#: Without AVIF in Pillow (`PIL.features.check("avif")` false) the extra
#: observations fall back to lossy WebP of this quality (mean error about 4/255).
EXTRA_WEBP_QUALITY = 80


def extra_encoding() -> dict[str, Any]:
    """What `encode_extra` does here (AVIF and its settings, or the WebP fallback)."""
    if not pil_features.check("avif"):
        return {"format": "webp", "quality": EXTRA_WEBP_QUALITY}
    return {"format": "avif", "quality": EXTRA_QUALITY, "speed": EXTRA_SPEED,
            "subsampling": EXTRA_SUBSAMPLING}


def encode_extra(pixels: np.ndarray) -> tuple[bytes, str]:
    """An atlas of extra observations, uint8 (H, W, 3), as lossy AVIF (or WebP where Pillow
    has no AVIF); returns the bytes and the file extension."""
    if not pil_features.check("avif"):
        return encode_image(pixels, lossy_quality=EXTRA_WEBP_QUALITY), "webp"
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(
        out, "AVIF", quality=EXTRA_QUALITY, speed=EXTRA_SPEED, subsampling=EXTRA_SUBSAMPLING,
        max_threads=1)
    return out.getvalue(), "avif"


@dataclass(frozen=True)
class ExtraAtlases:
    """The atlases of the extra observations a bundle's feature views show."""

    indices: np.ndarray
    """Which extra observations, in increasing order."""
    images: list[tuple[bytes, str]]
    """(bytes, file extension) of each atlas (`encode_extra`)."""


def encode_extra_atlases(observations: np.ndarray, indices: np.ndarray) -> ExtraAtlases:
    """Extra observations `observations[indices]` (indices increasing) as the bundle stores
    them: atlases of EXTRA_PER_ATLAS, EXTRA_COLUMNS to a row."""
    frames = display_frames(np.asarray(observations)[indices])
    return ExtraAtlases(np.asarray(indices, np.int64), [
        encode_extra(tile(frames[start:start + EXTRA_PER_ATLAS], EXTRA_COLUMNS))
        for start in range(0, len(frames), EXTRA_PER_ATLAS)])


def encode_image(pixels: np.ndarray, effort: str = "fast", lossy_quality: int | None = None
                 ) -> bytes:
    """WebP of uint8 (H, W, 3|4): lossless (keeping colour under zero alpha) unless a
    lossy quality is given."""
    mode = "RGBA" if pixels.shape[-1] == 4 else "RGB"
    out = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(pixels), mode)
    if lossy_quality is not None:
        image.save(out, "WEBP", quality=lossy_quality, method=6)
    else:
        method, quality = EFFORT[effort]
        image.save(out, "WEBP", lossless=True, quality=quality, method=method, exact=True)
    return out.getvalue()


def encode_frames(observations: np.ndarray, effort: str = "best") -> list[bytes]:
    """A trajectory's observations (T, H, W, C) as the bundle's frame atlases: lossless WebP
    of up to FRAMES_PER_ATLAS frames each, ATLAS_COLUMNS to a row."""
    frames = display_frames(observations)
    return [encode_image(tile(frames[start:start + FRAMES_PER_ATLAS], ATLAS_COLUMNS), effort)
            for start in range(0, len(frames), FRAMES_PER_ATLAS)]


def tile(frames: np.ndarray, columns: int) -> np.ndarray:
    """(N, h, w, C) frames -> one (rows * h, columns * w, C) image, row by row."""
    n, h, w, c = frames.shape
    rows = max(1, math.ceil(n / columns))
    cols = min(columns, n) if rows == 1 else columns
    padded = np.zeros((rows * cols, h, w, c), frames.dtype)
    padded[:n] = frames
    return padded.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(
        rows * h, cols * w, c)


class BundleWriter:
    """Writes a bundle into `directory`, file by file; `finish` writes the index.

    Use: add_trajectory for each trajectory, add_layer for each layer, then
    add_attribution for each (layer, trajectory, output), add_legend / add_feature_views
    and add_extra_observations for the feature visualisation, set_bookmarks, finish.
    """

    def __init__(self, directory: str | Path, *, model: dict[str, Any],
                 outputs: Sequence[OutputSpec], action_names: Sequence[str],
                 action_groups: Sequence[OutputSpec] = (),
                 presentation: Presentation = Presentation(),
                 single_features: bool = True, image_effort: str = "best",
                 fidelity: attribution_codec.FidelityTarget = attribution_codec.FidelityTarget()):
        if image_effort not in EFFORT:
            raise BundleError(f"image_effort must be one of {sorted(EFFORT)}, "
                              f"not {image_effort!r}")
        self.root = Path(directory)
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        self.model = dict(model)
        self.outputs = list(outputs)
        self.action_names = list(action_names)
        self.action_groups = list(action_groups)
        self.presentation = presentation
        self.single_features = single_features
        self.image_effort = image_effort
        self.fidelity = fidelity
        self.files: dict[str, dict[str, Any]] = {}
        self.trajectories: list[dict[str, Any]] = []
        self.layers: list[dict[str, Any]] = []
        self.bookmarks: dict[str, list[dict[str, Any]]] = {"high": [], "low": []}
        self.extra_observations: np.ndarray | None = None
        self.extra_atlases: ExtraAtlases | None = None
        self.referenced: set[int] = set()
        self.fidelity_report: list[dict[str, Any]] = []

    # files
    def _write(self, relative: str, data: bytes) -> str:
        if len(data) > MAX_FILE_BYTES:
            raise BundleError(f"{relative}: {len(data)} bytes is over the {MAX_FILE_BYTES} "
                              "byte limit of one bundle file")
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files[relative] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return relative

    def _write_json(self, relative: str, value: Any) -> str:
        return self._write(relative, json.dumps(value, separators=(",", ":")).encode())

    # trajectories
    def add_trajectory(self, data: TrajectoryData, atlases: Sequence[bytes] | None = None
                       ) -> int:
        """Write one trajectory; returns its index. `atlases`: its frames as
        `encode_frames` gives them, when already encoded (else they are encoded here)."""
        index = len(self.trajectories)
        if atlases is None:
            atlases = encode_frames(data.observations, self.image_effort)
        t, h, w = data.observations.shape[:3]
        written = [{"file": self._write(f"frames/T{index}-{chunk}.webp", encoded),
                    "start": start, "count": min(FRAMES_PER_ATLAS, t - start)}
                   for chunk, (start, encoded) in enumerate(
                       zip(range(0, t, FRAMES_PER_ATLAS), atlases, strict=True))]
        scalars = {
            "length": t,
            "actions": np.asarray(data.actions).astype(int).tolist(),
            "rewards": _round(data.rewards),
            "firsts": np.asarray(data.firsts).astype(int).tolist(),
            "dones": np.asarray(data.dones).astype(int).tolist(),
            "logits": _round(data.logits),
            "values": _round(data.values),
            "advantages": _round(data.advantages),
        }
        data_file = self._write(f"trajectories/T{index}.json.gz", gzip.compress(
            json.dumps(scalars, separators=(",", ":")).encode(), compresslevel=9, mtime=0))
        self.trajectories.append({
            "index": index, "length": t, "data": data_file,
            "frames": {"tile": [h, w], "columns": ATLAS_COLUMNS, "atlases": written},
            "episodes_completed": int(np.sum(np.asarray(data.dones) != 0)),
            "total_reward": float(np.sum(data.rewards)),
        })
        return index

    def set_bookmarks(self, high: Iterable[BookmarkEntry], low: Iterable[BookmarkEntry]) -> None:
        self.bookmarks = {name: [{"trajectory": int(b.trajectory), "step": int(b.step),
                                  "score": float(f"{b.score:.6g}")} for b in marks]
                          for name, marks in (("high", high), ("low", low))}

    # layers
    def add_layer(self, spec: LayerSpec) -> int:
        """Declare a layer; returns its index (used in file names)."""
        if any(layer["name"] == spec.name for layer in self.layers):
            raise BundleError(f"layer {spec.name!r} added twice")
        k = spec.features
        self.layers.append({
            "name": spec.name, "kind": spec.kind, "shape": list(spec.shape), "features": k,
            "hues": np.round(rendering.feature_hues(k), 12).tolist(),
            "colours": rendering.hex_colours(rendering.legend_colours(k)),
            "views": [str(v) for v in rendering.views(
                k, self.single_features and spec.kind == "attribution")],
            "attribution": {}, "legend": None, "feature_views": None,
        })
        return len(self.layers) - 1

    def _layer(self, name: str) -> tuple[int, dict[str, Any]]:
        for i, layer in enumerate(self.layers):
            if layer["name"] == name:
                return i, layer
        raise BundleError(f"layer {name!r} was not added")

    def add_attribution(self, layer: str, trajectory: int, output: str,
                        features: np.ndarray, residual: np.ndarray) -> dict[str, Any]:
        """Encode the reduced attribution (T, h, w, K) + residual (T, h, w) of one triple."""
        _, entry = self._checked_triple(layer, trajectory, output)
        h, w, _ = entry["shape"]
        expected = (self.trajectories[trajectory]["length"], h, w, entry["features"])
        if tuple(np.shape(features)) != expected:
            raise BundleError(f"layer {layer}, trajectory {trajectory}, {output}: features "
                              f"have shape {np.shape(features)}, expected {expected}")
        data = attribution_codec.encode(features, residual,
                                        single_features=self.single_features,
                                        target=self.fidelity)
        return self.add_encoded_attribution(layer, trajectory, output, data)

    def add_encoded_attribution(self, layer: str, trajectory: int, output: str,
                                data: bytes) -> dict[str, Any]:
        """Store one triple's attribution file, already encoded (`attribution_codec`)."""
        li, entry = self._checked_triple(layer, trajectory, output)
        header = attribution_codec.decode(data).header
        expected = (self.trajectories[trajectory]["length"], *entry["shape"][:2],
                    entry["features"])
        if (header.frames, header.height, header.width, header.features) != expected:
            raise BundleError(f"layer {layer}, trajectory {trajectory}, {output}: "
                              f"stored attribution does not match {expected}")
        name = self._write(f"attribution/L{li}/T{trajectory}-{output}.gatr", data)
        files = entry["attribution"].setdefault(output, [None] * len(self.trajectories))
        files[trajectory] = name
        report = {"layer": layer, "trajectory": trajectory, "output": output,
                  "bytes": len(data), "steps": header.steps,
                  "checked_mae": header.worst_mae, "checked_psnr": header.worst_psnr}
        self.fidelity_report.append(report)
        return report

    def _checked_triple(self, layer: str, trajectory: int, output: str
                        ) -> tuple[int, dict[str, Any]]:
        li, entry = self._layer(layer)
        if output not in {o.id for o in self.outputs}:
            raise BundleError(f"output {output!r} is not one of the bundle's outputs")
        if not 0 <= trajectory < len(self.trajectories):
            raise BundleError(f"trajectory {trajectory} was not added")
        return li, entry

    # feature visualisation
    def add_legend(self, layer: str, thumbnails: np.ndarray) -> None:
        """Legend thumbnails (K, h, w, 4) float RGBA, one per feature, in feature order."""
        li, entry = self._layer(layer)
        thumbs = rendering.to_uint8(thumbnails)
        if thumbs.ndim != 4 or thumbs.shape[0] != entry["features"] or thumbs.shape[-1] != 4:
            raise BundleError(f"layer {layer}: legend thumbnails must be (K={entry['features']}"
                              f", h, w, 4), got {thumbs.shape}")
        name = self._write(f"features/L{li}/legend.webp",
                           encode_image(tile(thumbs, thumbs.shape[0])))
        entry["legend"] = {"file": name, "tile": list(thumbs.shape[1:3])}

    def add_feature_views(self, layer: str, feature: int, grids: Sequence[FeatureGrid], *,
                          expand_mults: Sequence[float], observation_shape: tuple[int, int]
                          ) -> None:
        """The full views of one feature: a grid per subdiv_mult, shown at every expand_mult
        (features/L<l>/f<k>.gfv, `encode_feature_views`)."""
        li, entry = self._layer(layer)
        if not 0 <= feature < entry["features"]:
            raise BundleError(f"layer {layer}: feature {feature} out of range")
        if not grids:
            raise BundleError(f"layer {layer}, feature {feature}: no grids")
        for g in grids:
            indices = np.asarray(g.indices)
            acts = np.asarray(g.acts, dtype=np.float64)
            if indices.ndim != 2 or acts.shape != indices.shape or indices.size == 0:
                raise BundleError(f"layer {layer}, feature {feature}: grid indices and acts "
                                  f"must be 2-D, alike and not empty, got {indices.shape}, "
                                  f"{acts.shape}")
            if not np.issubdtype(indices.dtype, np.integer) or indices.min() < 0:
                raise BundleError(f"layer {layer}, feature {feature}: grid indices must be "
                                  "non-negative integers")
            if not np.all(np.isfinite(acts)) or acts.min() < 0:
                raise BundleError(f"layer {layer}, feature {feature}: grid activations must "
                                  "be finite and non-negative (NMF amounts)")
            if np.shape(g.centre_rows) != indices.shape[:1] or \
                    np.shape(g.centre_cols) != indices.shape[1:]:
                raise BundleError(f"layer {layer}, feature {feature}: centres do not match "
                                  "the grid")
            self.referenced.update(int(i) for i in np.unique(indices))
        data = encode_feature_views(feature, tuple(entry["shape"][:2]),
                                    (int(observation_shape[0]), int(observation_shape[1])),
                                    expand_mults, grids)
        name = self._write(f"features/L{li}/f{feature}.gfv", data)
        if entry["feature_views"] is None:
            entry["feature_views"] = [None] * entry["features"]
        entry["feature_views"][feature] = name

    def add_extra_observations(self, observations: np.ndarray,
                               atlases: ExtraAtlases | None = None) -> None:
        """The extra observations feature-view grids index into (only referenced ones are
        written, at `finish`), and optionally their atlases made beforehand (they must
        hold exactly the observations the views refer to)."""
        self.extra_observations = np.asarray(observations)
        self.extra_atlases = atlases

    def _write_extra(self) -> dict[str, Any] | None:
        if not self.referenced:
            return None
        if self.extra_observations is None:
            raise BundleError("feature views refer to extra observations, but none were added")
        indices = np.array(sorted(self.referenced), dtype=np.int64)
        if indices[0] < 0 or indices[-1] >= len(self.extra_observations):
            raise BundleError(f"feature views refer to extra observation {indices[-1]}, but "
                              f"there are {len(self.extra_observations)}")
        given = self.extra_atlases
        if given is None:
            given = encode_extra_atlases(self.extra_observations, indices)
        elif not np.array_equal(given.indices, indices):
            raise BundleError("the extra observations' atlases were made for other "
                              "observations than the feature views refer to")
        atlases = []
        for chunk, (data, extension) in enumerate(given.images):
            name = self._write(f"observations/extra-{chunk}.{extension}", data)
            start = chunk * EXTRA_PER_ATLAS
            atlases.append({"file": name, "start": start,
                            "count": min(EXTRA_PER_ATLAS, len(indices) - start)})
        return {"indices": indices.tolist(), "tile": list(self.extra_observations.shape[1:3]),
                "columns": EXTRA_COLUMNS, "atlases": atlases}

    def finish(self, provenance: dict[str, Any], default_layer: str | None = None
               ) -> dict[str, Any]:
        """Write the remaining files and bundle.json; returns the index."""
        extra = self._write_extra()
        if not self.layers:
            raise BundleError("a bundle needs at least one layer")
        names = [layer["name"] for layer in self.layers]
        if default_layer is None:
            attribution_layers = [n for n, la in zip(names, self.layers, strict=True)
                                  if la["kind"] == "attribution"] or names
            default_layer = attribution_layers[len(attribution_layers) // 2]
        for layer in self.layers:
            for output, files in layer["attribution"].items():
                if any(f is None for f in files):
                    missing = [i for i, f in enumerate(files) if f is None]
                    raise BundleError(f"layer {layer['name']}, output {output}: attribution "
                                      f"missing for trajectories {missing}")
        index = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "codec_version": attribution_codec.CODEC_VERSION,
            "model": self.model,
            "provenance": provenance,
            "presentation": asdict(self.presentation),
            "action_names": self.action_names,
            "action_groups": [asdict(g) for g in self.action_groups],
            "outputs": [asdict(o) for o in self.outputs],
            "single_features": self.single_features,
            "trajectories": self.trajectories,
            "bookmarks": self.bookmarks,
            "layers": self.layers,
            "default_layer": default_layer,
            "extra_observations": extra,
            "files": dict(sorted(self.files.items())),
        }
        (self.root / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
        return index


def _number(x: float) -> str:
    """1.0 -> '1', 0.25 -> '0.25' (file-name friendly)."""
    return f"{x:g}"


# --- reading and validating -------------------------------------------------------------


def read_bundle(directory: str | Path) -> dict[str, Any]:
    """The index of the bundle in `directory`, after checking its format and version."""
    path = Path(directory) / INDEX_FILE
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise BundleError(f"{path}: {path.stat().st_size} bytes, over the "
                              f"{MAX_FILE_BYTES} byte limit of one bundle file")
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: no bundle here (bundle.json is missing)") from None
    except (OSError, ValueError, RecursionError) as err:
        raise BundleError(f"{path}: cannot read the bundle index ({err})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT_NAME:
        raise BundleError(f"{path}: not a gallery interface bundle")
    version = index.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {version}; this gallery reads "
                          f"version {FORMAT_VERSION}: rebuild the interface")
    return index


REQUIRED_KEYS = ("model", "provenance", "presentation", "action_names", "outputs",
                 "trajectories", "bookmarks", "layers", "default_layer", "files")


def validate_bundle(directory: str | Path, *, decode_frames: int = 1) -> dict[str, Any]:
    """Check a bundle thoroughly; returns its index or raises BundleError listing problems.

    Checks: the index's keys, that every file it names exists with the recorded size and
    sha256 and is at most MAX_FILE_BYTES, that attribution files parse and match their
    layer and trajectory, that images decode to the sizes the index gives, and (unless
    `decode_frames` is 0) that that many frames of each attribution file decode.
    """
    root = Path(directory)
    index = read_bundle(root)
    problems: list[str] = [f"bundle.json: missing key {k!r}" for k in REQUIRED_KEYS
                           if k not in index]
    if problems:
        raise BundleError("; ".join(problems))
    try:
        problems += _check_structure(root, index, decode_frames)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as err:
        # a hostile or damaged index: a key missing or a value of the wrong type
        problems.append(f"bundle.json is malformed ({type(err).__name__}: {err!s:.200}); "
                        "rebuild the interface")
    if problems:
        raise BundleError(f"{root}: invalid bundle:\n  " + "\n  ".join(problems))
    return index


def _check_structure(root: Path, index: dict[str, Any], decode_frames: int) -> list[str]:
    problems: list[str] = []
    for name, meta in index["files"].items():
        problems += _check_file(root, name, meta)
    named = set(index["files"])
    for reference in _references(index):
        if not isinstance(reference, str) or reference not in named:
            problems.append(f"bundle.json names {reference!r:.200}, which is not in its "
                            "file list")
    if index["default_layer"] not in [layer["name"] for layer in index["layers"]]:
        problems.append(f"bundle.json: default_layer {index['default_layer']!r:.100} is not "
                        "one of its layers")
    if not problems:
        problems += _check_contents(root, index, decode_frames)
    return problems


def _check_file(root: Path, name: str, meta: dict[str, Any]) -> list[str]:
    path = root / name
    if ".." in Path(name).parts or Path(name).is_absolute():
        return [f"{name}: file names must stay inside the bundle"]
    if not path.is_file():
        return [f"{name}: missing"]
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:  # before reading it
        return [f"{name}: {size} bytes, over the {MAX_FILE_BYTES} byte limit"]
    data = path.read_bytes()
    problems = []
    if len(data) != meta.get("bytes"):
        problems.append(f"{name}: {len(data)} bytes, the index says {meta.get('bytes')!r:.40}")
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        problems.append(f"{name}: sha256 differs from the index (file changed or corrupt)")
    return problems


def _references(index: dict[str, Any]) -> list[str]:
    refs: list[str] = []
    for t in index["trajectories"]:
        refs.append(t["data"])
        refs += [a["file"] for a in t["frames"]["atlases"]]
    for layer in index["layers"]:
        for files in layer["attribution"].values():
            refs += files
        if layer.get("legend"):
            refs.append(layer["legend"]["file"])
        refs += [f for f in layer.get("feature_views") or [] if f]
    extra = index.get("extra_observations")
    if extra:
        refs += [a["file"] for a in extra["atlases"]]
    return refs


def _check_contents(root: Path, index: dict[str, Any], decode_frames: int) -> list[str]:
    problems: list[str] = []
    lengths = [t["length"] for t in index["trajectories"]]
    for t in index["trajectories"]:
        try:
            data = read_json(root / t["data"])
        except (OSError, EOFError, zlib.error, ValueError, RecursionError) as err:
            problems.append(f"{t['data']}: cannot read it ({err!s:.200})")
            continue
        for key in ("actions", "rewards", "firsts", "dones", "logits", "values", "advantages"):
            if not isinstance(data, dict) or not isinstance(data.get(key), list) or \
                    len(data[key]) != t["length"]:
                problems.append(f"{t['data']}: {key} does not have {t['length']!r:.40} "
                                "entries")
        h, w = t["frames"]["tile"]
        for atlas in t["frames"]["atlases"]:
            problems += _check_atlas(root, atlas, h, w, t["frames"]["columns"])
    for layer in index["layers"]:
        h, w, _ = layer["shape"]
        for files in layer["attribution"].values():
            for e, name in enumerate(files):
                try:
                    parsed = attribution_codec.decode((root / name).read_bytes())
                    head = parsed.header
                    if (head.frames, head.height, head.width, head.features) != (
                            lengths[e], h, w, layer["features"]):
                        problems.append(f"{name}: shape does not match layer "
                                        f"{layer['name']} and trajectory {e}")
                    elif decode_frames:
                        parsed.codes(np.linspace(0, head.frames - 1, decode_frames).astype(int))
                except (attribution_codec.CodecError, OSError, ValueError, IndexError) as err:
                    problems.append(f"{name}: {err}")
    extra = index.get("extra_observations")
    known = np.array(extra["indices"] if extra else [], dtype=np.int64)
    for layer in index["layers"]:
        for k, name in enumerate(layer.get("feature_views") or []):
            if name:
                problems += _check_feature_views(root, name, k, layer, known)
    if extra:
        h, w = extra["tile"]
        for atlas in extra["atlases"]:
            problems += _check_atlas(root, atlas, h, w, extra["columns"])
    return problems


def _check_feature_views(root: Path, name: str, feature: int, layer: dict[str, Any],
                         known: np.ndarray) -> list[str]:
    """A feature-view file decodes, belongs to its layer and feature, and names only extra
    observations the bundle has."""
    try:
        detail = decode_feature_views((root / name).read_bytes())
    except (BundleError, OSError) as err:
        return [f"{name}: {err}"]
    problems = []
    if detail["feature"] != feature or detail["layer_shape"] != list(layer["shape"][:2]):
        problems.append(f"{name}: not feature {feature} of layer {layer['name']}")
    if not detail["grids"]:
        problems.append(f"{name}: no grids")
    for grid in detail["grids"]:
        if not np.isin(grid["indices"], known).all():
            problems.append(f"{name}: refers to extra observations the bundle does not have")
            break
    return problems


def _check_atlas(root: Path, atlas: dict[str, Any], h: int, w: int, columns: int) -> list[str]:
    try:
        with Image.open(root / atlas["file"]) as image:
            width, height = image.size
    except (OSError, Image.DecompressionBombError, RuntimeError, ValueError) as err:
        # (Pillow's AVIF plugin raises RuntimeError on damaged files)
        return [f"{atlas['file']}: cannot decode ({err})"]
    rows = math.ceil(atlas["count"] / columns)
    cols = min(columns, atlas["count"]) if rows == 1 else columns
    if (width, height) != (cols * w, rows * h):
        return [f"{atlas['file']}: {width}x{height} pixels, expected {cols * w}x{rows * h}"]
    return []


#: A bundle's gzip-compressed JSON may expand to at most this many bytes (a gzip bomb
#: stops here instead of filling the memory).
MAX_JSON_BYTES = 4 * MAX_FILE_BYTES


def read_json(path: Path) -> Any:
    """A bundle's JSON file, gzip-compressed when its name ends in .gz."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            data = stream.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise ValueError(f"{path.name} expands to more than {MAX_JSON_BYTES} bytes")
    return json.loads(data)


# --- sizes ------------------------------------------------------------------------------


def bundle_sizes(directory: str | Path, viewer_bytes: int = 0) -> dict[str, Any]:
    """Bytes of a bundle: total, per kind of file, the largest file and the first load.

    The first load is what the viewer fetches before the model page is interactive: the
    index, the first trajectory (data and frames), the default layer's attribution of that
    trajectory for the first output and its legend, plus `viewer_bytes` (JS and CSS).
    """
    root = Path(directory)
    index = read_bundle(root)
    files = index["files"]
    by_kind: dict[str, int] = {}
    for name, meta in files.items():
        by_kind[name.split("/")[0]] = by_kind.get(name.split("/")[0], 0) + meta["bytes"]
    index_bytes = (root / INDEX_FILE).stat().st_size
    total = sum(m["bytes"] for m in files.values()) + index_bytes
    first = [index["trajectories"][0]["data"],
             *[a["file"] for a in index["trajectories"][0]["frames"]["atlases"]]]
    layer = next(la for la in index["layers"] if la["name"] == index["default_layer"])
    if layer["attribution"]:
        first.append(next(iter(layer["attribution"].values()))[0])
    if layer.get("legend"):
        first.append(layer["legend"]["file"])
    largest = max(files.items(), key=lambda kv: kv[1]["bytes"]) if files else ("", {"bytes": 0})
    return {
        "total_bytes": total,
        "by_kind": dict(sorted(by_kind.items())),
        "largest_file": {"name": largest[0], "bytes": largest[1]["bytes"]},
        "first_load_bytes": index_bytes + viewer_bytes + sum(files[f]["bytes"] for f in first),
        "files": len(files) + 1,
    }


def directory_bytes(directory: str | Path) -> int:
    """Total size of the files under a folder."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def relative_files(directory: str | Path) -> list[str]:
    root = Path(directory)
    return sorted(os.path.relpath(p, root) for p in root.rglob("*") if p.is_file())
