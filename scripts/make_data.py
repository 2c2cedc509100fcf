#!/usr/bin/env python3
"""Build fastwarp/app/data/embedded/: two real T1 brain MRIs on one 2 mm grid, with tissue labels
(and, with --voxel-mm 1, the same two brains on a 1 mm grid, into a cache folder).

A developer tool, not run-time code: it needs numpy, scipy and nibabel (matplotlib too for
--preview), reads two archives that you downloaded beforehand, and uses no network unless
--fetch asks it to download them (with pip and apt-get, as below).

Subjects
--------
mni152   MNI ICBM152 2009a nonlinear symmetric T1 template (skull-stripped, 197x233x189 at 1 mm),
         as shipped inside the nilearn wheel at
         nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz
colin27  The Colin27 single-subject average brain, brain-extracted, as shipped in Debian's
         mricron-data package at /usr/share/mricron/templates/ch2bet.nii.gz (181x217x181, 1 mm)

Both are in MNI space already, so no registration is done between them: each is only
resampled, through its own affine, onto one common world grid.

Obtaining the sources (once, into any folder SRC)
------------------------------------------------
    mkdir -p SRC && cd SRC
    pip download nilearn==0.14.1 --no-deps --only-binary=:all: -d .
        # -> nilearn-0.14.1-py3-none-any.whl
        #    sha256 725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a
    apt-get update && apt-get download mricron-data=1.2.20211006+dfsg-4
        # (Debian 12 "bookworm", main) -> mricron-data_1.2.20211006+dfsg-4_all.deb
        #    sha256 d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f

Neither archive needs installing or unpacking: the script reads the wheel as a zip and the
.deb with a small built-in `ar` + tar reader (a folder made by `unzip` of the wheel or by
`dpkg -x` of the .deb is accepted too). Other versions of the two packages are accepted only
if the image files inside them are byte-identical to the ones above (their sha256 is checked).

Running
-------
    python scripts/make_data.py --download-dir SRC
    python scripts/make_data.py --nilearn SRC/nilearn-0.14.1-py3-none-any.whl \\
        --mricron-data SRC/mricron-data_1.2.20211006+dfsg-4_all.deb [--out DIR] [--preview x.png]
    python scripts/make_data.py --fetch [--voxel-mm 1]
        # --fetch [SRC]: runs the two download commands above into SRC (default
        # ~/.cache/fastwarp/sources; archives already there are reused), then builds

Outputs (in --out, default fastwarp/app/data/embedded/ of this repository; with --voxel-mm 1,
default $FASTWARP_DATA_1MM or ~/.cache/fastwarp/data-1mm, which is where
fastwarp.app.data.subjects.embedded_1mm() looks; about 4 MB, so not in the repository):
    mni152_t1.nii.gz  mni152_labels.nii.gz  colin27_t1.nii.gz  colin27_labels.nii.gz  README.md

Processing (identical for both subjects)
----------------------------------------
1. Brain mask at 1 mm: voxels > 0 of the (already skull-stripped) source, opened with a ball
   of radius 2 mm, largest 6-connected component kept. The opening removes the thin
   streaks and specks that the old brain extraction left in ch2bet.nii.gz (about 0.9 % of
   its voxels; 0.04 % of the MNI template's). nilearn ships no mask file for this template;
   its own load_mni152_brain_mask() thresholds the T1 at 20 % of its maximum, which would
   cut dark CSF, so "> 0" is used for both subjects instead.
2. Intensity scaling at 1 mm: brain voxels * 255 / (99.5th percentile of brain voxels),
   clipped to [0, 255], 0 outside the mask (float).
3. Tissue labels at 1 mm: exact 3-class Otsu (the two thresholds that minimise the
   within-class variance over all pairs, on the 256-bin histogram of the brain voxels'
   rounded scaled intensities, i.e. the global optimum of 1-D 3-means). Classes in
   increasing intensity: 1 CSF, 2 grey matter, 3 white matter; 0 background.
   No randomness anywhere (no seed is needed).
4. Common grid: 2 mm isotropic, RAS axes, voxel centres at half-integer mm. Its extent is the
   union of both brain masks' world bounding boxes plus at least 2 voxels of margin on every
   side, each axis rounded up to a multiple of 16 voxels and centred on the union box.
   Because both sources have 1 mm voxels centred on integer mm, every 2 mm voxel covers
   exactly 2x2x2 source voxels. (80x96x96 voxels.)
   With --voxel-mm 1: the same rule on a 1 mm grid, voxel centres on integer mm, so every
   voxel is one source voxel and steps 5's resampling only copies voxels: 160x192x176
   (the union box is 145x181x157 mm; with the 2-voxel margin, 176 is the multiple of 16
   that holds 161 in z).
5. Resampling with scipy.ndimage.map_coordinates through each file's affine:
   intensities trilinear (order 1) -- on this grid that is the exact mean of the 2x2x2 block
   -- then rounded (half to even) to uint8; labels by majority: each class's one-hot
   indicator is resampled trilinearly (the fraction of the 2 mm voxel it covers) and the
   argmax kept, ties going to the lower label (so 4 of 8 brain voxels stays background).
6. Written as NIfTI-1 (.nii.gz, uint8), qform and sform both the common affine with code 4
   (MNI152), gzip with mtime 0 and no file name, level 9, so that a re-run reproduces the
   files byte for byte (given the same zlib; the voxel values are reproduced in any case).

README.md beside the outputs records the sources, checksums, grid, statistics and the
licence notices of the sources (copied verbatim).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import io
import itertools
import os
import sys
import tarfile
import zipfile

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "fastwarp", "app", "data", "embedded")

VOXEL_MM = 2.0  # the embedded data; --voxel-mm 1 for the 1 mm versions
DEFAULT_OUT_1MM = os.environ.get("FASTWARP_DATA_1MM") or os.path.join(
    os.path.expanduser("~"), ".cache", "fastwarp", "data-1mm")  # as fastwarp.app.data.subjects
DEFAULT_SOURCES = os.path.join(os.path.expanduser("~"), ".cache", "fastwarp", "sources")
NILEARN_PIN = "nilearn==0.14.1"
MRICRON_PIN = "mricron-data=1.2.20211006+dfsg-4"
MARGIN_VOX = 2
MULTIPLE = 16
PERCENTILE = 99.5
OPEN_MM = 2.0  # radius of the ball that opens the brain masks (drops thin streaks and specks)
LABEL_NAMES = {0: "background", 1: "CSF", 2: "grey matter", 3: "white matter"}

NILEARN_DATA = "nilearn/datasets/data/"
SUBJECTS = {
    "mni152": {
        "archive": "nilearn",
        "member": NILEARN_DATA + "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "sha256": "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
        "descrip": "fastwarp embedded: ICBM152 2009a sym T1 (nilearn), {mm}mm",
    },
    "colin27": {
        "archive": "mricron-data",
        "member": "usr/share/mricron/templates/ch2bet.nii.gz",
        "sha256": "592a2d20abdf36eefcb540ca8958428040edffc1bc1a18ba1dcfbabac77c5dd1",
        "descrip": "fastwarp embedded: Colin27 ch2bet (mricron-data), {mm}mm",
    },
}
# Used only to check the labels (not written): nilearn's GM / WM probability maps of the template.
MNI_GM = (NILEARN_DATA + "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
          "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed")
MNI_WM = (NILEARN_DATA + "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
          "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db")
DEB_COPYRIGHT = "usr/share/doc/mricron-data/copyright"

# Licence notices that are in neither archive (nilearn's description of the template says
# "License: unknown"), copied verbatim from the LICENSE files of the TemplateFlow template
# repositories for the same templates; their sha256 is checked below so they stay verbatim.
MNI_LICENSE_SRC = ("github.com/templateflow/tpl-MNI152NLin2009aSym, file LICENSE "
                   "(commit 3eefedc44672552033d19edb6195f836afc5a374)")
MNI_LICENSE = (
    "Copyright (C) 1993-2004 Louis Collins, McConnell Brain\n"
    "Imaging Centre, Montreal Neurological Institute, McGill University.\n"
    "Permission to use, copy, modify, and distribute this software and\n"
    "its documentation for any purpose and without fee is hereby granted,\n"
    "provided that the above copyright notice appear in all copies.  The\n"
    "authors and McGill University make no representations about the\n"
    "suitability of this software for any purpose.  It is provided \"as\n"
    "is\" without express or implied warranty.  The authors are not\n"
    "responsible for any data loss, equipment damage, property loss, or\n"
    "injury to subjects or patients resulting from the use or misuse of\n"
    "this software package. \n"
)
MNI_LICENSE_SHA256 = "5915d16f84d99c3cedc8290b09da72f6f92e5dde1ba1c9859ee186aa952b66a4"
COLIN_LICENSE_SRC = ("github.com/templateflow/tpl-MNIColin27, file LICENSE "
                     "(commit de182de178e4f6306441a172ec76a3ffed61b260)")
COLIN_LICENSE = (
    "Copyright (C) 1993\u20132009 Louis Collins, McConnell Brain Imaging Centre,\n"
    "                        Montreal Neurological Institute, McGill University.\n"
    "\n"
    "Permission to use, copy, modify, and distribute this software and its\n"
    "documentation for any purpose and without fee is hereby granted,\n"
    "provided that the above copyright notice appear in all copies.\n"
    "The authors and McGill University make no representations about the\n"
    "suitability of this software for any purpose.\n"
    "It is provided \"as is\" without express or implied warranty.\n"
    "The authors are not responsible for any data loss, equipment damage,\n"
    "property loss, or injury to subjects or patients resulting from the\n"
    "use or misuse of this software package.\n"
    "\n"
)
COLIN_LICENSE_SHA256 = "3f9cccbb17f9adc793f933160b44e6a14849be4956fa237ea71d0145bdbf86b8"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- source archives


class Archive:
    """Read members of a wheel (zip), a Debian .deb, or a folder they were unpacked into."""

    def __init__(self, path: str, kind: str):
        self.path = path
        self.kind = kind  # "nilearn" or "mricron-data"
        self.name = os.path.basename(os.path.normpath(path))
        self._files: dict[str, bytes] | None = None
        self._zip = None
        self.version = "unknown"
        self.archive_sha256 = None
        if os.path.isdir(path):
            self.form = "folder"
            if kind == "nilearn":
                meta = glob.glob(os.path.join(path, "nilearn-*.dist-info", "METADATA"))
                if meta:
                    self.version = self._field(open(meta[0], "rb").read(), "Version")
        else:
            with open(path, "rb") as f:
                self.archive_sha256 = sha256(f.read())
            if zipfile.is_zipfile(path):
                self.form = "wheel"
                self._zip = zipfile.ZipFile(path)
                metas = [n for n in self._zip.namelist() if n.endswith(".dist-info/METADATA")]
                if metas:
                    self.version = self._field(self._zip.read(metas[0]), "Version")
            else:
                self.form = "deb"
                self._read_deb(path)

    @staticmethod
    def _field(text: bytes, key: str) -> str:
        for line in text.decode("utf-8", "replace").splitlines():
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
        return "unknown"

    def _read_deb(self, path: str) -> None:
        with open(path, "rb") as f:
            blob = f.read()
        if not blob.startswith(b"!<arch>\n"):
            raise SystemExit(f"{path}: neither a wheel, a .deb nor a folder")
        pos, members = 8, {}
        while pos + 60 <= len(blob):
            head = blob[pos:pos + 60]
            name = head[:16].decode().strip().rstrip("/")
            size = int(head[48:58].decode().strip())
            members[name] = blob[pos + 60:pos + 60 + size]
            pos += 60 + size + (size & 1)
        self._files = {}
        for prefix in ("control.tar", "data.tar"):
            key = next((k for k in members if k.startswith(prefix)), None)
            if key is None:
                raise SystemExit(f"{path}: no {prefix}.* inside")
            try:
                tar = tarfile.open(fileobj=io.BytesIO(members[key]), mode="r:*")
            except tarfile.ReadError as e:
                raise SystemExit(f"{path}: cannot read {key} ({e}); unpack it with "
                                 "`dpkg -x FILE.deb DIR` and pass DIR instead") from e
            for m in tar.getmembers():
                if m.isfile():
                    name = m.name[2:] if m.name.startswith("./") else m.name
                    self._files[prefix + ":" + name] = tar.extractfile(m).read()
        self.version = self._field(self._files.get("control.tar:control", b""), "Version")

    def read(self, member: str) -> bytes:
        if self.form == "folder":
            p = os.path.join(self.path, member)
            if not os.path.isfile(p):
                raise SystemExit(f"{self.path}: no {member}")
            with open(p, "rb") as f:
                return f.read()
        if self.form == "wheel":
            return self._zip.read(member)
        try:
            return self._files["data.tar:" + member]
        except KeyError:
            raise SystemExit(f"{self.path}: no {member} inside") from None

    def read_checked(self, member: str, expected: str, check: bool = True) -> bytes:
        data = self.read(member)
        if check and sha256(data) != expected:
            raise SystemExit(
                f"{self.name}:{member} has sha256 {sha256(data)}, expected {expected}: another "
                "version of the file (use the versions in this script's docstring, or pass "
                "--no-verify and review the result)")
        return data

    def nilearn_license(self) -> tuple[str, bytes] | None:
        names = ([n for n in self._zip.namelist()] if self.form == "wheel" else
                 [os.path.relpath(p, self.path) for p in
                  glob.glob(os.path.join(self.path, "nilearn-*.dist-info", "**", "*"),
                            recursive=True) if os.path.isfile(p)])
        lic = sorted(n for n in names if ".dist-info/" in n
                     and os.path.basename(n).upper().startswith(("LICENSE", "COPYING")))
        return (lic[0], self.read(lic[0])) if lic else None


def load_nifti(data: bytes) -> nib.Nifti1Image:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return nib.Nifti1Image.from_bytes(data)


# --------------------------------------------------------------------------- processing


def ball(radius_mm: float, zooms) -> np.ndarray:
    r = [int(np.floor(radius_mm / z)) for z in zooms]
    g = np.meshgrid(*[np.arange(-k, k + 1) * z for k, z in zip(r, zooms)], indexing="ij")
    return sum(x * x for x in g) <= radius_mm ** 2 + 1e-9


def brain_mask(vol: np.ndarray, zooms) -> np.ndarray:
    """Voxels > 0, opened with a ball, largest 6-connected component."""
    opened = ndi.binary_opening(vol > 0, structure=ball(OPEN_MM, zooms))
    lab, n = ndi.label(opened)
    if n == 0:
        raise SystemExit("empty image")
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def scale_intensity(vol: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    p = float(np.percentile(vol[mask].astype(np.float64), PERCENTILE))
    out = np.zeros(vol.shape, np.float64)
    out[mask] = np.clip(vol[mask].astype(np.float64) * (255.0 / p), 0.0, 255.0)
    return out, p


def otsu3(values: np.ndarray) -> tuple[int, int]:
    """Exact 3-class Otsu on integer values 0..255: thresholds (t1, t2), classes
    [0, t1), [t1, t2), [t2, 255], minimising the summed within-class squared deviation."""
    h = np.bincount(values.astype(np.int64), minlength=256).astype(np.float64)
    x = np.arange(256, dtype=np.float64)
    P = np.concatenate([[0.0], np.cumsum(h)])
    S = np.concatenate([[0.0], np.cumsum(h * x)])
    S2 = np.concatenate([[0.0], np.cumsum(h * x * x)])
    a, b = np.meshgrid(np.arange(257), np.arange(257), indexing="ij")
    n = P[b] - P[a]
    s = S[b] - S[a]
    with np.errstate(divide="ignore", invalid="ignore"):
        W = (S2[b] - S2[a]) - np.where(n > 0, s * s / n, 0.0)  # W[a, b]: class [a, b)
    t1, t2 = np.meshgrid(np.arange(257), np.arange(257), indexing="ij")
    total = W[0, t1] + W[t1, t2] + W[t2, 256]
    ok = (t1 >= 1) & (t2 > t1) & (t2 <= 255)
    ok &= (P[t1] > 0) & (P[t2] - P[t1] > 0) & (P[256] - P[t2] > 0)  # no empty class
    total = np.where(ok, total, np.inf)
    k = int(np.argmin(total))  # first minimum: deterministic
    return k // 257, k % 257


def tissue_labels(scaled: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    q = np.rint(scaled[mask]).astype(np.int64)
    t1, t2 = otsu3(q)
    lab = np.zeros(scaled.shape, np.uint8)
    lab[mask] = (1 + (q >= t1) + (q >= t2)).astype(np.uint8)
    return lab, (t1, t2)


def world_bbox(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-space box of the mask's voxels (their full extent, not only their centres)."""
    idx = np.array(np.nonzero(mask))
    lo, hi = idx.min(1) - 0.5, idx.max(1) + 0.5
    corners = np.array(list(itertools.product(*zip(lo, hi))))
    w = nib.affines.apply_affine(affine, corners)
    return w.min(0), w.max(0)


