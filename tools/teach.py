"""The lecture's run, in one command: meta-train a reward network from scratch on door-close (about 20 minutes on
2 cores), evaluate it on the 50 held-out test goals, then show the class what happened.

    python tools/teach.py                # seed 1
    python tools/teach.py --seed 2       # another run; any other flag of metareward.py is passed on too
    python tools/teach.py --help         # metareward.py's flags, with the teaching values as their defaults

It prints the metareward.py command it runs (TEACHING: the paper's lifetimes, inner PPO and evaluation, a
smaller outer loop), the run's usual output, then the network against PPO shaped, and draws RUN/teaching.png:
the training curve (the meta-batch's success on episodes 9-12 and its shaped return, per outer update) and the
evaluated network's success per episode beside PPO shaped and PPO sparse. The baselines are this repository's
door-close runs (results/door-close-v3/ppo_*: 5 seeds x 100 lifetimes and 100 lifetimes, seed 1's test goals);
with --env-name, that task's (results/TASK/ppo_*).
The figure needs matplotlib (pip install matplotlib); without it, the text only.
"""
import csv
import glob
import os
import sys

import numpy as np
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import metareward  # noqa: E402  (the repository's script, beside this folder)

TEACHING = ["--lifetimes-per-update", "10", "--meta-learning-rate", "3e-4", "--meta-anneal-lr", "--num-outer-updates",
            "25", "--val-every", "0", "--eval-repeats", "1"]
BASELINES = {"PPO shaped": "results/{task}/ppo_shaped*/eval.csv",  # the evaluated task's, from its results page
             "PPO sparse": "results/{task}/ppo_sparse/eval.csv"}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def per_episode(rows, columns):
    """Success per episode (and deterministic): the mean over evaluation seeds of each seed's mean."""
    return metareward.seed_means(rows, columns).mean(0)


def verdict(rows, baseline, columns):
    """Lines comparing the network (mean +- standard error over its lifetimes) with the baseline's mean, in
    the columns the teaching configuration is judged by: episodes 9-12 and the deterministic episodes."""
    mine, theirs = metareward.table_row(rows, columns), metareward.table_row(baseline, columns)
    lines = []
    for name in (list(mine)[-2], "deterministic"):
        (m, se), b = mine[name], theirs[name][0]
        margin = (m - b) / se if se > 0 else np.inf * np.sign(m - b)
        word = "beats PPO shaped" if margin > 2 else "does not beat PPO shaped by 2 standard errors"
        lines.append(f"  {name}: network {m:.3f} +- {se:.3f}, PPO shaped {b:.3f}: {margin:+.1f} standard errors, "
                     f"{word}")
    return lines


def plot(run_dir, rows, baselines, columns, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    progress = read_csv(os.path.join(run_dir, "progress.csv"))
    updates = [int(r["update"]) for r in progress]
    last4 = [c for c in progress[0] if c.startswith("charts/success_ep")][-4:]
    success = [np.mean([float(r[c]) for c in last4]) for r in progress]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    left.plot(updates, success, "o-", color="C0", label="success, episodes 9-12")
    left.set(xlabel="outer update", ylabel="success", ylim=(-0.02, 1.02),
             title="meta-training: the lifetimes it taught")
    twin = left.twinx()
    twin.plot(updates, [float(r["charts/shaped_return"]) for r in progress], color="C1", alpha=0.6,
              label="shaped return per episode")
    twin.set_ylabel("shaped return per episode")
    validated = [(int(r["update"]), (float(r["val/success_last4"]) + float(r["val/success_det"])) / 2)
                 for r in progress if r.get("val/success_last4")]
    if validated:  # the score that picks the network: (episodes 9-12 + deterministic) / 2
        left.plot(*zip(*validated), "D", color="C3", label="validation score")
    kept = rows[0].get("network", "").split(" update ")
    if len(kept) == 2:
        left.axvline(int(kept[1]), color="C3", linewidth=0.8, linestyle=":", label=f"evaluated: update {kept[1]}")
    left.legend(loc="upper left"), twin.legend(loc="lower right")
    episodes = np.arange(1, len(columns))
    for (label, base), color in zip(baselines.items(), ("C2", "C7")):
        values = per_episode(base, columns)
        right.plot(episodes, values[:-1], "s--", color=color, label=label)
        right.plot(len(columns) + 0.5, values[-1], "s", color=color)
    values = per_episode(rows, columns)
    right.plot(episodes, values[:-1], "o-", color="C0", label=f"PPO on the learned reward ({rows[0]['network']})")
    right.plot(len(columns) + 0.5, values[-1], "o", color="C0")
    for update in (4.5, 8.5):
        right.axvline(update, color="grey", linewidth=0.8, linestyle=":")
    right.set_xticks(list(episodes) + [len(columns) + 0.5], [str(e) for e in episodes] + ["det."])
    right.set(xlabel="episode of the lifetime (inner PPO updates at the dotted lines)", ylabel="success",
              ylim=(-0.02, 1.02), title=f"{len(rows)} test lifetimes")
    right.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(run_dir):
    """After the run: the network against PPO shaped, and the figure RUN/teaching.png."""
    rows = read_csv(os.path.join(run_dir, "eval.csv"))
    columns = [c for c in rows[0] if c.startswith("success_")]  # episodes 1..E, then det
    task = rows[0]["env_name"]  # --env-name's baselines, not door-close's
    baselines = {label: [r for path in sorted(glob.glob(os.path.join(ROOT, pattern.format(task=task))))
                         for r in read_csv(path)] for label, pattern in BASELINES.items()}
    if not all(baselines.values()):
        print(f"no baselines under {os.path.join(ROOT, 'results', task)}: nothing to compare with")
        return
    print(f"against PPO shaped ({task.removesuffix('-v3')}'s baseline, seed 1's test goals):")
    print("\n".join(verdict(rows, baselines["PPO shaped"], columns)))
    path = os.path.join(run_dir, "teaching.png")
    try:
        plot(run_dir, rows, baselines, columns, path)
        print(f"wrote {path}")
    except ImportError:
        print("the figure needs matplotlib, which is not installed: pip install matplotlib")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:  # the flags this command runs with: TEACHING over the paper's defaults
        tyro.cli(metareward.Args, args=argv, default=tyro.cli(metareward.Args, args=TEACHING),
                 prog="python tools/teach.py", description=__doc__)  # prints, then exits
    argv = TEACHING + argv
    print("python metareward.py " + " ".join(argv), flush=True)
    run_dir = metareward.cli(argv)
    report(run_dir)
    return run_dir


if __name__ == "__main__":
    main()
