"""Compare finished evaluations of metareward.py and metareward_advantage.py from their run folders' CSVs.

Prints the results table (markdown: one row per method, mean +- std over its networks when the folders
hold several meta-trained networks of it, the paper's error bar; else over its evaluation seeds; else the
standard error over lifetimes), each network's own row when a method has several, the success per task
class when there are several (ML10), a two-sample test (Welch's t) over the networks of every two methods
that have several and of each such method against PPO shaped's seeds (--compare-with), the table of what
the network signals per episode of its traced lifetime, and, only when --plot-file is given, draws the figure:
success per episode index per method, and the signal over one evaluation episode next to the shaped reward. Its
success axis runs from 0 to 1, or, when every point and error bar stays below 0.25 (ML10), to the next multiple of
0.05 above 1.1 x the highest.

Every number is rounded to its decimals half up (away from zero) on its decimal value (fmt): 0.475 prints as 0.48,
0.025 as 0.03, whatever the float's binary rounding.

    python tools/plot_results.py runs/RUN_A runs/RUN_B --plot-file /tmp/results.png
    python tools/plot_results.py runs/NET_SEED1 runs/NET_SEED2 runs/NET_SEED3   # 3 networks: mean +- std over them
    python tools/plot_results.py results/button-press-v3/*/ --network-eval-seeds 1   # every network on seed 1 only
    python tools/plot_results.py runs/A1 runs/A2 runs/B1 runs/B2 --labels A A B B  # two objectives' networks

Needs numpy only; the figure needs matplotlib (pip install matplotlib). Bad input: one line, exit 2.
"""
import argparse
import csv
import math
import os
import sys
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

# per step of the first evaluation lifetime, beside eval.csv: metareward.py's, metareward_advantage.py's
TRACE_FILES = ("reward_trace.csv", "advantage_trace.csv")


class ConfigError(ValueError):
    """Bad input: reported as one line and exit status 2."""


def fmt(x, decimals, sign=False):
    """x with `decimals` decimals, a half rounded up (away from zero) on x's decimal value: x is first written with
    12 decimals, so 0.475 computed as 0.47499999999999998 prints as 0.48 like 0.025 as 0.03 (format() would round
    the binary value: 0.47, 0.03). With sign, a leading + or -. NaN and infinities as format() writes them."""
    if not math.isfinite(x):
        return format(x, f"{'+' if sign else ''}.{decimals}f")
    rounded = Decimal(f"{x:.12f}").quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    return format(rounded, "+f" if sign else "f")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_results(paths, labels=None):
    """The rows of each run folder's eval.csv (or of the eval.csv files given), and the first trace
    file found beside them (None if there is none). labels: one per path, its rows' method instead of
    eval.csv's inner_reward (two objectives' networks in one table). One network's (or baseline's)
    evaluation seed may come from one file only: the same rows twice are refused, not merged."""
    if labels and len(labels) != len(paths):
        raise ConfigError(f"{len(paths)} runs but {len(labels)} --labels")
    rows, trace, source = [], None, {}
    for k, path in enumerate(paths):
        file = os.path.join(path, "eval.csv") if os.path.isdir(path) else path
        if not (os.path.isfile(file) and file.endswith(".csv")):
            raise ConfigError(f"no eval.csv at {path}")
        new = [{**r, "inner_reward": labels[k]} if labels else r for r in read_csv(file)]
        for key in dict.fromkeys((r["inner_reward"], r.get("network", ""), r["seed"]) for r in new):
            if source.setdefault(key, file) != file:
                network = f" of network {key[1]}" if key[1] else ""
                raise ConfigError(f"{source[key]} and {file} both hold {key[0]} rows{network} of evaluation seed "
                                  f"{key[2]}; give each part of an evaluation its own seeds")
        rows += new
        for name in TRACE_FILES:
            trace_file = os.path.join(os.path.dirname(file), name)
            if trace is None and os.path.isfile(trace_file):
                trace = read_csv(trace_file)
    return rows, trace


