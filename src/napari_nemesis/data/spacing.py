"""The target spacing: one value for the (z, y, x) mm triple or "native", and its written forms.

:class:`Spacing` is what every reader of a spacing goes through:

* :meth:`Spacing.parse` takes what the Python API accepts: three positive numbers (z, y, x) in
  mm (any sequence), ``"native"`` (also ``"none"``) to keep each scan's own voxels, or a
  :class:`Spacing`. ``None`` is refused (it once meant "native" in one place and "the default"
  in another).
* :meth:`Spacing.to_json` / :meth:`Spacing.from_json` are the form caches, checkpoints, probe
  heads and result files hold: ``[z, y, x]`` or ``"native"``. :meth:`Spacing.from_recorded`
  reads one from a file's metadata, where ``null`` (files written before spacings were explicit)
  meant native.
* :meth:`Spacing.cli_words` / :meth:`Spacing.from_cli` are the ``--spacing X Y Z`` form: x y z
  order as written in papers, or ``native``.
* :attr:`Spacing.value` is the plain form the API hands back: a ``(z, y, x)`` float tuple or
  ``"native"``.

:func:`recorded_spacing` is the rule inference, probing and the viewer share for "the spacing
these weights expect".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

from ..errors import NemesisCheckpointError, NemesisInputError

__all__ = ["NATIVE_SPACING", "DEFAULT_SPACING_ZYX", "SPACING_ATOL_MM", "Spacing", "as_spacing",
           "spacing_json", "spacing_from_metadata", "recorded_spacing"]

#: The target spacing that keeps each scan's own voxels (no resampling).
NATIVE_SPACING = "native"
#: Target spacing (z, y, x) in mm: 1.5 x 1.5 mm in-plane, 2.0 mm slices (CLI: 1.5 1.5 2.0, x y z).
DEFAULT_SPACING_ZYX: tuple[float, float, float] = (2.0, 1.5, 1.5)
#: Two spacings closer than this on every axis (mm) are the same spacing.
SPACING_ATOL_MM = 1e-6

_NATIVE_WORDS = (NATIVE_SPACING, "none")


@dataclass(frozen=True)
class Spacing:
    """A target spacing: ``zyx`` in mm, or ``None`` for native (each scan kept at its own)."""

    zyx: tuple[float, float, float] | None

    # ---- reading ------------------------------------------------------------------------------
    @classmethod
    def native(cls) -> "Spacing":
        return cls(None)

    @classmethod
    def parse(cls, spacing: Any, what: str = "spacing") -> "Spacing":
        """A :class:`Spacing` from three numbers (z, y, x mm), ``"native"``/``"none"`` or a
        :class:`Spacing`; anything else, ``None`` included, is a one-line :class:`NemesisInputError`."""
        if isinstance(spacing, Spacing):
            return spacing
        if isinstance(spacing, str):
            if spacing.strip().lower() in _NATIVE_WORDS:
                return cls(None)
            raise NemesisInputError(f"{what} {spacing!r}: give (z, y, x) in mm or 'native'")
        if spacing is None:
            raise NemesisInputError(f"{what} None is ambiguous: give (z, y, x) in mm, or 'native' to keep the "
                                    "scan's own spacing")
        try:
            values = tuple(float(v) for v in spacing)
        except (TypeError, ValueError):
            raise NemesisInputError(f"{what} {spacing!r}: give (z, y, x) in mm or 'native'") from None
        if len(values) != 3 or not all(math.isfinite(v) for v in values) or min(values) <= 0:
            raise NemesisInputError(f"{what} {spacing!r}: need three positive numbers (z, y, x) in mm")
        return cls(values)  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, value: Any, what: str = "spacing") -> "Spacing":
        """The JSON form back (``[z, y, x]`` or ``"native"``)."""
        return cls.parse(value, what)

    @classmethod
    def from_recorded(cls, value: Any, source: Any = None) -> "Spacing":
        """A spacing recorded in a file's metadata (``source`` names the file in errors);
        ``null`` (older files) meant native."""
        if value is None:
            return cls(None)
        try:
            return cls.parse(value)
        except NemesisInputError:
            raise NemesisCheckpointError(f"{source}: recorded spacing {value!r} is not (z, y, x) mm or "
                                         "'native'") from None

    @classmethod
    def from_cli(cls, words) -> "Spacing":
        """``--spacing X Y Z`` (mm, x y z order) or ``--spacing native``/``none``."""
        words = [str(w) for w in words]
        if len(words) == 1 and words[0].lower() in _NATIVE_WORDS:
            return cls(None)
        if len(words) != 3:
            raise NemesisInputError("--spacing: give three numbers x y z in mm, or 'native'")
        try:
            x, y, z = (float(w) for w in words)
        except ValueError:
            raise NemesisInputError(f"--spacing {' '.join(words)}: not numbers") from None
        return cls.parse((z, y, x), what="--spacing (x y z)")

    # ---- writing ------------------------------------------------------------------------------
    @property
    def is_native(self) -> bool:
        return self.zyx is None

    @property
    def value(self) -> Union[tuple[float, float, float], str]:
        """The API's plain form: the ``(z, y, x)`` tuple, or ``"native"``."""
        return NATIVE_SPACING if self.zyx is None else self.zyx

    def to_json(self) -> Union[list[float], str]:
        """The form files hold: ``[z, y, x]`` mm or ``"native"``."""
        return NATIVE_SPACING if self.zyx is None else [float(v) for v in self.zyx]

    def cli_words(self) -> list[str]:
        """The words after ``--spacing``: ``x y z`` (mm) or ``native``."""
        if self.zyx is None:
            return [NATIVE_SPACING]
        z, y, x = self.zyx
        return [f"{v:.12g}" for v in (x, y, z)]

    def close_to(self, other: Any) -> bool:
        """The same spacing: both native, or every axis within :data:`SPACING_ATOL_MM`."""
        other = Spacing.parse(other)
        if self.zyx is None or other.zyx is None:
            return self.zyx is other.zyx
        return all(abs(a - b) <= SPACING_ATOL_MM for a, b in zip(self.zyx, other.zyx))

    def __str__(self) -> str:
        return str(self.value)


