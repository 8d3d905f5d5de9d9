"""The raw MetaWorld stepping rate: the ceiling for the env part of an outer update (not the method).

Steps --num-envs environments of one ML1 task class, each on its own train goal (like the lifetimes
of a meta-batch), with uniformly random actions and nothing else, shared out over --workers
processes as the scripts' --num-workers share out lifetimes. Prints env steps per second over all
of them (the slowest worker's time). Quote it beside any timing: machines differ by up to 3x.

    python tools/env_rate.py --env-name door-close-v3 --num-envs 30 --workers 2
"""
import argparse
import multiprocessing as mp
import time

import numpy as np


def step_envs(env_name, goals, steps, seed):
    """Seconds to step one env per goal index `steps` times (resetting at each episode's end)."""
    import metaworld

    benchmark = metaworld.ML1(env_name, seed=seed)
    envs = []
    for i in goals:
        env = benchmark.train_classes[env_name]()
        env.set_task(benchmark.train_tasks[i % len(benchmark.train_tasks)])
        env.reset()
        envs.append(env)
    rng = np.random.default_rng([seed, *goals])
    actions = rng.uniform(-1, 1, (steps, len(envs), 4)).astype(np.float32)
    start = time.perf_counter()
    for t in range(steps):
        for env, action in zip(envs, actions[t]):
            if env.step(action)[3]:  # truncated: the episode's last step
                env.reset()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-name", default="door-close-v3", help="the ML1 task class")
    parser.add_argument("--num-envs", type=int, default=30, help="environments (the meta-batch's lifetimes)")
    parser.add_argument("--steps", type=int, default=2000, help="steps of each environment")
    parser.add_argument("--workers", type=int, default=2, help="processes sharing the environments")
    parser.add_argument("--seed", type=int, default=1, help="the benchmark's seed (which goals)")
    a = parser.parse_args(argv)
    if not 1 <= a.workers <= a.num_envs or a.steps < 1:
        parser.error("need 1 <= --workers <= --num-envs and --steps >= 1")
    shares = [list(s) for s in np.array_split(np.arange(a.num_envs), a.workers)]
    if a.workers == 1:
        seconds = step_envs(a.env_name, shares[0], a.steps, a.seed)
    else:
        with mp.get_context("fork").Pool(a.workers) as pool:
            seconds = max(pool.starmap(step_envs, [(a.env_name, s, a.steps, a.seed) for s in shares]))
    total = a.num_envs * a.steps
    print(f"{a.env_name}: {a.num_envs} envs x {a.steps} steps in {a.workers} process(es), {seconds:.2f} s")
    print(f"{total / seconds:.0f} env-steps/s")
    return total / seconds


if __name__ == "__main__":
    main()
