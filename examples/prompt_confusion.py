"""Agreement of the built-in ``stats`` prompt selector with CORINE labels on BigEarthNet examples.

Runs on the six example patches shipped with ``bigearthnet-common`` (120 x 120 px, 10 m;
Sentinel-1 VV/VH in dB, Sentinel-2 L2A bands as uint16 reflectance x 10000). The optical tile is
B02, B03, B04, B08 (NIR = band 3); the SAR tile is VV. A prediction agrees when it is one of the
classes the patch's CORINE labels map to (promptmid_cli.prompts.corine). Prints one line per
patch, the agreement, and a confusion table (predicted class vs. label-derived classes), with and
without the NIR band.

    python examples/prompt_confusion.py
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from promptmid_cli.prompts import TileImages, default_classes, make_selector
from promptmid_cli.prompts.corine import classes_for_labels

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
        out.append({"name": d.name, "labels": meta["labels"], "tile": TileImages(opt, vv, 3), "vh_db": vh})
    return out


def evaluate(patches: list[dict], use_nir: bool = True) -> list[dict]:
    sel = make_selector("stats", default_classes())
    tiles = [p["tile"] if use_nir else TileImages(p["tile"].optical[:3], p["tile"].sar_db, None)
             for p in patches]
    rows = []
    for p, r in zip(patches, sel.select(tiles)):
        truth = classes_for_labels(p["labels"])
        rows.append({"name": p["name"], "pred": r.class_id, "score": r.score, "featureless": r.featureless,
                     "truth": sorted(truth), "agree": r.class_id in truth, "labels": p["labels"]})
    return rows


def main() -> None:
    patches = load_bigearthnet_examples()
    for use_nir in (True, False):
        rows = evaluate(patches, use_nir)
        print(f"\n== stats selector, optical B02,B03,B04{',B08 (NIR)' if use_nir else ' (no NIR)'} + VV ==")
        for r in rows:
            mark = "ok " if r["agree"] else "-- "
            print(f"{mark}{r['pred']:<12} p={r['score']:.2f}  truth={'/'.join(r['truth']):<32} "
                  f"{'; '.join(r['labels'])}")
        n = sum(r["agree"] for r in rows)
        print(f"agreement: {n}/{len(rows)}")
        conf = Counter((r["pred"], "/".join(r["truth"])) for r in rows)
        print("confusion (predicted -> label classes: count):")
        for (pred, truth), c in sorted(conf.items()):
            print(f"  {pred:<12} -> {truth:<32} {c}")


if __name__ == "__main__":
    main()
