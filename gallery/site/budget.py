"""The built site's size against GitHub Pages' limits, and each model's share of it.

GitHub Pages publishes sites of at most 1 GB and refuses files over 100 MB (a push of such a
file fails). `measure_site` counts every file of a built site and gives each to its owner: a
model owns its page (models/<id>/...) and its interfaces on comparison pages
(compare/<comparison>/interface/<id>/...); the rest belongs to its comparison or to the
site itself (theme, viewer, search index). `SizeReport.problems` names the models to shrink
and the manifest settings that shrink them. `gallery build` prints the shares, and
`gallery build` and `gallery deploy` warn before publishing. Pure file arithmetic: no
import of the heavy build modules, so `gallery deploy` stays quick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: GitHub Pages limits: the whole site, and one file; a warning from WARN_FRACTION of them.
PAGES_SITE_LIMIT = 1 << 30
PAGES_FILE_LIMIT = 100 * (1 << 20)
WARN_FRACTION = 0.8

#: What makes a model's part of the site smaller (the manifest's `defaults` or a model's
#: `options`; docs/site.md).
SHRINK_ADVICE = ("fewer layers (layers.include), policy attribution on fewer layers or off "
                 "(attribution.policy), fewer or shorter trajectories (trajectories.num_envs, "
                 "trajectories.num_steps) or fewer observations (observations.num_obs)")

SITE_OWNER = "(site)"
"""The owner of files that belong to no model or comparison: theme, viewer, search."""


def mb(size: int) -> str:
    return f"{size / (1 << 20):.1f} MB"


def owner_of(path: str) -> str:
    """The model (its id), comparison ('comparison <id>') or SITE_OWNER that a site file
    belongs to, by its path relative to the site."""
    parts = path.split("/")
    if len(parts) > 2 and parts[0] == "models":
        return parts[1]
    if len(parts) > 2 and parts[0] == "compare":
        if len(parts) > 4 and parts[2] == "interface":
            return parts[3]
        return f"comparison {parts[1]}"
    return SITE_OWNER


@dataclass
class SizeReport:
    """A built site's size against GitHub Pages' limits."""

    total_bytes: int
    files: int
    largest_path: str
    largest_bytes: int
    shares: dict[str, int] = field(default_factory=dict)
    """Bytes by owner (`owner_of`), largest first."""
    big_files: list[tuple[str, int]] = field(default_factory=list)
    """(path, bytes) of the files over WARN_FRACTION of the file limit, largest first."""
    site_limit: int = PAGES_SITE_LIMIT
    file_limit: int = PAGES_FILE_LIMIT

    def models(self) -> list[tuple[str, int]]:
        """(model id, bytes) of the models' shares, largest first."""
        return [(k, v) for k, v in self.shares.items()
                if k != SITE_OWNER and not k.startswith("comparison ")]

    def problems(self) -> tuple[list[str], list[str]]:
        """(errors, warnings): limits exceeded (GitHub Pages would refuse the site), and
        limits approached; each names the models to shrink and how."""
        errors: list[str] = []
        warnings: list[str] = []
        site = f"the site is {mb(self.total_bytes)}; GitHub Pages allows {mb(self.site_limit)}"
        largest = self.models()[:3]
        who = ", ".join(f"{k} ({mb(v)})" for k, v in largest)
        shrink = f": shrink the largest models, {who}, with {SHRINK_ADVICE}" if who else ""
        if self.total_bytes > self.site_limit:
            errors.append(f"{site}: it will not deploy{shrink}")
        elif self.total_bytes > WARN_FRACTION * self.site_limit:
            warnings.append(f"{site} (over {WARN_FRACTION:.0%} of the limit){shrink}")
        files = self.big_files or ([(self.largest_path, self.largest_bytes)]
                                   if self.largest_path else [])
        for path, size in files:
            text = (f"the file {path} is {mb(size)}; GitHub Pages allows {mb(self.file_limit)} "
                    "per file")
            owner = owner_of(path)
            fix = (f": it belongs to {owner}; shrink it with {SHRINK_ADVICE}"
                   if owner != SITE_OWNER and not owner.startswith("comparison ") else
                   f": it belongs to {owner}")
            if size > self.file_limit:
                errors.append(f"{text}: it will not deploy{fix}")
            elif size > WARN_FRACTION * self.file_limit:
                warnings.append(f"{text} (over {WARN_FRACTION:.0%} of the limit){fix}")
        return errors, warnings

    def share_lines(self) -> list[str]:
        """One line per owner: its size and share of the site, largest first."""
        total = max(self.total_bytes, 1)
        width = max([len(k) for k in self.shares] + [5])
        return [f"  {k:<{width}}  {mb(v):>10}  {100 * v / total:5.1f}%"
                for k, v in self.shares.items()]


def measure_site(folder: Path, site_limit: int = PAGES_SITE_LIMIT,
                 file_limit: int = PAGES_FILE_LIMIT) -> SizeReport:
    """Every file of the built site in `folder`, with each owner's share."""
    total, count, largest, largest_path = 0, 0, 0, ""
    shares: dict[str, int] = {}
    big: list[tuple[str, int]] = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        rel = path.relative_to(folder).as_posix()
        size = path.stat().st_size
        total, count = total + size, count + 1
        owner = owner_of(rel)
        shares[owner] = shares.get(owner, 0) + size
        if size > largest:
            largest, largest_path = size, rel
        if size > WARN_FRACTION * file_limit:
            big.append((rel, size))
    ordered = dict(sorted(shares.items(), key=lambda kv: (-kv[1], kv[0])))
    big.sort(key=lambda item: (-item[1], item[0]))
    return SizeReport(total, count, largest_path, largest, ordered, big, site_limit, file_limit)