def common_grid(boxes, voxel_mm: float = VOXEL_MM) -> tuple[tuple[int, int, int], np.ndarray]:
    lo = np.min([b[0] for b in boxes], axis=0)
    hi = np.max([b[1] for b in boxes], axis=0)
    need = (hi - lo) + 2 * MARGIN_VOX * voxel_mm
    shape = tuple(int(np.ceil(np.ceil(n / voxel_mm - 1e-9) / MULTIPLE) * MULTIPLE) for n in need)
    mid = (lo + hi) / 2
    # first voxel centre, snapped so that each voxel covers whole 1 mm source voxels (centred
    # on integer mm): a half-integer mm at 2 mm, an integer at 1 mm;
    # grid centre = origin + (N-1) * voxel_mm / 2
    origin = np.floor(mid - (np.array(shape) - 1) * voxel_mm / 2) + ((voxel_mm - 1) / 2) % 1
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = origin
    start = origin - voxel_mm / 2
    end = origin + (np.array(shape) - 0.5) * voxel_mm
    assert np.all(lo - start >= MARGIN_VOX * voxel_mm) and np.all(end - hi >= MARGIN_VOX * voxel_mm)
    return shape, affine


def sample_coords(shape, affine, src_affine) -> np.ndarray:
    """Source voxel coordinates (3, N) of every target voxel centre."""
    m = np.linalg.inv(src_affine) @ affine
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    return m[:3, :3] @ ijk + m[:3, 3:4]


