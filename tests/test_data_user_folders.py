"""The suite never writes the user's folders: caches, viewer settings and the default labelling
project all resolve inside the session's temporary folder (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from napari_nemesis.data import default_cache_dir


def test_the_user_folders_are_not_in_the_home():  # no fixture asked for: the autouse one is enough
    from napari_nemesis.viewer._settings import default_project_dir
    from napari_nemesis.viewer._settings import settings_path

    for path in (default_cache_dir(), settings_path(), default_project_dir()):
        assert not path.resolve().is_relative_to(Path.home().resolve()), path
