"""With the built-in descriptor on the CPU a run never imports torch (a fixed 1.5-3.5 s of start-up
on a 2-core machine): the matching core is NumPy/OpenCV, torch loads only for learned
descriptors or a GPU."""

import subprocess
import sys

import pytest

from conftest import REPO, score_points

PROBE = """
import sys
import promptmid_cli.__main__ as m
leave = m._exit
def report(code):
    sys.stderr.write("\\nloaded torch: %s\\n" % ("torch" in sys.modules))
    leave(code)
m._exit = report
sys.argv = ["promptmid"] + sys.argv[1:]
m.main()
"""


@pytest.mark.parametrize("search", ["auto", "full"])
def test_a_builtin_cpu_run_never_imports_torch(small_pair, tmp_path, search):
    out = tmp_path / "out.tif"
    p = subprocess.run([sys.executable, "-c", PROBE, "register", str(small_pair.optical), str(small_pair.sar),
                        "-o", str(out), "-q", "--device", "cpu", "--search", search],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip().splitlines()[-1] == "loaded torch: False", p.stderr
    err = score_points(out.with_suffix(".points"), small_pair.truth, small_pair.ref_transform, small_pair.ref_shape)
    assert err < 0.5
