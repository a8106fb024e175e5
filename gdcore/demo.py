"""python -m gdcore.demo: run every optimizer on a small problem and say what
it did (the build, the instruction set, each optimizer's progress, and the
two tutorial examples)."""
import time

import numpy as np

import gdcore


def _quadratic_problem(dtype, n=10_000, seed=0):
    """f(w) = 0.5 * sum(a * (w - target)^2): gradient a * (w - target)."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0, n).astype(dtype)
    target = rng.standard_normal(n).astype(dtype)
    return a, target


def main():
    info = gdcore.build_info()
    print(f"gdcore {gdcore.__version__}: kernels run as {info['isa']} "
          f"(built: {info['isa_compiled']}); threads {'on' if info['threads'] else 'off'}, "
          f"{info['num_threads']} thread(s), parallel above {info['parallel_threshold']:,} "
          "elements per call")

    print("\nTutorial 1: gradient descent on (theta - 3)^2, float64 0-d theta, lr=0.1")
    theta = np.array(0.0)
    opt = gdcore.SGD([theta], lr=0.1)
    for _ in range(100):
        opt.step([2 * (theta - 3)])
    print(f"  after 100 steps theta = {float(theta):.12f}")

    print("Tutorial 2: Adam on (theta - 3)^2, float32 0-d theta, lr=0.01")
    theta = np.array(0.0, dtype=np.float32)
    opt = gdcore.Adam([theta], lr=0.01)
    for _ in range(1000):
        opt.step([2 * (theta - 3.0)])
    print(f"  after 1000 steps theta = {float(theta):.6f} (dtype {theta.dtype})")

    print("\nEvery optimizer on a 10,000-element quadratic, 200 steps each:")
    configs = [
        ("SGD", dict(lr=0.1)),
        ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
        ("Adagrad", dict(lr=0.5)),
        ("RMSprop", dict(lr=0.01, centered=True)),
        ("Adam", dict(lr=0.05, amsgrad=True)),
        ("AdamW", dict(lr=0.05, weight_decay=1e-3)),
    ]
    for dtype in (np.float32, np.float64):
        a, target = _quadratic_problem(dtype)
        for name, config in configs:
            w = np.zeros_like(target)
            opt = getattr(gdcore, name)([w], **config)
            loss0 = 0.5 * float(np.sum(a * (w - target) ** 2))
            start = time.perf_counter()
            for _ in range(200):
                opt.step([a * (w - target)])
            elapsed = time.perf_counter() - start
            loss = 0.5 * float(np.sum(a * (w - target) ** 2))
            options = ", ".join(f"{k}={v}" for k, v in config.items())
            print(f"  {np.dtype(dtype).name:7} {name:8} {options:38} loss {loss0:10.2f} -> "
                  f"{loss:.3e}   {elapsed / 200 * 1e6:7.1f} us/step incl. gradient")


if __name__ == "__main__":
    main()
