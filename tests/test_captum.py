"""Parity with Captum's IntegratedGradients (an independent implementation).

Captum attributes a forward function that starts at the layer, with a zero baseline and
method="riemann_right", n_steps=10: the method of method.md 4 exactly. Skipped only where
captum is not installed and CI is not 'true' (`pip install captum`; it is a test-only
dependency).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from gallery.method.attribution import integrated_gradients, readout_matrix
from gallery.models.policy import load_policy
from tests.reference.checkpoints import make_checkpoint, write_checkpoint

if os.environ.get("CI") == "true":
    import captum.attr as captum_attr
else:
    captum_attr = pytest.importorskip("captum.attr")

CASES = [("clear", {}), ("impala", {}), ("nature", {"env_kind": "atari"})]


def captum_ig(policy, obs: np.ndarray, layer: str, target, steps: int = 10) -> np.ndarray:
    """Captum's IG of `target` ('value' or an action) from `layer`, NHWC numpy."""
    obs_t = torch.from_numpy(obs.astype(np.float32) / 255)
    with torch.no_grad():
        acts = policy.activations_nchw(obs_t, layer)

    def forward(a: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        logits, value = policy.forward_from_nchw(a, layer, o)
        return value[:, None] if target == "value" else logits

    ig = captum_attr.IntegratedGradients(forward)
    attr = ig.attribute(acts, baselines=torch.zeros_like(acts),
                        target=0 if target == "value" else target,
                        additional_forward_args=(obs_t,), n_steps=steps,
                        method="riemann_right")
    return attr.permute(0, 2, 3, 1).detach().numpy()


@pytest.fixture(scope="module", params=CASES, ids=[c for c, _ in CASES])
def policy_and_obs(request, tmp_path_factory):
    cnn, kwargs = request.param
    ckpt = make_checkpoint(cnn, seed=3, **kwargs)
    path = write_checkpoint(tmp_path_factory.mktemp(cnn) / f"{cnn}.jd", ckpt)
    policy = load_policy(path)
    h, w, c = policy.observation_shape
    obs = np.random.default_rng(0).integers(0, 256, (3, h, w, c), dtype=np.uint8)
    return policy, obs


@pytest.mark.parametrize("target", ["value", 2])
def test_equal_to_captum_on_every_layer(policy_and_obs, target, monkeypatch):
    """Ours is Captum's computation (zero baseline at the layer, right Riemann sum): equal
    to float32 rounding (1e-5 of the largest value) on every layer. Where a layer is read
    only by a convolution (`policy.affine_split`: clear's 2a, Nature's c1 and c2) the
    engine sums the same terms in another order (through the convolution once): within
    2e-5 (relative L2) and 1e-4 of the largest value of Captum there, and the plain order,
    the split turned off, equal to rounding again."""
    policy, obs = policy_and_obs
    for layer in policy.layer_names:
        theirs = captum_ig(policy, obs, layer, target)
        ours = integrated_gradients(policy, obs, layer, target, steps=10)
        scale = np.abs(theirs).max()
        if policy.affine_split(layer) is not None:
            assert np.linalg.norm(ours - theirs) <= 2e-5 * np.linalg.norm(theirs), layer
            assert np.abs(ours - theirs).max() <= 1e-4 * scale, layer
            with monkeypatch.context() as patch:
                patch.setattr(policy, "affine_split", lambda layer: None)
                ours = integrated_gradients(policy, obs, layer, target, steps=10)
        assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * scale, err_msg=layer)