def resample_intensity(vol, coords, shape) -> np.ndarray:
    out = ndi.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0, prefilter=False)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(shape)


def resample_labels(lab, coords, shape) -> np.ndarray:
    frac = np.stack([
        ndi.map_coordinates((lab == k).astype(np.float64), coords, order=1, mode="constant",
                            cval=1.0 if k == 0 else 0.0, prefilter=False)
        for k in LABEL_NAMES])
    # round away float noise so exact ties (e.g. 4/8 vs 4/8) go to the lower label
    return np.argmax(np.round(frac, 9), axis=0).astype(np.uint8).reshape(shape)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else float("nan")


# --------------------------------------------------------------------------- output


def nifti_bytes(arr: np.ndarray, affine: np.ndarray, descrip: str, labels: bool) -> bytes:
    img = nib.Nifti1Image(arr, affine)
    hdr = img.header
    hdr.set_data_dtype(np.uint8)
    img.set_qform(affine, code="mni")
    img.set_sform(affine, code="mni")
    hdr.set_xyzt_units("mm", "sec")
    hdr["descrip"] = descrip.encode()[:79]
    hdr["cal_min"], hdr["cal_max"] = (0, max(LABEL_NAMES)) if labels else (0, 255)
    if labels:
        hdr.set_intent("label")
    hdr.set_slope_inter(1.0, 0.0)
    raw = img.to_bytes()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    return buf.getvalue()