def seed_means(rows, columns):
    """(seeds, columns): each evaluation seed's mean over its lifetimes (rows of eval.csv)."""
    seeds = sorted({str(r["seed"]) for r in rows})
    return np.array([np.mean([[float(r[c]) for c in columns] for r in rows if str(r["seed"]) == s], 0)
                     for s in seeds])


def networks(rows):
    """The distinct networks of eval.csv's `network` column ("seed S update U"; empty for a baseline)."""
    return list(dict.fromkeys(r.get("network", "") for r in rows))


def select_network_seeds(rows, seeds):
    """Keep only the evaluation seeds `seeds` of the meta-learned networks' rows (baselines keep all theirs), so
    that every network is scored on the same seeds; a network with none of them is refused."""
    kept = [r for r in rows if not r.get("network") or str(r["seed"]) in seeds]
    missing = [n for n in networks(rows) if n and not any(r.get("network") == n for r in kept)]
    if missing:
        raise ConfigError(f"network {missing[0]} has no rows of evaluation seed(s) {' '.join(seeds)}")
    return kept


def seed_sets_note(rows):
    """A warning when the networks of one method were evaluated on different seeds (each network's mean is then
    over its own seeds), else None."""
    for method in dict.fromkeys(r["inner_reward"] for r in rows):
        sets = {n: sorted({str(r["seed"]) for r in rows if r["inner_reward"] == method and r.get("network") == n})
                for n in networks([r for r in rows if r["inner_reward"] == method]) if n}
        if len({tuple(s) for s in sets.values()}) > 1:
            return (f"the {method} networks were evaluated on different seeds ("
                    + "; ".join(f"{n}: {' '.join(s)}" for n, s in sets.items())
                    + "); --network-eval-seeds scores them all on the same ones")
    return None


def unit_means(rows, columns):
    """(units, columns): the units an error bar is over. Several networks: each network's mean (over its
    seeds' means); else each evaluation seed's mean."""
    if len(networks(rows)) > 1:
        return np.array([seed_means([r for r in rows if r.get("network", "") == n], columns).mean(0)
                         for n in networks(rows)])
    return seed_means(rows, columns)


def table_spans(columns):
    """The paper's table columns: episodes 1-4, 5-8, 9-12 and the deterministic point, as slices of `columns`."""
    e = len(columns) - 1
    spans = {f"eps {a + 1}-{min(a + 4, e)}": slice(a, min(a + 4, e)) for a in range(0, e, 4)}
    spans["deterministic"] = slice(e, e + 1)
    return spans


def table_row(rows, columns):
    """The paper's table columns (table_spans) -> (mean, error): the std over networks (several networks), else
    over seeds (several seeds), else the standard error over lifetimes."""
    spans = table_spans(columns)
    per_unit = unit_means(rows, columns)
    if len(per_unit) > 1:
        return {name: (per_unit[:, s].mean(), per_unit[:, s].mean(1).std(ddof=1)) for name, s in spans.items()}
    values = np.array([[float(r[c]) for c in columns] for r in rows])
    v = {name: values[:, s].mean(1) for name, s in spans.items()}  # per lifetime
    return {name: (x.mean(), x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else 0.0) for name, x in v.items()}


def results_table(rows, per_network=False, decimals=2):
    """Markdown: one line per method (eval.csv's inner_reward), mean +- error (see table_row); with
    per_network, one line per network instead, for the methods that have several."""
    columns = [c for c in rows[0] if c.startswith("success_")]
    lines = []
    for method in dict.fromkeys(r["inner_reward"] for r in rows):
        selected = [r for r in rows if r["inner_reward"] == method]
        groups = [[r for r in selected if r.get("network", "") == n] for n in networks(selected)]
        for group in ((groups if len(groups) > 1 else []) if per_network else [selected]):
            cells = table_row(group, columns)
            if not lines:
                lines = ["| method | networks | seeds | lifetimes | " + " | ".join(cells) + " |",
                         "|---" * (len(cells) + 4) + "|"]
            named = [n for n in networks(group) if n]
            label = f"{method}, {named[0]}" if per_network else method
            lines.append(f"| {label} | {len(named) or '-'} | {len({str(r['seed']) for r in group})} | "
                         f"{len(group)} | "
                         + " | ".join(f"{fmt(m, decimals)} +- {fmt(e, decimals)}" for m, e in cells.values()) + " |")
    return lines


