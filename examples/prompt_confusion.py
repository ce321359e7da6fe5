"""Agreement of the built-in ``stats`` prompt selector with CORINE labels on BigEarthNet patches.

Patches (120 x 120 px, 10 m; Sentinel-1 VV in dB, Sentinel-2 L2A uint16 reflectance x 10000):
  * the six example patches shipped with ``bigearthnet-common`` (always; CORINE level-3 labels);
  * the 24 BigEarthNet-v2 patches that the ``configilm==0.7.1`` wheel carries as mock data, when
    that wheel is in the cache ``examples/demo.py`` uses (``.cache/promptmid-demo``, or
    ``--cache DIR``; ``--download`` fetches it with pip). Their labels (BigEarthNet-19
    nomenclature) come from the wheel's ``BENv2/metadata*.parquet``, read with pyarrow; without
    pyarrow these patches are skipped and the script says so.

The optical tile is B02, B03, B04, B08 (NIR = band 3); the SAR tile is VV. A prediction agrees
when it is one of the classes the patch's labels map to (``promptmid_cli.prompts.corine``); the
patches are multi-label, so this is lenient, and the script prints the score of always answering
the most frequent class next to it. Printed: one line per patch, the agreement, and a confusion
matrix (rows: label-derived classes, a patch counting once in each of its rows; columns: the
predicted class), with and without the NIR band.

    python examples/prompt_confusion.py [--cache DIR] [--download]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from promptmid_cli.prompts import TileImages, default_classes, make_selector
from promptmid_cli.prompts.corine import classes_for_labels

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "promptmid-demo"  # shared with examples/demo.py
WHEEL_SPEC = "configilm==0.7.1"
BENV2 = "configilm/extra/mock_data/BENv2/"
LMDB_MEMBER = BENV2 + "BigEarthNet-V2-LMDB/data.mdb"
META_MEMBERS = (BENV2 + "metadata.parquet", BENV2 + "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
S2_BANDS = ("B02", "B03", "B04", "B08")


def _read(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1).astype(np.float32)


def load_bigearthnet_examples() -> list[dict]:
    """[{name, labels, tile: TileImages (B02,B03,B04,B08 + VV dB), vh_db}] for the example patches."""
    from bigearthnet_common.example_data import get_s1_example_folder_path, get_s2_example_folder_path

    s1_root = Path(get_s1_example_folder_path())
    s2_root = Path(get_s2_example_folder_path())
    out = []
    for d in sorted(p for p in s1_root.iterdir() if p.is_dir()):
        meta = json.loads(next(d.glob("*_labels_metadata.json")).read_text())
        s2_name = meta["corresponding_s2_patch"]
        s2 = s2_root / s2_name
        opt = np.stack([_read(s2 / f"{s2_name}_{b}.tif") for b in S2_BANDS])
        vv = _read(next(d.glob("*_VV.tif")))
        vh = _read(next(d.glob("*_VH.tif")))
        out.append({"name": d.name, "source": "bigearthnet-common", "labels": meta["labels"],
                    "tile": TileImages(opt, vv, 3), "vh_db": vh})
    return out


def _wheel(cache: Path, download: bool) -> Path | None:
    found = sorted(cache.glob("configilm-0.7.1-*.whl"))
    if found or not download:
        return found[0] if found else None
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python", "-q",
           WHEEL_SPEC, "-d", str(cache)]
    subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    found = sorted(cache.glob("configilm-0.7.1-*.whl"))
    return found[0] if found else None


def load_benv2_patches(cache: Path = CACHE, download: bool = False) -> tuple[list[dict], str]:
    """(patches as in :func:`load_bigearthnet_examples`, a note); [] and why when unavailable.

    Reads the LMDB the way examples/demo.py does (lmdb + safetensors, extracted once into
    ``cache/BigEarthNet-V2-LMDB``) and the labels from the wheel's two metadata parquet files
    (together they cover all 24 patches; one lists those with seasonal snow or cloud).
    """
    whl = _wheel(Path(cache), download)
    if whl is None:
        return [], f"BENv2: no {WHEEL_SPEC} wheel in {cache} (run with --download or examples/demo.py)"
    try:
        import lmdb
        import pyarrow.parquet as pq
        from safetensors.numpy import load
    except ImportError as e:
        return [], f"BENv2: skipped, {e.name} is not installed (pip install pyarrow lmdb safetensors)"
    import io

    d = Path(cache) / "BigEarthNet-V2-LMDB"
    meta = []
    with zipfile.ZipFile(whl) as z:
        if not (d / "data.mdb").is_file():
            d.mkdir(parents=True, exist_ok=True)
            (d / "data.mdb.part").write_bytes(z.read(LMDB_MEMBER))
            os.replace(d / "data.mdb.part", d / "data.mdb")
        for m in META_MEMBERS:
            meta += pq.read_table(io.BytesIO(z.read(m)), columns=["patch_id", "s1_name", "labels"]).to_pylist()
    out = []
    env = lmdb.open(str(d), readonly=True, lock=False, readahead=False)
    try:
        with env.begin() as tx:
            for r in sorted(meta, key=lambda r: r["patch_id"]):
                s2, s1 = tx.get(r["patch_id"].encode()), tx.get(r["s1_name"].encode())
                if s2 is None or s1 is None:
                    continue
                s2, s1 = load(s2), load(s1)
                opt = np.stack([s2[b].astype(np.float32) for b in S2_BANDS])
                out.append({"name": r["patch_id"], "source": "configilm BENv2", "labels": list(r["labels"]),
                            "tile": TileImages(opt, s1["VV"].astype(np.float32), 3),
                            "vh_db": s1["VH"].astype(np.float32)})
    finally:
        env.close()
    return out, f"BENv2: {len(out)} patches from {whl.name}"


def evaluate(patches: list[dict], use_nir: bool = True) -> list[dict]:
    sel = make_selector("stats", default_classes())
    tiles = [p["tile"] if use_nir else TileImages(p["tile"].optical[:3], p["tile"].sar_db, None)
             for p in patches]
    rows = []
    for p, r in zip(patches, sel.select(tiles)):
        truth = classes_for_labels(p["labels"])
        rows.append({"name": p["name"], "source": p.get("source", ""), "pred": r.class_id, "score": r.score,
                     "featureless": r.featureless, "truth": sorted(truth), "agree": r.class_id in truth,
                     "labels": p["labels"]})
    return rows


def confusion(rows: list[dict]) -> tuple[list[str], list[str], dict[tuple[str, str], int]]:
    """(row classes, column classes, counts): rows = label-derived classes, columns = predictions."""
    counts: Counter = Counter()
    for r in rows:
        for t in r["truth"]:
            counts[(t, r["pred"])] += 1
    ids = [c.id for c in default_classes()]
    truth = [c for c in ids if any(k[0] == c for k in counts)]
    pred = [c for c in ids if any(k[1] == c for k in counts)]
    return truth, pred, dict(counts)


def format_confusion(rows: list[dict]) -> str:
    truth, pred, counts = confusion(rows)
    w = max([len(c) for c in truth + pred] + [6])
    lines = ["confusion (rows: label classes, columns: predicted; * = agreeing cell):",
             " " * (w + 2) + " ".join(f"{p[:w]:>{w}}" for p in pred) + f" {'recall':>7}"]
    for t in truth:
        n = sum(counts.get((t, p), 0) for p in pred)
        cells = " ".join(f"{counts.get((t, p), 0):>{w - 1}}{'*' if p == t else ' '}" for p in pred)
        lines.append(f"{t:<{w}}  {cells} {counts.get((t, t), 0):>3}/{n:<3}")
    prec = []
    for p in pred:
        made = [r for r in rows if r["pred"] == p]
        prec.append(f"{sum(r['agree'] for r in made)}/{len(made)}")
    lines.append(f"{'agree':<{w}}  " + " ".join(f"{s:>{w}}" for s in prec))
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    n = sum(r["agree"] for r in rows)
    freq = Counter(t for r in rows for t in r["truth"])
    best, k = freq.most_common(1)[0] if freq else ("-", 0)
    return (f"agreement: {n}/{len(rows)} ({100.0 * n / max(len(rows), 1):.0f} %); "
            f"always '{best}' would agree on {k}/{len(rows)}")


def _pixel_metres(transform, crs, height: int) -> float:
    """Ground pixel size (mean of x and y) in metres; geographic CRSs at the image's mid-latitude."""
    import math

    if crs is not None and crs.is_geographic:
        lat = transform.f + transform.e * height / 2
        return 0.5 * (abs(transform.a) * math.cos(math.radians(lat)) + abs(transform.e)) * 111320.0
    return 0.5 * (abs(transform.a) + abs(transform.e))


