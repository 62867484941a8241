"""gallery: interactive explanations of reinforcement-learning vision agents, as a website."""

from .errors import CheckpointError, GalleryError
from .policy import Policy, load_policy

__version__ = "0.1.0"

__all__ = ["CheckpointError", "GalleryError", "Policy", "load_policy", "__version__"]
