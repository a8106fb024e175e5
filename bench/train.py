"""End to end: a real training loop with torch.optim and with gdcore.torch.

A residual MLP of many small layers (each block: LayerNorm, Linear, GELU,
Linear; 32 blocks: 198 parameter tensors) classifies scikit-learn's handwritten digits
(1,797 8x8 images that ship inside the scikit-learn package: nothing is
downloaded).  The same model, initialisation and batch order are trained
with torch.optim.Adam (for-loop, foreach, fused) and gdcore.torch.Adam, on
one thread, interleaved step by step; per training step the forward+backward time and the optimizer
step time are measured separately, and the loss curves are compared.

    python -m bench.train [--epochs N] [--out DIR]

Writes train.md, train.json and train.png (loss curves and time per step)
under bench/results/.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def data():
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return x, digits.target.astype(np.int64)


def model(torch, blocks, width, seed=0):
    torch.manual_seed(seed)
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(width)
            self.up = nn.Linear(width, 2 * width)
            self.down = nn.Linear(2 * width, width)

        def forward(self, h):
            return h + self.down(torch.nn.functional.gelu(self.up(self.norm(h))))

    return nn.Sequential(nn.Linear(64, width), *[Block() for _ in range(blocks)],
                         nn.LayerNorm(width), nn.Linear(width, 10))


def train(torch, makers, x, y, epochs, batch, blocks, width):
    """Trains one model per optimizer maker, interleaved step by step (the
    same batches; machine noise hits all alike).  Per contender: per-step
    losses, forward+backward seconds, optimizer seconds, final params."""
    nets = {label: model(torch, blocks, width) for label in makers}
    opts = {label: make(nets[label].parameters()) for label, make in makers.items()}
    runs = {label: {"losses": [], "fwd_bwd": [], "step": []} for label in makers}
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    order = np.random.default_rng(1)
    for _ in range(epochs):
        perm = torch.from_numpy(order.permutation(len(x)))
        for start in range(0, len(x) - batch + 1, batch):
            idx = perm[start:start + batch]
            for label, net in nets.items():
                opt, run = opts[label], runs[label]
                t0 = time.perf_counter()
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(xs[idx]), ys[idx])
                loss.backward()
                t1 = time.perf_counter()
                opt.step()
                t2 = time.perf_counter()
                run["losses"].append(float(loss.detach()))
                run["fwd_bwd"].append(t1 - t0)
                run["step"].append(t2 - t1)
    for label, net in nets.items():
        runs[label]["params"] = [p.detach().numpy().copy() for p in net.parameters()]
    return runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    import torch

    import gdcore
    import gdcore.torch as gt
    torch.set_num_threads(1)
    gdcore.set_num_threads(1)
    x, y = data()
    lr = 1e-3
    contenders = {
        "torch for-loop": lambda ps: torch.optim.Adam(ps, lr=lr, foreach=False),
        "torch foreach": lambda ps: torch.optim.Adam(ps, lr=lr, foreach=True),
        "torch fused": lambda ps: torch.optim.Adam(ps, lr=lr, fused=True),
        "gdcore.torch": lambda ps: gt.Adam(ps, lr=lr),
    }
    # warm up once (allocator, lazy init), then the measured run
    train(torch, contenders, x[:2 * args.batch], y[:2 * args.batch], 1, args.batch, args.blocks,
          args.width)
    runs = train(torch, contenders, x, y, args.epochs, args.batch, args.blocks, args.width)
    for label, run in runs.items():
        print(f"{label:15s} step {statistics.median(run['step']) * 1e6:8.1f} us, "
              f"forward+backward {statistics.median(run['fwd_bwd']) * 1e6:8.1f} us, "
              f"final loss {run['losses'][-1]:.4f}", flush=True)
    ref = runs["torch for-loop"]
    n_tensors = len(ref["params"])
    n_elements = sum(p.size for p in ref["params"])
    lines = ["# End-to-end training: torch.optim.Adam vs gdcore.torch.Adam", "",
             f"Residual MLP, {args.blocks} blocks of width {args.width}: {n_tensors} parameter "
             f"tensors, {n_elements:,} elements; scikit-learn digits (1,797 images), batch "
             f"{args.batch}, {args.epochs} epochs, {len(ref['losses'])} steps; 1 thread; "
             "medians over the steps.", "",
             "| optimizer | step (us) | forward+backward (us) | step share | final loss | "
             "max loss difference vs for-loop | max param difference vs for-loop |",
             "|---|---|---|---|---|---|---|"]
    summary = {}
    for label, run in runs.items():
        step = statistics.median(run["step"])
        fb = statistics.median(run["fwd_bwd"])
        dloss = max(abs(a - b) for a, b in zip(run["losses"], ref["losses"]))
        dparam = max(float(np.max(np.abs(a - b))) for a, b in zip(run["params"], ref["params"]))
        summary[label] = {"step_us": step * 1e6, "fwd_bwd_us": fb * 1e6,
                          "share": step / (step + fb), "final_loss": run["losses"][-1],
                          "max_loss_diff": dloss, "max_param_diff": dparam}
        lines.append(f"| {label} | {step * 1e6:.1f} | {fb * 1e6:.1f} | {step / (step + fb):.0%} | "
                     f"{run['losses'][-1]:.4f} | {dloss:.2e} | {dparam:.2e} |")
    text = "\n".join(lines)
    print("\n" + text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "train.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "train.json"), "w") as f:
        json.dump({"args": vars(args), "summary": summary,
                   "losses": {k: r["losses"] for k, r in runs.items()}}, f, indent=1)
    if not args.no_plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for label, run in runs.items():
            ax1.plot(run["losses"], label=label, linewidth=1)
        ax1.set_xlabel("step")
        ax1.set_ylabel("training loss")
        ax1.set_title("loss curves (they overlap)", fontsize=9)
        ax1.legend(fontsize=8)
        labels = list(runs)
        ax2.bar(labels, [summary[k]["fwd_bwd_us"] for k in labels], label="forward+backward")
        ax2.bar(labels, [summary[k]["step_us"] for k in labels],
                bottom=[summary[k]["fwd_bwd_us"] for k in labels], label="optimizer step")
        ax2.set_ylabel("us per training step (median)")
        ax2.tick_params(axis="x", labelsize=8)
        ax2.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "train.png"), dpi=110)
    print(f"\nwrote {args.out}/train.md, train.json" + ("" if args.no_plot else ", train.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
