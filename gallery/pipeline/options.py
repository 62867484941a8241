"""What an interface shows: one options model, read by every entrance.

`InterfaceOptions` holds every option of the analysis and its presentation, in the sections
of the manifest's `defaults:` (product.md). The manifest (`defaults`, then a model's
`options`), `gallery interface`'s flags, `gallery.generate_interface`'s keywords and the
unit planner all read this one model: each field states its default, bounds and meaning
once, and the command line's flags and help are made from it (`add_arguments`).

A field's flag is its `flag` (in `json_schema_extra`); `from_flags` turns flag values (the
command line's, or the Python API's keywords, which use the same names with underscores)
back into the model.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gallery.errors import GalleryError


class OptionsError(GalleryError):
    """Options that do not validate; the message names each option and what it must be."""


def _flag(name: str, **extra: Any) -> dict[str, Any]:
    return {"flag": name, **extra}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class TrajectoryOptions(_Section):
    """Recorded trajectories (method.md section 1)."""

    num_envs: int = Field(8, ge=1, le=256, json_schema_extra=_flag("num-envs"))
    """Trajectories recorded (environments stepped together)."""
    num_steps: int = Field(512, ge=2, le=100_000, json_schema_extra=_flag("num-steps"))
    """Steps recorded per trajectory."""
    seed: int = Field(0, ge=0, json_schema_extra=_flag("seed"))
    """Seeds the environments and the agent's sampled actions."""
    bookmarks: int = Field(16, ge=0, json_schema_extra=_flag("bookmarks"))
    """Bookmarked frames of each sign (highest and lowest advantages)."""


class ObservationOptions(_Section):
    """Extra observations for NMF and feature visualisation (method.md section 1)."""

    num_envs: int = Field(32, ge=1, le=1024, json_schema_extra=_flag("obs-num-envs"))
    """Environments running the policy for the extra observations."""
    num_obs: int = Field(128, ge=1, json_schema_extra=_flag("num-obs"))
    """Observations kept per environment."""
    obs_every: int = Field(128, ge=1, json_schema_extra=_flag("obs-every"))
    """Steps between two kept observations."""


class LayerSelection(_Section):
    """Which layers the interface offers (method.md section 3)."""

    include: list[str] | None = Field(None, json_schema_extra=_flag("layer", repeat=True,
                                                                      keyword="layers"))
    """Layers whose name contains one of these (as `gallery inspect` lists them); None:
    every layer offered."""
    discard_first_n: int = Field(0, ge=0, json_schema_extra=_flag("discard-first-n"))
    """Leave out the first n of the selected layers."""
    input_layer: bool = Field(False, json_schema_extra=_flag("input-layer"))
    """Also offer the observation itself (plain gradients)."""


class AttributionOptions(_Section):
    """Integrated gradients to a hidden layer (method.md section 4)."""

    integrate_steps: int = Field(10, ge=1, le=1000, json_schema_extra=_flag("integrate-steps"))
    """Points of the right Riemann sum."""
    policy: bool = Field(False, json_schema_extra=_flag("policy"))
    """Also attribute every action's logit and every action group's logit sum."""
    policy_layers: list[str] | None = Field(
        None, json_schema_extra=_flag("policy-layer", repeat=True, keyword="policy_layers"))
    """Layers the policy attribution covers (names, or parts of them); None: one layer, the
    interface's default layer (the middle one: 2b of the clear CNN, as the paper's
    interfaces). Each layer multiplies the bundle by about the number of outputs."""
    single_features: bool = Field(True, json_schema_extra=_flag("single-features"))
    """Offer views of one NMF feature at a time (the legend's hover)."""
    multi_path: bool = Field(False, json_schema_extra=_flag("multi-path"))
    """Average integrated gradients over paths in NMF feature space."""
    max_paths: int | None = Field(None, ge=1, json_schema_extra=_flag("max-paths"))
    """With multi_path: the number of paths drawn (None: all)."""


class NMFOptions(_Section):
    """Dimensionality reduction of the attribution (method.md section 5)."""

    features: int = Field(8, ge=1, le=64, json_schema_extra=_flag("nmf-features"))
    """NMF features per layer."""
    integrate_steps: int = Field(10, ge=1, le=1000,
                                 json_schema_extra=_flag("nmf-integrate-steps"))
    """Riemann points of the value attribution the features are fitted on."""


