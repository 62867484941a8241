"""The manifest (`checkpoints.yaml`): which models the gallery shows, and how to build them.

`load_manifest(path)` reads and validates the whole file before any work starts, and
raises one `ManifestError` listing *every* problem with its file, line and key (unknown
keys, bad or duplicate ids, missing checkpoint files, a missing sha256 for a remote
checkpoint, comparisons naming unknown models, bad analysis options, ...).

Everything in a manifest is untrusted text: the site generator escapes titles and tags and
sanitises the Markdown descriptions (see gallery/site/sanitize.py).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from gallery.errors import GalleryError
from gallery.pipeline.options import InterfaceOptions, NMFOptions

#: Ids appear in URLs (/models/<id>/): lowercase letters, digits and '-'.
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]*$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
MAX_ID_LENGTH = 64


# --- analysis options (method.md section 8: the defaults of the reference tool) ---------


def valid_id(value: str) -> str:
    """`value` if it can be a model or comparison id (it appears in URLs), else ValueError."""
    if not ID_PATTERN.match(value) or len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{value!r} is not a valid id: use lowercase letters, digits and "
                         f"'-' (starting with a letter or digit, at most {MAX_ID_LENGTH})")
    return value


Id = Annotated[str, AfterValidator(valid_id)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- the manifest ------------------------------------------------------------------------


class SiteConfig(_Strict):
    """The site as a whole."""

    name: str = Field("Model zoo", min_length=1, max_length=200)
    """Title of the site (header, browser tab, social cards)."""
    url: str | None = None
    """Canonical URL where the site is published, e.g. https://USER.github.io/zoo/."""
    repo_url: str | None = None
    """Link to the repository shown in the header."""
    description: str | None = Field(None, max_length=1000)
    """Plain-text summary for search engines and social cards."""
    author: str | None = Field(None, max_length=200)
    """Shown in page metadata."""

    @field_validator("url", "repo_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and urlparse(value).scheme not in ("http", "https"):
            raise ValueError(f"{value!r} is not an http(s):// URL")
        return value


class ModelSpec(_Strict):
    """One model of the zoo."""

    id: Id
    """[a-z0-9][a-z0-9-]*, unique; the page is /models/<id>/."""
    title: str = Field(min_length=1, max_length=200)
    checkpoint: str | None = Field(None, min_length=1)
    """http(s):// URL, file:// URL, or a path relative to the manifest: an rl-clarity
    checkpoint (.jd), a Stable-Baselines3 zip, or the weights file `adapter` reads; left
    out, the adapter's factory builds the network without weights."""
    adapter: str | None = None
    """`module.path:factory` building the network of a PyTorch model from another code
    base (docs/adapters.md); the checkpoint is then the file the factory loads."""
    sha256: str | None = None
    """Hex digest of the checkpoint file; required for http(s)."""
    description: str = ""
    """Markdown shown on the model page (raw HTML is sanitised)."""
    tags: list[str] = []
    env: dict[str, Any] = {}
    """The environment where the file does not name it (an SB3 zip never does), or
    overrides of the checkpoint's: `{env_kind: atari, env_id: BreakoutNoFrameskip-v4}`,
    `{env_kind: procgen, env_name: maze}`, `distribution_mode`, `frame_stack`, ..."""
    options: dict[str, Any] = {}
    """Overrides of the manifest's `defaults` for this model."""
    features: dict[str, dict[int, str]] = {}
    """Labels of NMF features, per layer: {layer: {feature index: label}}."""
    training_steps: int | None = Field(None, ge=0)
    """Environment steps the agent was trained for, when the checkpoint does not say."""
    citation: str | None = None
    """Markdown: how to cite this model (the paper's citation is always shown)."""


    @field_validator("adapter")
    @classmethod
    def _adapter(cls, value: str | None) -> str | None:
        from gallery.models.adapters import ADAPTER_PATTERN

        if value is not None and not ADAPTER_PATTERN.match(value):
            raise ValueError(f"{shown(value)} is not of the form module.path:function "
                             "(e.g. examples.adapters.cleanrl_procgen:make)")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if not SHA256_PATTERN.match(value):
            raise ValueError("expected 64 hexadecimal digits (`sha256sum FILE` prints them)")
        return value

    @field_validator("features")
    @classmethod
    def _feature_indices(cls, value: dict[str, dict[int, str]]) -> dict[str, dict[int, str]]:
        top = NMFOptions.model_fields["features"].metadata[-1].le
        for layer, labels in value.items():
            for index in labels:
                if not 0 <= index < top:
                    raise ValueError(f"layer {layer}: feature {shown(index)} does not exist "
                                     f"(features are numbered 0 to {top - 1})")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not tag.strip() or len(tag) > 60:
                raise ValueError(f"tag {tag!r}: tags are 1 to 60 characters")
        return list(dict.fromkeys(tag.strip() for tag in value))

    @model_validator(mode="after")
    def _source(self) -> ModelSpec:
        if self.checkpoint is None and self.adapter is None:
            raise ValueError("give `checkpoint:` (a file or URL), or `adapter:` "
                             "(module.path:factory) for a network its factory builds")
        return self

    @property
    def is_remote(self) -> bool:
        return self.checkpoint is not None and urlparse(self.checkpoint).scheme in (
            "http", "https")


class ComparisonSpec(_Strict):
    """A page comparing models of the zoo."""

    id: Id
    """[a-z0-9][a-z0-9-]*, unique among comparisons; the page is /compare/<id>/."""
    title: str = Field(min_length=1, max_length=200)
    models: list[str] = Field(min_length=2)
    description: str = ""
    kind: Literal["models", "training"] = "models"
    """'models': any models side by side, features matched to the first model's.
    'training': checkpoints of one training run, listed from the earliest (untrained) to
    the last; the page follows returns, values and features over training: the shared
    trajectories are recorded by the last checkpoint, each of its features is matched in
    every earlier checkpoint, and the columns stay in checkpoint order."""


class Manifest(_Strict):
    """A validated manifest. Use `load_manifest` to read one."""

    site: SiteConfig = SiteConfig()
    defaults: InterfaceOptions = InterfaceOptions()
    models: list[ModelSpec] = Field(min_length=1)
    comparisons: list[ComparisonSpec] = []

    _path: Path = PrivateAttr(default=Path("checkpoints.yaml"))
    _settings: dict[str, InterfaceOptions] = PrivateAttr(default_factory=dict)

    @property
    def path(self) -> Path:
        """The manifest file."""
        return self._path

    @property
    def root(self) -> Path:
        """The folder relative checkpoint paths are resolved against."""
        return self._path.parent

    def settings(self, model_id: str) -> InterfaceOptions:
        """The effective options of one model: defaults, then the model's overrides."""
        return self._settings[model_id]

    def model(self, model_id: str) -> ModelSpec:
        for model in self.models:
            if model.id == model_id:
                return model
        raise KeyError(model_id)


# --- errors --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One problem in a manifest: where it is and what to do."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ManifestError(GalleryError):
    """The manifest cannot be used; `problems` lists every reason (exit code 2)."""

    def __init__(self, path: Path | str, problems: list[Problem]):
        self.path = str(path)
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{self.path}: {count}; nothing was built:\n{lines}")


# --- reading YAML with line numbers ----------------------------------------------------------

Key = tuple[str | int, ...]


class _Lines:
    """Line numbers (1-based) of every key and item of a YAML document, by path."""

    def __init__(self, node: yaml.Node | None, loader: yaml.SafeLoader):
        self.lines: dict[Key, int] = {}
        self.duplicates: list[tuple[Key, int]] = []
        self._loader = loader
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: Key) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in node.value:
                key = self._key(key_node)
                if key in seen:
                    self.duplicates.append((path + (key,), key_node.start_mark.line + 1))
                seen.add(key)
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                self._walk(value_node, path + (key,))
                self.lines[path + (key,)] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, path + (i,))

    def line(self, path: Key) -> int | None:
        """The line of `path`, or of its nearest ancestor present in the file."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


    def _key(self, node: yaml.Node) -> Any:
        """A mapping key as the safe loader constructs it (ints stay ints: `{0: coin}`)."""
        if isinstance(node, yaml.ScalarNode):
            return self._loader.construct_object(node)
        return f"<{node.tag}>"


def shown(value: Any, as_repr: bool = True) -> str:
    """A value from the manifest for a message: cut to 100 characters, and never failing
    (str() of an integer of more than 4,300 digits raises ValueError)."""
    try:
        text = repr(value) if as_repr else str(value)
    except ValueError:
        text = (f"<an integer of {value.bit_length()} bits>" if isinstance(value, int)
                else f"<a {type(value).__name__}>")
    return text if len(text) <= 100 else text[:97] + "..."


def key_text(path: Key) -> str:
    """('models', 1, 'options', 'nmf') -> 'models[1].options.nmf'."""
    text = ""
    for part in path:
        name = shown(part, as_repr=False)
        text += f"[{name}]" if isinstance(part, int) else (f".{name}" if text else name)
    return text


#: Bounds on a manifest's YAML document, checked on its node graph before anything is
#: built from it: nesting depth, and nodes counted with every alias expanded (a "billion
#: laughs" document of nested aliases expands exponentially).
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000


class _Loader(yaml.SafeLoader):
    """The safe loader; a scalar its constructors cannot convert (`!!int ''`, a 5000-digit
    number, the timestamp 2001-02-30) is a YAML error at that node, not a crash."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, IndexError, OverflowError) as err:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value ({err})", node.start_mark) from None


