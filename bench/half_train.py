"""Training with 16-bit params: does each rounding mode keep small updates?

    python -m bench.half_train [--out DIR] [--steps N]

A two-layer perceptron (64-64-10, tanh, softmax cross-entropy) learns
scikit-learn's digits (1,797 8x8 images, shipped inside scikit-learn:
nothing is downloaded), minibatches of 64, Adam (lr 1e-3), with float32
params, and with bfloat16 params under every rounding mode and state dtype
of gdcore.  The forward and backward passes run in float32 on the params'
values (as a bfloat16 model computes with float32 accumulation); the grads
handed to the optimizer have the params' dtype.  Every variant sees the same
initial values (rounded to bfloat16 for all, float32 included) and the same
minibatches.  Writes half_train.md (final loss, test accuracy, step time)
and half_train.png (training loss against step) to --out (bench/results).
"""
import argparse
import os
import time

import numpy as np

import gdcore

VARIANTS = [
    ("float32", np.float32, {}),
    ("bf16 nearest, bf16 state (torch's default)", "bf16", {}),
    ("bf16 nearest, float32 state", "bf16", dict(state_dtype="float32")),
    ("bf16 stochastic, bf16 state", "bf16", dict(rounding="stochastic")),
    ("bf16 stochastic, float32 state", "bf16", dict(rounding="stochastic",
                                                   state_dtype="float32")),
    ("bf16 kahan, bf16 state", "bf16", dict(rounding="kahan")),
    ("bf16 kahan, float32 state", "bf16", dict(rounding="kahan", state_dtype="float32")),
]


def data():
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    split = 1500
    return x[:split], y[:split], x[split:], y[split:]


def init(seed=1):
    import ml_dtypes
    rng = np.random.default_rng(seed)
    shapes = [(64, 64), (64,), (64, 10), (10,)]
    params = []
    for s in shapes:
        scale = 1 / np.sqrt(s[0]) if len(s) == 2 else 0.0
        params.append((rng.standard_normal(s) * scale).astype(ml_dtypes.bfloat16))
    return params


def loss_and_grads(params, x, y):
    w1, b1, w2, b2 = [p.astype(np.float32) for p in params]
    h = np.tanh(x @ w1 + b1)
    logits = h @ w2 + b2
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    n = len(x)
    loss = -np.log(p[np.arange(n), y] + 1e-12).mean()
    d = p
    d[np.arange(n), y] -= 1
    d /= n
    gw2 = h.T @ d
    gb2 = d.sum(axis=0)
    dh = (d @ w2.T) * (1 - h * h)
    gw1 = x.T @ dh
    gb1 = dh.sum(axis=0)
    return float(loss), [gw1, gb1, gw2, gb2]


def accuracy(params, x, y):
    w1, b1, w2, b2 = [p.astype(np.float32) for p in params]
    return float(((np.tanh(x @ w1 + b1) @ w2 + b2).argmax(axis=1) == y).mean())


def train(variant, steps, xtr, ytr, xte, yte, every=25):
    import ml_dtypes
    _, dtype, options = variant
    dtype = ml_dtypes.bfloat16 if dtype == "bf16" else dtype
    params = [p.astype(dtype) for p in init()]
    opt = gdcore.Adam(params, lr=1e-3, seed=0, **options)
    rng = np.random.default_rng(2)
    curve = []
    seconds = 0.0
    for step in range(steps):
        batch = rng.integers(0, len(xtr), 64)
        _, grads = loss_and_grads(params, xtr[batch], ytr[batch])
        grads = [g.astype(dtype) for g in grads]
        start = time.perf_counter()
        opt.step(grads)
        seconds += time.perf_counter() - start
        if step % every == 0 or step == steps - 1:
            curve.append((step, loss_and_grads(params, xtr, ytr)[0]))
    return {"curve": curve, "final_loss": curve[-1][1], "test_accuracy": accuracy(params, xte, yte),
            "step_us": seconds / steps * 1e6}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    gdcore.set_num_threads(1)
    xtr, ytr, xte, yte = data()
    results = {}
    for variant in VARIANTS:
        results[variant[0]] = train(variant, args.steps, xtr, ytr, xte, yte)
        r = results[variant[0]]
        print(f"{variant[0]:45s} final loss {r['final_loss']:.4f}  test accuracy "
              f"{r['test_accuracy']:.3f}  optimizer step {r['step_us']:.1f} us", flush=True)
    os.makedirs(args.out, exist_ok=True)
    lines = ["### Training with bfloat16 params (digits, 64-64-10 MLP, Adam lr 1e-3, "
             f"{args.steps} steps of 64)", "",
             "| params and rounding | final training loss | test accuracy | optimizer step (us) |",
             "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['final_loss']:.4f} | {r['test_accuracy']:.3f} | "
                     f"{r['step_us']:.1f} |")
    with open(os.path.join(args.out, "half_train.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if not args.no_plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 5))
        for name, r in results.items():
            steps, losses = zip(*r["curve"])
            ax.plot(steps, losses, label=name, lw=1.5 if name == "float32" else 1.0)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (whole training set)")
        ax.set_title("Adam on digits: float32 vs bfloat16 params, by rounding mode")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "half_train.png"), dpi=110)
    print("\n".join(lines))
    print(f"\nwrote {args.out}/half_train.md" + ("" if args.no_plot else ", half_train.png"))


if __name__ == "__main__":
    main()
