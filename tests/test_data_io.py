"""Readers and writers: the real CT, orientations, DICOM/NRRD/MHA, bad input."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_nemesis.data import (
    NemesisDataWarning,
    NemesisInputError,
    read_labels,
    read_volume,
    volume_from_array,
    write_volume,
)

from conftest import CT, CT_LABELS, needs_ct  # noqa: E402


def _test_array(shape=(12, 20, 16), seed=0) -> np.ndarray:
    """An asymmetric int16 HU volume: every flip or transpose changes it."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    a = -1000 + 40 * z + 7 * y + 3 * x + rng.integers(0, 5, shape)
    return a.astype(np.int16)


def _write_dicom_series(array_zyx, spacing_zyx, origin_lps, out_dir: Path, series_uid: str,
                        sizes=None) -> list[Path]:
    """Write a CT DICOM series (one file per z slice, LPS+ axes) with SimpleITK."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sz, sy, sx = spacing_zyx
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(array_zyx.shape[0]):
        sl = array_zyx[k]
        if sizes is not None and k in sizes:
            sl = np.zeros(sizes[k], dtype=array_zyx.dtype)
        img = sitk.GetImageFromArray(sl)
        img.SetSpacing((sx, sy))
        pos = (origin_lps[0], origin_lps[1], origin_lps[2] + k * sz)
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.8.498.1",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in pos),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": f"{sz}",
            "0028|0030": f"{sy}\\{sx}",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for key, val in tags.items():
            img.SetMetaData(key, val)
        path = out_dir / f"{series_uid.rsplit('.', 1)[-1]}_{k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(img)
        files.append(path)
    return files


# ------------------------------------------------------------------------------------------
# the real CT
# ------------------------------------------------------------------------------------------


@needs_ct
def test_real_ct_canonical_orientation_and_hu():
    vol = read_volume(CT)
    raw = nib.load(str(CT))
    data = np.asanyarray(raw.dataobj)
    assert nib.aff2axcodes(raw.affine) == ("R", "A", "S")
    assert vol.array.dtype == np.float32
    # RAS file (i=x toward R, j toward A, k toward S) -> canonical LPS (z, y, x): flip x and y
    expected = data[::-1, ::-1, :].transpose(2, 1, 0)
    np.testing.assert_array_equal(vol.array, expected.astype(np.float32))
    assert vol.shape == (data.shape[2], data.shape[1], data.shape[0])
    np.testing.assert_allclose(vol.spacing, (3.0, 3.0, 3.0))
    assert vol.orientation == "RAS"
    assert vol.array.min() == data.min() and vol.array.max() == data.max()
    # the canonical affine maps canonical indices to the same world points as the file affine
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 90, size=(20, 3))  # canonical (z, y, x)
    nx, ny = data.shape[0], data.shape[1]
    file_ijk = np.stack([nx - 1 - idx[:, 2], ny - 1 - idx[:, 1], idx[:, 0]], axis=1)
    world_file = nib.affines.apply_affine(raw.affine, file_ijk)
    np.testing.assert_allclose(vol.voxel_to_world(idx), world_file, atol=1e-4)
    np.testing.assert_allclose(vol.world_to_voxel(world_file), idx, atol=1e-6)


@needs_ct
def test_real_labels_and_write_back_voxel_for_voxel(tmp_path):
    vol = read_volume(CT)
    lab = read_labels(CT_LABELS, vol)
    assert lab.dtype == np.uint8 and lab.shape == vol.shape
    counts = np.bincount(lab.ravel(), minlength=12)
    # the README's counts
    assert (counts[1], counts[6], counts[11]) == (9668, 41692, 695)
    out = write_volume(lab, tmp_path / "seg.nii.gz", vol)
    back = nib.load(str(out))
    original = nib.load(str(CT_LABELS))
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), np.asanyarray(original.dataobj))
    np.testing.assert_allclose(back.affine, original.affine, atol=1e-5)
    assert back.get_data_dtype() == np.uint8
    prob = write_volume(vol.array / 1000.0, tmp_path / "prob.nii", vol, dtype=np.float32)
    assert nib.load(str(prob)).get_data_dtype() == np.float32


# ------------------------------------------------------------------------------------------
# orientations and formats
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "LAS", "PIL", "SRA", "IPR"])
def test_nifti_orientations_give_the_same_canonical_array(tmp_path, axcodes):
    arr = _test_array()
    ref = volume_from_array(arr, spacing_zyx=(2.5, 0.8, 0.7), origin_xyz=(10.0, -20.0, 30.0),
                            file_orientation=axcodes)
    path = write_volume(arr, tmp_path / f"v_{axcodes}.nii.gz", ref, dtype=np.int16)
    stored = nib.load(str(path))
    assert "".join(nib.aff2axcodes(stored.affine)) == axcodes
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.array, arr.astype(np.float32))
    np.testing.assert_allclose(vol.spacing, (2.5, 0.8, 0.7), rtol=1e-6)
    np.testing.assert_allclose(vol.canonical_affine, ref.canonical_affine, atol=1e-4)
    # canonical axes point L, P, S in world RAS
    a = vol.canonical_affine
    assert a[2, 0] > 0 and a[1, 1] < 0 and a[0, 2] < 0


def test_dicom_nrrd_mha_and_nifti_agree(tmp_path):
    arr = _test_array((10, 24, 18), seed=3)
    spacing = (3.0, 0.75, 0.75)
    origin_lps = (-7.5, 12.25, -40.0)
    ras_origin = (-origin_lps[0], -origin_lps[1], origin_lps[2])
    ref = volume_from_array(arr, spacing_zyx=spacing, origin_xyz=ras_origin, file_orientation="RAS")
    nii = read_volume(write_volume(arr, tmp_path / "scan.nii.gz", ref, dtype=np.int16))
    _write_dicom_series(arr, spacing, origin_lps, tmp_path / "dicom", "1.2.826.0.1.3680043.8.498.77")
    dcm = read_volume(tmp_path / "dicom")
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing[::-1])
    img.SetOrigin(origin_lps)
    sitk.WriteImage(img, str(tmp_path / "scan.nrrd"))
    sitk.WriteImage(img, str(tmp_path / "scan.mha"))
    nrrd = read_volume(tmp_path / "scan.nrrd")
    mha = read_volume(tmp_path / "scan.mha")
    for other in (dcm, nrrd, mha):
        np.testing.assert_array_equal(other.array, nii.array)
        np.testing.assert_allclose(other.spacing, nii.spacing, rtol=1e-5)
        np.testing.assert_allclose(other.canonical_affine, nii.canonical_affine, atol=1e-3)
    assert dcm.meta["format"] == "dicom" and dcm.meta["rescaled"]
    # one file of the series reads the whole series
    one = read_volume(sorted((tmp_path / "dicom").glob("*.dcm"))[3])
    np.testing.assert_array_equal(one.array, nii.array)


def test_dicom_several_series_takes_the_longest_and_warns(tmp_path):
    d = tmp_path / "mixed"
    long_uid, short_uid = "1.2.826.0.1.3680043.8.498.10", "1.2.826.0.1.3680043.8.498.20"
    _write_dicom_series(_test_array((9, 16, 16)), (2.0, 1.0, 1.0), (0, 0, 0), d, long_uid)
    _write_dicom_series(_test_array((4, 16, 16), seed=5), (5.0, 1.0, 1.0), (0, 0, 0), d, short_uid)
    with pytest.warns(NemesisDataWarning, match=short_uid):
        vol = read_volume(d)
    assert vol.shape[0] == 9 and vol.meta["series_uid"] == long_uid
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other = read_volume(d, series_uid=short_uid)
    assert other.shape[0] == 4
    with pytest.raises(NemesisInputError, match="no DICOM series"):
        read_volume(d, series_uid="1.2.3.4")


# ------------------------------------------------------------------------------------------
# bad input: one line, naming the file and the problem
# ------------------------------------------------------------------------------------------


def _one_line(exc_info, path) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


def _nifti(path: Path, data, affine=None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_missing_file(tmp_path):
    p = tmp_path / "nope.nii.gz"
    with pytest.raises(NemesisInputError) as e:
        read_volume(p)
    assert "no such file" in _one_line(e, p)


def test_truncated_and_corrupt_archives(tmp_path):
    good = _nifti(tmp_path / "good.nii.gz", _test_array((20, 30, 30)))
    raw = good.read_bytes()
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(NemesisInputError) as e:
        read_volume(trunc)
    assert "truncated or corrupt" in _one_line(e, trunc)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    with pytest.raises(NemesisInputError) as e:
        read_volume(corrupt)
    assert "corrupt" in _one_line(e, corrupt)
    # a valid gzip stream that is not a NIfTI
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(gzip.compress(b"hello, this is not an image" * 20))
    with pytest.raises(NemesisInputError) as e:
        read_volume(fake)
    assert "not a readable NIfTI" in _one_line(e, fake)


def test_not_an_image(tmp_path):
    for name in ("notes.txt", "scan.nrrd", "scan.nii"):
        p = tmp_path / name
        p.write_text("just some text, not an image\n" * 10)
        with pytest.raises(NemesisInputError) as e:
            read_volume(p)
        assert "not a readable" in _one_line(e, p)
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    with pytest.raises(NemesisInputError) as e:
        read_volume(empty_dir)
    assert "no DICOM series" in _one_line(e, empty_dir)


def test_dimensions(tmp_path):
    p2 = _nifti(tmp_path / "flat.nii.gz", np.zeros((16, 16), np.int16))
    with pytest.raises(NemesisInputError) as e:
        read_volume(p2)
    assert "2D image" in _one_line(e, p2)
    p4 = _nifti(tmp_path / "four.nii.gz", np.zeros((8, 8, 8, 3), np.int16) - 1000)
    with pytest.raises(NemesisInputError) as e:
        read_volume(p4)
    assert "4D image" in _one_line(e, p4)
    ok = _nifti(tmp_path / "single.nii.gz", _test_array((8, 9, 10)).transpose(2, 1, 0)[..., None])
    vol = read_volume(ok)
    assert vol.shape == (8, 9, 10)
    p5 = _nifti(tmp_path / "five.nii.gz", np.zeros((8, 8, 8, 1, 2), np.int16))
    with pytest.raises(NemesisInputError) as e:
        read_volume(p5)
    assert "5D image" in _one_line(e, p5)
    empty = _nifti(tmp_path / "empty.nii.gz", np.zeros((0, 8, 8), np.int16))
    with pytest.raises(NemesisInputError) as e:
        read_volume(empty)
    assert "empty" in _one_line(e, empty)


def test_nan_inf_and_spacing(tmp_path):
    data = np.full((8, 8, 8), -500.0, np.float32)
    data[3, 4, 5] = np.nan
    data[1, 1, 1] = np.inf
    p = _nifti(tmp_path / "nan.nii.gz", data)
    with pytest.raises(NemesisInputError) as e:
        read_volume(p)
    assert "2 voxel(s) are NaN or Inf" in _one_line(e, p)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((8, 8, 8))
    hdr.set_data_dtype(np.int16)
    hdr.set_qform(None, code=0)
    hdr.set_sform(None, code=0)
    block = bytearray(hdr.binaryblock)
    block[76 + 8:76 + 12] = np.float32(0.0).tobytes()  # pixdim[2] = 0 (nibabel would repair it)
    zero = tmp_path / "zero.nii"
    zero.write_bytes(bytes(block) + b"\0" * 4 + (np.zeros(512, np.int16) - 1000).tobytes())
    with pytest.raises(NemesisInputError) as e:
        read_volume(zero)
    assert "non-positive voxel spacing" in _one_line(e, zero)


def test_huge_header_is_refused_without_reading(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4096, 4096, 2048))
    hdr.set_data_dtype(np.int16)
    p = tmp_path / "huge.nii"
    p.write_bytes(hdr.binaryblock + b"\0" * 4)
    with pytest.raises(NemesisInputError) as e:
        read_volume(p)
    assert "voxel limit" in _one_line(e, p)
    short = tmp_path / "short.nii"
    hdr.set_data_shape((64, 64, 64))
    short.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\1" * 1000)
    with pytest.raises(NemesisInputError) as e:
        read_volume(short)
    assert "truncated or corrupt" in _one_line(e, short)


def test_dicom_missing_slices_and_mixed_sizes(tmp_path):
    arr = _test_array((8, 16, 16))
    d = tmp_path / "gap"
    files = _write_dicom_series(arr, (2.0, 1.0, 1.0), (0, 0, 0), d, "1.2.826.0.1.3680043.8.498.31")
    files[4].unlink()
    with pytest.raises(NemesisInputError) as e:
        read_volume(d)
    assert "missing slices" in _one_line(e, d)
    d2 = tmp_path / "sizes"
    _write_dicom_series(arr, (2.0, 1.0, 1.0), (0, 0, 0), d2, "1.2.826.0.1.3680043.8.498.32",
                        sizes={5: (12, 12)})
    with pytest.raises(NemesisInputError) as e:
        read_volume(d2)
    assert "mixed sizes" in _one_line(e, d2)


def test_label_map_must_match_its_scan(tmp_path):
    arr = _test_array((10, 12, 14))
    ref = volume_from_array(arr, spacing_zyx=(2.0, 1.0, 1.0), file_orientation="LPS")
    scan = read_volume(write_volume(arr, tmp_path / "scan.nii.gz", ref, dtype=np.int16))
    lab = np.zeros(arr.shape, np.uint8)
    lab[2:5, 3:6, 4:9] = 6
    # stored in another voxel order: still the same grid, accepted
    other_order = volume_from_array(arr, canonical_affine=scan.canonical_affine, file_orientation="RAS")
    good = write_volume(lab, tmp_path / "lab_ras.nii.gz", other_order)
    np.testing.assert_array_equal(read_labels(good, scan), lab)
    wrong_shape = _nifti(tmp_path / "shape.nii.gz", np.zeros((14, 12, 9), np.uint8), ref.affine)
    with pytest.raises(NemesisInputError) as e:
        read_labels(wrong_shape, scan)
    assert "shape" in _one_line(e, wrong_shape)
    shifted = ref.affine.copy()
    shifted[0, 3] += 5.0
    wrong_affine = _nifti(tmp_path / "affine.nii.gz", np.zeros((14, 12, 10), np.uint8), shifted)
    with pytest.raises(NemesisInputError) as e:
        read_labels(wrong_affine, scan)
    assert "affine does not match" in _one_line(e, wrong_affine)


def test_unsigned_raw_values_warn_and_rescale_is_applied(tmp_path):
    raw = (_test_array((8, 10, 12)).astype(np.int32) + 1024).astype(np.uint16)
    p = _nifti(tmp_path / "raw.nii.gz", raw)
    with pytest.warns(NemesisDataWarning, match="do not look like HU"):
        vol = read_volume(p)
    assert vol.array.min() >= 0
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(1.0, -1024.0)
    scaled = tmp_path / "scaled.nii.gz"
    nib.save(img, str(scaled))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hu = read_volume(scaled)
    np.testing.assert_allclose(hu.array, vol.array - 1024.0)
    assert hu.meta["rescaled"]
