"""What the viewer draws for attribution equals the NumPy reference renderer (method.md 6).

Every direction and view, sampled frames of every layer (2b and 4a of the value bundle;
4a and the input layer's gradients for action and action-group outputs of the policy
bundle), read back from the canvas in headless Chromium. A canvas stores premultiplied
RGBA, so both sides are compared premultiplied: per image, mean absolute error <= 1/255
and PSNR >= 40 dB.
"""

from __future__ import annotations

import numpy as np
import pytest

from gallery.bundle.codec import image_errors, premultiplied_uint8
from gallery.method import rendering

from .harness import premultiply, read_attribution

MAX_MAE = 1 / 255
MIN_PSNR = 40.0


def compare(page, arrays, layer: str, trajectory: int, output: str, frames: list[int],
            views: list[str]) -> list[tuple]:
    features, residual = arrays[(layer, trajectory, output)]
    scale = rendering.attribution_scale(features)
    drawn = read_attribution(page, layer, trajectory, output, frames, list(rendering.DIRECTIONS),
                             views)
    results = []
    for item in drawn:
        view = item["view"]
        ref = rendering.render_attribution(
            features[item["frame"]:item["frame"] + 1], residual[item["frame"]:item["frame"] + 1],
            scale=scale, direction=item["direction"],
            view=int(view) if view.isdigit() else view)[0]
        mae, psnr = image_errors(premultiplied_uint8(ref), premultiply(item["image"]))
        results.append((layer, output, item["frame"], item["direction"], view, mae, psnr))
    return results


def sample_frames(length: int, count: int = 4) -> list[int]:
    return sorted({0, length - 1, *np.linspace(0, length - 1, count).round().astype(int).tolist()})


def assert_faithful(results: list[tuple]) -> None:
    bad = [r for r in results if r[5] > MAX_MAE or r[6] < MIN_PSNR]
    worst = max(results, key=lambda r: r[5])
    print(f"{len(results)} images; worst MAE {worst[5] * 255:.3f}/255 ({worst[:5]}); "
          f"lowest PSNR {min(r[6] for r in results):.1f} dB")
    assert not bad, f"{len(bad)} images outside the tolerance, e.g. {bad[:3]}"


@pytest.mark.parametrize("layer", ["2b", "4a"])
def test_value_attribution_matches_reference(small_interface, open_page, layer):
    page = open_page(small_interface["dir"])
    assert layer in small_interface["summary"]["layers"]
    layer_views = [str(v) for v in rendering.views(8, True)]
    results = []
    for trajectory in (0, 1):
        results += compare(page, small_interface["arrays"], layer, trajectory, "value",
                           sample_frames(48), layer_views)
    assert len(results) == 2 * len(sample_frames(48)) * 3 * len(layer_views)
    assert_faithful(results)


def test_policy_outputs_and_input_gradients_match_reference(policy_interface, open_page):
    page = open_page(policy_interface["dir"])
    outputs = ["action-7", "group-RIGHT", "group-none"]
    results = []
    for output in outputs:
        results += compare(page, policy_interface["arrays"], "4a", 0, output,
                           sample_frames(24, 3), [str(v) for v in rendering.views(8, True)])
    # the input layer: gradients, features = the observation's 3 channels, prin and all
    results += compare(page, policy_interface["arrays"], "input", 0, "value",
                       sample_frames(24, 3), ["prin", "all"])
    assert_faithful(results)


def test_paper_checkpoint_value_attribution_matches_reference(paper_interface, open_page):
    """The paper's residual IMPALA network (../shared): 2b and 4a, every direction and view."""
    page = open_page(paper_interface["dir"])
    results = []
    for layer in ("2b", "4a"):
        results += compare(page, paper_interface["arrays"], layer, 0, "value",
                           sample_frames(24, 3), [str(v) for v in rendering.views(8, True)])
    assert_faithful(results)
