"""Regenerate docs/plot_example.png: `promptmid register --plot` on the synthetic pair.

    .venv/bin/python docs/make_plot_example.py

The pair is promptmid_cli.synthetic.make_pair (a rendered landscape; the SAR's georeference is off
by a known +12.3, -7.6 px and 0.5 deg), so the figure shows a consistency check, not real imagery.
"""

import os
import sys
import tempfile

from promptmid_cli import plot
from promptmid_cli.config import MatchOptions, RegisterConfig
from promptmid_cli.register import register
from promptmid_cli.synthetic import make_pair

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plot_example.png")


def main():
    plot.DPI = 64  # a smaller page for the README (< 200 KB)
    with tempfile.TemporaryDirectory() as d:
        p = make_pair(d, size=384, shift_px=(12.3, -7.6), rot_deg=0.5)
        rep = register(RegisterConfig(p.optical, p.sar, os.path.join(d, "out.tif"), plot=OUT, overwrite=True,
                                      match=MatchOptions(tile_size=96)))
    print(f"wrote {OUT} ({os.path.getsize(OUT) // 1024} KB); verdict {rep.get('verdict', {}).get('level')}, "
          f"correction {rep['correction']['dx_ref_px']:+.2f}, {rep['correction']['dy_ref_px']:+.2f} px")


if __name__ == "__main__":
    sys.exit(main())
