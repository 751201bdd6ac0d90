"""What pretraining draws: which scan a crop comes from (case weights) and how it is varied.

Two augmentations that keep a CT's anatomy meaningful (no flips: the liver stays on the right):

- **intensity jitter** ``a``: the windowed crop ``x`` becomes ``clip((x - 0.5) * c + 0.5 + b, 0, 1)``
  with contrast ``c`` uniform in ``[1 - a, 1 + a]`` and offset ``b`` uniform in ``[-a/2, a/2]``
  (window units: 0.1 is 42.5 HU), as scanners and reconstruction kernels differ in calibration;
- **scale jitter** ``s``: along each axis independently a region ``round(S * f)`` voxels long with
  ``f`` uniform in ``[1 - s, 1 + s]``, centred on the drawn crop, resized (trilinear) to ``S``: the
  spacing varies by up to ``s`` per axis, as slice thickness and field of view do between scans.

The target is the augmented crop itself (the model reconstructs what it is shown). Every draw
comes from a generator seeded by the item, so runs stay reproducible and resumable.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from ..data import crop_box
from ..errors import NemesisInputError

__all__ = ["Augment", "case_weights", "pattern_shares"]


@dataclass(frozen=True)
class Augment:
    intensity: float = 0.0
    scale: float = 0.0

    def __post_init__(self) -> None:
        for name, v, hi in (("intensity jitter", self.intensity, 1.0), ("scale jitter", self.scale, 0.5)):
            if not (0.0 <= float(v) <= hi):
                raise NemesisInputError(f"{name} {v}: must be between 0 and {hi}")

    @property
    def active(self) -> bool:
        return self.intensity > 0 or self.scale > 0

    def crop(self, volume: np.ndarray, origin_zyx: Sequence[int], superpatch: int,
             rng: np.random.Generator, plain: np.ndarray | None = None) -> np.ndarray:
        """The (S, S, S) float32 crop at ``origin_zyx`` with this augmentation applied (``plain``: that
        crop already cut, used as it is when there is no scale jitter)."""
        s = int(superpatch)
        if self.scale == 0 and plain is not None:
            patch = plain
        elif self.scale > 0:
            sizes = [max(2, int(round(s * f))) for f in rng.uniform(1 - self.scale, 1 + self.scale, 3)]
            start = [int(o) + (s - n) // 2 for o, n in zip(origin_zyx, sizes)]
            region = torch.from_numpy(crop_box(volume, start, sizes))[None, None]
            patch = torch.nn.functional.interpolate(region, size=(s, s, s), mode="trilinear",
                                                    align_corners=False)[0, 0].numpy()
        else:
            patch = crop_box(volume, origin_zyx, (s, s, s))
        if self.intensity > 0:
            c = rng.uniform(1 - self.intensity, 1 + self.intensity)
            b = rng.uniform(-self.intensity / 2, self.intensity / 2)
            patch = np.clip((patch - 0.5) * c + 0.5 + b, 0.0, 1.0)
        return np.ascontiguousarray(patch, dtype=np.float32)


def case_weights(case_ids: Sequence[str], patterns: Mapping[str, float] | None, where: str = "") -> np.ndarray | None:
    """Sampling probabilities of ``case_ids``: a case gets the weight of the first pattern
    (``fnmatch``, e.g. ``"real*"``) its id matches, else 1. ``None`` when no pattern is given
    (cases drawn uniformly, as before). A pattern that matches no case is refused in one line."""
    if not patterns:
        return None
    ids = list(case_ids)
    w = np.ones(len(ids), dtype=np.float64)
    for pattern, weight in patterns.items():
        if not (float(weight) >= 0 and np.isfinite(float(weight))):
            raise NemesisInputError(f"{where}: case weight {pattern}={weight}: a weight is a number >= 0")
        hits = [i for i, cid in enumerate(ids) if fnmatch.fnmatchcase(cid, pattern)]
        if not hits:
            shown = ", ".join(ids[:6]) + (", ..." if len(ids) > 6 else "")
            raise NemesisInputError(f"{where}: case weight {pattern}={weight} matches no case (ids: {shown})")
    for i, cid in enumerate(ids):
        pattern = _first_match(cid, patterns)
        if pattern is not None:
            w[i] = float(patterns[pattern])
    if w.sum() <= 0:
        raise NemesisInputError(f"{where}: every case has weight 0: nothing to sample")
    return w / w.sum()


def pattern_shares(case_ids: Sequence[str], probabilities, patterns: Mapping[str, float] | None) -> dict[str, float]:
    """The expected share of the crops each pattern's cases draw (``{}`` when cases are drawn alike)."""
    if probabilities is None or not patterns:
        return {}
    share = {p: 0.0 for p in patterns}
    for cid, p in zip(case_ids, probabilities):
        pattern = _first_match(cid, patterns)
        if pattern is not None:
            share[pattern] += float(p)
    return {p: round(v, 4) for p, v in share.items()}


def _first_match(case_id: str, patterns: Mapping[str, float]) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(case_id, p)), None)
