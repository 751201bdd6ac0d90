"""napari-nemesis: the NEMESIS masked autoencoder for 3D CT, as a library, a CLI and a napari plugin.

Importing this package is cheap (no torch, no Qt): napari imports it during plugin discovery.
The heavy parts live in subpackages: ``model`` (PyTorch), ``data`` (readers, grid, datasets),
``train`` (loops and whole-scan inference) and ``viewer`` (the only place that imports napari/Qt).
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import NemesisCheckpointError, NemesisError, NemesisInputError

try:
    __version__ = version("napari-nemesis")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["NemesisError", "NemesisInputError", "NemesisCheckpointError", "__version__"]
