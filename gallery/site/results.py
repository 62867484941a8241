"""What the site shows about each model and comparison: the per-model build step produces a
`ModelResult` (saved as JSON in the model's cache folder); the page writer only reads it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

#: Version of the saved result layout; a change invalidates every cached model.
RESULT_FORMAT_VERSION = 1
RESULT_FILE = "model.json"


@dataclass
class EpisodeSummary:
    """Episodes completed within the recorded trajectories."""

    count: int = 0
    mean_return: float | None = None
    mean_length: float | None = None


@dataclass
class ModelResult:
    """One model, built: its description, statistics, and the files beside model.json."""

    model_id: str
    key: str
    """The cache key it was built under (checkpoint, settings, formats)."""
    checkpoint_sha256: str
    architecture: str
    parameters: int
    observation_shape: list[int]
    actions: list[str]
    layers: list[dict[str, Any]]
    """[{"name": "2b", "shape": [32, 32, 32]}, ...] offered for attribution."""
    environment: dict[str, Any]
    """EnvSpec.to_dict() of the environment the agent was run in."""
    environment_description: str
    training_args: dict[str, Any]
    training_steps: int | None
    settings: dict[str, Any]
    """The effective analysis options (InterfaceOptions.model_dump())."""
    episodes: EpisodeSummary
    steps_recorded: list[int]
    """[E, T] of the recorded trajectories."""
    gamma: float
    lam: float
    values_vs_returns: list[list[float]] = field(default_factory=list)
    """Pairs [value, discounted return] at recorded steps (a subsample) for the charts."""
    advantages: list[float] = field(default_factory=list)
    """A subsample of the GAE advantages over the recorded steps."""
    thumbnail: str | None = None
    """File name (beside model.json) of a frame shown on the card."""
    interface: str | None = None
    """Folder (beside model.json) holding the interactive interface (index.html)."""
    built_at: str = ""
    seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = RESULT_FORMAT_VERSION

    def save(self, folder: Path) -> None:
        (folder / RESULT_FILE).write_text(json.dumps(asdict(self), indent=1, sort_keys=True)
                                          + "\n")

    @classmethod
    def load(cls, folder: Path) -> ModelResult | None:
        """The result saved in `folder`, or None when it is absent, unreadable or old."""
        try:
            data = json.loads((folder / RESULT_FILE).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("format_version") != RESULT_FORMAT_VERSION:
            return None
        names = {f.name for f in fields(cls)}
        try:
            data["episodes"] = EpisodeSummary(**data["episodes"])
            return cls(**{k: v for k, v in data.items() if k in names})
        except (TypeError, KeyError):
            return None


@dataclass
class ModelEntry:
    """A model as the site shows it: what the manifest says, and how its build went."""

    spec: Any
    """The manifest's ModelSpec."""
    result: ModelResult | None = None
    folder: Path | None = None
    """The folder holding the result's files (thumbnail, interface)."""
    error: str | None = None
    """Why the model failed (stage and message), when it did."""
    legends: dict[str, list[Path]] = field(default_factory=dict)
    """Layer -> one legend thumbnail (PNG) per NMF feature of its interface, when it has one."""

    @property
    def ok(self) -> bool:
        return self.result is not None and self.error is None


@dataclass
class SharedObservations:
    """Every model of a comparison evaluated on the same observations."""

    source_model: str
    frames: str | None
    """File name of a strip of the observations (PNG), beside the comparison's result."""
    values: dict[str, list[float]]
    """Model id -> value estimate on each observation."""
    actions: dict[str, list[str]]
    """Model id -> the most likely action on each observation."""
    stride: int = 1
    """Steps between two observations (they come from one recorded trajectory)."""
    interfaces: dict[str, str] = field(default_factory=dict)
    """Model id -> folder (beside shared.json) of its interface on the shared trajectories."""
    matched: list[dict[str, Any]] = field(default_factory=list)
    """Features matched across the models, per layer present in all of them:
    [{"layer", "models": [ids], "rows": [{"cells": [{"model", "feature", "image",
    "similarity"}]}]}] (the first cell of a row is the first model's feature, similarity
    None); images are files beside shared.json."""
    shared_steps: list[int] = field(default_factory=list)
    """[E, T] of the shared trajectories the interfaces show."""


@dataclass
class ComparisonEntry:
    """A comparison as the site shows it."""

    spec: Any
    """The manifest's ComparisonSpec."""
    shared: SharedObservations | None = None
    folder: Path | None = None
    note: str | None = None
    """Why part of the comparison is missing, when it is."""