class VisualisationOptions(_Section):
    """Dataset-example feature visualisation (method.md section 7)."""

    subdiv_mults: tuple[float, ...] = Field(
        (0.25, 0.5, 1, 2), min_length=1, json_schema_extra=_flag("vis-subdiv-mults"))
    """Patch-count multipliers of the feature views."""
    subdiv_mult_default: float = Field(1, json_schema_extra=_flag("vis-subdiv-mult-default"))
    """The multiplier shown first (one of subdiv_mults)."""
    expand_mults: tuple[float, ...] = Field(
        (1, 2, 4, 8), min_length=1, json_schema_extra=_flag("vis-expand-mults"))
    """Zoom multipliers of the feature views."""
    expand_mult_default: float = Field(4, json_schema_extra=_flag("vis-expand-mult-default"))
    """The zoom shown first (one of expand_mults)."""
    thumbnail_num_mult: int = Field(4, ge=1, json_schema_extra=_flag("thumbnail-num-mult"))
    """Legend thumbnails: patch-count multiplier."""
    thumbnail_expand_mult: float = Field(4, gt=0,
                                         json_schema_extra=_flag("thumbnail-expand-mult"))
    """Legend thumbnails: zoom multiplier."""

    @model_validator(mode="after")
    def _defaults_offered(self) -> VisualisationOptions:
        for name in ("subdiv_mults", "expand_mults"):
            if any(not value > 0 for value in getattr(self, name)):
                raise ValueError(f"{name} must be positive numbers, not {getattr(self, name)}")
        if self.subdiv_mult_default not in self.subdiv_mults:
            raise ValueError(f"subdiv_mult_default {self.subdiv_mult_default} is not one of "
                             f"subdiv_mults {list(self.subdiv_mults)}")
        if self.expand_mult_default not in self.expand_mults:
            raise ValueError(f"expand_mult_default {self.expand_mult_default} is not one of "
                             f"expand_mults {list(self.expand_mults)}")
        return self


class PresentationOptions(_Section):
    """How the viewer presents the data (interface.md's reference defaults)."""

    scrub_range: tuple[float, float] = Field((42 / 64, 44 / 64),
                                             json_schema_extra=_flag("scrub-range"))
    """The part of the scrubbers' height the trajectory scrubber highlights, as fractions."""
    video_speed: float = Field(12, gt=0, json_schema_extra=_flag("video-speed"))
    """Playback frames per second."""
    attribution_weight: float = Field(0.9, ge=0, le=1,
                                      json_schema_extra=_flag("attribution-weight"))
    """Opacity of the attribution over the observation."""
    scrubber_visible_duration: int = Field(
        256, ge=1, json_schema_extra=_flag("scrubber-visible-duration"))
    """Frames the scrubbers show at once."""
    image_effort: Literal["best", "fast"] = Field("best",
                                                  json_schema_extra=_flag("image-effort"))
    """Observation images: 'best' (smallest files) or 'fast' (about twice the size, for
    previews and tests)."""

    @model_validator(mode="after")
    def _fractions(self) -> PresentationOptions:
        low, high = self.scrub_range
        if not 0 <= low < high <= 1:
            raise ValueError(f"scrub_range must be two fractions 0 <= a < b <= 1, not "
                             f"{list(self.scrub_range)}")
        return self


class InterfaceOptions(_Section):
    """Every option of one model's interface: the manifest's `defaults`, overridden by the
    model's `options`; `gallery interface`'s flags; `generate_interface`'s keywords."""

    trajectories: TrajectoryOptions = TrajectoryOptions()
    observations: ObservationOptions = ObservationOptions()
    layers: LayerSelection = LayerSelection()
    attribution: AttributionOptions = AttributionOptions()
    nmf: NMFOptions = NMFOptions()
    visualisation: VisualisationOptions = VisualisationOptions()
    presentation: PresentationOptions = PresentationOptions()


# --- flags: the command line and the Python API's keywords ------------------------------