def fmt_affine(a: np.ndarray) -> str:
    return "\n".join("[" + ", ".join(f"{v:7.1f}" for v in row) + "]" for row in a)


def fence(text: str) -> str:
    return "```text\n" + text + ("" if text.endswith("\n") else "\n") + "```"


def write_readme(path, archives, grid_shape, grid_affine, files, stats, pair_dice, brain_dice,
                 mni_check, licences, voxel_mm: float = VOXEL_MM):
    nl, deb = archives["nilearn"], archives["mricron-data"]
    fine = voxel_mm == 1
    L = []
    add = L.append
    if fine:
        add("# Brain MRI at 1 mm (the embedded pair's 1 mm versions)\n")
        add("The two brains of `fastwarp/app/data/embedded/` made the same way on a common 1 mm grid "
            "instead of 2 mm, each with a 4-class tissue label map. Built by "
            "`scripts/make_data.py --voxel-mm 1` (its docstring says how to obtain the two source "
            "archives; `--fetch` downloads them); not part of the repository "
            "(`fastwarp.app.data.subjects.embedded_1mm()` finds them). Re-run with:\n")
        add("```sh\npython scripts/make_data.py --voxel-mm 1 --download-dir SRC\n```\n")
    else:
        add("# Embedded brain MRI (fastwarp/app/data/embedded)\n")
        add("Two real T1-weighted brain MRIs, both already in MNI space, resampled onto one common "
            "2 mm grid, each with a 4-class tissue label map made the same way. Built by "
            "`scripts/make_data.py` (its docstring says how to obtain the two source archives); "
            "nothing here is fetched at run time. Re-run with:\n")
        add("```sh\npython scripts/make_data.py --download-dir SRC\n```\n")
    add("where SRC holds `nilearn-0.14.1-py3-none-any.whl` and "
        "`mricron-data_1.2.20211006+dfsg-4_all.deb`.\n")
    add("## Files\n")
    add("| file | subject | content | dtype | shape | sha256 of the .nii.gz | sha256 of the voxel data (C order) |")
    add("| --- | --- | --- | --- | --- | --- | --- |")
    for f in files:
        add(f"| `{f['name']}` | {f['subject']} | {f['content']} | uint8 | "
            f"{'x'.join(map(str, grid_shape))} | `{f['sha256']}` | `{f['data_sha256']}` |")
    add("")
    add("Label values: " + ", ".join(f"{k} {v}" for k, v in LABEL_NAMES.items()) + ".\n")
    add("## Grid\n")
    add(f"- shape {'x'.join(map(str, grid_shape))} voxels of {voxel_mm:g} mm, axes RAS "
        "(i: left to right, j: posterior to anterior, k: inferior to superior)")
    add("- affine (voxel index to MNI world mm), written as both qform and sform, code 4 (MNI152):\n")
    add(fence(fmt_affine(grid_affine)) + "\n")
    if fine:
        add("- voxel centres lie on integer mm, so each voxel is exactly one of the 1 mm source "
            "voxels (both sources have 1 mm voxels centred on integer mm)")
    else:
        add("- voxel centres lie on half-integer mm, so each 2 mm voxel covers exactly 2x2x2 of "
            "the 1 mm source voxels (both sources have 1 mm voxels centred on integer mm)")
    add(f"- extent: the union of both brain masks' world boxes plus at least {MARGIN_VOX} voxels "
        f"on each side, each axis rounded up to a multiple of {MULTIPLE}, centred on that union\n")
    add("## Sources\n")
    add("| subject | package | version | archive | file inside | sha256 of that file |")
    add("| --- | --- | --- | --- | --- | --- |")
    for name, spec in SUBJECTS.items():
        a = archives[spec["archive"]]
        pkg = ("nilearn (PyPI wheel)" if spec["archive"] == "nilearn"
               else "mricron-data (Debian 12 bookworm, main)")
        member = spec["member"] if spec["archive"] == "nilearn" else "/" + spec["member"]
        where = (f"`{a.name}` (sha256 `{a.archive_sha256}`)" if a.archive_sha256
                 else f"`{a.name}` (unpacked folder)")
        add(f"| {name} | {pkg} | {a.version} | {where} | `{member}` | "
            f"`{stats[name]['src_sha256']}` |")
    add("")
    add("- mni152: the ICBM 2009a nonlinear symmetric T1 template (Fonov et al. 2009, 2011), in "
        "the skull-stripped, uint8-rescaled form that nilearn ships as its default MNI152 "
        "template; 197x233x189 at 1 mm.")
    add("- colin27: the Colin27 average of 27 scans of one subject (Holmes et al. 1998), "
        "brain-extracted (`ch2bet`) as shipped with MRIcron; 181x217x181 at 1 mm.")
    add("- Not used: `KmeansTest_T1UCharRaw.nii.gz` of Debian's insighttoolkit5-examples (a 128x128x62 "
        "T1 at 2x3x2 mm in LSA orientation with an arbitrary origin, head not brain): it is not "
        "in MNI space and would need an affine registration first.\n")
    add("## What the script did (the same for both subjects)\n")
    add(f"1. Brain mask at 1 mm: voxels > 0 of the skull-stripped source, opened with a ball "
        f"of radius {OPEN_MM:g} mm, largest 6-connected component kept. The opening removes "
        "thin streaks and specks that the old brain extraction left in `ch2bet.nii.gz`; some "
        "non-brain tissue in the interhemispheric fissure of ch2bet remains, within about 3 mm "
        "of the midline above the corpus callosum. nilearn ships no mask file for this template (its "
        "`load_mni152_brain_mask()` thresholds the T1 at 20 % of its maximum, which would cut "
        "dark CSF), so `> 0` is used for both.")
    add(f"2. Intensities at 1 mm: brain voxels x 255 / their {PERCENTILE}th percentile, "
        "clipped to [0, 255], 0 outside the mask.")
    add("3. Labels at 1 mm: exact 3-class Otsu on the 256-bin histogram of the brain voxels' "
        "rounded scaled intensities (global minimum of the within-class variance over all "
        "threshold pairs; no randomness): below t1 CSF (1), [t1, t2) grey matter (2), from t2 "
        "white matter (3).")
    add("4. Resampled to the grid through each file's affine with "
        + ("`scipy.ndimage.map_coordinates`: on this grid every voxel is one source voxel, so the "
           "intensities are the scaled source values rounded half to even to uint8 and the labels "
           "are the source labels." if fine else
           "`scipy.ndimage.map_coordinates`: intensities trilinear (here the exact 2x2x2 mean), "
           "rounded half to even to uint8; labels by majority (each class's one-hot indicator "
           "resampled trilinearly, argmax, ties to the lower label, so a voxel that is half brain "
           "is background). So `t1 > 0` is slightly larger than `labels > 0`: a rim of boundary "
           "voxels that are at most half brain keep their partial-volume intensity but are "
           "labelled background."))
    add("5. Written as gzip NIfTI-1 with mtime 0 and no file name in the gzip header (level 9), "
        "so a re-run gives byte-identical files with the same zlib and identical voxel values "
        "in any case.\n")
    add("## Statistics\n")
    add("| subject | 99.5th pct of source brain | Otsu thresholds (of 255) | t1 range | t1 mean in brain | "
        + " | ".join(f"fraction {v}" for v in LABEL_NAMES.values()) + " |")
    add("| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in LABEL_NAMES) + " |")
    for name, s in stats.items():
        add(f"| {name} | {s['p995']:g} | {s['thr'][0]}, {s['thr'][1]} | {s['min']}..{s['max']} | "
            f"{s['mean_brain']:.1f} | " + " | ".join(f"{x:.4f}" for x in s["frac"]) + " |")
    add("\nFractions are of all grid voxels.\n")
    add("Dice between the two subjects' label maps as they are (no registration):\n")
    add("| label | " + " | ".join(LABEL_NAMES[k] for k in pair_dice) + " | brain (labels > 0) |")
    add("| --- | " + " | ".join("---" for _ in pair_dice) + " | --- |")
    add("| Dice | " + " | ".join(f"{v:.3f}" for v in pair_dice.values())
        + f" | {brain_dice:.3f} |\n")
    if mni_check:
        add("Check of the clustering against nilearn's own GM / WM probability maps of the MNI "
            "template (same wheel, 1 mm; reference = the larger of the two maps where it is "
            "above 0.5): Dice grey matter "
            f"{mni_check[2]:.3f}, white matter {mni_check[3]:.3f}.\n")
    add("## Licences\n")
    add("Both images may be redistributed, modified included, provided the notices go with "
        "them; the notices follow verbatim. The Debian copyright file of mricron-data covers "
        "the whole package (`Files: *`, BSD-3-clause, Chris Rorden) and names no separate "
        "terms for its template images; the package is in Debian main. The underlying "
        "Colin27 data are the MNI's, under the MNI notice below.\n")
    for title, note, text in licences:
        add(f"### {title}\n")
        if note:
            add(note + "\n")
        add(fence(text) + "\n")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(L).rstrip("\n") + "\n")


