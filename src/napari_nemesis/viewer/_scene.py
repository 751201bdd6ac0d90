"""The napari layers a session owns, by role: created once, then updated in place.

Runs on the GUI thread only (workers hand their results over through signals). Re-running a job
assigns new data to the existing layers instead of removing and re-adding them, so the user's
contrast, opacity, visibility and layer order survive. The numbers come from :mod:`._layers`.

Roles: ``scan``, ``grid`` (Labels, one voxel per superpatch: hover, selection highlight),
``grid_lines`` (Vectors: the lattice, lines in 2D and wireframe in 3D), ``prob:<organ>`` (organ
heatmaps), ``noisy``, ``masked``, ``reconstruction``, ``abs_error``, ``error_map``,
``attention_plane``, ``attention_axis``.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from . import _layers as L

RECON_ROLES = ("noisy", "masked", "reconstruction", "abs_error")
ATTENTION_ROLES = ("attention_plane", "attention_axis")
OVERLAY_ROLES = ("grid_lines", "grid")  # kept on top, in this order (grid topmost)
#: Air in HU: what a reconstruction layer shows where nothing was reconstructed yet.
EMPTY_HU = -1024.0
_SELECTION_RGBA = (1.0, 0.85, 0.0, 1.0)
_LINE_WIDTH_MM = 1.2


def prob_role(organ: str) -> str:
    return f"prob:{organ}"


class Scene:
    """Layer handling for one viewer: add or update a layer by role; nothing else touches them."""

    def __init__(self, viewer) -> None:
        self._viewer = weakref.ref(viewer)
        self._layers: dict[str, Any] = {}
        self._linked: list[Any] = []

    # ---- bookkeeping ---------------------------------------------------------------------------
    @property
    def viewer(self):
        return self._viewer()

    @property
    def layers(self) -> dict[str, Any]:
        """The layers this scene owns and that are still in the viewer, by role."""
        self._layers = {r: lay for r, lay in self._layers.items() if lay in self.viewer.layers}
        return dict(self._layers)

    def get(self, role: str):
        layer = self._layers.get(role)
        return layer if layer is not None and layer in self.viewer.layers else None

    def remove(self, roles) -> None:
        for role in list(roles):
            layer = self._layers.pop(role, None)
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)

    def roles_with_prefix(self, prefix: str) -> list[str]:
        return [r for r in self.layers if r.startswith(prefix)]

    def _put(self, role: str, kind: str, data, world: np.ndarray, **kwargs):
        """Add the layer of ``role``, or give the existing one new data and transform (in place)."""
        transform = L.transform_kwargs(world)
        layer = self.get(role)
        if layer is not None and layer._type_string == kind:
            layer.data = data
            _set_transform(layer, transform)
            for key in ("features",):
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
            return layer
        if layer is not None:
            self.remove([role])
        add = getattr(self.viewer, f"add_{kind}")
        layer = add(data, axis_labels=L.AXIS_LABELS, units=L.UNITS, **transform, **kwargs)
        layer.metadata["nemesis_role"] = role
        self._layers[role] = layer
        return layer

    def raise_overlays(self, activate: bool = True) -> None:
        """Keep the grid lines and the grid on top, and the grid active (hover shows its features)."""
        layers = self.viewer.layers
        for role in OVERLAY_ROLES:
            layer = self.get(role)
            if layer is not None:
                layers.move(layers.index(layer), len(layers))
        grid = self.get("grid")
        if activate and grid is not None:
            layers.selection.active = grid

    # ---- scan and grid ------------------------------------------------------------------------
    def adopt_scan(self, layer) -> None:
        self._layers["scan"] = layer

    def show_grid(self, grid) -> None:
        world = L.grid_world_affine(grid)
        cell_mm = float(np.mean(np.linalg.norm(world[:3, :3], axis=0)))
        from napari.utils.colormaps import DirectLabelColormap

        colormap = DirectLabelColormap(color_dict={None: _SELECTION_RGBA, 0: (0.0, 0.0, 0.0, 0.0)})
        lines = self._put(
            "grid_lines", "vectors", L.grid_lattice_vectors(grid.grid_shape), world, name="superpatch grid lines",
            edge_width=_LINE_WIDTH_MM / cell_mm, length=1.0, edge_color="yellow", vector_style="line",
            opacity=0.8,
        )
        lines.edge_width = _LINE_WIDTH_MM / cell_mm
        layer = self._put(
            "grid", "labels", L.grid_ids(grid.grid_shape), world, name="superpatch grid",
            features=L.grid_features(grid.grid_shape), opacity=0.35, colormap=colormap,
        )
        layer.show_selected_label = True
        layer.selected_label = 0
        self.raise_overlays()

    def show_selection(self, index: int | None) -> None:
        grid = self.get("grid")
        if grid is not None:
            grid.selected_label = 0 if index is None else int(index) + 1
            grid.show_selected_label = True

    def set_grid_features(self, grid_shape, columns: dict[str, np.ndarray]) -> None:
        grid = self.get("grid")
        if grid is not None:
            grid.features = L.grid_features(grid_shape, columns)

    def set_window(self, preset: str) -> None:
        level, width = L.WINDOW_PRESETS[preset]
        scan = self.get("scan")
        if scan is not None:
            scan.contrast_limits = L.window_limits(level, width)  # linked layers follow

    # ---- heatmaps ------------------------------------------------------------------------------
    def show_probabilities(self, grid, values: np.ndarray, organs: list[str], visible: set[str]) -> None:
        from napari.utils.colormaps import Colormap

        world = L.grid_world_affine(grid)
        wanted = {prob_role(o) for o in organs}
        self.remove([r for r in self.roles_with_prefix("prob:") if r not in wanted])
        for k, organ in enumerate(organs):
            role = prob_role(organ)
            existed = self.get(role) is not None
            rgb = L.ORGAN_COLORS.get(organ, (1.0, 1.0, 1.0))
            layer = self._put(
                role, "image", L.block_image(values[:, k], grid.grid_shape), world,
                name=f"P({organ})", colormap=Colormap(L.heatmap_colors(rgb), name=f"nemesis {organ}"),
                contrast_limits=(0.0, 1.0), opacity=0.6, blending="translucent", interpolation2d="nearest",
                interpolation3d="nearest", visible=organ in visible,
            )
            if existed:
                layer.contrast_limits = (0.0, 1.0)
        self.raise_overlays()

    def set_visible(self, role: str, visible: bool) -> None:
        layer = self.get(role)
        if layer is not None:
            layer.visible = bool(visible)

    def show_error_map(self, grid, rmse_hu: np.ndarray) -> None:
        from napari.utils.colormaps import Colormap

        values = L.block_image(rmse_hu, grid.grid_shape)
        finite = values[np.isfinite(values)]
        top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        layer = self._put(
            "error_map", "image", values, L.grid_world_affine(grid), name="reconstruction error map (RMSE HU)",
            colormap=Colormap(_inferno_over_ct(), name="nemesis error"), contrast_limits=(0.0, top),
            opacity=0.6, blending="translucent", interpolation2d="nearest", interpolation3d="nearest",
        )
        layer.contrast_limits = (0.0, top)
        self.raise_overlays()

    # ---- reconstruction ------------------------------------------------------------------------
    def begin_reconstruction(self, shape, world: np.ndarray) -> dict[str, Any]:
        """Empty reconstruction layers of ``shape`` placed by ``world``, reusing arrays in place."""
        out = {}
        names = {"noisy": "noisy input", "masked": "masked input", "reconstruction": "reconstruction",
                 "abs_error": "absolute error (HU)"}
        for role in RECON_ROLES:
            fill = 0.0 if role == "abs_error" else EMPTY_HU
            layer = self.get(role)
            if layer is not None and tuple(layer.data.shape) == tuple(shape):
                layer.data[...] = fill
                _set_transform(layer, L.transform_kwargs(world))
                layer.refresh()
                out[role] = layer
                continue
            data = np.full(shape, fill, dtype=np.float32)
            if role == "abs_error":
                kwargs = {"colormap": "inferno", "contrast_limits": (0.0, 200.0), "visible": False}
            else:
                scan = self.get("scan")
                limits = tuple(scan.contrast_limits) if scan is not None else L.window_limits(
                    *L.WINDOW_PRESETS[L.DEFAULT_WINDOW])
                kwargs = {"colormap": "gray", "contrast_limits": limits, "visible": role == "reconstruction"}
            out[role] = self._put(role, "image", data, world, name=names[role], **kwargs)
        self._link_contrast()
        self.raise_overlays()
        return out

    def paste(self, role: str, slices, array: np.ndarray) -> None:
        layer = self.get(role)
        if layer is not None:
            layer.data[slices] = array

    def refresh(self, roles) -> None:
        for role in roles:
            layer = self.get(role)
            if layer is not None:
                layer.refresh()

    def _link_contrast(self) -> None:
        from napari.experimental import link_layers, unlink_layers

        group = [self.get(r) for r in ("scan", "noisy", "masked", "reconstruction")]
        group = [g for g in group if g is not None]
        if [id(g) for g in group] == [id(g) for g in self._linked]:
            return
        if self._linked:
            try:
                unlink_layers(self._linked, ("contrast_limits",))
            except (KeyError, ValueError):  # a layer was removed meanwhile
                pass
        if len(group) > 1:
            link_layers(group, ("contrast_limits",))
        self._linked = group

    # ---- attention ----------------------------------------------------------------------------
    def show_attention(self, plane: np.ndarray, axis: np.ndarray, world: np.ndarray) -> None:
        from napari.utils.colormaps import Colormap

        for role, values, rgb, name in (("attention_plane", plane, (1.0, 0.3, 0.1), "attention: plane stream"),
                                        ("attention_axis", axis, (0.2, 0.9, 0.3), "attention: axis stream")):
            top = float(np.max(values)) if values.size and np.max(values) > 0 else 1.0
            layer = self._put(
                role, "image", np.asarray(values, dtype=np.float32), world, name=name,
                colormap=Colormap(L.heatmap_colors(rgb, max_alpha=0.95), name=f"nemesis {role}"),
                contrast_limits=(0.0, top), opacity=0.8, blending="translucent", interpolation2d="nearest",
                interpolation3d="nearest",
            )
            layer.contrast_limits = (0.0, top)
        self.raise_overlays()

    # ---- camera -------------------------------------------------------------------------------
    def orient_camera(self) -> None:
        """Radiological orientation: superior up when z is the vertical screen axis (coronal,
        sagittal); anterior up in axial slices (y increases downward)."""
        viewer = self.viewer
        if viewer.dims.ndisplay != 2 or viewer.dims.ndim < 3:
            return
        vertical = viewer.dims.displayed[0] - (viewer.dims.ndim - 3)
        wanted = ("up", "right") if vertical == 0 else ("down", "right")
        if tuple(viewer.camera.orientation2d) != wanted:
            viewer.camera.orientation2d = wanted

    def centre_on(self, world_zyx) -> None:
        viewer = self.viewer
        point = list(viewer.dims.point)
        nd = len(point)
        for axis in range(3):
            point[nd - 3 + axis] = float(world_zyx[axis])
        for axis in viewer.dims.not_displayed:
            viewer.dims.set_point(axis, point[axis])
        viewer.camera.center = tuple(point[a] for a in viewer.dims.displayed)


def _set_transform(layer, transform: dict[str, Any]) -> None:
    nd = layer.ndim
    if "affine" in transform:
        layer.scale = (1.0,) * nd
        layer.translate = (0.0,) * nd
        layer.affine = transform["affine"]
    else:
        layer.affine = np.eye(nd + 1)
        layer.scale = transform["scale"]
        layer.translate = transform["translate"]


def _inferno_over_ct() -> np.ndarray:
    """inferno from transparent (0) to opaque yellow (max): low error leaves the anatomy visible."""
    stops = np.array([[0.0, 0.0, 0.0], [0.34, 0.06, 0.43], [0.73, 0.21, 0.33], [0.98, 0.55, 0.04],
                      [0.99, 1.0, 0.64]])
    alpha = np.array([0.0, 0.5, 0.7, 0.85, 0.95])
    return np.column_stack([stops, alpha]).astype(np.float32)
