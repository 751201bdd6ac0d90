"""A synthetic abdominal CT generator (BTCV layout) for tests, CI and benchmarks.

Each case is drawn from ``numpy.random.default_rng([seed, case_index])`` and is therefore
deterministic per (seed, case). The anatomy is built in millimetres in a patient frame
(``X`` toward the patient's left, ``Y`` posterior, ``Z`` superior, ``Z = 0`` near the renal
hila), then sampled on the case's voxel grid, so every size shows the same anatomy:

* body outline with subcutaneous fat, abdominal wall muscle, visceral fat;
* spine (vertebral bodies, discs, canal, posterior elements), paraspinal and psoas muscles,
  ribs and costal cartilage, iliac wings low down;
* lung bases and the heart above a two-domed diaphragm;
* the 8 labelled organs with BTCV ids (liver 6, spleen 1, kidneys 2/3, gallbladder 4,
  stomach 7 with air/fluid, pancreas 11, aorta 8 down to its bifurcation), plus unlabelled IVC,
  iliac vessels, colon and small bowel with gas;
* a contrast phase per case (native, arterial, portal venous) setting organ HU;
* correlated Gaussian noise (10-22 HU) and -1024 outside the reconstruction circle.

Organ positions, sizes, rotations and shapes vary per case. Sizes: ``"default"`` is realistic
(512 x 512, 0.7-0.9 mm in-plane, 2.5-5 mm slices, 300-380 mm in z), ``"small"`` is 128 x 128
at about 3 mm in-plane with 3-5 mm slices (every organ still present), and ``shape=(z, y, x)``
forces a grid (spacing then follows from the drawn field of view).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import write_json_atomic
from ..errors import NemesisCancelled, NemesisInputError
from .datasets import BTCV_CASE_IDS
from .io import volume_from_array, write_volume
from .organs import ORGANS

__all__ = ["PHANTOM_SIZES", "make_phantom", "phantom_case_id", "write_phantom_dataset"]

#: Named phantom sizes: in-plane matrix and slice thickness choices.
PHANTOM_SIZES = {
    "default": {"matrix": 512, "slice_mm": (2.5, 3.0, 4.0, 5.0)},
    "small": {"matrix": 128, "slice_mm": (3.0, 4.0, 5.0)},
}

_PHASE_P = {"native": 0.2, "arterial": 0.3, "portal": 0.5}
_A_STD, _B_STD = 155.0, 115.0  # half width / half depth of the standard body (mm)


def _rot(rx: float = 0.0, ry: float = 0.0, rz: float = 0.0) -> np.ndarray:
    """Rotation matrix (X, Y, Z frame), angles in radians, applied z @ y @ x."""
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


class _Canvas:
    """The voxel grid with its mm coordinates and the image / label arrays being painted."""

    def __init__(self, shape, spacing, x0, y0, z0):
        self.shape = tuple(int(s) for s in shape)
        self.spacing = tuple(float(s) for s in spacing)
        nz, ny, nx = self.shape
        sz, sy, sx = self.spacing
        self.Z = (z0 + np.arange(nz) * sz).astype(np.float32)
        self.Y = (y0 + np.arange(ny) * sy).astype(np.float32)
        self.X = (x0 + np.arange(nx) * sx).astype(np.float32)
        self.img = np.full(self.shape, -1000.0, dtype=np.float32)
        self.lab = np.zeros(self.shape, dtype=np.uint8)

    def box(self, lo, hi):
        """Slices (z, y, x) covering mm box lo..hi (X, Y, Z order), or None if empty; coords."""
        sl = []
        for axis_vals, a, b in ((self.Z, lo[2], hi[2]), (self.Y, lo[1], hi[1]), (self.X, lo[0], hi[0])):
            i0 = int(np.searchsorted(axis_vals, a, side="left"))
            i1 = int(np.searchsorted(axis_vals, b, side="right"))
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        z = self.Z[sl[0]][:, None, None]
        y = self.Y[sl[1]][None, :, None]
        x = self.X[sl[2]][None, None, :]
        return tuple(sl), (x, y, z)

    def paint(self, sl, mask, hu, label=None):
        if mask is None or not mask.any():
            return
        region = self.img[sl]
        mask = np.broadcast_to(mask, region.shape)
        if np.ndim(hu) == 0:
            region[mask] = hu
        else:
            region[mask] = np.broadcast_to(hu, mask.shape)[mask]
        if label is not None:
            self.lab[sl][mask] = label


class _Anatomy:
    def __init__(self, rng: np.random.Generator, canvas: _Canvas, a: float, b: float):
        self.rng = rng
        self.c = canvas
        self.a, self.b = a, b
        self.kx, self.ky = a / _A_STD, b / _B_STD

    # ---- helpers ---------------------------------------------------------------------
    def pos(self, X, Y, Z, jitter=6.0):
        """A standard-body position scaled to this body, with random jitter (mm)."""
        j = self.rng.normal(0.0, jitter, 3) if jitter else np.zeros(3)
        return np.array([X * self.kx + j[0], Y * self.ky + j[1], Z + j[2]])

    def wobble(self):
        return [(self.rng.uniform(0.03, 0.08), self.rng.normal(size=3) * self.rng.uniform(1.5, 3.0),
                 self.rng.uniform(0, 2 * math.pi)) for _ in range(3)]

    def ellipsoid(self, center, axes, R=None, wobble=None, margin=1.25):
        """(slices, mask, q) of an ellipsoid (optionally rotated and wobbly); q <= 1 inside."""
        center = np.asarray(center, dtype=np.float64)
        axes = np.asarray(axes, dtype=np.float64)
        ext = axes.max() * margin
        got = self.c.box(center - ext, center + ext)
        if got is None:
            return None, None, None
        sl, (x, y, z) = got
        dx, dy, dz = x - center[0], y - center[1], z - center[2]
        if R is not None:
            Rt = np.asarray(R, dtype=np.float32).T  # world -> body frame
            u = Rt[0, 0] * dx + Rt[0, 1] * dy + Rt[0, 2] * dz
            v = Rt[1, 0] * dx + Rt[1, 1] * dy + Rt[1, 2] * dz
            w = Rt[2, 0] * dx + Rt[2, 1] * dy + Rt[2, 2] * dz
        else:
            u, v, w = dx, dy, dz
        u, v, w = u / axes[0], v / axes[1], w / axes[2]
        q = u * u + v * v + w * w
        if wobble:
            r = np.sqrt(q) + 1e-6
            f = 1.0
            for amp, freq, phase in wobble:
                f = f + amp * np.sin((freq[0] * u + freq[1] * v + freq[2] * w) / r + phase)
            q = q / (f * f)
        return sl, q <= 1.0, q

    def tube(self, points, radii, step=None):
        """(slices, nd) of a tube along a polyline: nd = distance / radius to the centre line."""
        pts = np.asarray(points, dtype=np.float64)
        rad = np.asarray(radii, dtype=np.float64)
        # densify
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        step = step or max(1.0, float(rad.min()) / 3.0)
        dense, dr = [pts[0]], [rad[0]]
        for k in range(len(seg)):
            n = max(1, int(math.ceil(seg[k] / step)))
            for t in np.arange(1, n + 1) / n:
                dense.append(pts[k] * (1 - t) + pts[k + 1] * t)
                dr.append(rad[k] * (1 - t) + rad[k + 1] * t)
        dense, dr = np.asarray(dense), np.asarray(dr)
        lo = (dense - dr[:, None]).min(axis=0)
        hi = (dense + dr[:, None]).max(axis=0)
        got = self.c.box(lo, hi)
        if got is None:
            return None, None
        sl, _ = got
        nd = np.full(tuple(s.stop - s.start for s in sl), np.inf, dtype=np.float32)
        for p, r in zip(dense, dr):
            sub = self.c.box(p - r, p + r)
            if sub is None:
                continue
            ssl, (x, y, z) = sub
            d = np.sqrt((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / np.float32(r)
            loc = tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(ssl, sl))
            np.minimum(nd[loc], d, out=nd[loc])
        return sl, nd

    def bezier(self, p0, p1, p2, n=12):
        t = np.linspace(0, 1, n)[:, None]
        return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def _phase_hu(rng, phase):
    u = rng.uniform
    table = {
        "native": dict(blood=u(35, 50), vein=u(35, 50), liver=u(50, 65), spleen=u(40, 50),
                       cortex=u(28, 38), medulla=u(25, 35), pancreas=u(35, 48), wall=u(35, 45),
                       muscle=u(45, 55), bowel_wall=u(30, 45)),
        "arterial": dict(blood=u(220, 330), vein=u(70, 110), liver=u(65, 85), spleen=u(95, 125),
                         cortex=u(170, 220), medulla=u(60, 95), pancreas=u(100, 130), wall=u(70, 95),
                         muscle=u(50, 60), bowel_wall=u(60, 90)),
        "portal": dict(blood=u(140, 190), vein=u(140, 180), liver=u(95, 120), spleen=u(105, 130),
                       cortex=u(150, 180), medulla=u(130, 160), pancreas=u(85, 105), wall=u(80, 100),
                       muscle=u(55, 65), bowel_wall=u(70, 95)),
    }
    return table[phase]


def _grid_for(rng, size: str, shape):
    """Draw the field of view and pick the voxel grid: (shape zyx, spacing zyx, body a, b, z extent)."""
    a = rng.uniform(135.0, 178.0)
    b = a * rng.uniform(0.66, 0.80)
    extent = rng.uniform(300.0, 380.0)
    fov = min(500.0, 2 * a + rng.uniform(40.0, 90.0))
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 8:
            raise NemesisInputError(f"phantom shape {shape}: need three sizes (z, y, x) >= 8")
        nz, ny, nx = shape
        sx = fov / nx
        sy = fov / ny
        sz = extent / nz
        return (nz, ny, nx), (sz, sy, sx), a, b, extent
    if size not in PHANTOM_SIZES:
        raise NemesisInputError(f"phantom size {size!r}: choose one of {', '.join(PHANTOM_SIZES)}")
    spec = PHANTOM_SIZES[size]
    m = spec["matrix"]
    s_inplane = fov / m
    if size == "default":
        s_inplane = float(np.clip(s_inplane, 0.70, 0.90))
        a = min(a, 0.5 * m * s_inplane - 15.0)
        b = min(b, a * 0.80)
    s_inplane = round(s_inplane, 4)
    sz = float(rng.choice(spec["slice_mm"]))
    nz = int(math.ceil(extent / sz))
    return (nz, m, m), (sz, s_inplane, s_inplane), a, b, nz * sz


def _make_phantom(seed, case_index, shape, size):
    rng = np.random.default_rng([int(seed), int(case_index)])
    (nz, ny, nx), (sz, sy, sx), a, b, extent = _grid_for(rng, size, shape)
    z_top = rng.uniform(165.0, 195.0)
    z0 = z_top - (nz - 1) * sz
    x0 = -(nx - 1) / 2 * sx
    y0 = -(ny - 1) / 2 * sy  # body centred in the field of view
    c = _Canvas((nz, ny, nx), (sz, sy, sx), x0, y0, z0)
    A = _Anatomy(rng, c, a, b)
    phase = str(rng.choice(list(_PHASE_P), p=list(_PHASE_P.values())))
    hu = _phase_hu(rng, phase)
    noise_sigma = rng.uniform(10.0, 22.0)

    X2 = c.X[None, :]
    Y2 = c.Y[:, None]
    # ---- body layers, per slice --------------------------------------------------------
    fat = rng.uniform(8.0, 35.0)
    wall = rng.uniform(7.0, 13.0)
    post_fat = fat * rng.uniform(0.4, 0.7)
    p_exp = rng.uniform(2.1, 2.6)
    cavity = np.zeros(c.shape, dtype=bool)
    ax2, ay2 = np.abs(X2) ** p_exp, np.abs(Y2) ** p_exp
    for k, Z in enumerate(c.Z):
        flare = 1.0 + 0.08 * float(np.clip((-Z - 90.0) / 100.0, 0, 1))
        chest = 1.0 - 0.04 * float(np.clip((Z - 100.0) / 80.0, 0, 1))
        ak, bk = a * flare * chest, b * chest
        body = ax2 / ak ** p_exp + ay2 / bk ** p_exp <= 1.0
        # posterior fat is thinner: shift the inner contours backwards
        af, bf = ak - fat, bk - 0.5 * (fat + post_fat)
        shift = 0.5 * (fat - post_fat)
        muscle = ax2 / af ** p_exp + np.abs(Y2 - shift) ** p_exp / bf ** p_exp <= 1.0
        ai, bi = af - wall, bf - wall
        inner = ax2 / ai ** p_exp + np.abs(Y2 - shift) ** p_exp / bi ** p_exp <= 1.0
        sl = c.img[k]
        sl[body] = -105.0
        sl[muscle] = hu["muscle"]
        sl[inner] = -95.0
        cavity[k] = inner
    # skin
    # (the outermost fat voxels are left as fat; skin is thinner than a voxel at most sizes)

    # ---- landmarks ---------------------------------------------------------------------
    yv = (b - post_fat - wall - 40.0)  # vertebral body centre (posterior)
    spine_x = rng.normal(0, 2.0)

    # diaphragm (Z of the dome surface over X, Y)
    zr = rng.uniform(125.0, 150.0)
    zl = zr - rng.uniform(5.0, 20.0)
    xr, xl = -0.45 * a, 0.45 * a
    dome_r = zr - 0.0055 * ((X2 - xr) ** 2 + (1.1 * (Y2 + 0.0)) ** 2)
    dome_l = zl - 0.0055 * ((X2 - xl) ** 2 + (1.1 * Y2) ** 2)
    zd = np.maximum(dome_r, dome_l) - 0.35 * np.clip(Y2, 0, None)  # posterior recesses lower
    zd = zd.astype(np.float32)

    def below_diaphragm(sl, z):
        return z < zd[None, sl[1], sl[2]]

    def in_cavity(sl):
        return cavity[sl]

    # ---- bowel: colon frame and small bowel loops (unlabelled) --------------------------
    def bowel_content():
        r = rng.random()
        if r < 0.4:
            return -1000.0
        if r < 0.7:
            return rng.uniform(0, 25)
        return rng.uniform(-250, 50)  # stool-like

    colon_r = rng.uniform(18.0, 26.0)
    hepatic = A.pos(-105, -10, rng.uniform(-20, 10))
    splenic = A.pos(108, 5, rng.uniform(20, 45))
    colon_pts = [A.pos(-100, 10, -170), hepatic, A.pos(-40, -85, rng.uniform(-45, -15)),
                 A.pos(40, -80, rng.uniform(-35, -5)), splenic, A.pos(105, 20, -170)]
    sl, nd = A.tube(colon_pts, [colon_r] * len(colon_pts))
    if sl is not None:
        m = (nd <= 1.0) & in_cavity(sl)
        wallm = m & (nd > 1.0 - 3.0 / colon_r)
        c.paint(sl, m, bowel_content())
        c.paint(sl, wallm, hu["bowel_wall"])
    for _ in range(int(rng.integers(10, 18))):
        p0 = A.pos(rng.uniform(-70, 70), rng.uniform(-70, 10), rng.uniform(-150, -20), jitter=0)
        pts = [p0]
        for _k in range(3):
            pts.append(pts[-1] + rng.normal(0, 25, 3))
        r = rng.uniform(11, 16)
        sl, nd = A.tube(pts, [r] * len(pts))
        if sl is None:
            continue
        m = (nd <= 1.0) & in_cavity(sl)
        c.paint(sl, m, bowel_content())
        c.paint(sl, m & (nd > 1.0 - 2.5 / r), hu["bowel_wall"])

    # ---- liver ---------------------------------------------------------------------------
    s_liver = rng.uniform(0.74, 0.92)
    liver_c1 = A.pos(-60, -5, 60)
    liver_c2 = liver_c1 + np.array([70 * A.kx, -35 * A.ky, 28]) + rng.normal(0, 5, 3)
    R1 = _rot(rng.normal(0, 0.08), rng.normal(0, 0.08), rng.normal(0, 0.1))
    sl, m1, _ = A.ellipsoid(liver_c1, np.array([78 * A.kx, 82 * A.ky, 72]) * s_liver, R1, A.wobble())
    lm = np.zeros(c.shape, dtype=bool)
    if sl is not None:
        lm[sl] |= m1
    sl2, m2, _ = A.ellipsoid(liver_c2, np.array([62 * A.kx, 38 * A.ky, 34]) * s_liver,
                             _rot(0, rng.normal(0, 0.1), rng.normal(0.2, 0.1)), A.wobble())
    if sl2 is not None:
        lm[sl2] |= m2
    lm &= cavity
    lz = np.nonzero(lm.any(axis=(1, 2)))[0]
    if len(lz):
        zs = slice(int(lz[0]), int(lz[-1]) + 1)
        ys_ = np.nonzero(lm.any(axis=(0, 2)))[0]
        xs_ = np.nonzero(lm.any(axis=(0, 1)))[0]
        lsl = (zs, slice(int(ys_[0]), int(ys_[-1]) + 1), slice(int(xs_[0]), int(xs_[-1]) + 1))
        z3 = c.Z[lsl[0]][:, None, None]
        m = lm[lsl] & below_diaphragm(lsl, z3)
        liver_hu = np.full(m.shape, hu["liver"], dtype=np.float32)
        # hepatic / portal vessels: a few tubes, darker (native) or brighter (portal)
        vessel_hu = {"native": hu["liver"] - 15, "arterial": hu["liver"] + 5,
                     "portal": hu["vein"]}[phase]
        hilum = liver_c1 + np.array([25, 10, -15])
        for _ in range(6):
            end = hilum + rng.normal(0, 1, 3) * np.array([55, 45, 45])
            vsl, vnd = A.tube([hilum, end], [rng.uniform(3, 6), 2.0])
            if vsl is None:
                continue
            inter = tuple(slice(max(a_.start, b_.start), min(a_.stop, b_.stop)) for a_, b_ in zip(vsl, lsl))
            if any(s.stop <= s.start for s in inter):
                continue
            vloc = tuple(slice(s.start - v.start, s.stop - v.start) for s, v in zip(inter, vsl))
            lloc = tuple(slice(s.start - l_.start, s.stop - l_.start) for s, l_ in zip(inter, lsl))
            liver_hu[lloc][vnd[vloc] <= 1.0] = vessel_hu
        c.paint(lsl, m, liver_hu, label=6)
    del lm

    # ---- spleen ------------------------------------------------------------------------------
    s_sp = rng.uniform(0.75, 1.3)
    sc = A.pos(92, 25, rng.uniform(55, 85))
    sl, m, q = A.ellipsoid(sc, np.array([24, 52, 46]) * np.array([1, 1, 1]) * s_sp ** (1 / 3) *
                           np.array([1, s_sp ** 0.3, s_sp ** 0.3]),
                           _rot(rng.normal(0, 0.1), rng.normal(0, 0.1), -0.6 + rng.normal(0, 0.1)),
                           A.wobble())
    if sl is not None:
        z3 = c.Z[sl[0]][:, None, None]
        m = m & in_cavity(sl) & below_diaphragm(sl, z3)
        val = np.float32(hu["spleen"])
        if phase == "arterial":  # arciform (zebra) enhancement
            x, y = c.X[sl[2]][None, None, :], c.Y[sl[1]][None, :, None]
            val = val + (25.0 * np.sin((x * 0.6 + y * 0.8 + z3 * 0.3) / 6.0)).astype(np.float32)
        c.paint(sl, m, val, label=1)

    # ---- stomach -----------------------------------------------------------------------------
    fundus = A.pos(60, 0, zl - rng.uniform(25, 40))
    body_p = A.pos(45, -55, rng.uniform(45, 65))
    antrum = A.pos(-5, -65, rng.uniform(20, 40))
    pylorus = A.pos(-30, -45, rng.uniform(15, 30))
    dil = rng.uniform(0.8, 1.2)
    sl, nd = A.tube([fundus, body_p, antrum, pylorus],
                    np.array([34, 30, 20, 11]) * dil)
    if sl is not None:
        z3 = c.Z[sl[0]][:, None, None]
        m = (nd <= 1.0) & in_cavity(sl) & below_diaphragm(sl, z3)
        y3 = c.Y[sl[1]][None, :, None]
        air_level = rng.uniform(-60, 5) * A.ky
        lumen = np.where(y3 < air_level, np.float32(-1000.0),
                         np.float32(rng.choice([10.0, 30.0, 45.0]))).astype(np.float32)
        lumen = np.broadcast_to(lumen, m.shape)
        c.paint(sl, m, lumen, label=7)
        c.paint(sl, m & (nd > 1.0 - 5.0 / (25 * dil)), hu["wall"], label=7)

    # ---- kidneys ------------------------------------------------------------------------------
    zr_k = rng.uniform(-20, 8)
    for side, label in ((-1, 2), (1, 3)):
        zc = zr_k + (rng.uniform(5, 22) if side > 0 else 0.0)
        kc = A.pos(side * 60, 0, zc)
        kc[1] = yv - 5.0 + rng.normal(0, 4.0)
        s_k = rng.uniform(0.88, 1.12)
        R = _rot(rng.normal(0, 0.08), side * rng.uniform(0.12, 0.3), side * rng.uniform(0.35, 0.7))
        axes = np.array([26, 22, 54]) * s_k
        sl, m, q = A.ellipsoid(kc, axes, R, A.wobble())
        if sl is None:
            continue
        m = m & in_cavity(sl)
        inner = q <= (1 - 7.0 / axes[0]) ** 2
        val = np.where(inner, np.float32(hu["medulla"]), np.float32(hu["cortex"])).astype(np.float32)
        c.paint(sl, m, val, label=label)
        # renal sinus fat at the medial hilum (not labelled)
        hc = kc + R @ np.array([-side * 0.0, 0, 0]) + np.array([-side * 14.0, -6.0, 0])
        hsl, hm, _ = A.ellipsoid(hc, np.array([10, 9, 18]) * s_k, R)
        if hsl is not None:
            c.paint(hsl, hm & in_cavity(hsl), -60.0, label=0)

    # ---- pancreas ----------------------------------------------------------------------------
    zp = rng.uniform(15, 35)
    head = A.pos(-22, yv / A.ky - 70, zp - 8)
    neck = A.pos(5, yv / A.ky - 85, zp)
    body = A.pos(40, yv / A.ky - 70, zp + 8)
    tail = A.pos(75, yv / A.ky - 35, zp + rng.uniform(10, 25))
    s_p = rng.uniform(0.85, 1.15)
    sl, nd = A.tube([head, neck, body, tail], np.array([15, 10, 10, 8]) * s_p)
    if sl is not None:
        m = (nd <= 1.0) & in_cavity(sl)
        lob = np.float32(hu["pancreas"]) + rng.normal(0, 8, m.shape).astype(np.float32)
        c.paint(sl, m, lob, label=11)

    # ---- gallbladder (over the liver) --------------------------------------------------------
    gb = A.pos(-40, -50, rng.uniform(10, 30))
    s_g = rng.uniform(0.8, 1.2)
    sl, m, q = A.ellipsoid(gb, np.array([15, 15, 33]) * s_g, _rot(rng.uniform(0.4, 0.8), 0.2, 0.3),
                           A.wobble())
    if sl is not None:
        m = m & in_cavity(sl)
        c.paint(sl, m, rng.uniform(0, 20), label=4)
        c.paint(sl, m & (q > (1 - 2.5 / 15.0) ** 2), hu["wall"], label=4)

    # ---- vessels: aorta (labelled to its bifurcation), IVC, iliacs -----------------------------
    zb = rng.uniform(-115, -80)
    ya = yv - rng.uniform(28, 36)
    xa = spine_x + rng.uniform(8, 18)
    ra = rng.uniform(9, 13)
    ivc_x, ivc_y = spine_x - rng.uniform(20, 28), yv - rng.uniform(22, 30)
    got = c.box([-a, -b, c.Z[0]], [a, b, c.Z[-1]])
    if got is not None:
        sl, (x, y, z) = got
        # gentle lateral course
        xa_z = xa + 4.0 * np.sin(z / 90.0)
        aorta = ((x - xa_z) ** 2 + (y - ya) ** 2 <= ra * ra) & (z >= zb)
        c.paint(sl, aorta, hu["blood"], label=8)
        dz = np.clip(zb - z, 0, None)
        for side in (-1, 1):
            il = ((x - (xa + side * 0.45 * dz)) ** 2 + (y - (ya - 0.15 * dz)) ** 2 <= (0.65 * ra) ** 2) \
                & (z < zb) & cavity[sl]
            c.paint(sl, il, hu["blood"])
        ivc = (((x - ivc_x) / 13.0) ** 2 + ((y - ivc_y) / 9.0) ** 2 <= 1.0) & (z >= zb - 10) \
            & (z <= zr - 10)
        c.paint(sl, ivc & cavity[sl], hu["vein"])

    # ---- spine, muscles, bones ------------------------------------------------------------------
    got = c.box([spine_x - 90, yv - 60, c.Z[0]], [spine_x + 90, b, c.Z[-1]])
    if got is not None:
        sl, (x, y, z) = got
        # paraspinal muscles
        para = ((np.abs(x - spine_x) - 33.0) / 27.0) ** 2 + ((y - (yv + 42.0)) / 22.0) ** 2 <= 1.0
        c.paint(sl, para, hu["muscle"])
        # psoas: grows downward from about Z = 30
        rp = np.clip(6.0 + (30.0 - z) * 0.14, 0.0, 24.0)
        psoas = ((np.abs(x - spine_x) - 38.0) ** 2 + ((y - (yv - 4.0)) * 1.2) ** 2 <= rp ** 2) & (z < 30)
        c.paint(sl, psoas & cavity[sl], hu["muscle"])
        # vertebrae with discs every ~33 mm
        level = rng.uniform(0, 33.0)
        disc = np.mod(z - level, 33.0) < 7.0
        vb = ((x - spine_x) / 24.0) ** 2 + ((y - yv) / 19.0) ** 2
        cortex = vb <= 1.0
        canc = vb <= (1 - 3.0 / 19.0) ** 2
        c.paint(sl, cortex & ~disc, rng.uniform(500, 800))
        c.paint(sl, canc & ~disc, rng.uniform(180, 280))
        c.paint(sl, cortex & disc, 90.0)
        # posterior elements: pedicles/laminae ring and spinous process, canal with CSF
        ring = ((x - spine_x) / 17.0) ** 2 + ((y - (yv + 30.0)) / 15.0) ** 2
        post = (ring <= 1.0) & (ring >= 0.45) & ~disc
        spinous = (np.abs(x - spine_x) <= 5.0) & (y >= yv + 40.0) & (y <= yv + 68.0) & ~disc
        c.paint(sl, post | spinous, rng.uniform(350, 600))
        c.paint(sl, ring < 0.45, 15.0)

    # ribs: bands in the body wall, sloping down anteriorly, above Z ~ 0
    theta = np.arctan2(X2 / a, -(Y2 - 0.0) / b)  # 0 = anterior midline, +-pi posterior
    rho = np.sqrt((X2 / (a - fat - 0.5 * wall)) ** 2 + (Y2 / (b - 0.5 * (fat + post_fat) - 0.5 * wall)) ** 2)
    band = (np.abs(rho - 1.0) < 6.0 / (b - fat)) & (np.abs(theta) > 0.25) & (np.abs(theta) < 2.7)
    yy, xx = np.nonzero(band)
    if len(yy):
        th = np.abs(theta[yy, xx])
        period = rng.uniform(24.0, 30.0)
        off = rng.uniform(0, period)
        # ribs descend by ~80 mm from back (|theta| = pi) to front (|theta| ~ 0.3)
        zofs = off - 80.0 * (1.0 - (th - 0.25) / (math.pi - 0.25))
        rib_low = zr - rng.uniform(110, 140)
        for k, Z in enumerate(c.Z):
            if Z < rib_low:
                continue
            on = (np.mod(Z - zofs, period) < 9.0) & (Z > rib_low + 50.0 * (math.pi - th) / math.pi)
            cart = th < 0.9
            vals = np.where(cart, np.float32(150.0), np.float32(rng.uniform(450, 750)))
            c.img[k, yy[on], xx[on]] = vals[on]

    # iliac wings low in the scan
    for side in (-1, 1):
        ic = A.pos(side * 92, 30, -175, jitter=3)
        sl, m, q = A.ellipsoid(ic, np.array([32, 55, 50]), _rot(0, 0, side * 0.4))
        if sl is not None:
            shell = m & (q >= (1 - 7.0 / 32.0) ** 2)
            x = c.X[sl[2]][None, None, :]
            c.paint(sl, shell & (np.abs(x) > 70 * A.kx), rng.uniform(400, 650))
    # bladder at the very bottom, when in range
    sl, m, _ = A.ellipsoid(A.pos(0, -40, -255, jitter=5), np.array([45, 35, 35]) * rng.uniform(0.7, 1.2))
    if sl is not None:
        c.paint(sl, m & cavity[sl], rng.uniform(0, 15))

    # ---- thorax above the diaphragm: lungs and heart ------------------------------------------
    top = np.nonzero(c.Z > zd.min())[0]
    if len(top):
        k0 = int(top[0])
        z3 = c.Z[k0:][:, None, None]
        above = z3 > zd[None]
        thorax = cavity[k0:] & above
        heart_c = A.pos(15, -45, zl + 55, jitter=5)
        sl, hm, _ = A.ellipsoid(heart_c, np.array([70, 55, 60]))
        lung = thorax.copy()
        # mediastinum around the spine/aorta stays soft tissue
        med = (np.abs(c.X[None, None, :] - spine_x) < 28.0) & (c.Y[None, :, None] > yv - 45.0)
        lung &= ~med
        region = c.img[k0:]
        region[lung] = -860.0
        region[thorax & med & (region > -200) & (region < 100)] = 30.0
        c.lab[k0:][lung] = 0
        if sl is not None:
            hm = hm & cavity[sl] & (c.Z[sl[0]][:, None, None] > zd[None, sl[1], sl[2]])
            c.paint(sl, hm, hu["blood"] if phase != "native" else 40.0, label=0)

    # ---- noise and the reconstruction circle ---------------------------------------------------
    noise = rng.standard_normal(c.shape, dtype=np.float32)
    blurred = noise * np.float32(0.5)
    blurred[:, 1:, :] += noise[:, :-1, :] * np.float32(0.25)
    blurred[:, :-1, :] += noise[:, 1:, :] * np.float32(0.25)
    del noise
    b2 = blurred * np.float32(0.5)
    b2[:, :, 1:] += blurred[:, :, :-1] * np.float32(0.25)
    b2[:, :, :-1] += blurred[:, :, 1:] * np.float32(0.25)
    del blurred
    c.img += b2 * np.float32(noise_sigma / 0.375)
    del b2
    fov_r = 0.5 * min(nx * sx, ny * sy)
    outside = (X2 ** 2 + Y2 ** 2) > fov_r ** 2
    c.img[:, outside] = -1024.0
    image = np.clip(np.rint(c.img), -1024, 3071).astype(np.int16)
    labels = c.lab
    c.lab[:, outside] = 0
    affine = np.array([[0, 0, -sx, -x0], [0, -sy, 0, -y0], [sz, 0, 0, z0], [0, 0, 0, 1]],
                      dtype=np.float64)
    spacing = (float(sz), float(sy), float(sx))
    info = {"phase": phase, "noise_hu": round(float(noise_sigma), 2)}
    return image, labels, spacing, affine, info


def make_phantom(seed: int = 0, case_index: int = 0, shape=None, size: str = "default"):
    """One synthetic abdominal CT.

    Returns ``(image, labels, spacing_zyx, affine)``: ``image`` int16 HU (z, y, x) in the
    canonical LPS+ orientation, ``labels`` uint8 with BTCV ids of the 8 target organs,
    ``spacing_zyx`` in mm, and ``affine`` mapping (z, y, x) indices to world RAS+ mm (the
    :attr:`~.io.Volume.canonical_affine` convention). Deterministic per ``(seed, case_index)``.
    ``size`` is ``"default"`` or ``"small"``; ``shape=(z, y, x)`` overrides it.
    """
    image, labels, spacing, affine, _info = _make_phantom(seed, case_index, shape, size)
    return image, labels, spacing, affine


def phantom_case_id(k: int) -> str:
    """Case id of the k-th phantom (0-based): the 30 BTCV ids 0001-0010, 0021-0040, then 0041...

    Using BTCV's own ids makes the standard 18/12 split apply to a 30-case phantom set.
    """
    return BTCV_CASE_IDS[k] if k < len(BTCV_CASE_IDS) else f"{k + 11:04d}"


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    cases: int = 30,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    size: str = "default",
    shape=None,
) -> list[Path]:
    """Write ``cases`` phantoms in BTCV layout: ``imagesTr/img0001.nii.gz``, ``labelsTr/label0001.nii.gz``.

    Case ids are BTCV's (0001-0010, 0021-0040, then 0041...; see :func:`phantom_case_id`), so the
    standard 18/12 BTCV split applies to 30 cases. Images are int16 HU, labels
    uint8 BTCV ids, both NIfTI stored in RAS voxel order. Also writes ``phantom.json`` (seed,
    size and each case's spacing, shape, contrast phase, noise) and ``README.md``. Existing
    files of the same cases are overwritten (each file is written to a temporary name first).
    """
    out = Path(out_dir)
    if int(cases) < 1:
        raise NemesisInputError(f"phantom: --cases must be at least 1, not {cases}")
    if out.exists() and not out.is_dir():
        raise NemesisInputError(f"{out}: exists and is not a directory")
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    records = []
    written = []
    for k in range(int(cases)):
        if cancel is not None and cancel():
            raise NemesisCancelled("phantom: cancelled")
        cid = phantom_case_id(k)
        if progress is not None:
            progress(k, int(cases), f"case {cid}")
        image, labels, spacing, affine, info = _make_phantom(seed, k, shape, size)
        ref = volume_from_array(image, canonical_affine=affine, file_orientation="RAS")
        img_path = out / "imagesTr" / f"img{cid}.nii.gz"
        lab_path = out / "labelsTr" / f"label{cid}.nii.gz"
        write_volume(image, img_path, ref, dtype=np.int16)
        write_volume(labels, lab_path, ref, dtype=np.uint8)
        counts = np.bincount(labels.ravel(), minlength=12)
        records.append({
            "case_id": cid, "image": f"imagesTr/img{cid}.nii.gz", "label": f"labelsTr/label{cid}.nii.gz",
            "shape_zyx": list(image.shape), "spacing_zyx": list(spacing), **info,
            "organ_voxels": {o.name: int(counts[o.btcv_id]) for o in ORGANS},
        })
        written += [img_path, lab_path]
    if progress is not None:
        progress(int(cases), int(cases), "done")
    doc = {
        "generator": "napari_nemesis.data.phantom", "seed": int(seed), "size": size,
        "shape": list(shape) if shape is not None else None,
        "labels": {str(o.btcv_id): o.name for o in ORGANS},
        "orientation_on_disk": "RAS", "cases": records,
    }
    write_json_atomic(out / "phantom.json", doc)
    (out / "README.md").write_text(
        "# Synthetic abdominal CT phantoms (napari-nemesis)\n\n"
        f"{int(cases)} cases made by `nemesis phantom` (seed {int(seed)}, size {size}). "
        "BTCV layout: `imagesTr/imgXXXX.nii.gz` (int16 HU) and `labelsTr/labelXXXX.nii.gz` "
        "(uint8, BTCV ids: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 6 liver, "
        "7 stomach, 8 aorta, 11 pancreas). Synthetic data: no patient, no licence restrictions. "
        "Per-case details are in `phantom.json`.\n"
    )
    return written
