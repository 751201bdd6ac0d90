"""Plugin settings remembered between sessions: a small JSON file in the user's config folder.

npe2 ``configuration`` contributions reach napari's preferences only in recent npe2, so the
plugin keeps its own file: ``$NEMESIS_CONFIG_DIR/viewer.json`` if that variable is set, else
``platformdirs.user_config_dir("napari-nemesis")/viewer.json``. A missing or broken file gives
the defaults; writes go through a temporary file and a rename.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..atomic import write_json_atomic

DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class Settings:
    """What the widgets remember. Empty ``checkpoint``/``probe`` mean the bundled weights."""

    device: str = "auto"
    checkpoint: str = ""
    probe: str = ""
    batch: int = 2

    def cleaned(self) -> "Settings":
        device = self.device if self.device in DEVICES else "auto"
        try:
            batch = max(1, min(64, int(self.batch)))
        except (TypeError, ValueError):
            batch = 2
        return Settings(device, str(self.checkpoint or ""), str(self.probe or ""), batch)


def settings_path() -> Path:
    base = os.environ.get("NEMESIS_CONFIG_DIR")
    if not base:
        import platformdirs

        base = platformdirs.user_config_dir("napari-nemesis", appauthor=False)
    return Path(base) / "viewer.json"


def load_settings() -> Settings:
    try:
        raw = json.loads(settings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Settings()
    if not isinstance(raw, dict):
        return Settings()
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in raw.items() if k in known}).cleaned()


def forget_missing_weights(settings: Settings) -> list[str]:
    """Remembered weight files that are gone (a deleted run folder, an unplugged disk) would make
    every run fail: the pair is forgotten (a probe belongs to its checkpoint) and the bundled
    weights used. Returns the missing paths, for a notification; the settings file is left alone
    until the user picks weights again."""
    missing = [path for path in (settings.checkpoint, settings.probe) if path and not Path(path).is_file()]
    if missing:
        settings.checkpoint = settings.probe = ""
    return missing


def save_settings(settings: Settings) -> Path | None:
    """Write the settings; an unwritable config folder is not an error (returns None)."""
    path = settings_path()
    try:
        write_json_atomic(path, asdict(settings.cleaned()))
    except OSError:
        return None
    return path


# ---- where labels are saved (the Labelling dock picks it, the Training dock trains from it) -------------
def default_project_dir() -> Path:
    """The labelling project used until the user picks another: ``$NEMESIS_LABELS_PROJECT``, else
    ``labelling-project`` in ``$NEMESIS_CONFIG_DIR`` (tests) or in the user data folder."""
    env = os.environ.get("NEMESIS_LABELS_PROJECT")
    if env:
        return Path(env).expanduser()
    config = os.environ.get("NEMESIS_CONFIG_DIR")
    if config:
        return Path(config) / "labelling-project"
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-nemesis", appauthor=False)) / "labelling-project"


def _prefs_path() -> Path:
    return settings_path().parent / "labelling.json"


def load_project_dir() -> Path:
    """The project folder picked last time (remembered beside the viewer settings), or the default."""
    try:
        doc = json.loads(_prefs_path().read_text(encoding="utf-8"))
        if isinstance(doc, dict) and doc.get("project"):
            return Path(doc["project"])
    except (OSError, ValueError):
        pass
    return default_project_dir()


def save_project_dir(path: Path) -> None:
    try:
        write_json_atomic(_prefs_path(), {"project": str(path)})
    except OSError:
        pass  # an unwritable config folder only loses the preference