def flags() -> Iterator[tuple[str, str, str, Any]]:
    """(flag, section, field, FieldInfo) of every option, in the model's order."""
    for section, info in InterfaceOptions.model_fields.items():
        for name, field in info.annotation.model_fields.items():  # type: ignore[union-attr]
            yield field.json_schema_extra["flag"], section, name, field  # type: ignore[index]


def from_flags(values: Mapping[str, Any], base: InterfaceOptions | None = None
               ) -> InterfaceOptions:
    """`base` (default: the defaults) with the options named by flag (`num_envs`,
    `nmf_features`, ..., dashes or underscores; `layers` and `policy_layers` for the
    repeatable `--layer` and `--policy-layer`) replaced; None leaves an option as it is."""
    by_flag = {}
    for flag, section, name, field in flags():
        by_flag[flag.replace("-", "_")] = (section, name)
        keyword = field.json_schema_extra.get("keyword")
        if keyword:  # the plural of a repeatable flag reads better in Python: layers=[...]
            by_flag[keyword] = (section, name)
    unknown = sorted(k for k in values if k.replace("-", "_") not in by_flag)
    if unknown:
        raise OptionsError(f"unknown interface option(s) {', '.join(unknown)}; known: "
                           f"{', '.join(sorted(by_flag))}")
    data = (base or InterfaceOptions()).model_dump()
    for key, value in values.items():
        if value is not None:
            section, name = by_flag[key.replace("-", "_")]
            data[section][name] = value
    return validate(data)


def from_arguments(args: argparse.Namespace) -> InterfaceOptions:
    """The options of command-line arguments parsed with `add_arguments`' flags."""
    return from_flags({name: getattr(args, name)
                       for name in (flag.replace("-", "_") for flag, *_ in flags())})


def validate(data: Mapping[str, Any]) -> InterfaceOptions:
    """InterfaceOptions from nested values, or an OptionsError naming every bad option by
    its flag and by its manifest key."""
    try:
        return InterfaceOptions.model_validate(data)
    except ValidationError as err:
        raise OptionsError("invalid interface options: " + "; ".join(
            describe_error(e) for e in err.errors())) from None


def describe_error(error: Mapping[str, Any]) -> str:
    """One pydantic error as `section.field (--flag): message`."""
    loc = [str(part) for part in error["loc"]]
    where = ".".join(loc)
    if len(loc) >= 2 and loc[0] in InterfaceOptions.model_fields:
        section = InterfaceOptions.model_fields[loc[0]].annotation
        field = section.model_fields.get(loc[1])  # type: ignore[union-attr]
        if field is not None:
            where += f" (--{field.json_schema_extra['flag']})"  # type: ignore[index]
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per option, grouped by section, help and default from the model; every
    flag defaults to None (the option's own default applies)."""
    for section, info in InterfaceOptions.model_fields.items():
        model = info.annotation
        group = parser.add_argument_group(section, (model.__doc__ or "").strip())
        for name, field in model.model_fields.items():  # type: ignore[union-attr]
            extra = field.json_schema_extra
            flag, default = f"--{extra['flag']}", field.default
            text = " ".join((field.description or "").split())
            shown = ",".join(_number(v) for v in default) if isinstance(default, tuple) \
                else default
            text = text.rstrip(".")
            kwargs: dict[str, Any] = {"dest": extra["flag"].replace("-", "_"),
                                      "default": None, "help": f"{text}; default {shown}"}
            if field.annotation is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif extra.get("repeat"):
                kwargs.update(action="append", metavar="NAME")
                kwargs["help"] = f"{text}; repeatable"
            elif isinstance(default, tuple):
                kwargs.update(type=_numbers, metavar="A,B,..")
            elif getattr(field.annotation, "__args__", None) and all(
                    isinstance(a, str) for a in field.annotation.__args__):  # Literal
                kwargs["choices"] = list(field.annotation.__args__)
            elif field.annotation is float:
                kwargs.update(type=float, metavar="X")
            else:
                kwargs.update(type=int, metavar="N")
            group.add_argument(flag, **kwargs)


def _number(value: float) -> str:
    return f"{value:g}"


def _numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, not {text!r}") from None
