"""One Results row from one command: run what its page ran, then print the row as the page shows it.

    python tools/row.py network --task door-close-v3 --method intrinsic   # an ML1 method's row: 3 networks
    python tools/row.py network --task ML10 --method advantage            # ML10: one network, seed 1
    python tools/row.py baseline --task reach-v3 --method shaped          # PPO shaped (or sparse)
    python tools/row.py teaching --seeds 1                                # one teaching run's row
    python tools/row.py network --task reach-v3 --method advantage --dry-run   # the commands only

Each kind of row, as its page made it (costs on 2 cores: README, "Results"):
- network, an ML1 task: per seed S (--seeds, default 1 2 3) the paper's meta-training run of seed S for 50 outer
  updates, validated every 25 on 10 lifetimes (the default then; Table 2's 60 now), whose best validated network
  is evaluated on the 50 test goals of seed S, 2 lifetimes each, evaluation seed 1. The pages ran that as two
  commands, a meta-training stopped after update 50 and `--eval-checkpoint ... --eval-seeds 1 --eval-repeats 2
  --lifetimes-per-update 50`; here the run evaluates its best network itself (--eval-network best: the same rows,
  tested; the evaluation's batch size, 50 there and the meta-batch's 30 here, changes no number). The row: mean +- std over the networks, then each network's.
- network, ML10: the same with 100 updates and one lifetime per test goal (250), seed 1.
- baseline: PPO on the sparse or shaped reward, the page's one command (ML1: 5 evaluation seeds x 100 lifetimes;
  ML10: 1 x 250).
- teaching: `python tools/teach.py --seed S` per seed; the network is the last, evaluated on seed S's goals.

The runs write their folders under runs/ as usual. The row comes from their eval.csv through
tools/plot_results.py's table_row and fmt (the pages add the paper's column and bold). Any other flag is passed on
to every run and replaces the page's value of the same flag: the tests' tiny runs, or --num-workers.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
import metareward  # noqa: E402  (the repository's scripts, beside this folder)
import metareward_advantage  # noqa: E402
import plot_results as pr  # noqa: E402
import teach  # noqa: E402

SCRIPTS = {"intrinsic": "metareward.py", "advantage": "metareward_advantage.py"}
METHODS = {"network": ("intrinsic", "advantage"), "baseline": ("shaped", "sparse"), "teaching": ("intrinsic",)}
NAMES = {"intrinsic": "intrinsic rewards", "advantage": "meta-learned advantage", "shaped": "PPO shaped",
         "sparse": "PPO sparse"}
EVAL_SEED = "1"  # every network of a Results row is scored on evaluation seed 1


def default_seeds(kind, task):
    """Networks' seeds (network), evaluation seeds (baseline) or teaching runs' seeds, as on the pages."""
    if kind == "network":
        return [1] if task == "ML10" else [1, 2, 3]
    if kind == "baseline":
        return [1] if task == "ML10" else [1, 2, 3, 4, 5]
    return [1]


def commands(kind, task, method, seeds):
    """[(script, argv)]: the runs of one row, with the settings its page used."""
    if kind == "teaching":
        return [("tools/teach.py", ["--seed", str(s)]) for s in seeds]
    ml10 = task == "ML10"
    where = ["--benchmark", "ML10"] if ml10 else ["--env-name", task]
    if kind == "baseline":
        given = [] if ml10 and seeds == [1] else ["--eval-seeds", *map(str, seeds)]
        each = ["--eval-repeats", "1"] if ml10 else ["--eval-repeats", "2", "--lifetimes-per-update", "50"]
        return [("metareward.py", where + ["--inner-reward", method] + given + each)]
    return [(SCRIPTS[method], where + ["--seed", str(s), "--val-every", "25", "--val-tasks", "10",
                                       "--num-outer-updates", "100" if ml10 else "50", "--eval-network", "best",
                                       "--eval-seeds", EVAL_SEED, "--eval-repeats", "1" if ml10 else "2"])
            for s in seeds]


def with_flags(argv, extra):
    """argv with each flag of extra replacing that flag and its values, or added at the end."""
    def groups(words):
        out = []
        for word in words:
            if word.startswith("--"):
                out.append([word])
            elif out:
                out[-1].append(word)
            else:
                raise SystemExit(f"error: {word!r} is no flag of metareward.py")
        return out
    given = {g[0].split("=")[0]: g for g in groups(extra)}
    kept = [g for g in groups(argv) if g[0].split("=")[0] not in given]
    return [word for g in kept + list(given.values()) for word in g]


def run(script, argv):
    """One run in this process, its command printed first; its run folder."""
    print(f"python {script} {' '.join(argv)}", flush=True)
    if script == "tools/teach.py":
        return teach.main(argv)
    return {"metareward.py": metareward, "metareward_advantage.py": metareward_advantage}[script].cli(argv)


def row_lines(rows, kind, task):
    """The page's table header and rows: the method's row (several networks: mean +- std over them), then each
    network's when there are several. The numbers are tools/plot_results.py's table_row, rounded by its fmt."""
    if kind == "network":
        rows = pr.select_network_seeds(rows, [EVAL_SEED])
    decimals = 3 if task == "ML10" else 2
    columns = [c for c in rows[0] if c.startswith("success_")]
    method, nets = rows[0]["inner_reward"], [n for n in pr.networks(rows) if n]

    def line(label, group):
        units = len(pr.unit_means(group, columns))
        cells = pr.table_row(group, columns).values()
        return (f"| {label} | {units} x {len(group) // units} | "
                + " | ".join(f"{pr.fmt(m, decimals)} +- {pr.fmt(e, decimals)}" for m, e in cells) + " |")
    if not nets:
        label = NAMES[method] + (" (ours)" if task == "ML10" else "")
    elif len(nets) > 1:
        label = f"{NAMES[method]} (mean +- std over {len(nets)} networks)"
    elif task == "ML10":
        label = f"{NAMES[method]} ({nets[0].replace(' update', ', update')})"
    else:
        label = f"{method}, {nets[0]}"
    spans = list(pr.table_spans(columns))
    lines = ["| method | networks or seeds x lifetimes | " + " | ".join(spans) + " |", "|---" * (len(spans) + 2) + "|",
             line(label, rows)]
    if len(nets) > 1:
        lines += [line(f"{method}, {n}", [r for r in rows if r.get("network") == n]) for n in nets]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description="One Results row from one command: its runs, then the row.")
    parser.add_argument("kind", choices=list(METHODS), help="network (ML1 or ML10), baseline, or teaching")
    parser.add_argument("--task", default="door-close-v3", help="an ML1 task, or ML10 (network and baseline)")
    parser.add_argument("--method", help="network: intrinsic or advantage; baseline: shaped or sparse")
    parser.add_argument("--seeds", type=int, nargs="+", help="network: the networks' meta-training seeds (ML1: 1 2 "
                                                             "3, ML10: 1); baseline: evaluation seeds (ML1: 1-5); "
                                                             "teaching: the runs' seeds (1)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args, extra = parser.parse_known_args(argv)
    method = args.method or METHODS[args.kind][0]
    if method not in METHODS[args.kind]:
        parser.error(f"a {args.kind} row's --method is one of {', '.join(METHODS[args.kind])}")
    if args.kind == "teaching" and args.task != "door-close-v3":
        parser.error("the teaching rows are door-close's (tools/teach.py)")
    seeds = args.seeds or default_seeds(args.kind, args.task)
    runs = [(script, with_flags(words, extra)) for script, words in commands(args.kind, args.task, method, seeds)]
    if args.dry_run:
        print("\n".join(f"python {script} {' '.join(words)}" for script, words in runs))
        return []
    folders = [run(script, words) for script, words in runs]
    rows, _ = pr.load_results(folders)
    options = f" --network-eval-seeds {EVAL_SEED}" * (args.kind == "network") + " --decimals 3" * (args.task == "ML10")
    print(f"\nthe row ({args.kind}, {args.task}, {method}); all the tables: python tools/plot_results.py "
          f"{' '.join(folders)}{options}")
    print("\n".join(row_lines(rows, args.kind, args.task)))
    return folders


if __name__ == "__main__":
    main()
