"""gallery: interactive explanations of reinforcement-learning vision agents, as a website."""

from .attribution import integrated_gradients, policy_attribution
from .errors import CheckpointError, GalleryError
from .policy import Policy, load_policy

__version__ = "0.1.0"

__all__ = ["CheckpointError", "GalleryError", "Policy", "integrated_gradients", "load_policy",
           "policy_attribution", "__version__"]