def _check_bounds(node: yaml.Node) -> None:
    """Refuse documents nested deeper than MAX_YAML_DEPTH or expanding (aliases followed)
    to more than MAX_YAML_NODES nodes; recursive aliases are too deep."""
    count, stack = 0, [(node, 1)]
    while stack:
        item, depth = stack.pop()
        count += 1
        if depth > MAX_YAML_DEPTH:
            raise yaml.MarkedYAMLError(problem=f"nested deeper than {MAX_YAML_DEPTH} levels "
                                       "(or an alias refers to itself)",
                                       problem_mark=item.start_mark)
        if count > MAX_YAML_NODES:
            raise yaml.MarkedYAMLError(problem=f"the document expands to more than "
                                       f"{MAX_YAML_NODES} values (aliases repeat what they "
                                       "name); write it without so many aliases",
                                       problem_mark=item.start_mark)
        if isinstance(item, yaml.MappingNode):
            stack.extend((n, depth + 1) for pair in item.value for n in pair)
        elif isinstance(item, yaml.SequenceNode):
            stack.extend((n, depth + 1) for n in item.value)


def _flow_depth(text: str) -> int:
    """Deepest nesting of [ and { in `text` (quotes ignored): PyYAML's scanner takes time
    quadratic in it, so very deep flow collections are refused before scanning."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


def _read_yaml(path: Path, text: str) -> tuple[Any, _Lines]:
    if _flow_depth(text) > 16 * MAX_YAML_DEPTH:  # generous: brackets in plain scalars count
        raise ManifestError(path, [Problem(str(path), None, "", "not valid YAML: [ ] and "
                                           "{ } nested too deeply; flatten the document")])
    loader = None
    try:
        loader = _Loader(text)  # the reader refuses control characters right away
        node = loader.get_single_node()
        if node is not None:
            _check_bounds(node)
        data = loader.construct_document(node) if node is not None else None
        lines = _Lines(node, loader)
    except RecursionError:
        raise ManifestError(path, [Problem(str(path), None, "", "not valid YAML: nested too "
                                           "deeply; flatten the document")]) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        raise ManifestError(path, [Problem(
            str(path), mark.line + 1 if mark else None, "",
            f"not valid YAML: {err.problem or err}; fix the syntax there")]) from None
    except yaml.YAMLError as err:
        raise ManifestError(path, [Problem(str(path), None, "", f"not valid YAML: {err}")]) \
            from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


# --- validation --------------------------------------------------------------------------------


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest; raise ManifestError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ManifestError(path, [Problem(str(path), None, "", f"cannot read the manifest "
                                           f"({err.strerror or err}); pass -m FILE")]) from None
    except UnicodeDecodeError as err:
        raise ManifestError(path, [Problem(str(path), None, "", "not UTF-8 text (byte "
                                           f"{err.start}: {err.reason}); save the manifest "
                                           "as UTF-8")]) from None
    return parse_manifest(text, path)


def parse_manifest(text: str, path: str | Path = "checkpoints.yaml") -> Manifest:
    """Validate manifest text; relative checkpoint paths are resolved against path's folder."""
    path = Path(path)
    data, lines = _read_yaml(path, text)
    problems = [Problem(str(path), line, key_text(key), "this key appears twice; keep one")
                for key, line in lines.duplicates]
    if not isinstance(data, dict):
        problems.append(Problem(str(path), 1, "", "a manifest is a mapping with `models:` "
                                "(and optionally `site:`, `defaults:`, `comparisons:`)"))
        raise ManifestError(path, problems)
    manifest = None
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as err:
        problems += _pydantic_problems(err, (), path, lines)
    problems += _cross_check(data, path, lines)
    settings, option_problems = _effective_settings(data, path, lines)
    problems += option_problems
    if problems or manifest is None:
        raise ManifestError(path, _unique(problems))
    manifest._path = path
    manifest._settings = settings
    return manifest


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: dict[tuple, Problem] = {}
    for p in problems:
        seen.setdefault((p.line, p.key, p.message), p)
    return sorted(seen.values(), key=lambda p: (p.line or 0, p.key))


