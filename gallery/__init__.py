"""gallery: interactive explanations of reinforcement-learning vision agents, as a website."""

import os

# MKL's matrix products split their sums differently with the thread count when a matrix
# is thin (a dense layer over one frame's 10 integration steps): strict conditional
# numerical reproducibility makes them bit-identical whatever the threads, so that a build
# gives the same bytes on one process, a worker pool or MPI ranks (tests/test_devices.py).
# Read by MKL at its first product, so it works after `import torch` too.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from gallery.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # freed tensors' memory is reused, not faulted in again

from gallery.errors import CheckpointError, GalleryError  # noqa: E402
from gallery.method.attribution import integrated_gradients, policy_attribution  # noqa: E402
from gallery.models.policy import Policy, load_policy  # noqa: E402

__version__ = "0.1.0"

__all__ = ["CheckpointError", "GalleryError", "Policy", "generate_interface",
           "integrated_gradients", "load_policy", "policy_attribution", "__version__"]


def __getattr__(name: str):  # noqa: ANN202
    # the pipeline (bundle writer, units, environments) loads on first use, not on import
    if name == "generate_interface":
        from gallery.pipeline.interface import generate_interface

        return generate_interface
    raise AttributeError(f"module 'gallery' has no attribute {name!r}")
