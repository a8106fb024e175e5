"""Smoke test of an installed gdcore wheel (cibuildwheel's test-command):
one Adam step on float32 and float64, checked element by element against
the update written out in NumPy float64, and the build's description."""
import numpy as np

import gdcore


def main():
    info = gdcore.build_info()
    print("gdcore", gdcore.__version__, info["isa"], "| threads:", info["threads"])
    for dtype, tol in ((np.float32, 1e-6), (np.float64, 1e-14)):
        rng = np.random.default_rng(0)
        p0 = rng.standard_normal(1000).astype(dtype)
        g = rng.standard_normal(1000).astype(dtype)
        p = p0.copy()
        opt = gdcore.Adam([p], lr=1e-2)
        opt.step([g])
        m = 0.1 * g.astype(np.float64)
        v = 0.001 * g.astype(np.float64) ** 2
        want = p0 - 1e-2 * (m / 0.1) / (np.sqrt(v / 0.001) + 1e-8)
        err = np.max(np.abs(p - want) / np.maximum(1.0, np.abs(want)))
        assert err < tol, f"{np.dtype(dtype).name}: max error {err:.3g} >= {tol}"
    print("ok")


if __name__ == "__main__":
    main()
