"""Errors the user can act on. Each carries a one-line message naming the file and the problem.

The CLI prints these as a single line and exits non-zero; the viewer shows them as notifications.
Anything else escaping the core is a bug.
"""


class NemesisError(Exception):
    """Base class of every error napari-nemesis raises on purpose."""


class NemesisInputError(NemesisError, ValueError):
    """A file, directory or argument the user supplied cannot be used (bad scan, bad option)."""


class NemesisCheckpointError(NemesisInputError):
    """A checkpoint is missing, not safetensors (e.g. a pickle), corrupt, foreign or mis-shaped."""


class NemesisCancelled(NemesisError):
    """Long work stopped because the caller's cancel check returned True."""


class NemesisLimitError(NemesisInputError):
    """An input would need more memory than the configured limit (voxels of a scan, raw or
    resampled); the message names the sizes, the limit and how to raise it."""
