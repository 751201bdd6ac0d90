"""Which of a viewer's layers a side view shows, and keeping a copy in step with its original.

A copy shares its original's data array (no second copy of a CT in memory) and takes its look
(visibility, opacity, contrast limits, colormap, blending, transform). The transparent grid
picking layer is not copied: the side views are for looking, picking happens on the main canvas.
"""

from __future__ import annotations

#: Properties a copy takes from its original whenever one of them changes.
MIRRORED = ("visible", "opacity", "blending", "contrast_limits", "colormap", "gamma", "scale", "translate", "affine",
            "edge_color", "length", "vector_style", "interpolation2d")

#: The original's events that ask for a copy to be brought in step.
WATCHED = frozenset(MIRRORED) | {"data", "set_data", "rotate", "shear", "name", "edge_width"}

_KINDS = ("image", "labels", "vectors")

#: The session's roles whose layers cover the whole scan: the side views show copies of these. The
#: selected superpatch's reconstruction and attention maps live inside one box (the main canvas shows
#: them); the grid's picking layer is transparent; the grid's lines and the selection outline each
#: side view draws itself, in its plane (:mod:`.lines`).
_WHOLE_SCAN_ROLES = ("scan", "error_map")
_WHOLE_SCAN_PREFIXES = ("prob:", "patch:", "map:")  # map: the label states


def whole_scan_role(role: str) -> bool:
    return role in _WHOLE_SCAN_ROLES or role.startswith(_WHOLE_SCAN_PREFIXES)


def mirrored_kind(layer, skip_roles: dict) -> bool:
    """Whether a side view shows a copy of ``layer``: images, label maps and line layers, not the
    session's grid picking layer, not a 4D or RGB layer."""
    from ..._napari_private import layer_type

    if any(layer is other for other in skip_roles.values()):
        return False
    if layer_type(layer) not in _KINDS or getattr(layer, "rgb", False):
        return False
    return getattr(layer, "ndim", 0) == 3


def side_blending(copy, blending) -> str:
    """An image's blending in a side view: without depth ("translucent" writes depth, and the lines
    drawn after it at the same depth would then not show over a heatmap)."""
    from ..._napari_private import layer_type

    blending = str(getattr(blending, "value", blending))
    if blending == "translucent" and layer_type(copy) == "image":
        return "translucent_no_depth"
    return blending


def make_copy(layer):
    """A new layer of the same kind showing ``layer``'s data (shared, not copied) as it looks now."""
    from napari.layers import Layer

    data, state, kind = layer.as_layer_data_tuple()
    state = dict(state)
    state.pop("metadata", None)
    state["name"] = layer.name
    if kind == "image" and "blending" in state:
        state["blending"] = "translucent_no_depth" if str(state["blending"]) == "translucent" else state["blending"]
    copy = Layer.create(data, state, kind)
    copy.metadata["mirror_of"] = id(layer)
    return copy


def bring_in_step(copy, original, width_factor: float = 1.0) -> None:
    """Copy the original's look and data onto ``copy`` (only what differs: each change redraws).
    Lines are ``width_factor`` times as wide (in mm) as the original's: a side view shows more mm
    per screen pixel than the main canvas, and its lines should look as wide."""
    import numpy as np

    if hasattr(original, "edge_width") and hasattr(copy, "edge_width"):
        width = float(np.max(original.edge_width)) * float(width_factor)
        if not np.isclose(float(np.max(copy.edge_width)), width):
            copy.edge_width = width

    if copy.data is not original.data:
        copy.data = original.data
    for name in MIRRORED:
        if not hasattr(original, name) or not hasattr(copy, name):
            continue
        value = getattr(original, name)
        if name == "blending":
            value = side_blending(copy, value)
        try:
            same = _same(getattr(copy, name), value, np)
        except Exception:  # a value numpy cannot compare: set it
            same = False
        if not same:
            try:
                setattr(copy, name, value)
            except (TypeError, ValueError):  # a property this napari will not take across layers
                pass


def _same(a, b, np) -> bool:
    if a is b:
        return True
    if hasattr(a, "affine_matrix") and hasattr(b, "affine_matrix"):
        return bool(np.array_equal(a.affine_matrix, b.affine_matrix))
    if isinstance(a, (str, int, float, bool)) or isinstance(b, (str, int, float, bool)):
        return a == b
    if isinstance(a, (tuple, list, np.ndarray)):
        return bool(np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object)))
    return a == b