def scene_tiles(optical: Path, sar: Path, tile: int = 256) -> list[TileImages]:
    """Tiles of a whole optical/SAR scene as the pipeline hands them to the selector.

    Optical windows of ``tile`` px on its own grid; the SAR read over the same ground window
    (resampled to the optical grid) and brought to dB as ``promptmid register`` does for its
    detected domain (``imaging.detect_sar_domain`` / ``to_intensity``). Zero is nodata.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from promptmid_cli.imaging import to_intensity

    with rasterio.open(optical) as o, rasterio.open(sar) as s:
        opt = o.read().astype(np.float32)
        opt[:, np.all(opt == 0, axis=0)] = np.nan
        dt = np.dtype(s.dtypes[0])
        with WarpedVRT(s, crs=o.crs, transform=o.transform, width=o.width, height=o.height,
                       resampling=Resampling.bilinear, src_nodata=0, nodata=0) as v:
            raw = v.read(1).astype(np.float32)
    raw[raw == 0] = np.nan
    res_m = _pixel_metres(o.transform, o.crs, o.height)
    domain = "display" if dt == np.uint8 else (
        "db" if np.issubdtype(dt, np.floating) and np.nanmean(raw < 0) > 0.2 else "linear")
    db = to_intensity(raw[None], "sar", domain)
    if domain == "display":  # as register.make_tile_prompter
        db = db / 255.0 * 35.0 - 30.0
    out = []
    h, w = opt.shape[1:]
    for r in range(0, h - tile + 1, tile):
        for c in range(0, w - tile + 1, tile):
            t = TileImages(opt[:, r:r + tile, c:c + tile], db[r:r + tile, c:c + tile], None, res_m=res_m)
            if np.isfinite(t.sar_db).mean() > 0.5 and np.isfinite(t.optical).all(axis=0).mean() > 0.5:
                out.append(t)
    return out


def scene_report(optical: Path, sar: Path, tile: int = 256) -> str:
    tiles = scene_tiles(optical, sar, tile)
    res = make_selector("stats", default_classes()).select(tiles)
    hist = Counter(r.class_id for r in res)
    return (f"{Path(optical).parent.name}: {len(tiles)} tiles of {tile} px -> "
            + ", ".join(f"{k} {v}" for k, v in hist.most_common()))


DEV_SCENE = REPO.parent / "shared" / "data" / "dev" / "gf2-gf3-airport"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=str(CACHE), help="folder holding the configilm wheel")
    ap.add_argument("--download", action="store_true", help="fetch the configilm wheel if absent")
    ap.add_argument("--scene", nargs=2, metavar=("OPTICAL", "SAR"), type=Path,
                    help="also print the classes of a scene's tiles (default: the dev airport pair "
                         "when ../shared/data/dev is there)")
    ap.add_argument("--no-scene", action="store_true", help="skip the scene section")
    ap.add_argument("--tile", type=int, default=256, help="scene tile size in px")
    a = ap.parse_args(argv)
    patches = load_bigearthnet_examples()
    extra, note = load_benv2_patches(Path(a.cache), a.download)
    print(f"bigearthnet-common: {len(patches)} patches; {note}")
    patches += extra
    for use_nir in (True, False):
        rows = evaluate(patches, use_nir)
        print(f"\n== stats selector, optical B02,B03,B04{',B08 (NIR)' if use_nir else ' (no NIR)'} + VV, "
              f"{len(rows)} patches ==")
        for r in rows:
            mark = "ok " if r["agree"] else "-- "
            print(f"{mark}{r['pred']:<12} p={r['score']:.2f}  truth={'/'.join(r['truth']):<40} {r['name']}")
        for src in sorted({r["source"] for r in rows}):
            sub = [r for r in rows if r["source"] == src]
            print(f"{src}: {summary(sub)}")
        print(f"all: {summary(rows)}")
        print(format_confusion(rows))
    scene = a.scene or ((DEV_SCENE / "optical_gf2_pan.tif", DEV_SCENE / "sar_gf3_hh.tif")
                        if DEV_SCENE.is_dir() else None)
    if scene and not a.no_scene:
        print("\n== stats selector on a scene (no labels; what each tile is called) ==")
        print(scene_report(scene[0], scene[1], a.tile))


if __name__ == "__main__":
    main()
