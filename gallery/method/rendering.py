"""How attribution is drawn (method.md section 6): the reference renderer, in NumPy.

The browser viewer draws attribution from the reduced attributions (features and residual
per position); this module is what its pixels are compared to. Everything here is a pure
function of arrays; images are RGBA float64 in [0, 1], NHWC, with `to_uint8` to quantise.

Pipeline for one (layer, trajectory, output), given `features` (T, h, w, K) and
`residual` (T, h, w) from `gallery.method.nmf.LayerNMF.reduce_attribution`:

1. `attribution_scale`: m = median over frames of the max over (h, w, K) of the features;
   0 -> the overall max; still 0 -> 1. Both arrays are divided by m.
2. `apply_direction`: abs / pos / neg.
3. `channel_view`: prin (colour of the features), all (plus grey residual), one feature
   (the others zeroed), res (grey residual).
4. `smooth`: each RGB channel convolved ("same", zeros outside) with `disk_kernel()`.
5. `brightness_to_opacity`: b = min(1, ||rgb||), shown colour rgb / b, alpha b.

`render_attribution` runs all five; `render_attribution_scrub` produces the same pixels
for the scrubber columns only, touching just the columns the kernel reaches;
`render_attribution_scrubs` does so for every direction and view at once, smoothing each
non-negative plane once (the steps before the opacity are linear).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

Direction = Literal["abs", "pos", "neg"]
View = Literal["prin", "all", "res"] | int

DIRECTIONS: tuple[Direction, ...] = ("abs", "pos", "neg")
#: Columns of a frame shown in the scrubber, as fractions of its width.
SCRUB_RANGE = (42 / 64, 44 / 64)
#: Side of the smoothing kernel; its disk has radius (side - 1) / 2.
KERNEL_SIZE = 15

# The six corners of the hue wheel, in order: red, yellow, green, cyan, blue, magenta.
_CORNERS = np.array(
    [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1]], dtype=np.float64
)
_CORNERS /= np.linalg.norm(_CORNERS, axis=1, keepdims=True)


def hue(angle: float) -> np.ndarray:
    """Unit RGB vector (3,) for a hue angle in degrees, interpolated between the corners.

    The fraction D within a 60-degree sector is warped away from the primaries
    (D -> sin(D pi/2) in even sectors, D -> 1 - sin((1 - D) pi/2) in odd ones) so that
    equally spaced angles look more distinct, then the mix is renormalised.
    """
    angle = float(angle) % 360.0
    sector = int(angle // 60.0)
    frac = (angle - 60.0 * sector) / 60.0
    if sector % 2 == 0:
        frac = math.sin(frac * math.pi / 2)
    else:
        frac = 1 - math.sin((1 - frac) * math.pi / 2)
    mix = (1 - frac) * _CORNERS[sector] + frac * _CORNERS[(sector + 1) % 6]
    return mix / np.linalg.norm(mix)


def feature_hues(num_features: int) -> np.ndarray:
    """(K, 3) unit RGB vectors of the features: hue(360 k / K)."""
    return np.stack([hue(360.0 * k / num_features) for k in range(num_features)])


def legend_colours(num_features: int) -> np.ndarray:
    """(K, 3) colours of the features in the legend: their hues scaled to max 1."""
    hues = feature_hues(num_features)
    return hues / hues.max(axis=1, keepdims=True)


def hex_colours(colours: np.ndarray) -> list[str]:
    """'#rrggbb' strings of (K, 3) colours in [0, 1]."""
    values = np.clip(np.round(np.asarray(colours, dtype=np.float64) * 255), 0, 255).astype(int)
    return ["#" + "".join(f"{v:02x}" for v in row) for row in values]


def colour(x: np.ndarray) -> np.ndarray:
    """RGB (..., 3) of non-negative feature amounts (..., K): sum_k x_k hue(360 k / K)."""
    x = np.asarray(x, dtype=np.float64)
    if np.any(x < 0):
        raise ValueError("colour() takes non-negative amounts: apply a direction first")
    return x @ feature_hues(x.shape[-1])


def disk_kernel(size: int = KERNEL_SIZE) -> np.ndarray:
    """(size, size) weights exp(-distance to the centre), zero outside the inscribed disk.

    Not normalised: strong attribution bleeds into nearby positions and adds up.
    """
    radius = (size - 1) / 2
    offsets = np.arange(size) - radius
    distance = np.hypot(offsets[:, None], offsets[None, :])
    return np.where(distance <= radius, np.exp(-distance), 0.0)


def smooth(images: np.ndarray, kernel: np.ndarray | None = None) -> np.ndarray:
    """Convolve every channel of (N, H, W, C) images with `kernel` ("same", zeros outside).

    The kernel is symmetric, so correlation and convolution agree.
    """
    kernel = disk_kernel() if kernel is None else kernel
    images = np.asarray(images, dtype=np.float64)
    kh, kw = kernel.shape
    padded = np.pad(images, [(0, 0), (kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2),
                             (0, 0)])
    out = np.zeros(images.shape)
    height, width = images.shape[1:3]
    for i, j in zip(*np.nonzero(kernel)):
        out += kernel[i, j] * padded[:, i:i + height, j:j + width, :]
    return out


def brightness_to_opacity(rgb: np.ndarray) -> np.ndarray:
    """RGBA (..., 4) from RGB (..., 3): alpha b = min(1, ||rgb||), colour rgb / b (0 if b=0)."""
    brightness = np.minimum(1.0, np.linalg.norm(rgb, axis=-1, keepdims=True))
    shown = np.divide(rgb, brightness, out=np.zeros_like(rgb), where=brightness != 0)
    return np.concatenate([shown, brightness], axis=-1)


def attribution_scale(features: np.ndarray) -> float:
    """m: median over frames of the max over (h, w, K); 0 -> overall max; still 0 -> 1.

    `features` is (T, h, w, K). The max is signed, as in the reference tool: a trajectory
    whose attribution is mostly negative gets a negative scale.
    """
    features = np.asarray(features)
    if features.size == 0:
        return 1.0
    scale = float(np.median(features.max(axis=(-3, -2, -1))))
    if scale == 0:
        scale = float(features.max())
    if scale == 0:
        scale = 1.0
    return scale


def apply_direction(x: np.ndarray, direction: Direction) -> np.ndarray:
    """abs: |x|; pos: max(x, 0); neg: max(-x, 0)."""
    if direction == "abs":
        return np.abs(x)
    if direction == "pos":
        return np.maximum(x, 0)
    if direction == "neg":
        return np.maximum(-x, 0)
    raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")


def views(num_features: int, single_features: bool = True) -> list[View]:
    """Channel views in the reference order: prin, all, then 0..K-1 and res if wanted."""
    out: list[View] = ["prin", "all"]
    if single_features:
        out += list(range(num_features)) + ["res"]
    return out


def channel_view(features: np.ndarray, residual: np.ndarray, view: View) -> np.ndarray:
    """RGB (..., 3) of one channel view of directed features (..., K) and residual (...)."""
    check_view(view, features.shape[-1])
    grey = np.repeat(np.asarray(residual)[..., None], 3, axis=-1)
    if view == "res":
        return grey
    if view in ("prin", "all"):
        rgb = colour(features)
        return rgb + grey if view == "all" else rgb
    single = np.zeros_like(features)
    single[..., view] = features[..., view]
    return colour(single)


def check_view(view: View, num_features: int) -> None:
    """ValueError unless `view` is 'prin', 'all', 'res' or a feature index < K."""
    if isinstance(view, str) and view in ("prin", "all", "res"):
        return
    if isinstance(view, (int, np.integer)) and not isinstance(view, bool):
        if not 0 <= view < num_features:
            raise ValueError(f"feature {view} out of range 0..{num_features - 1}")
        return
    raise ValueError(f"view must be 'prin', 'all', 'res' or a feature index, not {view!r}")


def render_attribution(features: np.ndarray, residual: np.ndarray, *, scale: float,
                       direction: Direction, view: View) -> np.ndarray:
    """RGBA (T, h, w, 4) floats: the attribution of one output as the viewer shows it.

    `features` (T, h, w, K) and `residual` (T, h, w) are the unscaled reduced attribution;
    `scale` is `attribution_scale(features)`.
    """
    features = apply_direction(np.asarray(features, dtype=np.float64) / scale, direction)
    residual = apply_direction(np.asarray(residual, dtype=np.float64) / scale, direction)
    return brightness_to_opacity(smooth(channel_view(features, residual, view)))


def scrub_columns(width: int, scrub_range: tuple[float, float] = SCRUB_RANGE) -> slice:
    """Columns [round(a W), round(b W)) of a frame of width W shown in the scrubber.

    At least one column. Rounding is NumPy's (half to even), as in the reference tool
    (16 columns: [10, 11), not [11, 12)); the range is kept inside the frame.
    """
    start = min(int(np.round(scrub_range[0] * width)), max(width - 1, 0))
    stop = min(int(max(np.round(scrub_range[1] * width), start + 1)), max(width, 1))
    return slice(start, stop)


def scrub_strip(frames: np.ndarray, scrub_range: tuple[float, float] = SCRUB_RANGE
                ) -> np.ndarray:
    """The scrubber columns of every frame, (T, H, w_s, C)."""
    return np.asarray(frames)[:, :, scrub_columns(frames.shape[2], scrub_range), :]


def side_by_side(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, C) frames laid side by side along time: one (H, T * W, C) image."""
    frames = np.asarray(frames)
    t, h, w, c = frames.shape
    return frames.transpose(1, 0, 2, 3).reshape(h, t * w, c)