def class_table(rows, decimals=2):
    """Markdown, when the rows span several task classes (ML10): one line per class, one column per method (per
    network where a method has several), the mean success on the last 4 episodes / deterministically over
    its lifetimes on the class, and their count."""
    columns = [c for c in rows[0] if c.startswith("success_")]
    last4 = list(table_spans(columns))[-2]
    groups = {(r["inner_reward"], r.get("network", "")): None for r in rows}
    methods = {}
    for method, network in groups:
        methods.setdefault(method, []).append(network)
    labels = {(m, n): f"{m}, {n}" if len(methods[m]) > 1 else m for m, n in groups}
    lines = ["| class | " + " | ".join(f"{labels[g]}: {last4} / det. (lifetimes)" for g in groups) + " |",
             "|---" * (len(groups) + 1) + "|"]
    for name in dict.fromkeys(r["env_name"] for r in rows):
        cells = []
        for method, network in groups:
            group = [r for r in rows if r["env_name"] == name and r["inner_reward"] == method
                     and r.get("network", "") == network]
            if not group:
                cells.append("-")
                continue
            values = np.array([[float(r[c]) for c in columns] for r in group])
            cells.append(f"{fmt(values[:, table_spans(columns)[last4]].mean(), decimals)} / "
                         f"{fmt(values[:, -1].mean(), decimals)} ({len(group)})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def t_test_p(t, df):
    """Two-sided p-value of Student's t distribution with df (real) degrees of freedom: 1 - 2 * the integral of
    its density from 0 to |t| (Simpson's rule; numpy only, accurate to about 1e-9)."""
    x = np.linspace(0.0, abs(t), 40001)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    f = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
    integral = (x[1] - x[0]) / 3 * (f[0] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum() + f[-1])
    return max(0.0, 1.0 - 2.0 * integral)


def welch(a, b):
    """Welch's two-sample t-test of the means of a and b (unequal variances): (t, degrees of freedom, two-sided
    p), or None when both samples have zero variance."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    if va + vb == 0:
        return None
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return t, df, t_test_p(t, df)


def t_quantile(p, df):
    """The t with two-sided p-value p (t_test_p inverted by bisection)."""
    lo, hi = 0.0, 1.0
    while t_test_p(hi, df) > p:
        hi *= 2
    for _ in range(60):
        lo, hi = ((lo + hi) / 2, hi) if t_test_p((lo + hi) / 2, df) > p else (lo, (lo + hi) / 2)
    return (lo + hi) / 2


def networks_for_power(a, b):
    """Networks per method that a two-sided t-test at 5% would need to detect the observed difference of a and b
    with 80% power, if it were the true difference and the pooled std the true one: the least n >= 2 with
    P(T > t_crit - d sqrt(n / 2)) >= 0.8, T a t with 2 (n - 1) degrees of freedom (the shifted-t
    approximation of the noncentral t; d the difference over the pooled std). None when there is no difference
    or no spread to weigh it against (as welch gives no test then)."""
    pooled = math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)
    if np.mean(a) == np.mean(b) or pooled == 0:
        return None
    d = abs(np.mean(a) - np.mean(b)) / pooled
    n = max(2, math.ceil(2 * (1.959964 + 0.841621) ** 2 / d ** 2))  # normal approximation (z of 5%, 80%): a floor
    while True:
        df = 2 * (n - 1)
        x = t_quantile(0.05, df) - d * math.sqrt(n / 2)
        if (1 - t_test_p(x, df) / 2 if x < 0 else t_test_p(x, df) / 2) >= 0.8:
            return n
        n += 1


def network_comparison(rows, baselines=("shaped",)):
    """Markdown: per table column, the two-sample comparison of every two methods with several networks each
    (over their networks' means), and of every such method with each of `baselines` that has several evaluation
    seeds (over the baseline's seeds' means: its seeds are its units, as the networks are the method's): the
    difference, Welch's t, its degrees of freedom and two-sided p, and the units per group that would settle the
    observed difference (networks_for_power). Methods pair in alphabetical order (advantage - intrinsic), then
    each with the baselines in their given order, whatever the order of the folders."""
    columns = [c for c in rows[0] if c.startswith("success_")]
    of = {m: [r for r in rows if r["inner_reward"] == m] for m in dict.fromkeys(r["inner_reward"] for r in rows)}
    meta = sorted(m for m, r in of.items() if len(networks(r)) > 1)
    base = [m for m in baselines if m in of and networks(of[m]) == [""] and len(unit_means(of[m], columns)) > 1]
    pairs = [(a, b) for i, a in enumerate(meta) for b in meta[i + 1:]] + [(a, b) for a in meta for b in base]
    units = {m: unit_means(of[m], columns) for m in meta + base}  # (networks or seeds, columns)
    lines = ["| comparison | column | difference | Welch t | df | p (two-sided) | networks (or seeds) per group "
             "for 80% power |", "|---" * 7 + "|"] if pairs else []
    for a, b in pairs:
        for name, s in table_spans(columns).items():
            x, y = units[a][:, s].mean(1), units[b][:, s].mean(1)
            test, n = welch(x, y), networks_for_power(x, y)
            cells = ["-", "-", "-"] if test is None else [fmt(test[0], 2), fmt(test[1], 1),
                                                             fmt(test[2], 3) if test[2] >= 0.001 else "< 0.001"]
            lines.append(f"| {a} ({len(x)}) - {b} ({len(y)}) | {name} | {fmt(x.mean() - y.mean(), 2, sign=True)} | "
                         + " | ".join(cells) + f" | {'-' if n is None else n} |")
    return lines


def trace_signal(trace):
    """The name of the trace's column that holds the network's signal."""
    return [c for c in trace[0] if c not in ("step", "episode", "shaped_reward", "sparse_reward", "success")][0]


def trace_table(trace):
    """Markdown: what the network signals over the traced lifetime, episode by episode, next to the
    shaped reward the agent never sees: its mean before and from the first success on, and the
    within-episode correlation of the two."""
    signal = trace_signal(trace)
    lines = [f"| episode | solved | mean {signal} | before first success | from first success | "
             f"mean shaped reward | corr({signal}, shaped) |", "|---" * 7 + "|"]
    for episode in dict.fromkeys(r["episode"] for r in trace):
        x, y, solved = (np.array([float(r[c]) for r in trace if r["episode"] == episode])
                        for c in (signal, "shaped_reward", "success"))
        first = int(np.argmax(solved > 0)) if (solved > 0).any() else len(x)
        corr = np.corrcoef(x, y)[0, 1] if x.std() > 0 and y.std() > 0 else float("nan")
        cells = [x.mean(), x[:first].mean() if first else None, x[first:].mean() if first < len(x) else None]
        lines.append(f"| {episode} | {'yes' if first < len(x) else 'no'} | "
                     + " | ".join("-" if v is None else fmt(v, 4) for v in cells) + f" | {fmt(y.mean(), 2)} | "
                     f"{fmt(corr, 2)} |")
    return lines


def success_top(highest):
    """The success axis's top: 1, or when the highest point (error bar included) is below 0.25, the next multiple
    of 0.05 at or above 1.1 x it (at least 0.05), so that rare successes (ML10) are not drawn as a flat line."""
    if highest >= 0.25:
        return 1.0
    return max(1, math.ceil(round(1.1 * highest / 0.05, 9))) * 0.05


def plot_results(rows, trace, path, title="test tasks"):
    """Left: success per episode index (and the deterministic point) per method, mean +- std over
    seeds, on a success axis that fits them (success_top). Right: the network's signal over the trace's last
    episode next to the shaped reward."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("the figure needs matplotlib, which is not installed: pip install matplotlib") from None
    columns = [c for c in rows[0] if c.startswith("success_")]
    fig, axes = plt.subplots(1, 2 if trace else 1, figsize=(12 if trace else 6, 4), squeeze=False)
    ax, highest = axes[0, 0], 0.0
    for method in dict.fromkeys(r["inner_reward"] for r in rows):
        selected = [r for r in rows if r["inner_reward"] == method]
        per_unit = unit_means(selected, columns)
        std = per_unit.std(0, ddof=1) if len(per_unit) > 1 else np.zeros(len(columns))
        unit = "network" if len(networks(selected)) > 1 else "seed"
        highest = max(highest, float((per_unit.mean(0) + std).max()))
        ax.errorbar(np.arange(1, len(columns) + 1), per_unit.mean(0), yerr=std, capsize=3, marker="o",
                    label=f"{method} ({len(per_unit)} {unit}{'s' * (len(per_unit) > 1)})")
    every = 1 if len(columns) <= 13 else 2  # longer lifetimes (--lifetime-steps): every other episode labelled
    ax.set_xticks(np.arange(1, len(columns) + 1), [str(e) if (e - 1) % every == 0 else "" for e in
                                                   range(1, len(columns))] + ["det"])
    top = success_top(highest)
    ax.set(xlabel="episode of the lifetime", ylabel="success rate", ylim=(-0.02 * top, 1.02 * top), title=title)
    ax.legend()
    if trace:
        signal = trace_signal(trace)
        last = [r for r in trace if r["episode"] == trace[-1]["episode"]]
        k = np.arange(len(last))
        ax = axes[0, 1]
        ax.plot(k, [float(r[signal]) for r in last], color="tab:blue", label=signal)
        ax.set(xlabel=f"step of episode {last[0]['episode']}", ylabel=signal, title="one evaluation episode")
        twin = ax.twinx()
        twin.plot(k, [float(r["shaped_reward"]) for r in last], color="tab:orange", label="shaped reward")
        twin.set_ylabel("shaped reward (not seen by the agent)")
        solved = [i for i, r in enumerate(last) if float(r["success"]) > 0]
        if solved:
            ax.axvline(solved[0], color="gray", linestyle=":", label="first success")
        ax.legend(loc="upper left")
        twin.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Compare finished evaluations: results table, trace table, figure.")
    parser.add_argument("runs", nargs="+", help="run folders (or their eval.csv files); seeds of one method may "
                                                "be spread over several folders")
    parser.add_argument("--plot-file", help="draw the figure into this file (needs matplotlib); none: the tables only")
    parser.add_argument("--network-eval-seeds", nargs="+", metavar="SEED",
                        help="use only these evaluation seeds of the meta-learned networks (the baselines keep all "
                             "theirs): the same seeds for every network")
    parser.add_argument("--compare-with", nargs="*", default=["shaped"], metavar="BASELINE",
                        help="baselines (eval.csv's inner_reward) each meta-learned method is tested against, over "
                             "the baseline's evaluation seeds; none: only the methods against each other")
    parser.add_argument("--labels", nargs="+", metavar="LABEL",
                        help="one method name per run, instead of eval.csv's inner_reward (e.g. two objectives)")
    parser.add_argument("--decimals", type=int, default=2, help="decimals of the results and class tables (ML10's "
                                                                   "successes are near 0.01: 3)")
    parser.add_argument("--title", default="test tasks", help="the figure's left panel: whose lifetimes these are")
    args = parser.parse_args(argv)
    try:
        rows, trace = load_results(args.runs, args.labels)
        if args.network_eval_seeds:
            rows = select_network_seeds(rows, args.network_eval_seeds)
        if not rows:
            raise ConfigError("the eval.csv files hold no rows")
        print("\n".join(results_table(rows, decimals=args.decimals)))
        note = seed_sets_note(rows)
        if note:
            print(f"note: {note}")
        per_network = results_table(rows, per_network=True, decimals=args.decimals)
        if per_network:
            print("\n" + "\n".join(per_network))
        if len({r["env_name"] for r in rows}) > 1:
            print("\n" + "\n".join(class_table(rows, args.decimals)))
        comparison = network_comparison(rows, args.compare_with)
        if comparison:
            print("\n" + "\n".join(comparison))
        if trace:
            print("\n" + "\n".join(trace_table(trace)))
        if args.plot_file:
            plot_results(rows, trace, args.plot_file, args.title)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if args.plot_file:
        print(f"wrote {args.plot_file}")


if __name__ == "__main__":
    main()
