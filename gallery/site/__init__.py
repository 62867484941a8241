"""The website: pages and mkdocs.yml from the manifest and the build results, built with
MkDocs + Material.

    plan = plan_project(manifest.site, models, comparisons, info)   # pure
    write_project(plan, project_dir)                                  # only what changed
    build_site(project_dir, output)                                   # mkdocs build --strict
"""

from gallery.site.pages import BuildInfo
from gallery.site.project import (
    ProjectPlan,
    SiteBuildError,
    build_site,
    check_output_dir,
    plan_project,
    write_project,
)
from gallery.site.results import (
    ComparisonEntry,
    EpisodeSummary,
    ModelEntry,
    ModelResult,
    SharedObservations,
)

__all__ = [
    "BuildInfo", "ComparisonEntry", "EpisodeSummary", "ModelEntry", "ModelResult",
    "ProjectPlan", "SharedObservations", "SiteBuildError", "build_site", "check_output_dir",
    "plan_project", "write_project",
]