def preview(path, grid_shape, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["black", "tab:blue", "tab:gray", "white"])
    kx, ky, kz = (n // 2 for n in grid_shape)
    names = list(out)
    fig, axes = plt.subplots(len(names) + 1, 4, figsize=(12, 3.2 * (len(names) + 1)))
    for r, name in enumerate(names):
        t1, lab = out[name]
        for c, (img, kind) in enumerate([(t1, "t1"), (lab, "lab")]):
            for d, sl in enumerate([img[:, :, kz].T, img[:, ky, :].T]):
                ax = axes[r, 2 * c + d]
                ax.imshow(sl, origin="lower", cmap="gray" if kind == "t1" else cmap,
                          vmin=0, vmax=255 if kind == "t1" else 3, interpolation="nearest")
                ax.set_title(f"{name} {'T1' if kind == 't1' else 'labels'} "
                             f"{'axial k=%d' % kz if d == 0 else 'coronal j=%d' % ky}", fontsize=9)
                ax.axis("off")
    a, b = names[:2]
    for d, sel in enumerate([np.s_[:, :, kz], np.s_[:, ky, :]]):
        ax = axes[-1, d]
        ax.imshow(out[a][0][sel].T, origin="lower", cmap="gray", vmin=0, vmax=255)
        ax.contour((out[b][1][sel] > 0).T, levels=[0.5], colors="r", linewidths=0.8)
        ax.contour((out[b][1][sel] == 3).T, levels=[0.5], colors="y", linewidths=0.6)
        ax.set_title(f"{a} T1, {b} brain (red) / WM (yellow)", fontsize=9)
        ax.axis("off")
    for d, sel in enumerate([np.s_[:, :, kz], np.s_[:, ky, :]]):
        ax = axes[-1, 2 + d]
        rgb = np.stack([out[a][0][sel].T, out[b][0][sel].T, out[a][0][sel].T], -1)
        ax.imshow(rgb, origin="lower")
        ax.set_title(f"magenta {a}, green {b}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


# --------------------------------------------------------------------------- main


def fetch_sources(folder: str) -> None:
    """Download the two source archives into ``folder`` with their ordinary clients (pip, and
    apt-get, which needs a Debian bookworm source list), unless one is already there. Their
    checksums are the docstring's; the image files inside are checked again when read."""
    import subprocess

    os.makedirs(folder, exist_ok=True)
    if not glob.glob(os.path.join(folder, "nilearn-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", NILEARN_PIN, "--no-deps",
                        "--only-binary=:all:", "-d", folder], check=True)
    if not glob.glob(os.path.join(folder, "mricron-data_*.deb")):
        cmd = ["apt-get", "download", MRICRON_PIN]
        if subprocess.run(cmd, cwd=folder).returncode != 0:  # the package lists may be missing
            subprocess.run(["apt-get", "update"], check=True)
            subprocess.run(cmd, cwd=folder, check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--download-dir", help="folder with nilearn-*.whl and mricron-data_*.deb")
    ap.add_argument("--nilearn", help="the nilearn wheel, or a folder it was unzipped into")
    ap.add_argument("--mricron-data", help="the mricron-data .deb, or a folder from dpkg -x")
    ap.add_argument("--out", help=f"output folder (default: {DEFAULT_OUT}; with --voxel-mm 1, {DEFAULT_OUT_1MM})")
    ap.add_argument("--voxel-mm", type=int, choices=(2, 1), default=2,
                    help="grid spacing: 2 (default, the embedded data) or 1 (the 1 mm versions)")
    ap.add_argument("--fetch", nargs="?", const=DEFAULT_SOURCES, metavar="SRC",
                    help=f"download the two archives into SRC first (default {DEFAULT_SOURCES}; "
                         f"`pip download {NILEARN_PIN}` and `apt-get download {MRICRON_PIN}`, skipped "
                         "for an archive already there), then read them from there")
    ap.add_argument("--preview", help="also save a PNG of mid-axial / mid-coronal slices here")
    ap.add_argument("--no-verify", action="store_true",
                    help="accept source images whose sha256 differs from the expected one")
    args = ap.parse_args(argv)
    voxel_mm = float(args.voxel_mm)
    if args.out is None:
        args.out = DEFAULT_OUT if args.voxel_mm == 2 else DEFAULT_OUT_1MM
    if args.fetch:
        fetch_sources(args.fetch)
        args.download_dir = args.download_dir or args.fetch

    paths = {"nilearn": args.nilearn, "mricron-data": args.mricron_data}
    pattern = {"nilearn": "nilearn-*.whl", "mricron-data": "mricron-data_*.deb"}
    for k in paths:
        if paths[k] is None and args.download_dir:
            found = sorted(glob.glob(os.path.join(args.download_dir, pattern[k])))
            if found:
                paths[k] = found[-1]
        if paths[k] is None:
            ap.error(f"no {k} source: pass --{k} or --download-dir (see the docstring)")
    archives = {k: Archive(p, k) for k, p in paths.items()}
    check = not args.no_verify
    assert sha256(MNI_LICENSE.encode()) == MNI_LICENSE_SHA256
    assert sha256(COLIN_LICENSE.encode()) == COLIN_LICENSE_SHA256

    src = {}
    for name, spec in SUBJECTS.items():
        data = archives[spec["archive"]].read_checked(spec["member"], spec["sha256"], check)
        img = load_nifti(data)
        vol = np.asanyarray(img.dataobj)
        mask = brain_mask(vol, img.header.get_zooms()[:3])
        scaled, p = scale_intensity(vol, mask)
        lab, thr = tissue_labels(scaled, mask)
        src[name] = dict(img=img, mask=mask, scaled=scaled, lab=lab, thr=thr, p=p,
                         sha=sha256(data), box=world_bbox(mask, img.affine))

    mni_check = None
    if "mni152" in src:
        try:
            nl = archives["nilearn"]
            gm = np.asanyarray(load_nifti(nl.read_checked(*MNI_GM, check)).dataobj).astype(float)
            wm = np.asanyarray(load_nifti(nl.read_checked(*MNI_WM, check)).dataobj).astype(float)
            ref2 = (gm > wm) & (gm > 127.5)
            ref3 = (wm >= gm) & (wm > 127.5)
            lab = src["mni152"]["lab"]
            mni_check = {2: dice(lab == 2, ref2), 3: dice(lab == 3, ref3)}
        except (SystemExit, KeyError) as e:
            print(f"skipping the check against nilearn's GM/WM maps: {e}", file=sys.stderr)

    grid_shape, grid_affine = common_grid([s["box"] for s in src.values()], voxel_mm)
    os.makedirs(args.out, exist_ok=True)
    out, files, stats = {}, [], {}
    for name, s in src.items():
        coords = sample_coords(grid_shape, grid_affine, s["img"].affine)
        t1 = resample_intensity(s["scaled"], coords, grid_shape)
        lab = resample_labels(s["lab"], coords, grid_shape)
        out[name] = (t1, lab)
        for arr, suffix, content, is_lab in [(t1, "t1", "T1, brain only, 0..255", False),
                                             (lab, "labels", "tissue labels 0..3", True)]:
            blob = nifti_bytes(arr, grid_affine, SUBJECTS[name]["descrip"].format(mm=f"{voxel_mm:g}")
                               + ("" if not is_lab else " labels"), is_lab)
            fname = f"{name}_{suffix}.nii.gz"
            with open(os.path.join(args.out, fname), "wb") as f:
                f.write(blob)
            files.append(dict(name=fname, subject=name, content=content, sha256=sha256(blob),
                              data_sha256=sha256(np.ascontiguousarray(arr).tobytes()),
                              size=len(blob)))
        brain = lab > 0
        stats[name] = dict(src_sha256=s["sha"], p995=s["p"], thr=s["thr"], min=int(t1.min()),
                           max=int(t1.max()), mean_brain=float(t1[brain].mean()),
                           frac=[float((lab == k).mean()) for k in LABEL_NAMES])

    names = list(out)
    a, b = out[names[0]][1], out[names[1]][1]
    pair_dice = {k: dice(a == k, b == k) for k in LABEL_NAMES if k > 0}
    brain_dice = dice(a > 0, b > 0)

    licences = []
    licences.append((
        "MNI ICBM152 2009a template (mni152)",
        "nilearn's own description of the template (`nilearn/datasets/description/"
        "icbm152_2009.rst` in the wheel) says `License: unknown`; the notice of the MNI, "
        f"which must appear in all copies, is copied verbatim from {MNI_LICENSE_SRC}.",
        MNI_LICENSE))
    nl_lic = archives["nilearn"].nilearn_license()
    if nl_lic:
        licences.append((
            f"nilearn (the converted template file is redistributed from the nilearn {archives['nilearn'].version} wheel)",
            f"`{nl_lic[0]}` from the wheel (sha256 `{sha256(nl_lic[1])}`):", nl_lic[1].decode("utf-8")))
    licences.append((
        "Colin27 (colin27)",
        "The MNI notice for the Colin27 brain, copied verbatim from " + COLIN_LICENSE_SRC + ":",
        COLIN_LICENSE))
    deb_copy = archives["mricron-data"].read(DEB_COPYRIGHT)
    licences.append((
        f"mricron-data {archives['mricron-data'].version} (Debian), whose `ch2bet.nii.gz` is used",
        f"`/{DEB_COPYRIGHT}` from the .deb (sha256 `{sha256(deb_copy)}`), in full:",
        deb_copy.decode("utf-8")))

    write_readme(os.path.join(args.out, "README.md"), archives, grid_shape, grid_affine,
                 files, stats, pair_dice, brain_dice, mni_check, licences, voxel_mm)

    # summary
    print(f"grid {grid_shape} at {voxel_mm:g} mm, affine:\n{fmt_affine(grid_affine)}")
    for name, s in stats.items():
        print(f"{name}: p99.5={s['p995']:g} otsu={s['thr']} t1 {s['min']}..{s['max']} "
              f"fractions " + " ".join(f"{LABEL_NAMES[k]}={x:.4f}" for k, x in zip(LABEL_NAMES, s['frac'])))
    print("Dice between subjects: " + ", ".join(f"{LABEL_NAMES[k]} {v:.3f}" for k, v in pair_dice.items())
          + f", brain {brain_dice:.3f}")
    if mni_check:
        print(f"mni152 labels vs nilearn GM/WM maps: Dice GM {mni_check[2]:.3f}, WM {mni_check[3]:.3f}")
    total = 0
    for f in files:
        total += f["size"]
        print(f"{f['name']}: {f['size']} bytes  sha256 {f['sha256']}")
    print(f"total {total} bytes in {args.out}")
    if args.preview:
        preview(args.preview, grid_shape, out)
        print(f"preview: {args.preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
