"""runtimes/helper_threads.py: the device path keeps numpy's OpenBLAS and OpenCV to one thread.

Run in a child interpreter: the setting is process-wide.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json
    import numpy as np
    from edge_shitu.runtimes.helper_threads import blas_threads, limit_helper_threads
    np.ones((64, 64), np.float32) @ np.ones((64, 64), np.float32)  # OpenBLAS is loaded and running
    before = blas_threads()
    done = limit_helper_threads(1)
    try:
        import cv2
        limit_helper_threads(1)
        cv = cv2.getNumThreads()
    except ImportError:
        cv = None
    print(json.dumps({"before": before, "done": done, "after": blas_threads(), "cv2": cv}))
""")


def test_limit_helper_threads_sets_openblas_and_opencv_to_one():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    # numpy's wheels bundle OpenBLAS (a distro numpy may link another BLAS: then nothing to set)
    assert r["before"] == {} or all(n == 2 for n in r["before"].values()), r
    # every OpenBLAS loaded, numpy's and any other (opencv-python bundles its own), is at one thread
    assert set(r["after"]) >= set(r["before"]) and all(n == 1 for n in r["after"].values()), r
    assert all(r["done"][p] == 1 for p in r["before"]), r
    assert r["cv2"] in (None, 1), r
