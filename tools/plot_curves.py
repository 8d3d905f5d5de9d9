"""Training curves of meta-training runs side by side, at equal outer updates, from their progress.csv.

Prints a markdown table (means over blocks of --block outer updates) and draws --plot-file: the
success of the meta-batch's lifetimes on their last 4 episodes (9-12 at the paper's 12) and the
shaped return per episode, per outer update (thin) and as a moving mean over --block updates (thick).
Runs are cut at the last update that all of them reached.

    python tools/plot_curves.py checkpoints/RUN_A checkpoints/RUN_B --labels A B --plot-file curves.png

Works for run folders of metareward.py and metareward_advantage.py. Needs numpy only; the figure
needs matplotlib (pip install matplotlib). Bad input: one line, exit 2.
"""
import argparse
import csv
import os
import sys

import numpy as np


class ConfigError(ValueError):
    """Bad input: reported as one line and exit status 2."""


def load_curves(path):
    """Per outer update of one run: (updates, success on its last 4 episodes, shaped return per episode)."""
    file = os.path.join(path, "progress.csv") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ConfigError(f"no progress.csv at {path}")
    with open(file, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ConfigError(f"{file} holds no rows")
    episodes = sorted(c for c in rows[0] if c.startswith("charts/success_ep"))
    last4 = episodes[-4:]
    updates = np.array([int(r["update"]) for r in rows])
    success = np.array([np.mean([float(r[c]) for c in last4]) for r in rows])
    shaped = np.array([float(r["charts/shaped_return"]) for r in rows])
    return updates, success, shaped


def common_updates(curves):
    """The curves cut at the last update that every run reached."""
    last = min(u[-1] for u, _, _ in curves)
    return [tuple(x[u <= last] for x in (u, s, r)) for u, s, r in curves]


def block_table(curves, labels, block):
    """Markdown: per block of updates, each run's mean success (last 4 episodes) / shaped return."""
    lines = ["| updates | " + " | ".join(f"{label}: success / shaped return" for label in labels) + " |",
             "|---" * (len(labels) + 1) + "|"]
    last = curves[0][0][-1]
    for start in range(1, last + 1, block):
        end = min(start + block - 1, last)
        cells = []
        for u, s, r in curves:
            sel = (u >= start) & (u <= end)
            cells.append(f"{s[sel].mean():.2f} / {r[sel].mean():.0f}" if sel.any() else "-")
        lines.append(f"| {start}-{end} | " + " | ".join(cells) + " |")
    return lines


def moving_mean(x, window):
    """Mean of the last `window` values at each point (fewer at the start)."""
    c = np.cumsum(np.insert(x, 0, 0.0))
    i = np.arange(1, len(x) + 1)
    return (c[i] - c[np.maximum(i - window, 0)]) / np.minimum(i, window)


def plot_curves(curves, labels, block, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("the figure needs matplotlib, which is not installed: pip install matplotlib") from None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for (u, s, r), label, color in zip(curves, labels, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for ax, y in zip(axes, (s, r)):
            ax.plot(u, y, color=color, alpha=0.3, linewidth=0.8)
            ax.plot(u, moving_mean(y, block), color=color, linewidth=2, label=f"{label} (mean of {block})")
    axes[0].set(xlabel="outer update", ylabel="success, last 4 episodes", ylim=(-0.02, 1.02),
                title="training lifetimes: success")
    axes[1].set(xlabel="outer update", ylabel="shaped return per episode", title="training lifetimes: shaped return")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Training curves of meta-training runs at equal outer updates.")
    parser.add_argument("runs", nargs="+", help="run folders (or their progress.csv files)")
    parser.add_argument("--labels", nargs="+", help="one name per run (default: the folder names)")
    parser.add_argument("--block", type=int, default=5, help="outer updates per table row and moving mean")
    parser.add_argument("--plot-file", default="curves.png", help="the figure (needs matplotlib)")
    args = parser.parse_args(argv)
    labels = args.labels or [os.path.basename(os.path.normpath(p)) for p in args.runs]
    try:
        if len(labels) != len(args.runs):
            raise ConfigError(f"{len(args.runs)} runs but {len(labels)} --labels")
        if args.block < 1:
            raise ConfigError(f"--block must be at least 1, got {args.block}")
        curves = common_updates([load_curves(p) for p in args.runs])
        print("\n".join(block_table(curves, labels, args.block)))
        plot_curves(curves, labels, args.block, args.plot_file)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.plot_file}")


if __name__ == "__main__":
    main()
