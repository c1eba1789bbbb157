"""Lays a podium workspace's `configs/` over podium's built-in configs.

Hydra looks for config files along a search path and takes the first match, and an app's own
config folder comes before any `hydra.searchpath` entry; so a workspace file could never replace
a built-in one that way. Hydra discovers this plugin (the `hydra_plugins` namespace) and lets it
put the workspace's configs first — only when the app is podium (its built-in configs are on the
path), so other Hydra apps in the same environment are untouched.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class PodiumWorkspaceSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from podium.workspace import NotAWorkspace, builtin_configs, workspace_root

        builtin = builtin_configs().resolve()
        # compose() lists the app's folder as a plain path, hydra.main as a file:// URL
        paths = {e.path.removeprefix("file://") for e in search_path.get_path()}
        if str(builtin) not in paths:
            return
        try:
            overlay = (workspace_root() / "configs").resolve()
        except NotAWorkspace:
            return
        if overlay.is_dir() and overlay != builtin:
            search_path.prepend(provider="podium-workspace", path=f"file://{overlay}")