# ---- the plain-value helpers older callers import ------------------------------------------------
def as_spacing(spacing: Any, what: str = "spacing"):
    """:meth:`Spacing.parse` as the plain value: a ``(z, y, x)`` float tuple in mm, or
    :data:`NATIVE_SPACING`."""
    return Spacing.parse(spacing, what).value


def spacing_json(spacing: Any) -> Union[list[float], str]:
    """A spacing as files hold it: ``[z, y, x]`` mm or ``"native"``."""
    return Spacing.parse(spacing).to_json()


def spacing_from_metadata(value: Any, source: Any = None):
    """A recorded spacing as (z, y, x) mm or ``"native"``; ``null`` (older files) meant native."""
    return Spacing.from_recorded(value, source).value


def recorded_spacing(model, head_meta: dict[str, Any] | None = None, probe=None):
    """``(spacing, source)``: the spacing a probe head was trained at (``source="probe"``), else the
    one the checkpoint was pretrained at (``"checkpoint"``), else :data:`DEFAULT_SPACING_ZYX`
    (``"default"``). Spacings are (z, y, x) mm tuples or ``"native"``. ``model`` is read only for
    its ``checkpoint_extra`` and ``checkpoint_path``."""
    if head_meta is not None and "spacing_zyx" in head_meta:
        return spacing_from_metadata(head_meta["spacing_zyx"], probe), "probe"
    extra = getattr(model, "checkpoint_extra", None) or {}
    if "spacing_zyx" in extra:
        return spacing_from_metadata(extra["spacing_zyx"], getattr(model, "checkpoint_path", None)), "checkpoint"
    return DEFAULT_SPACING_ZYX, "default"