def render_attribution_scrub(features: np.ndarray, residual: np.ndarray, *, scale: float,
                             direction: Direction, view: View,
                             scrub_range: tuple[float, float] = SCRUB_RANGE) -> np.ndarray:
    """`scrub_strip(render_attribution(...))`, computing only the columns it needs."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    strips = render_attribution_scrubs(features, residual, scale=scale, views=[view],
                                       scrub_range=scrub_range)
    return strips[(direction, view)]


def smooth_columns(planes: np.ndarray, columns: slice,
                   kernel: np.ndarray | None = None) -> np.ndarray:
    """`smooth(planes)[:, :, columns]` for (N, H, W, P), computing only those columns.

    Per output column, the 15 input columns the kernel reaches are contracted with the
    kernel's columns in one matrix product, then its rows are added at their vertical
    offsets: the same sums as `smooth`, in another order (float64).
    """
    kernel = disk_kernel() if kernel is None else kernel
    planes = np.asarray(planes, dtype=np.float64)
    kh, kw = kernel.shape
    n, height, _, p = planes.shape
    padded = np.pad(planes, [(0, 0), (kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2),
                             (0, 0)])
    cols = range(*columns.indices(planes.shape[2]))
    out = np.zeros((n, height, len(cols), p))
    for o, c in enumerate(cols):
        # rows[n, y', p, i] = sum_j kernel[i, j] padded[n, y', c + j, p]
        rows = np.tensordot(padded[:, :, c:c + kw, :], kernel, axes=([2], [1]))
        for i in range(kh):
            out[:, :, o, :] += rows[:, i:i + height, :, i]
    return out


def render_attribution_scrubs(features: np.ndarray, residual: np.ndarray, *, scale: float,
                              views: list[View],
                              scrub_range: tuple[float, float] = SCRUB_RANGE
                              ) -> dict[tuple[Direction, View], np.ndarray]:
    """`render_attribution_scrub` for every direction and each of `views` at once.

    Everything before the opacity step is linear in the positive and negative parts of the
    scaled features and residual (abs is their sum), so those 2 (K + 1) planes are
    smoothed once, at the scrubber's columns only, and each view is a combination of the
    smoothed planes: the same pixels as one `render_attribution` per view, about K + 2
    times less smoothing than smoothing each view's RGB.
    """
    k, width = features.shape[-1], features.shape[2]
    for view in views:
        check_view(view, k)
    cols = scrub_columns(width, scrub_range)
    # Columns farther than the kernel's reach from the scrubber's contribute nothing; the
    # output columns read inputs inside [lo, hi) or outside the frame (zeros either way).
    lo, hi = max(0, cols.start - KERNEL_SIZE // 2), min(width, cols.stop + KERNEL_SIZE // 2)
    x = np.concatenate([np.asarray(features[:, :, lo:hi], dtype=np.float64),
                        np.asarray(residual[:, :, lo:hi], dtype=np.float64)[..., None]],
                       axis=-1) / scale
    planes = np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=-1)
    smoothed = smooth_columns(planes, slice(cols.start - lo, cols.stop - lo))
    positive, negative = smoothed[..., :k + 1], smoothed[..., k + 1:]
    hues = feature_hues(k)
    out = {}
    for direction, part in (("abs", positive + negative), ("pos", positive),
                            ("neg", negative)):
        grey = np.repeat(part[..., k:], 3, axis=-1)
        for view in views:
            if view == "res":
                rgb = grey
            elif view in ("prin", "all"):
                rgb = part[..., :k] @ hues
                if view == "all":
                    rgb = rgb + grey
            else:
                rgb = part[..., view:view + 1] * hues[view]
            out[(direction, view)] = brightness_to_opacity(rgb)
    return out


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Quantise [0, 1] floats to uint8 (round to nearest, clipped)."""
    return np.clip(np.round(np.asarray(images, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
