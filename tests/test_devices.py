"""Devices: every command that runs a network takes --device cpu|cuda|cuda:N; unknown
names and GPUs that are not visible are refused with a message naming what exists."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gallery.errors import GalleryError
from gallery.pipeline import distributed


def test_cpu_is_the_default(monkeypatch):
    monkeypatch.delenv(distributed.DEVICE_ENV, raising=False)
    assert distributed.resolve_device(None) == "cpu"
    monkeypatch.setenv(distributed.DEVICE_ENV, "cpu")
    assert distributed.resolve_device(None) == "cpu"


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:x", "mps"])
def test_unknown_devices_are_refused(name):
    with pytest.raises(GalleryError, match="cpu, cuda or cuda:N|GPU"):
        distributed.resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
@pytest.mark.parametrize("command", ["interface", "build", "rollout"])
def test_cuda_without_a_gpu_is_a_clear_error(command, tmp_path):
    args = {"interface": ["interface", "gallery/demo/coinrun-clear.jd", "-o",
                          str(tmp_path / "out")],
            "build": ["build", "-m", "checkpoints.yaml", "-o", str(tmp_path / "site"),
                      "--cache-dir", str(tmp_path / "cache")],
            "rollout": ["rollout", "gallery/demo/coinrun-clear.jd", "-o",
                        str(tmp_path / "out")]}[command]
    done = subprocess.run([sys.executable, "-m", "gallery", *args, "--device", "cuda"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "no CUDA GPU is visible" in done.stderr + done.stdout
    assert not (tmp_path / "site").exists() and not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_cuda_index_out_of_range_names_the_gpus():
    with pytest.raises(GalleryError, match="cuda:0 to"):
        distributed.resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_rollout_sampling_follows_the_policy_device(device):
    """Action sampling runs the policy where it is and samples on the CPU generator: the
    same seed gives the same actions on every device (for these well-separated logits)."""
    import numpy as np

    from gallery.environments.rollouts import PolicySampler
    from gallery.models.policy import load_policy

    policy = load_policy("gallery/demo/coinrun-clear.jd")
    frames = np.load("tests/fixtures/parity/coinrun_real.npz")["obs"]
    on_cpu = PolicySampler(policy, seed=3)(frames)
    moved = PolicySampler(policy.to(device), seed=3)(frames)
    assert moved.shape == (len(frames),) and moved.dtype == on_cpu.dtype
    if device == "cpu":
        np.testing.assert_array_equal(moved, on_cpu)


def test_results_do_not_depend_on_the_thread_count():
    """A build gives the same bytes on one process, a worker pool or MPI ranks, whose
    processes run different torch thread counts: one frame's attribution (a thin matrix
    product in the dense layers, which MKL splits by thread count unless told not to)
    is bit-identical on 1 and 2 threads."""
    import numpy as np

    from gallery.method.attribution import integrated_gradients
    from gallery.models.policy import load_policy

    policy = load_policy("gallery/demo/coinrun-clear.jd")
    frame = np.load("tests/fixtures/parity/coinrun_real.npz")["obs"][:1]
    rng = torch.Generator().manual_seed(0)
    thin, weights = torch.randn(10, 256, generator=rng), torch.randn(256, 2048, generator=rng)
    threads = torch.get_num_threads()
    try:
        results, products = [], []
        for count in (1, 2):
            torch.set_num_threads(count)
            products.append(thin @ weights)
            results.append([integrated_gradients(policy, frame, layer)
                            for layer in policy.layer_names])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(*products)
    for layer, one, two in zip(policy.layer_names, *results):
        np.testing.assert_array_equal(one, two, err_msg=layer)