def _pydantic_problems(err: ValidationError, prefix: Key, path: Path,
                       lines: _Lines) -> list[Problem]:
    problems = []
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        problems.append(Problem(str(path), lines.line(loc), key_text(loc), _message(e)))
    return problems


def _message(error: dict[str, Any]) -> str:
    """A pydantic error, said for a person editing YAML."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key; check its spelling against docs/site.md (the manifest schema)"
    if kind == "missing":
        return "required key is missing; add it"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "too_short" and "min_length" in ctx:
        return f"needs at least {ctx['min_length']} item(s)"
    return f"{error['msg']} (got {shown(error.get('input'))})" if "input" in error else \
        error["msg"]


def _cross_check(data: dict[str, Any], path: Path, lines: _Lines) -> list[Problem]:
    """What pydantic cannot see field by field: duplicates, references, files, sha256."""
    problems: list[Problem] = []
    models = data.get("models") if isinstance(data.get("models"), list) else []
    comparisons = data.get("comparisons") if isinstance(data.get("comparisons"), list) else []

    def problem(key: Key, message: str) -> None:
        problems.append(Problem(str(path), lines.line(key), key_text(key), message))

    model_ids = _check_ids(models, "models", problem)
    _check_ids(comparisons, "comparisons", problem)
    for i, model in enumerate(models):
        if isinstance(model, dict):
            _check_checkpoint(model, ("models", i), path.parent, problem)
            _check_env(model, ("models", i), problem)
    for i, comparison in enumerate(comparisons):
        names = comparison.get("models") if isinstance(comparison, dict) else None
        for j, name in enumerate(names if isinstance(names, list) else []):
            if isinstance(name, str) and name not in model_ids:  # others: a type error
                problem(("comparisons", i, "models", j),
                        f"no model has id {name!r}; the ids are "
                        f"{', '.join(sorted(model_ids)) or '(none)'}")
    return problems


def _check_ids(items: list[Any], section: str, problem: Any) -> set[str]:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        item_id = item.get("id") if isinstance(item, dict) else None
        if isinstance(item_id, str):
            if item_id in seen:
                problem((section, i, "id"), f"id {item_id!r} is already used by "
                        f"{section}[{seen[item_id]}]; ids must be unique")
            seen.setdefault(item_id, i)
    return set(seen)


def _check_checkpoint(model: dict[str, Any], key: Key, root: Path, problem: Any) -> None:
    source = model.get("checkpoint")
    if not isinstance(source, str) or not source:
        return
    try:
        scheme = urlparse(source).scheme
    except ValueError as err:  # e.g. "http://[": an unclosed IPv6 address
        problem(key + ("checkpoint",), f"not a valid URL ({err})")
        return
    if scheme in ("http", "https"):
        if not model.get("sha256"):
            problem(key + ("sha256",), "required for an http(s) checkpoint: add the file's "
                    "sha256 (`sha256sum FILE`), so that every download can be verified")
        return
    if scheme not in ("", "file"):
        problem(key + ("checkpoint",), f"unsupported URL scheme {scheme!r}: use http(s)://, "
                "file:// or a path relative to the manifest")
        return
    try:
        local = local_checkpoint_path(source, root)
        found = local.is_file()
    except (OSError, RuntimeError, ValueError) as err:  # too long, ~nosuchuser, NUL
        problem(key + ("checkpoint",), f"cannot use this path ({str(err):.200}); fix it")
        return
    if not found:
        problem(key + ("checkpoint",), f"file not found: {local}; fix the path (relative "
                "paths are relative to the manifest's folder)")


def _check_env(model: dict[str, Any], key: Key, problem: Any) -> None:
    env = model.get("env")
    if not isinstance(env, dict):
        return
    from gallery.environments import ENV_KEYS  # the environment's own list of options

    for name in env:
        if name not in ENV_KEYS:
            problem(key + ("env", name), "unknown environment option; the options are "
                    f"{', '.join(ENV_KEYS)}")
    _check_env_names(env, key, problem)


def _check_env_names(env: dict[str, Any], key: Key, problem: Any) -> None:
    """The game an `env:` names exists (the ids users write: BreakoutNoFrameskip-v4,
    ALE/Breakout-v5, breakout; Procgen's env_name), checked before anything is built."""
    from gallery.environments import _atari_id, _procgen_name
    from gallery.errors import EnvironmentNotAvailable

    kind = env.get("env_kind")
    if kind is not None and kind not in ("procgen", "atari"):
        problem(key + ("env", "env_kind"), f"{shown(kind)} is not an environment kind; "
                "use procgen or atari")
        return
    checks = []
    if kind == "atari" or (kind is None and "env_id" in env):
        name = "env_id" if "env_id" in env else "env_name"
        if name in env:
            checks.append((name, _atari_id))
    elif kind == "procgen" and "env_name" in env:
        checks.append(("env_name", _procgen_name))
    for name, check in checks:
        try:
            check(env[name])
        except EnvironmentNotAvailable as err:
            problem(key + ("env", name), str(err))


def local_checkpoint_path(source: str, root: Path) -> Path:
    """The file a non-http(s) checkpoint entry names (file:// URL or relative path)."""
    if source.startswith("file://"):
        return Path(urlparse(source).path)
    path = Path(source).expanduser()
    return path if path.is_absolute() else root / path


def _deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for k, v in override.items():
            merged[k] = _deep_merge(merged.get(k), v)
        return merged
    return copy.deepcopy(override)


def _effective_settings(data: dict[str, Any], path: Path, lines: _Lines
                        ) -> tuple[dict[str, InterfaceOptions], list[Problem]]:
    """Each model's defaults + options, validated; errors point at the model's options
    (errors inside `defaults` are reported once, by the Manifest validation)."""
    defaults = data.get("defaults") if isinstance(data.get("defaults"), dict) else {}
    models = data.get("models") if isinstance(data.get("models"), list) else []
    settings: dict[str, InterfaceOptions] = {}
    problems: list[Problem] = []
    for i, model in enumerate(models):
        if not isinstance(model, dict) or not isinstance(model.get("options", {}), dict):
            continue
        options = model.get("options") or {}
        try:
            settings[shown(model.get("id"), as_repr=False)] = InterfaceOptions.model_validate(
                _deep_merge(defaults, options))
        except ValidationError as err:
            for e in err.errors():
                loc = tuple(e["loc"])
                if _has_path(options, loc):
                    key = ("models", i, "options") + loc
                    problems.append(Problem(str(path), lines.line(key), key_text(key),
                                            _message(e)))
    return settings, problems


def _has_path(data: Any, loc: Key) -> bool:
    for part in loc:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True
