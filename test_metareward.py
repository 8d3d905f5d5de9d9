"""Value-level tests of metareward.py and metareward_advantage.py. Run: python -m pytest -q test_metareward.py

Tests marked with `m` run for both scripts (m = the module); the rest are about one of them."""
import copy
import csv
import dataclasses
import difflib
import glob
import importlib.util
import math
import os
import pickle
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import typing
from types import SimpleNamespace

import metaworld
import numpy as np
import pytest
import torch
import torch.nn as nn
import tyro

import metareward as mr
import metareward_advantage as ma

HERE = os.path.dirname(os.path.abspath(__file__))
PLOT_TOOL = os.path.join(HERE, "tools", "plot_results.py")
_spec = importlib.util.spec_from_file_location("plot_results", PLOT_TOOL)
pr = importlib.util.module_from_spec(_spec)  # tools/plot_results.py: the cross-run table and figure
_spec.loader.exec_module(pr)
CURVES_TOOL = os.path.join(HERE, "tools", "plot_curves.py")
_spec = importlib.util.spec_from_file_location("plot_curves", CURVES_TOOL)
pc = importlib.util.module_from_spec(_spec)  # tools/plot_curves.py: training curves of several runs
_spec.loader.exec_module(pc)

# A lifetime of 6 episodes of 10 steps, inner updates after steps 20 and 40 (the paper's shape, shrunk).
TINY = dict(max_episode_steps=10, steps_per_update=20, lifetime_steps=60, lifetimes_per_update=3,
            num_outer_updates=2, update_epochs=2, num_minibatches=2, tbptt_len=16, meta_update_epochs=2,
            meta_nsteps=(25, 30, 35), meta_nsteps_fallback=(1, 6, 11), save_every=1,
            val_every=1, val_tasks=2, eval_tasks=2, eval_repeats=2, num_workers=1)


both = pytest.mark.parametrize("m", [mr, ma], ids=["reward", "advantage"])


def train_keys(m, n, update=1):
    """The random-stream keys of the n lifetimes of one outer update."""
    return [(m.TRAIN, 0, update, i) for i in range(n)]


def tiny_args(m=mr, **kw):
    args = m.Args(**{**TINY, **kw})
    m.check_args(args)
    return args


def tiny_argv(**kw):
    """TINY (updated with kw) as command-line words."""
    return [word for k, v in {**TINY, **kw}.items()
            for word in [f"--{k.replace('_', '-')}", *map(str, v if isinstance(v, tuple) else [v])]]


_real_make_benchmark, _benchmarks = mr.make_benchmark, {}


def cached_make_benchmark(args, seed=None):
    """make_benchmark, building each MetaWorld benchmark (seconds of env resets) once per test session."""
    key = (args.benchmark, args.env_name, args.seed if seed is None else seed)
    if key not in _benchmarks:
        _benchmarks[key] = _real_make_benchmark(args, seed)
    return _benchmarks[key]


@pytest.fixture(autouse=True)
def cached_benchmarks(monkeypatch):
    monkeypatch.setattr(mr, "make_benchmark", cached_make_benchmark)
    monkeypatch.setattr(ma, "make_benchmark", cached_make_benchmark)


def goals(tasks):
    """Each task's class and goal/object positions (MetaWorld's rand_vec), read directly from the task."""
    return [(t.env_name, pickle.loads(t.data)["rand_vec"].tobytes()) for t in tasks]


_seed1_benchmarks = {}


def benchmark_of(name):
    """MetaWorld's ML1 benchmark of one task, or ML10 (name "ML10"), seed 1, built once per test session."""
    if name not in _seed1_benchmarks:
        _seed1_benchmarks[name] = metaworld.ML10(seed=1) if name == "ML10" else metaworld.ML1(name, seed=1)
    return _seed1_benchmarks[name]


@pytest.fixture(scope="module")
def ml1():
    return benchmark_of("door-close-v3")


@pytest.fixture(scope="module", params=[mr, ma], ids=["reward", "advantage"])
def tiny_rollout(ml1, request):
    """One tiny meta-batch of real lifetimes (3 lifetimes x 60 steps) and the network that made it."""
    m = request.param
    args = tiny_args(m)
    torch.manual_seed(0)
    tasks = m.sample_tasks(ml1.train_classes, ml1.train_tasks, args.lifetimes_per_update, np.random.default_rng(0))
    meta_net = m.MetaNet(args.meta_std_scale)
    batch = m.run_lifetimes(m.EnvGroup(ml1.train_classes, args.max_episode_steps), tasks, train_keys(m, 3), meta_net,
                            args)
    return m, args, meta_net, batch


# 1. The sparse signal ----------------------------------------------------------------------------
def sparse_sequence(success_rows, T, m=mr):
    """Run m.sparse_reward step by step over (N, steps) 0/1 success rows."""
    success = torch.tensor(success_rows, dtype=torch.bool)
    solved = torch.zeros(len(success_rows), dtype=torch.bool)
    out = []
    for t in range(success.shape[1]):
        r, solved = m.sparse_reward(success[:, t], t % T, solved, T)
        out.append(r)
    return torch.stack(out, 1)


@both
def test_sparse_reward_hand_made_sequences(m):
    T = 10
    first_only = [0, 0, 0, 1, 1, 0, 1, 0, 0, 0]  # success from k=3 on: reward only at the first success
    late = [0] * 9 + [1]  # first success on the last step
    never = [0] * 10
    r = sparse_sequence([first_only, late, never], T, m)
    expected = torch.zeros(3, T)
    expected[0, 3] = 1 - 0.7 * 3 / T
    expected[1, 9] = 1 - 0.7 * 9 / T
    expected[2, 9] = -0.2
    torch.testing.assert_close(r, expected)
    # the first success of each episode counts again in the next episode; k is 0-based
    r = sparse_sequence([[1] + [0] * 9 + [0, 0, 1, 1] + [0] * 6], T, m)
    assert r[0, 0] == pytest.approx(1.0) and r[0, 12] == pytest.approx(1 - 0.7 * 2 / T)
    assert torch.count_nonzero(r) == 2


@both
def test_sparse_bonus_at_the_papers_episode_length(m):
    """T = 500: first success at k = 0, 100, 499 pays 1, 0.86, 0.3014; never solved: -0.2 at k = 499."""
    rows = [[0] * 500 for _ in range(4)]
    for row, k in zip(rows, (0, 100, 499)):
        row[k:] = [1] * (500 - k)
    r = sparse_sequence(rows, 500, m)
    assert [r[i].sum().item() for i in range(4)] == pytest.approx([1.0, 0.86, 0.3014, -0.2], abs=1e-6)
    assert r[0, 0] == pytest.approx(1.0) and r[1, 100] == pytest.approx(0.86) and r[2, 499] == pytest.approx(0.3014)
    assert torch.count_nonzero(r) == 4


class FakeEnvs:
    """Stands in for EnvGroup with random observations and frequent successes."""

    def __init__(self, n, seed):
        self.n, self.rng, self.seconds = n, np.random.default_rng(seed), 0.0

    def set_tasks(self, tasks):
        self.n = len(tasks)
        return self.rng.standard_normal((self.n, mr.OBS_DIM)).astype(np.float32)

    def step(self, actions):
        assert actions.shape == (self.n, mr.ACT_DIM) and np.abs(actions).max() <= 1
        return (self.rng.standard_normal((self.n, mr.OBS_DIM)).astype(np.float32),
                self.rng.random(self.n).astype(np.float32), self.rng.random(self.n) < 0.15)


@pytest.fixture(scope="module", params=[mr, ma], ids=["reward", "advantage"])
def fake_rollout(request):
    m = request.param
    args = tiny_args(m, lifetimes_per_update=4)
    torch.manual_seed(0)
    batch = m.run_lifetimes(FakeEnvs(4, 0), [None] * 4, train_keys(m, 4), m.MetaNet(), args)
    return args, batch


def test_rollout_feeds_the_sparse_signal_and_flags(fake_rollout):
    """The network's inputs end with [pi(a|s), 3 r^e_t, 2 d_t, its action at t-1]: r^e_t computed from the
    env's successes by a direct loop, d_t on each episode's first step, the previous action a sample."""
    args, batch = fake_rollout
    x = batch["meta_inputs"]
    T = args.max_episode_steps
    success = batch["success"]
    n, L = success.shape
    for i in range(n):  # a direct loop over the env's success flags
        for e in range(L // T):
            ep = success[i, e * T:(e + 1) * T].tolist()
            hits = [k for k in range(T) if ep[k] > 0]
            want = torch.zeros(T)
            if hits:
                want[hits[0]] = 1 - 0.7 * hits[0] / T
            else:
                want[T - 1] = -0.2
            torch.testing.assert_close(x[i, e * T:(e + 1) * T, -3] / 3, want)
    assert torch.equal(x[:, :, -2], torch.tensor([2.0 if t % T == 0 else 0.0 for t in range(L)]).expand(n, L))
    assert torch.equal(x[:, 1:, -1], batch["meta_actions"][:, :-1]) and torch.all(x[:, 0, -1] == 0)
    rewarded = x[..., -3] > 0
    assert rewarded.sum() > 5 and rewarded.view(n, L // T, T).sum(-1).max() == 1  # once per episode at most


class RecordingEnvs:
    """An EnvGroup that records, per step t, the observation it returned as s_t, its envs' own step
    counters before the step (0: an episode's first step), the actions the envs received, their successes."""

    def __init__(self, envs):
        self.envs, self.obs, self.counters, self.received, self.success = envs, [], [], [], []

    def set_tasks(self, tasks):
        obs = self.envs.set_tasks(tasks)
        self.obs.append(obs.copy())
        return obs

    def step(self, actions):
        self.counters.append([env.curr_path_length for env in self.envs.envs])
        self.received.append(actions.copy())
        obs, rewards, success = self.envs.step(actions)
        self.obs.append(obs.copy())
        self.success.append(success.copy())
        return obs, rewards, success


def agent_mlp(stacked_mlp, i, x):
    """Agent i's output of a StackedMLP, written out: x @ W + b per layer, tanh between layers."""
    for layer, (w, b) in enumerate(zip(stacked_mlp.weights, stacked_mlp.biases)):
        x = x @ w[i] + b[i, 0]
        if layer < len(stacked_mlp.weights) - 1:
            x = torch.tanh(x)
    return x


@both
def test_network_input_is_the_papers_tuple_on_real_lifetimes(m, ml1, monkeypatch):
    """Real MetaWorld lifetimes: at every step x_t = [s_t, a_t, pi(a_t|s_t), 3 r^e_t, 2 d_t, r^i_(t-1)],
    each part recomputed from what the envs returned and received and from theta as it was at step t:
    s_t the env's observation (goal zeroed), a_t the unclipped action the inner PPO learns from,
    pi(a_t|s_t) a density (a product of 1-D Gaussians with the actor's mean and std), r^e_t from the
    env's success flags, d_t from the env's own step counter."""
    args = tiny_args(m, lifetimes_per_update=2)
    T, U, L = args.max_episode_steps, args.steps_per_update, args.lifetime_steps
    live, thetas, blocks = [], [], []  # the agents; theta of each block; what each inner update got
    real_agents, real_update = m.InnerAgents, m.inner_ppo_update

    def inner_ppo_update(agents, opt, obs, actions, *a):
        thetas.append(copy.deepcopy(agents))  # theta of the block that just ended
        blocks.append((obs.clone(), actions.clone()))
        return real_update(agents, opt, obs, actions, *a)

    monkeypatch.setattr(m, "InnerAgents", lambda *a: live.append(real_agents(*a)) or live[-1])
    monkeypatch.setattr(m, "inner_ppo_update", inner_ppo_update)
    tasks = m.sample_tasks(ml1.train_classes, ml1.train_tasks, 2, np.random.default_rng(1))
    envs = RecordingEnvs(m.EnvGroup(ml1.train_classes, T))
    torch.manual_seed(0)
    torch.set_num_threads(1)  # as in every process that lives lifetimes (Lifetimes.run, start_worker)
    try:
        record = m.run_lifetimes(envs, tasks, train_keys(m, 2), m.MetaNet(args.meta_std_scale), args)
    finally:
        torch.set_num_threads(m.UPDATE_THREADS)
    thetas.append(live[0])  # the last block's: after the last inner update
    x, n = record["meta_inputs"], 2
    part = {name: x[..., where] for name, where in m.META_INPUT.items()}  # x_t's named layout, one place
    assert x.shape == (n, L, m.META_INPUT_DIM) and len(thetas) == L // U and len(envs.counters) == L
    # s_t: what the env returned, its goal (MetaWorld v3: obs[-3:]) zeroed
    obs = torch.as_tensor(np.stack(envs.obs[:L], 1))
    assert torch.equal(part["s"], obs), "s_t is not the observation the env returned"
    assert torch.all(obs[..., -3:] == 0) and torch.all(obs[..., :3] != 0)  # no goal; the hand position
    # a_t: the action as stored for the inner PPO, unclipped; the env received it clipped to [-1, 1]
    a = part["a"]
    for j, (block_obs, block_actions) in enumerate(blocks):
        assert torch.equal(part["s"][:, j * U:(j + 1) * U], block_obs), f"block {j}: s_t is not the inner PPO's"
        assert torch.equal(a[:, j * U:(j + 1) * U], block_actions), f"block {j}: a_t is not the inner PPO's"
    assert torch.equal(torch.as_tensor(np.stack(envs.received, 1)), a.clamp(-1, 1)) and (a.abs() > 1).any()
    # pi(a_t|s_t): the density under theta of step t's block (theta moves at each inner update)
    assert not torch.equal(thetas[0].actor_logstd, thetas[1].actor_logstd)
    with torch.no_grad():
        for j, theta in enumerate(thetas):
            for i in range(n):
                blk = slice(j * U, (j + 1) * U)
                mu = agent_mlp(theta.actor_mean, i, obs[i, blk]).double()
                sigma = theta.actor_logstd[i, 0].exp().double()
                density = (torch.exp(-(a[i, blk].double() - mu) ** 2 / (2 * sigma ** 2))
                           / (sigma * math.sqrt(2 * math.pi))).prod(-1)
                torch.testing.assert_close(part["pi"][i, blk, 0].double(), density, rtol=1e-4, atol=0,
                                           msg=lambda e: f"pi(a_t|s_t), block {j}, lifetime {i}: {e}")
    # 3 r^e_t from the env's success flags, episode by episode (the env's step counter at 0: a first step)
    first = torch.tensor(envs.counters).T == 0
    success = np.stack(envs.success, 1)
    sparse = torch.zeros(n, L)
    for i in range(n):
        starts = [t for t in range(L) if first[i, t]]
        for s, e in zip(starts, starts[1:] + [L]):
            hits = [t for t in range(s, e) if success[i, t]]
            if hits:
                sparse[i, hits[0]] = 1 - 0.7 * (hits[0] - s) / (e - s)
            else:
                sparse[i, e - 1] = -0.2
    assert first.sum() == n * L // T
    torch.testing.assert_close(part["r_e"][..., 0], 3 * sparse)
    # 2 d_t, and the network's own sample at t - 1 (0 at the first step)
    assert torch.equal(part["d"][..., 0], 2.0 * first)
    assert torch.equal(part["prev"][:, 1:, 0], record["meta_actions"][:, :-1]) and torch.all(part["prev"][:, 0] == 0)
    # ... the parts the encoder re-attaches after each of its layers (captured where they enter fc2 and the LSTM)
    net, reattached = m.MetaNet(args.meta_std_scale), []
    for layer in (net.fc2, net.lstm):
        layer.register_forward_pre_hook(lambda module, inputs: reattached.append(inputs[0][..., -m.N_SCALARS:]))
    with torch.no_grad():
        net(x, net.initial_state(n))
    assert len(reattached) == 2 and m.SCALARS == ("pi", "r_e", "d", "prev")
    for h in reattached:  # pi(a_t|s_t), r^e_t, d_t and the previous signal, checked above, whatever else x_t holds
        assert torch.equal(h, torch.cat([part[name] for name in ("pi", "r_e", "d", "prev")], -1))
    edges = [(where.start, where.stop) for where in m.META_INPUT.values()]  # the parts tile x_t in order
    assert edges[0][0] == 0 and edges[-1][1] == m.META_INPUT_DIM and all(a[1] == b[0] for a, b in zip(edges, edges[1:]))


# 2. Batched GAE ---------------------------------------------------------------------------------
def gae_loop(rewards, values, gamma, lam, T):
    n, b = rewards.shape
    adv = torch.zeros(n, b)
    for i in range(n):
        last = 0.0
        for t in reversed(range(b)):
            terminal = (t + 1) % T == 0
            next_value = 0.0 if terminal else values[i, t + 1]
            delta = rewards[i, t] + gamma * next_value - values[i, t]
            last = delta + gamma * lam * (0.0 if terminal else last)
            adv[i, t] = last
    return adv


def test_gae_matches_direct_loop_across_episode_boundaries():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 40), torch.randn(3, 40)
    adv, ret = mr.gae(rewards, values, 0.99, 0.95, 10)
    expected = gae_loop(rewards, values, 0.99, 0.95, 10)
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret, expected + values, atol=1e-5, rtol=1e-5)
    # paper sizes: 2000-step batch of 500-step episodes
    rewards, values = torch.randn(2, 2000), torch.randn(2, 2000)
    torch.testing.assert_close(mr.gae(rewards, values, 0.99, 0.95, 500)[0],
                               gae_loop(rewards, values, 0.99, 0.95, 500), atol=1e-4, rtol=1e-4)


# 3. The meta-advantage estimator ----------------------------------------------------------------
def meta_advantage_brute(r, v, t, args):
    """The estimator's formula (see meta_advantages) for one step t of one lifetime, term by term."""
    L, U, T, g = len(r), args.steps_per_update, args.max_episode_steps, args.meta_gamma
    u = U - t % U
    s = t + u

    def a_n(n):
        total = sum(g ** (j // T - s // T) * r[j] for j in range(s, t + n))
        return total + g ** ((t + n) // T - s // T) * v[t + n] - v[t]

    for horizons in (args.meta_nsteps, args.meta_nsteps_fallback):
        qualifying = [n for n in sorted(horizons) if u < n and t + n < L]
        if qualifying:
            w = [args.meta_nstep_decay ** k for k in range(len(qualifying))]
            return sum(wk * a_n(n) for wk, n in zip(w, qualifying)) / sum(w)
    return sum(g ** (j // T - t // T) * r[j] for j in range(t, L)) - v[t]  # no later update: Monte Carlo


@both
@pytest.mark.parametrize("paper_sizes", [False, True])
def test_meta_advantages_match_brute_force(m, paper_sizes):
    args = m.Args() if paper_sizes else tiny_args(m)
    L = args.lifetime_steps
    gen = torch.Generator().manual_seed(1)
    r, v = torch.rand(2, L, generator=gen), torch.randn(2, L, generator=gen)
    adv, ret = m.meta_advantages(r, v, args)
    assert adv.shape == (2, L) and torch.isfinite(adv).all() and torch.isfinite(ret).all()
    torch.testing.assert_close(ret, adv + v)
    if paper_sizes:  # block edges (primary -> fallback -> Monte Carlo) and a random sample
        steps = sorted(set(list(range(0, 5)) + list(range(1995, 2005)) + list(range(3295, 3305)) +
                           list(range(3995, 4005)) + list(range(5995, 6000)) +
                           torch.randint(0, L, (40,), generator=gen).tolist()))
    else:
        steps = range(L)
    rn, vn = r.double().numpy(), v.double().numpy()
    for i in range(2):
        for t in steps:
            assert adv[i, t].item() == pytest.approx(meta_advantage_brute(rn[i], vn[i], t, args), rel=1e-4, abs=1e-4), t


# 4. TBPTT replay ------------------------------------------------------------------------------
def replay(meta_net, batch, tbptt_len, offset, zero_prev_reward_at_chunk_start=False, m=mr):
    x, r = batch["meta_inputs"].clone(), batch["meta_actions"]
    state = meta_net.initial_state(x.shape[0])
    logps, values, means = [], [], []
    with torch.no_grad():
        for a, b in m.tbptt_chunks(x.shape[1], tbptt_len, offset):
            if zero_prev_reward_at_chunk_start:  # the authors' fault (README: deviations)
                x[:, a, -1] = 0.0
            mean, std, value, state = meta_net(x[:, a:b], state)
            state = meta_net.detach_state(state)
            logps.append(torch.distributions.Normal(mean, std).log_prob(r[:, a:b]))
            values.append(value)
            means.append(mean)
    return torch.cat(logps, 1), torch.cat(values, 1), torch.cat(means, 1)


@both
def test_tbptt_chunks_cover_steps_once(m):
    assert m.tbptt_chunks(10, 4, 1) == [(0, 1), (1, 5), (5, 9), (9, 10)]
    assert m.tbptt_chunks(10, 4, 4) == [(0, 4), (4, 8), (8, 10)]
    for d in (1, 7, 400):
        chunks = m.tbptt_chunks(6000, 400, d)
        assert chunks[0] == (0, d) and chunks[-1][1] == 6000
        assert all(b0 == a1 for (_, b0), (a1, _) in zip(chunks[:-1], chunks[1:]))


@pytest.mark.parametrize("offset", [1, 5, 16])
def test_tbptt_replay_reproduces_rollout(tiny_rollout, offset):
    m, args, meta_net, batch = tiny_rollout
    logps, values, means = replay(meta_net, batch, args.tbptt_len, offset, m=m)
    assert (logps - batch["meta_logprobs"]).abs().max() < 1e-5
    assert (values - batch["meta_values"]).abs().max() < 1e-5
    assert (batch["meta_actions"] - means).abs().mean() > 0.05  # training signals are samples, not the mean
    # the check can fail: feeding r^i_(t-1) = 0 at chunk starts (the authors' replay) breaks it
    bad, _, _ = replay(meta_net, batch, args.tbptt_len, offset, zero_prev_reward_at_chunk_start=True, m=m)
    assert (bad - batch["meta_logprobs"]).abs().max() > 1e-4


def test_outer_update_changes_network_and_zero_lr_keeps_ratios_one(tiny_rollout):
    m, args, meta_net, batch = tiny_rollout
    adv, ret = m.meta_advantages(batch["shaped"] * 1e-2, batch["meta_values"], args)
    net = copy.deepcopy(meta_net)
    opt = torch.optim.Adam(net.parameters(), lr=0.0, eps=1e-5)
    stats = m.outer_ppo_update(net, opt, batch, adv, ret, dataclasses.replace(args, meta_update_epochs=1))
    assert abs(stats["approx_kl"]) < 1e-9 and stats["clipfrac"] == 0.0  # replay == rollout inside the update
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-5)
    stats = m.outer_ppo_update(net, opt, batch, adv, ret, args)
    assert np.isfinite(list(stats.values())).all()
    changed = [not torch.equal(p, q) for p, q in zip(net.parameters(), meta_net.parameters())]
    assert all(changed)


class GradRecorder:
    """Stands in for the outer optimizer: records each step's gradients and never moves a parameter,
    so every TBPTT chunk's loss is evaluated at the same network."""

    def __init__(self, params):
        self.params, self.grads = list(params), []

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        self.grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in self.params])


def hand_made_batch(m, args, n=2, perturb=0.0, seed=0):
    """A tiny outer batch: random inputs, r^i sampled from a fresh network's own N(mean, std), the
    rollout's log-probs (shifted by up to +-perturb, so that ratios differ from 1 and some clip),
    advantages on other scales per lifetime and in the last block, random value targets."""
    torch.manual_seed(seed)
    net = m.MetaNet(args.meta_std_scale)
    g = torch.Generator().manual_seed(seed + 1)
    L = args.lifetime_steps
    x = torch.randn(n, L, m.META_INPUT_DIM, generator=g)
    with torch.no_grad():
        mean, std, _, _ = net(x, net.initial_state(n))
    r = mean + std * torch.randn(n, L, generator=g)
    logp = torch.distributions.Normal(mean, std).log_prob(r) + perturb * (2 * torch.rand(n, L, generator=g) - 1)
    adv = torch.randn(n, L, generator=g) * torch.tensor([[1.0], [3.0]])[:n] + torch.tensor([[1.0], [-1.0]])[:n]
    adv[:, L - args.steps_per_update:] += 10.0  # the last block: feeds no inner update, outside the policy loss
    ret = torch.randn(n, L, generator=g)
    return net, dict(meta_inputs=x, meta_actions=r, meta_logprobs=logp), adv, ret


def spy_chunks(m, monkeypatch):
    """Record the TBPTT chunks of every epoch of outer_ppo_update (one list per epoch)."""
    calls, real = [], m.tbptt_chunks
    monkeypatch.setattr(m, "tbptt_chunks", lambda *a: calls.append(real(*a)) or calls[-1])
    return calls


def reference_outer_losses(net, batch, advantages, returns, chunks, args):
    """The outer PPO loss of each TBPTT chunk, step by step: the clipped surrogate on the advantages
    normalised over the whole batch's policy window (the steps before the last inner update), minus
    ent_coef x the Gaussian entropy there, plus vf_coef x 0.5 x the squared value error at every step."""
    x, r, old = batch["meta_inputs"], batch["meta_actions"], batch["meta_logprobs"]
    n, L = r.shape
    P, c = L - args.steps_per_update, args.meta_clip_coef
    window = [advantages[i, t].item() for i in range(n) for t in range(P)]
    mu = sum(window) / len(window)
    sd = math.sqrt(sum((a - mu) ** 2 for a in window) / (len(window) - 1))
    losses = []
    for a, b in chunks:
        with torch.no_grad():  # the hidden state at the chunk's start, detached
            state = net(x[:, :a], net.initial_state(n))[3] if a else net.initial_state(n)
        mean, std, value, _ = net(x[:, a:b], state)
        pg, entropy, v_loss = [], [], []
        for i in range(n):
            for t in range(a, b):
                j = t - a
                v_loss.append(0.5 * (value[i, j] - returns[i, t]) ** 2)
                if t < P:
                    logp = (-(r[i, t] - mean[i, j]) ** 2 / (2 * std[i, j] ** 2) - torch.log(std[i, j])
                            - 0.5 * math.log(2 * math.pi))
                    ratio = torch.exp(logp - old[i, t])
                    A = (advantages[i, t].item() - mu) / (sd + 1e-8)
                    pg.append(-torch.min(ratio * A, torch.clamp(ratio, 1 - c, 1 + c) * A))
                    entropy.append(0.5 + 0.5 * math.log(2 * math.pi) + torch.log(std[i, j]))
        loss = args.meta_vf_coef * sum(v_loss) / len(v_loss)
        if pg:
            loss = loss + sum(pg) / len(pg) - args.meta_ent_coef * sum(entropy) / len(entropy)
        losses.append((loss, sum(pg) / len(pg) if pg else None, sum(v_loss) / len(v_loss)))
    return losses


@both
def test_outer_ppo_loss_matches_direct_computation(m, monkeypatch):
    """Every chunk's gradient is that of the loss written out step by step (reference_outer_losses)."""
    args = dataclasses.replace(tiny_args(m), meta_update_epochs=2, meta_ent_coef=0.05, meta_vf_coef=0.7,
                               meta_max_grad_norm=1e9, meta_target_kl=math.inf)
    net, batch, adv, ret = hand_made_batch(m, args, perturb=0.3)
    calls = spy_chunks(m, monkeypatch)
    opt = GradRecorder(net.parameters())
    stats = m.outer_ppo_update(net, opt, batch, adv, ret, args)
    chunks = [c for epoch in calls for c in epoch]
    assert stats["epochs"] == len(calls) == 2 and len(opt.grads) == len(chunks)  # one optimizer step per chunk
    assert stats["clipfrac"] > 0.1  # the batch exercises the clip
    reference = reference_outer_losses(net, batch, adv, ret, chunks, args)
    params = list(net.parameters())
    for (a, b), grads, (loss, _, _) in zip(chunks, opt.grads, reference):
        want = torch.autograd.grad(loss, params, allow_unused=True)
        for got, w in zip(grads, want):
            torch.testing.assert_close(got, torch.zeros_like(got) if w is None else w, atol=1e-6, rtol=1e-4,
                                       msg=lambda e: f"chunk [{a}, {b}): {e}")
    assert stats["policy_loss"] == pytest.approx(np.mean([pg.item() for _, pg, _ in reference if pg is not None]),
                                                 rel=1e-4)
    assert stats["value_loss"] == pytest.approx(np.mean([v.item() for _, _, v in reference]), rel=1e-4)


@both
def test_outer_ppo_step_raises_the_log_prob_where_the_advantage_is_positive(m):
    """One outer update (the real Adam, 1 epoch): the sampled r^i of a step with a positive advantage
    becomes more likely, that of a step with a negative one less likely."""
    args = dataclasses.replace(tiny_args(m), meta_update_epochs=1)
    net, batch, _, ret = hand_made_batch(m, args)
    adv = torch.zeros_like(ret)
    adv[0, 10], adv[1, 25] = 1.0, -1.0  # both in the policy window (steps 0-39)
    before = batch["meta_logprobs"]
    m.outer_ppo_update(net, torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-5), batch, adv, ret, args)
    with torch.no_grad():
        mean, std, _, _ = net(batch["meta_inputs"], net.initial_state(2))
    change = torch.distributions.Normal(mean, std).log_prob(batch["meta_actions"]) - before
    assert change[0, 10] > 0.005 and change[1, 25] < -0.005


@both
def test_outer_kl_early_stop_ends_the_epochs(m, monkeypatch):
    """The epochs stop after the first whose approximate KL over the policy window exceeds --meta-target-kl."""
    args = dataclasses.replace(tiny_args(m), meta_update_epochs=4)
    net, batch, adv, ret = hand_made_batch(m, args, perturb=0.3)
    P = args.lifetime_steps - args.steps_per_update
    with torch.no_grad():
        mean, std, _, _ = net(batch["meta_inputs"], net.initial_state(2))
    logratio = (torch.distributions.Normal(mean, std).log_prob(batch["meta_actions"]) - batch["meta_logprobs"])[:, :P]
    kl = ((logratio.exp() - 1) - logratio).mean().item()  # every epoch's, as the parameters never move
    assert kl > 0.005
    for target, epochs in ((kl * 0.99, 1), (kl * 1.01, 4)):
        calls = spy_chunks(m, monkeypatch)
        opt = GradRecorder(net.parameters())
        stats = m.outer_ppo_update(net, opt, batch, adv, ret, dataclasses.replace(args, meta_target_kl=target))
        assert stats["epochs"] == len(calls) == epochs and len(opt.grads) == sum(map(len, calls))
        assert stats["approx_kl"] == pytest.approx(kl, rel=0.2)


@both
def test_tbptt_offsets_are_drawn_per_epoch_from_torchs_cpu_generator(m, monkeypatch):
    """Each epoch draws its first-chunk length d in [1, tbptt_len] from torch's CPU generator, whose
    state the checkpoint saves: the same state gives the same offsets (exact --resume, also with --cuda)."""
    args = dataclasses.replace(tiny_args(m), meta_update_epochs=6, meta_target_kl=math.inf)
    net, batch, adv, ret = hand_made_batch(m, args)
    state, offsets = torch.get_rng_state(), []
    for _ in range(2):
        torch.set_rng_state(state)
        calls = spy_chunks(m, monkeypatch)
        m.outer_ppo_update(net, GradRecorder(net.parameters()), batch, adv, ret, args)
        offsets.append([epoch[0][1] for epoch in calls])
    assert offsets[0] == offsets[1] and len(offsets[0]) == 6
    assert all(1 <= d <= args.tbptt_len for d in offsets[0]) and len(set(offsets[0])) > 1


@both
def test_normaliser_is_the_running_class_mean_of_the_shaped_reward(m):
    """r~ = r / (mean of every per-step shaped reward of the class seen so far + 1e-7) * scale."""
    g = torch.Generator().manual_seed(0)
    first, second = torch.rand(3, 8, generator=g) * 5, torch.rand(2, 8, generator=g) * 2
    norm = m.ShapedRewardNormalizer(["a", "b", "c"], 1e-4)
    norm.update(first, ["a", "b", "a"])
    norm.update(second, ["b", "a"])
    seen = {"a": first[0].tolist() + first[2].tolist() + second[1].tolist(), "b": first[1].tolist() + second[0].tolist()}
    for c in "ab":
        assert norm.mean[c] == pytest.approx(sum(seen[c]) / len(seen[c]), rel=1e-9)
    out = norm(second, ["b", "a"])
    for i, c in enumerate("ba"):
        for t in range(8):
            assert out[i, t].item() == pytest.approx(second[i, t].item() / (sum(seen[c]) / len(seen[c]) + 1e-7) * 1e-4,
                                                     rel=1e-6)
    norm.update(torch.zeros(1, 8), ["c"])  # a class whose shaped reward is 0 so far: finite
    torch.testing.assert_close(norm(torch.ones(1, 8), ["c"]), torch.full((1, 8), 1e-4 / 1e-7))


@both
def test_normaliser_mean_is_over_everything_seen_after_many_unequal_updates(m):
    """After each of five updates of unequal sizes and scales (a class missing from some), each class's
    count and mean are those of every shaped reward of it seen so far, all weighted alike: not a weighted
    recent average, nor a count that forgets earlier updates."""
    g = torch.Generator().manual_seed(1)
    norm = m.ShapedRewardNormalizer(["a", "b"], 1e-4)
    seen = {"a": [], "b": []}
    for update, classes in enumerate((["a"], ["a", "b", "a", "a"], ["b"], ["b", "a"], ["a", "a", "a"])):
        shaped = torch.rand(len(classes), 8, generator=g) * 4 ** update  # each update on its own scale
        norm.update(shaped, classes)
        for row, c in zip(shaped, classes):
            seen[c] += row.double().tolist()
        for c in "ab":
            assert norm.count[c] == len(seen[c])
            assert norm.mean[c] == pytest.approx(sum(seen[c]) / max(len(seen[c]), 1), rel=1e-12, abs=0)


# 5. Independent inner agents ------------------------------------------------------------------
def make_inner_batch(agents, n, b, seed):
    """(obs, actions, logprobs, advantages[, returns]): returns only for agents with a critic."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, b, mr.OBS_DIM, generator=g)
    with torch.no_grad():
        actions, logprobs = agents.get_action(obs, noise=torch.randn(n, b, mr.ACT_DIM, generator=g))[:2]
    batch = (obs, actions, logprobs, torch.randn(n, b, generator=g), torch.randn(n, b, generator=g))
    return batch if hasattr(agents, "critic") else batch[:4]


def inner_args(m, **kw):
    return dataclasses.replace(tiny_args(m), update_epochs=3, num_minibatches=4, **kw)


def run_inner_update(m, agents, batch, perms, args):
    opt = torch.optim.Adam(agents.parameters(), lr=args.learning_rate, eps=1e-5)
    m.inner_ppo_update(agents, opt, *batch, perms, args)
    return agents


@both
def test_changing_one_agents_batch_leaves_the_others_unchanged(m):
    torch.manual_seed(0)
    args, n, b = inner_args(m), 4, 40
    agents = m.InnerAgents(n)
    batch = make_inner_batch(agents, n, b, seed=1)
    perms = torch.rand(args.update_epochs, n, b).argsort(-1)
    other = make_inner_batch(agents, n, b, seed=2)
    changed = tuple(torch.cat([x[:2], y[2:3], x[3:]]) for x, y in zip(batch, other))  # agent 2's batch only
    a = run_inner_update(m, copy.deepcopy(agents), batch, perms, args)
    c = run_inner_update(m, copy.deepcopy(agents), changed, perms, args)
    for pa, pc in zip(a.parameters(), c.parameters()):
        assert torch.equal(pa[[0, 1, 3]], pc[[0, 1, 3]])
        assert not torch.equal(pa[2], pc[2])


def reference_single_agent(stacked, i):
    """Agent i of a stacked InnerAgents as plain nn.Linear layers (CleanRL's agent)."""
    def mlp(m):
        layers = []
        for w, bias in zip(m.weights, m.biases):
            lin = nn.Linear(w.shape[1], w.shape[2])
            lin.weight.data.copy_(w[i].T)
            lin.bias.data.copy_(bias[i, 0])
            layers += [lin, nn.Tanh()]
        return nn.Sequential(*layers[:-1])
    ref = nn.Module()
    ref.actor_mean = mlp(stacked.actor_mean)
    if hasattr(stacked, "critic"):
        ref.critic = mlp(stacked.critic)
    ref.actor_logstd = nn.Parameter(stacked.actor_logstd[i].detach().clone())
    return ref


def reference_ppo_update(ref, obs, actions, logprobs, advantages, perms, args, returns=None):
    """CleanRL's PPO update for one agent, written out directly; actor-only when returns is None."""
    opt = torch.optim.Adam(ref.parameters(), lr=args.learning_rate, eps=1e-5)
    b = len(obs)
    mb = b // args.num_minibatches
    for epoch in range(args.update_epochs):
        for start in range(0, b, mb):
            idx = perms[epoch][start:start + mb]
            mean = ref.actor_mean(obs[idx])
            dist = torch.distributions.Normal(mean, ref.actor_logstd.exp().expand_as(mean))
            ratio = (dist.log_prob(actions[idx]).sum(1) - logprobs[idx]).exp()
            adv = advantages[idx]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            pg = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)).mean()
            loss = pg - args.ent_coef * dist.entropy().sum(1).mean()
            if returns is not None:
                loss = loss + args.vf_coef * 0.5 * ((ref.critic(obs[idx]).squeeze(1) - returns[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(ref.parameters(), args.max_grad_norm)
            opt.step()


@both
@pytest.mark.parametrize("max_grad_norm", [0.5, 0.02])  # 0.02: the per-agent clip is active
def test_stacked_update_equals_separate_single_agent_updates(m, max_grad_norm):
    """metareward: PPO actor-critic; metareward_advantage: actor-only PPO on the given advantages."""
    torch.manual_seed(0)
    args, n, b = inner_args(m, max_grad_norm=max_grad_norm, ent_coef=0.01), 3, 40
    agents = m.InnerAgents(n)
    batch = make_inner_batch(agents, n, b, seed=3)
    perms = torch.rand(args.update_epochs, n, b).argsort(-1)
    refs = [reference_single_agent(agents, i) for i in range(n)]
    stacked = run_inner_update(m, copy.deepcopy(agents), batch, perms, args)
    for i, ref in enumerate(refs):
        obs, actions, logprobs, advantages, *returns = (x[i] for x in batch)
        reference_ppo_update(ref, obs, actions, logprobs, advantages, perms[:, i], args, *returns)
        got = reference_single_agent(stacked, i)
        for p, q in zip(got.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
        assert not torch.equal(ref.actor_logstd, agents.actor_logstd[i])  # the update did move it
    assert hasattr(agents, "critic") == (m is mr)


def reference_inner_loss(agents, batch, idx, args):
    """The inner PPO loss of one minibatch (rows idx (N, mb) of each agent's batch), written out: the
    clipped surrogate on the advantages normalised over the minibatch (mean, unbiased std), minus ent_coef x
    the Gaussian entropy, plus vf_coef x 0.5 x the squared value error (when the batch has returns), each a
    mean over the minibatch; summed over agents."""
    obs, actions, old_logprobs, advantages, *returns = batch
    total = 0.0
    for i, rows in enumerate(idx):
        adv = advantages[i, rows].tolist()
        mu = sum(adv) / len(adv)
        sd = math.sqrt(sum((v - mu) ** 2 for v in adv) / (len(adv) - 1))
        A = (torch.tensor(adv) - mu) / (sd + 1e-8)
        logstd = agents.actor_logstd[i, 0]
        mean = agent_mlp(agents.actor_mean, i, obs[i, rows])
        logp = (-(actions[i, rows] - mean) ** 2 / (2 * torch.exp(2 * logstd)) - logstd
                - 0.5 * math.log(2 * math.pi)).sum(-1)
        ratio = torch.exp(logp - old_logprobs[i, rows])
        pg = -torch.min(ratio * A, torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef) * A)
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + logstd).sum()  # the same for every sample
        total = total + pg.sum() / len(rows) - args.ent_coef * entropy
        if returns:
            v_loss = 0.5 * (agent_mlp(agents.critic, i, obs[i, rows])[:, 0] - returns[0][i, rows]) ** 2
            total = total + args.vf_coef * v_loss.sum() / len(rows)
    return total


@both
def test_inner_ppo_loss_is_the_clipped_surrogate_with_its_coefficients(m):
    """Every inner minibatch's gradient is that of the loss written out (reference_inner_loss), on a batch
    whose ratios leave [1 - clip_coef, 1 + clip_coef] on both sides, with advantages far from mean 0 and
    std 1, ent_coef > 0 and (metareward) vf_coef != 0.5; another clip_coef changes it; and one real step
    (Adam's first: -lr g / (|g| + eps)) moves theta down that loss's gradient."""
    torch.manual_seed(0)
    n, b = 2, 40
    agents = m.InnerAgents(n)
    obs, actions, logprobs, advantages, *returns = make_inner_batch(agents, n, b, seed=4)
    g = torch.Generator().manual_seed(5)
    logprobs = logprobs + 0.8 * (2 * torch.rand(n, b, generator=g) - 1)  # ratios from exp(-0.8) to exp(0.8)
    batch = (obs, actions, logprobs, 3 * advantages + 2, *returns)
    perms = torch.rand(3, n, b, generator=g).argsort(-1)
    coefs = dict(ent_coef=0.05, max_grad_norm=math.inf, **({"vf_coef": 0.7} if m is mr else {}))
    names, params = zip(*agents.named_parameters())
    grads = {}
    for clip in (0.1, 0.3):
        args = inner_args(m, clip_coef=clip, **coefs)  # 3 epochs of 4 minibatches of 10
        mb = b // args.num_minibatches
        ratio = (agents.get_action(obs, actions)[1] - logprobs).exp()
        assert (ratio < 1 - clip).float().mean() > 0.2 and (ratio > 1 + clip).float().mean() > 0.2
        opt = GradRecorder(params)  # theta never moves: every minibatch's loss is at the same theta
        m.inner_ppo_update(agents, opt, *batch, perms, args)
        assert len(opt.grads) == args.update_epochs * args.num_minibatches
        for k, got in enumerate(opt.grads):
            epoch, start = divmod(k, args.num_minibatches)
            loss = reference_inner_loss(agents, batch, perms[epoch][:, start * mb:(start + 1) * mb], args)
            for p, name, want in zip(got, names, torch.autograd.grad(loss, params)):
                torch.testing.assert_close(p, want, atol=1e-6, rtol=1e-4,
                                           msg=lambda e: f"clip {clip}, minibatch {k}, {name}: {e}")
        grads[clip] = opt.grads
    assert not all(torch.allclose(p, q) for p, q in zip(grads[0.1][0], grads[0.3][0]))
    # one real step on one minibatch of the whole batch
    args = dataclasses.replace(args, update_epochs=1, num_minibatches=1)
    moved = copy.deepcopy(agents)
    m.inner_ppo_update(moved, torch.optim.Adam(moved.parameters(), lr=args.learning_rate, eps=1e-5), *batch,
                       perms[:1], args)
    loss = reference_inner_loss(agents, batch, perms[0], args)
    for p, q, grad in zip(params, moved.parameters(), torch.autograd.grad(loss, params)):
        torch.testing.assert_close(q - p, -args.learning_rate * grad / (grad.abs() + 1e-5), atol=2e-7, rtol=1e-3)
    assert reference_inner_loss(moved, batch, perms[0], args) < loss


def test_advantage_variant_inner_ppo_uses_the_networks_advantages(monkeypatch):
    """metareward_advantage: each inner update gets the block's sampled A^m as its advantages."""
    seen = []
    real = ma.inner_ppo_update
    monkeypatch.setattr(ma, "inner_ppo_update", lambda ag, opt, o, a, lp, adv, *r: seen.append(adv.clone())
                        or real(ag, opt, o, a, lp, adv, *r))
    batch = ma.run_lifetimes(FakeEnvs(3, 1), [None] * 3, train_keys(ma, 3), ma.MetaNet(), tiny_args(ma))
    assert len(seen) == 2
    for i, adv in enumerate(seen):
        assert torch.equal(adv, batch["meta_actions"][:, i * 20:(i + 1) * 20])


# 6. End to end ------------------------------------------------------------------------------
def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


TIMING = ("charts/SPS", "charts/seconds_per_update")


def tensorboard_scalars(run_dir):
    """tag -> the scalar events of the run folder's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING and not k.startswith("time/")} for r in rows]


@both
def test_end_to_end_tiny_run(m, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    times, run_lifetimes = [], m.Lifetimes.run

    def run(self, tasks, keys, *rest, **kw):  # the times of each update's training lifetimes, as measured
        record = run_lifetimes(self, tasks, keys, *rest, **kw)
        times.extend([dict(self.times)] if keys[0][0] == m.TRAIN else [])
        return record
    monkeypatch.setattr(m.Lifetimes, "run", run)
    run_dir = m.main(tiny_args(m, seed=3))
    out = capsys.readouterr().out  # the plan, before the first update's line
    plan = ("meta-training: 2 outer updates x 3 lifetimes x 60 steps = 0.0M env steps in 1 process(es), then the "
            "evaluation\nevaluation: 4 lifetimes x 100 steps = 0.0M env steps in 1 process(es), in batches of 3\n")
    assert plan in out and out.index(plan) < out.index("update 1/2")
    rows = read_csv(os.path.join(run_dir, "progress.csv"))
    assert len(rows) == 2 and [r["update"] for r in rows] == ["1", "2"]
    assert rows[-1]["global_step"] == str(2 * 3 * 60)
    for r in rows:
        succ = [float(r[f"charts/success_ep{i:02d}"]) for i in range(1, 7)]
        assert all(0.0 <= s <= 1.0 for s in succ)
        assert np.isfinite([float(r[k]) for k in ("losses/value_loss", "losses/policy_loss", "charts/SPS")]).all()
    # the time/ columns are the update's own lifetimes, not the validation's run after them (val-every 1 here)
    assert rows[0]["val/success_det"] != "" and len(times) == 2
    for r, t in zip(rows, times):
        assert [float(r[f"time/{k}"]) for k in ("lifetimes", "env", "agents")] == \
            pytest.approx([t["lifetimes"], t["env"], t["agents"]], rel=1e-6)
        assert float(r["time/outer"]) == pytest.approx(float(r["charts/seconds_per_update"]) - t["lifetimes"], rel=1e-6)
    # the same rows as TensorBoard scalars in the run folder: the CSV's tags, over global_step
    events = tensorboard_scalars(run_dir)
    assert set(events) == {k for k in rows[0] if "/" in k}
    for tag in ("charts/SPS", "charts/success_ep06", "losses/value_loss", "time/outer", "val/success_det"):
        assert [s.step for s in events[tag]] == [int(r["global_step"]) for r in rows]
        assert [s.value for s in events[tag]] == pytest.approx([float(r[tag]) for r in rows], rel=1e-6)
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)
    assert ckpt["script"] == m.SCRIPT and ckpt["update"] == 2
    net = m.load_meta_net(os.path.join(run_dir, "checkpoint.pt"))
    torch.manual_seed(3)  # main() seeds, then builds the network before anything else draws
    initial = m.MetaNet()
    assert all(p.shape == q.shape for p, q in zip(net.parameters(), initial.parameters()))
    assert all(not torch.equal(p, q) for p, q in zip(net.parameters(), initial.parameters()))  # every one moved


@both
def test_worker_processes_give_the_same_run(m, tmp_path, monkeypatch):
    """Living the lifetimes in 1, 2 or 3 worker processes changes nothing but the speed: the same
    progress.csv (but its timing columns), eval.csv and network weights."""
    monkeypatch.chdir(tmp_path)
    runs = [m.main(tiny_args(m, num_workers=w, num_outer_updates=2, exp_name=f"w{w}")) for w in (1, 2, 3)]
    progress, evals = ([read_csv(os.path.join(r, f)) for r in runs] for f in ("progress.csv", "eval.csv"))
    weights = [torch.load(os.path.join(r, "checkpoint.pt"), weights_only=True)["meta_net"] for r in runs]
    for w in (1, 2):
        assert untimed(progress[w]) == untimed(progress[0]) and evals[w] == evals[0]
        assert all(torch.equal(weights[w][k], weights[0][k]) for k in weights[0])
    assert progress[0][0]["val/success_det"] != ""  # validation lifetimes ran in the workers too


@both
@pytest.mark.parametrize("evaluation", [False, True])
def test_a_lifetime_alone_equals_the_same_lifetime_in_a_batch(m, ml1, evaluation):
    """Each lifetime draws every random number from its own key, and no batched op lets its
    neighbours change its rounding: lifetimes 0 and 2 run alone give the batch's rows bit for bit."""
    args = tiny_args(m)
    tasks = m.sample_tasks(ml1.train_classes, ml1.train_tasks, 3, np.random.default_rng(0))
    keys = train_keys(m, 3, update=7)
    torch.manual_seed(0)
    net = m.MetaNet(args.meta_std_scale)
    run = lambda idx: m.run_lifetimes(m.EnvGroup(ml1.train_classes, args.max_episode_steps), [tasks[i] for i in idx],
                                      [keys[i] for i in idx], net, args, evaluation)
    torch.set_num_threads(1)  # as in every process that lives lifetimes (Lifetimes.run, start_worker)
    try:
        batch, alone, other = run([0, 1, 2]), [run([0]), run([2])], run([2, 1, 0])
    finally:
        torch.set_num_threads(m.UPDATE_THREADS)
    for i, record in zip((0, 2), alone):
        assert all(torch.equal(batch[k][i], record[k][0]) for k in batch), i
    assert all(torch.equal(batch[k], other[k].flip(0)) for k in batch)  # another order: the same lifetimes
    assert not torch.equal(batch["meta_actions"][0], batch["meta_actions"][1])  # distinct keys, distinct lifetimes


def test_ml10_meta_batch_has_each_class_three_times_with_distinct_goals():
    ml10 = benchmark_of("ML10")
    tasks = mr.sample_tasks(ml10.train_classes, ml10.train_tasks, 30, np.random.default_rng(0))
    names = [t.env_name for t in tasks]
    assert sorted(set(names)) == sorted(ml10.train_classes) and all(names.count(c) == 3 for c in set(names))
    assert len({t.data for t in tasks}) == 30
    assert all(t in ml10.train_tasks for t in tasks)


@both
def test_ml1_meta_batch_has_distinct_train_goals(m, ml1):
    for n in (30, 50):
        tasks = m.sample_tasks(ml1.train_classes, ml1.train_tasks, n, np.random.default_rng(0))
        assert len(set(goals(tasks))) == n and set(goals(tasks)) <= set(goals(ml1.train_tasks))


@pytest.fixture(scope="module", params=[mr, ma], ids=["reward", "advantage"])
def spied_run(request, tmp_path_factory):
    """A tiny meta-training run (2 outer updates, validation after each, then the evaluation), with what
    meta_train handed the estimator and the outer PPO, the tasks and first record of each evaluate call,
    and per run_lifetimes call its phase, keys, network, record, initial agents and inner shuffles."""
    m = request.param
    seen = dict(estimator=[], outer=[], evaluate=[], lifetimes=[], phase="meta-training")
    real = {f: getattr(m, f) for f in ("meta_advantages", "outer_ppo_update", "evaluate", "run_evaluation",
                                       "run_lifetimes", "InnerAgents", "inner_ppo_update")}

    def meta_advantages(rewards, values, *a):
        seen["estimator"].append((rewards.clone(), values.clone()))
        return real["meta_advantages"](rewards, values, *a)

    def outer_ppo_update(net, opt, batch, *a):
        seen["outer"].append({k: v.clone() for k, v in batch.items()})
        return real["outer_ppo_update"](net, opt, batch, *a)

    def evaluate(envs, tasks, *a, **kw):
        rows, first = real["evaluate"](envs, tasks, *a, **kw)
        seen["evaluate"].append((seen["phase"], list(tasks), first))
        return rows, first

    def run_evaluation(*a, **kw):
        seen["phase"] = "evaluation"
        return real["run_evaluation"](*a, **kw)

    def run_lifetimes(envs, tasks, keys, net, args, evaluation=False, *a):
        phase = "validation" if evaluation and seen["phase"] == "meta-training" else seen["phase"]
        call = dict(phase="training" if not evaluation else phase, keys=list(keys), net=copy.deepcopy(net), perms=[])
        seen["lifetimes"].append(call)
        call["record"] = real["run_lifetimes"](envs, tasks, keys, net, args, evaluation, *a)
        return call["record"]

    def InnerAgents(*a):
        agents = real["InnerAgents"](*a)
        seen["lifetimes"][-1]["agents"] = copy.deepcopy(agents)  # theta as initialised
        return agents

    def inner_ppo_update(agents, opt, *a):
        seen["lifetimes"][-1]["perms"].append(a[-2].clone())  # (..., perms, args)
        return real["inner_ppo_update"](agents, opt, *a)

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("spied"))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(m, "make_benchmark", cached_make_benchmark)
            for f in (meta_advantages, outer_ppo_update, evaluate, run_evaluation, run_lifetimes, InnerAgents,
                      inner_ppo_update):
                patch.setattr(m, f.__name__, f)
            args = tiny_args(m, num_outer_updates=2, val_every=1, val_tasks=2, eval_tasks=3, eval_repeats=1)
            m.main(args)
    finally:
        os.chdir(cwd)
    return m, args, seen


def test_every_lifetime_of_a_run_draws_fresh_random_streams(spied_run):
    """No lifetime of the run reuses another's random streams: update 2's lifetimes not update 1's, the
    validation and evaluation lifetimes neither training's nor each other's. Compared, per lifetime, as
    drawn: the initial theta, the action noise (a_t - mean(s_t)) / std in the first block, the r^i noise
    (r^i_t - mean_t) / std_t (training; the rest use the mean) and the inner minibatch shuffles. Only the
    validation lifetimes repeat: the same streams at each validation, so that its scores compare networks."""
    m, args, seen = spied_run
    U = args.steps_per_update
    lifetimes = []
    for call in seen["lifetimes"]:
        x, agents, net = call["record"]["meta_inputs"], call["agents"], call["net"]
        with torch.no_grad():
            mean, std, _, _ = net(x, net.initial_state(len(x)))
            for i, key in enumerate(call["keys"]):
                action_mean = agent_mlp(agents.actor_mean, i, x[i, :U, :39])
                lifetimes.append(dict(
                    name=f"{call['phase']} lifetime {key}", phase=call["phase"],
                    theta=torch.cat([w[i].flatten() for w in agents.actor_mean.weights]),
                    action_noise=(x[i, :U, 39:43] - action_mean) / agents.actor_logstd[i, 0].exp(),
                    reward_noise=(call["record"]["meta_actions"][i] - mean[i]) / std[i],
                    shuffles=torch.stack([p[:, i] for p in call["perms"]])))
    phases = [d["phase"] for d in lifetimes]
    assert phases == ["training"] * 3 + ["validation"] * 2 + ["training"] * 3 + ["validation"] * 2 + ["evaluation"] * 3
    first, second = lifetimes[3:5], lifetimes[8:10]  # the two validations
    for a, b in zip(first, second):
        assert torch.equal(a["theta"], b["theta"]) and torch.equal(a["shuffles"], b["shuffles"])
        torch.testing.assert_close(a["action_noise"], b["action_noise"], atol=1e-5, rtol=0)
    distinct = [d for d in lifetimes if not any(d is s for s in second)]
    for j, a in enumerate(distinct):
        for b in distinct[:j]:
            assert not torch.equal(a["shuffles"], b["shuffles"]), f"{a['name']} and {b['name']}: the same shuffles"
            for stream in ("theta", "action_noise") + (("reward_noise",) if a["phase"] == b["phase"] == "training"
                                                       else ()):
                assert (a[stream] - b[stream]).abs().mean() > 0.01, f"{a['name']} and {b['name']}: the same {stream}"


def test_outer_objective_is_the_running_normalised_shaped_reward(spied_run):
    """The estimator's rewards are the batch's shaped reward (never the sparse one) over the running mean
    of every shaped reward seen so far, this batch's included, times 1e-4 (one class: door-close)."""
    m, args, seen = spied_run
    assert len(seen["estimator"]) == len(seen["outer"]) == 2
    so_far = []
    for (rewards, values), batch in zip(seen["estimator"], seen["outer"]):
        so_far += batch["shaped"].flatten().double().tolist()
        mean = sum(so_far) / len(so_far)
        torch.testing.assert_close(rewards, batch["shaped"] / (mean + 1e-7) * args.reward_scale)
        assert torch.equal(values, batch["meta_values"])
        assert not torch.allclose(batch["sparse"], batch["shaped"])  # the two are told apart


@both
def test_outer_reward_sparse_is_the_sparse_signal_with_its_sign(m, tmp_path, monkeypatch):
    """--outer-reward sparse: the estimator's rewards are each lifetime's r^e exactly, unnormalised; its mean is
    negative here (nothing succeeds), so the per-class normaliser would reverse every sign: this fails on it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(m, "make_benchmark", cached_make_benchmark)
    seen, real_adv, real_ppo = [], m.meta_advantages, m.outer_ppo_update
    monkeypatch.setattr(m, "meta_advantages", lambda rewards, *a: seen.append(rewards) or real_adv(rewards, *a))
    monkeypatch.setattr(m, "outer_ppo_update", lambda net, opt, batch, *a: seen.append(batch) or
                        real_ppo(net, opt, batch, *a))
    m.main(tiny_args(m, val_every=0, eval_repeats=1, outer_reward="sparse"))
    assert len(seen) == 4
    for rewards, batch in zip(seen[::2], seen[1::2]):
        assert torch.equal(rewards, batch["sparse"]) and batch["sparse"].mean() < 0
    assert m.Args().outer_reward == "shaped"


def test_evaluation_on_test_goals_and_validation_on_fresh_goals(spied_run):
    """The final evaluation runs on test goals, none a train goal; validation on goals of neither split."""
    m, args, seen = spied_run
    benchmark = cached_make_benchmark(args)
    train, test = set(goals(benchmark.train_tasks)), set(goals(benchmark.test_tasks))
    validation = [goals(tasks) for phase, tasks, _ in seen["evaluate"] if phase == "meta-training"]
    final = [g for phase, tasks, _ in seen["evaluate"] if phase == "evaluation" for g in goals(tasks)]
    assert len(validation) == 2 and validation[0] == validation[1] and len(set(validation[0])) == args.val_tasks
    assert not set(validation[0]) & (train | test)
    assert len(set(final)) == args.eval_tasks and set(final) <= test and not set(final) & train


@both
def test_table_2s_60_validation_lifetimes_have_60_fresh_goals(m, monkeypatch):
    """--val-tasks 60 (Table 2) on ML1, whose benchmark has 50 train goals: 60 distinct goals of another seed's
    benchmark, its train goals first (the same 10 as --val-tasks 10), none a train or test goal of the run."""
    monkeypatch.setattr(m, "make_benchmark", cached_make_benchmark)
    args = tiny_args(m, val_tasks=60)
    tasks = m.validation_tasks(args)
    benchmark, val = cached_make_benchmark(args), cached_make_benchmark(args, args.seed + m.VALIDATION_SEED_OFFSET)
    assert len(set(goals(tasks))) == 60
    assert goals(tasks) == goals(val.train_tasks + val.test_tasks[:10])
    assert not set(goals(tasks)) & set(goals(benchmark.train_tasks + benchmark.test_tasks))
    assert goals(m.validation_tasks(tiny_args(m, val_tasks=10))) == goals(tasks[:10])


def test_goal_position_is_zero_in_what_agents_and_network_see(spied_run):
    """Observations (the agents' input, and the first 39 numbers of the network's) have the goal
    position, obs[36:39], zeroed, in training, validation and evaluation lifetimes."""
    m, args, seen = spied_run
    records = [b["meta_inputs"] for b in seen["outer"]] + [first["meta_inputs"] for _, _, first in seen["evaluate"]]
    assert len(records) == 2 + 2 + 1
    for x in records:
        assert torch.all(x[..., 36:39] == 0)
        assert torch.all(x[..., 0:3].abs().sum(-1) > 0)  # the hand position is there


@both
def test_a_checkpoint_is_evaluated_on_its_own_seeds_test_goals(m, saved_checkpoints, tmp_path, monkeypatch, capsys):
    """The saved network was meta-trained with seed 1. In MetaWorld 3.1.1 ML1(seed=0)'s test goals are
    ML1(seed=1)'s train goals: evaluated with --seed 0, it must still get seed 1's test goals; test goals
    it was meta-trained on are refused with one line, before any work. Evaluated on another task (a transfer
    test) or on the train split (its own training goals, the paper's Fig. 3 top row), the output says so."""
    monkeypatch.chdir(tmp_path)
    path = saved_checkpoints[m]
    one, zero = (cached_make_benchmark(tiny_args(m), seed) for seed in (1, 0))
    assert goals(zero.test_tasks) == goals(one.train_tasks)  # the trap
    seen, real = [], m.evaluate
    monkeypatch.setattr(m, "evaluate", lambda envs, tasks, *a, **kw: seen.append(list(tasks)) or real(envs, tasks, *a, **kw))
    m.main(tiny_args(m, seed=0, eval_checkpoint=path, eval_repeats=1))
    assert [goals(tasks) for tasks in seen] == [goals(one.test_tasks[:2])]
    out = capsys.readouterr().out
    assert "the test split of the benchmark built with seed 1 (door-close-v3)" in out and "note:" not in out
    m.main(tiny_args(m, eval_checkpoint=path, eval_repeats=1, eval_tasks=1, env_name="button-press-v3"))  # transfer
    assert "note: a transfer test: the network was meta-trained on door-close-v3 and is evaluated on button-press-v3" \
        in capsys.readouterr().out
    seen.clear()
    m.main(tiny_args(m, eval_checkpoint=path, eval_repeats=1, eval_tasks=2, eval_split="train"))
    assert [goals(tasks) for tasks in seen] == [goals(one.train_tasks[:2])]
    assert "note: the train split holds the goals the network was meta-trained on" in capsys.readouterr().out
    trap = SimpleNamespace(train_classes=one.train_classes, test_classes=one.train_classes,
                           train_tasks=one.train_tasks, test_tasks=one.train_tasks)  # test goals = training goals
    monkeypatch.setattr(m, "make_benchmark", lambda *a, **kw: trap)
    runs = sorted(os.listdir("runs"))
    with pytest.raises(SystemExit) as exc:
        m.cli(tiny_argv(eval_checkpoint=path))
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err and "2 of the evaluation's test tasks are goals the network was " \
        "meta-trained on (seed 1)" in err
    assert sorted(os.listdir("runs")) == runs

@both
def test_meta_anneal_lr_decays_the_outer_learning_rate_linearly_to_zero(m, tmp_path, monkeypatch):
    """--meta-anneal-lr: update u's outer PPO steps with lr (1 - (u - 1) / U) x --meta-learning-rate; without
    it (the paper's), the constant lr."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(m, "make_benchmark", cached_make_benchmark)
    real = m.outer_ppo_update
    for anneal, expected in ((True, [3e-4, 2e-4, 1e-4]), (False, [3e-4] * 3)):
        seen = []
        monkeypatch.setattr(m, "outer_ppo_update", lambda net, opt, *a: seen.append(opt.param_groups[0]["lr"]) or
                            real(net, opt, *a))
        m.main(tiny_args(m, num_outer_updates=3, val_every=0, meta_learning_rate=3e-4, meta_anneal_lr=anneal))
        assert seen == pytest.approx(expected, rel=1e-12, abs=0)


@both
def test_zero_outer_updates_evaluate_the_network_meta_training_starts_from(m, tmp_path, monkeypatch):
    """--num-outer-updates 0 (the untrained control): the evaluated network is, weight for weight, the one a
    meta-training run of the same seed starts from; eval.csv names it update 0."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(m, "make_benchmark", cached_make_benchmark)
    nets, real = [], m.run_lifetimes
    monkeypatch.setattr(m, "run_lifetimes", lambda envs, tasks, keys, net, *a, **kw: nets.append(
        {k: v.clone() for k, v in net.state_dict().items()}) or real(envs, tasks, keys, net, *a, **kw))
    run = m.main(tiny_args(m, num_outer_updates=0, val_every=0, eval_repeats=1))
    untrained = nets[0]
    assert {r["network"] for r in read_csv(os.path.join(run, "eval.csv"))} == {"seed 1 update 0"}
    assert not os.path.exists(os.path.join(run, "checkpoint.pt"))
    nets.clear()
    m.main(tiny_args(m, num_outer_updates=1, val_every=0, eval_repeats=1))
    assert all(torch.equal(untrained[k], nets[0][k]) for k in untrained)  # update 1's lifetimes: the initial phi
    assert not all(torch.equal(untrained[k], nets[-1][k]) for k in untrained)  # its evaluation: the trained phi


@both
def test_keep_every_keeps_the_untrained_network_and_every_nth_update(m, tmp_path, monkeypatch):
    """--keep-every K writes meta_net_uNNN.pt at update 0 (the network meta-training starts from) and at each K-th
    update, weight for weight the network after that update's outer PPO, each loadable as --eval-checkpoint;
    off by default."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(m, "make_benchmark", cached_make_benchmark)
    nets, real = [], m.outer_ppo_update

    def spy(meta_net, *a):
        if not nets:
            nets.append({k: v.clone() for k, v in meta_net.state_dict().items()})  # before update 1
        stats = real(meta_net, *a)
        nets.append({k: v.clone() for k, v in meta_net.state_dict().items()})  # after update len(nets) - 1
        return stats

    monkeypatch.setattr(m, "outer_ppo_update", spy)
    run = m.main(tiny_args(m, num_outer_updates=4, keep_every=2, save_every=3, val_every=0, eval_repeats=1))
    kept = sorted(f for f in os.listdir(run) if f.startswith("meta_net_u"))
    assert kept == ["meta_net_u000.pt", "meta_net_u002.pt", "meta_net_u004.pt"]
    for name in kept:
        update = int(name[len("meta_net_u"):-3])
        ckpt = m.load_checkpoint(os.path.join(run, name))
        assert ckpt["update"] == update and "optimizer" not in ckpt
        net = m.load_meta_net(os.path.join(run, name)).state_dict()
        assert all(torch.equal(net[k], nets[update][k]) for k in net), name
    assert not all(torch.equal(nets[0][k], nets[2][k]) for k in nets[0])  # the kept networks do differ
    nets.clear()
    default = m.main(tiny_args(m, num_outer_updates=2, val_every=0, eval_repeats=1))
    assert not [f for f in os.listdir(default) if f.startswith("meta_net_u")]
    with pytest.raises(m.ConfigError, match="--keep-every must be at least 0"):
        tiny_args(m, keep_every=-1)


@both
def test_val_patience_stops_where_validation_stopped_improving(m, tmp_path, monkeypatch, capsys):
    """--val-patience P (A.2.2's stopping rule): meta-training ends after the first update P past the best validation
    (a tie does not improve), with a checkpoint there, evaluated as that update; a resume of the stopped run (also of
    a checkpoint from before the flag, which lacks best_update) stops at once. Off by default; needs validation."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(m, "make_benchmark", cached_make_benchmark)
    scores = iter([0.1, 0.3, 0.2, 0.25, 0.3, 0.9, 0.9, 0.9])  # the best: update 2; update 5 only ties it
    monkeypatch.setattr(m, "validate", lambda *a: (0.0, 0.0, next(scores)))
    args = dict(num_outer_updates=8, val_every=1, val_patience=3, save_every=4, eval_tasks=1, eval_repeats=1)
    run = m.main(tiny_args(m, **args))
    assert [int(r["update"]) for r in read_csv(os.path.join(run, "progress.csv"))] == [1, 2, 3, 4, 5]
    assert "validation has not improved for 3 updates (the best: update 2)" in capsys.readouterr().out
    ckpt = m.load_checkpoint(os.path.join(run, "checkpoint.pt"))
    assert (ckpt["update"], ckpt["best_update"], m.load_checkpoint(os.path.join(run, "meta_net_best.pt"))["update"]) \
        == (5, 2, 2)
    assert {r["network"] for r in read_csv(os.path.join(run, "eval.csv"))} == {"seed 1 update 5"}
    del ckpt["best_update"]  # as written before --val-patience: the best update comes from meta_net_best.pt
    torch.save(ckpt, os.path.join(run, "checkpoint.pt"))
    m.main(tiny_args(m, **args, resume=os.path.join(run, "checkpoint.pt")))
    assert len(read_csv(os.path.join(run, "progress.csv"))) == 5
    assert "(the best: update 2): meta-training stops" in capsys.readouterr().out
    assert m.Args().val_patience == 0
    with pytest.raises(m.ConfigError, match="--val-patience 3 needs a validation"):
        tiny_args(m, val_patience=3, val_every=0)


@both
def test_eval_network_best_evaluates_the_best_validated_network(m, tmp_path, monkeypatch):
    """--eval-network best: the run's evaluation is that of its meta_net_best.pt (the same eval.csv rows and
    first-lifetime trace as --eval-checkpoint of that file), not of the last network; without a validation
    it is refused before any work."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(m, "make_benchmark", cached_make_benchmark)
    run = m.main(tiny_args(m, num_outer_updates=3, eval_network="best", eval_repeats=1))
    best = m.load_checkpoint(os.path.join(run, "meta_net_best.pt"))["update"]
    assert best < 3  # validation scores 0 in a tiny run: the first validated network stays the best
    rows = read_csv(os.path.join(run, "eval.csv"))
    assert {r["network"] for r in rows} == {f"seed 1 update {best}"}
    for checkpoint, same in (("meta_net_best.pt", True), ("checkpoint.pt", False)):
        other = m.main(tiny_args(m, eval_checkpoint=os.path.join(run, checkpoint), eval_repeats=1))
        assert [{k: v for k, v in r.items() if k != "network"} for r in read_csv(os.path.join(other, "eval.csv"))] \
            == [{k: v for k, v in r.items() if k != "network"} for r in rows]  # successes: all 0 here
        trace = (read_csv(os.path.join(run, m.TRACE_FILE)) == read_csv(os.path.join(other, m.TRACE_FILE)))
        assert trace == same, checkpoint
    with pytest.raises(m.ConfigError, match="--eval-network best needs a validation"):
        tiny_args(m, eval_network="best", val_every=0)
    with pytest.raises(m.ConfigError, match="--eval-network best needs a validation"):
        tiny_args(m, eval_network="best", val_every=5, num_outer_updates=3)



@both
def test_an_evaluated_network_brings_its_lifetimes_unless_others_are_given(m, saved_checkpoints, tmp_path,
                                                                           monkeypatch, capsys):
    """--eval-checkpoint of a network meta-trained on 6 episodes of 10 steps, an inner update every 20 (2 epochs of 2
    minibatches): evaluated on those lifetimes and that inner PPO unless flags say otherwise, then with a note."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(m, "make_benchmark", cached_make_benchmark)
    network = ["--eval-checkpoint", saved_checkpoints[m], "--eval-tasks", "1", "--eval-repeats", "1",
               "--num-workers", "1", "--lifetimes-per-update", "3"]
    run = m.cli(network)
    assert [c for c in read_csv(os.path.join(run, "eval.csv"))[0] if c.startswith("success")] == \
        [f"success_ep{e:02d}" for e in range(1, 7)] + ["success_det"]
    assert "note: lifetimes other than" not in capsys.readouterr().out
    run = m.cli(network + ["--lifetime-steps", "80", "--update-epochs", "3"])
    assert [c for c in read_csv(os.path.join(run, "eval.csv"))[0] if c.startswith("success")] == \
        [f"success_ep{e:02d}" for e in range(1, 9)] + ["success_det"]
    assert "note: lifetimes other than those the network was meta-trained on: --lifetime-steps 80 (60), " \
        "--update-epochs 3 (2)\n" in capsys.readouterr().out

@both
def test_an_evaluated_network_brings_its_task_unless_another_is_given(m, saved_checkpoints, tmp_path, monkeypatch,
                                                                      capsys):
    """--eval-checkpoint without --env-name evaluates the network on its own task (here one meta-trained on
    button-press), saying nothing more; an explicit other task is evaluated, and announced as a transfer test."""
    monkeypatch.chdir(tmp_path)
    ckpt = torch.load(saved_checkpoints[m], weights_only=True)
    path = str(tmp_path / "button_press.pt")
    torch.save({**ckpt, "args": {**ckpt["args"], "env_name": "button-press-v3"}}, path)
    for argv, task in (([], "button-press-v3"), (["--env-name", "door-close-v3"], "door-close-v3")):
        run = m.cli(tiny_argv(eval_checkpoint=path, eval_tasks=1, eval_repeats=1) + argv)
        out = capsys.readouterr().out
        assert f"benchmark built with seed 1 ({task})" in out
        assert {r["env_name"] for r in read_csv(os.path.join(run, "eval.csv"))} == {task}
        assert ("note: a transfer test: the network was meta-trained on button-press-v3 and is evaluated on "
                "door-close-v3" in out) == (task == "door-close-v3")


@both
def test_workers_default_to_the_cores_at_most_one_per_lifetime(m, monkeypatch):
    """--num-workers unset: one process per available core, at most N; set, it is kept. Checkpoints every 5."""
    for cores, n, want in ((8, 30, 8), (8, 3, 3), (1, 30, 1)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
        args = m.Args(lifetimes_per_update=n)
        m.check_args(args)
        assert args.num_workers == want
    args = m.Args(num_workers=2)
    m.check_args(args)
    assert args.num_workers == 2 and args.save_every == 5


# 7. Bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--env-name", "door-shut-v3"], "unknown --env-name 'door-shut-v3'; valid: assembly-v3"),
    (["--lifetime-steps", "5000"], "--lifetime-steps 5000 is not a multiple of --steps-per-update 2000"),
    (["--steps-per-update", "1800", "--lifetime-steps", "5400"], "not a multiple of the episode length"),
    (["--tbptt-len", "7000"], "--tbptt-len 7000 is larger than"),
    (["--lifetimes-per-update", "51"], "--lifetimes-per-update 51 needs 51 distinct tasks per class, but there are only 50"),
    (["--eval-tasks", "51"], "--eval-tasks 51 needs 51 distinct tasks per class, but there are only 50"),
    (["--val-tasks", "101"], "--val-tasks 101 needs 101 distinct tasks per class, but there are only 100"),
    (["--meta-nsteps", "6000"], "horizon 6000 must lie in"),
    (["--eval-seeds", "2", "2"], "--eval-seeds repeats a seed: 2 2"),
])
@both
def test_bad_input_exits_with_one_line(m, argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        m.cli(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and message in err
    assert not os.path.exists("runs")  # nothing was started


# bad values of every float setting: (flag, values); the advantage script has no inner critic
BAD_FLOATS = {"meta_learning_rate": ("-1", "0", "nan", "inf"), "learning_rate": ("-1", "0", "nan", "inf"),
              "meta_std_scale": ("-1", "0", "inf"), "reward_scale": ("0", "-1e-4", "nan"),
              "meta_gamma": ("1.5", "0", "nan"), "gamma": ("1.5", "-0.1"), "gae_lambda": ("1.01", "nan"),
              "meta_nstep_decay": ("-0.5", "1.5"), "meta_clip_coef": ("-0.2", "0"), "clip_coef": ("0", "nan"),
              "meta_max_grad_norm": ("-1", "0"), "max_grad_norm": ("0",), "meta_target_kl": ("0", "-0.01"),
              "meta_ent_coef": ("-0.001", "nan"), "meta_vf_coef": ("-1", "inf"), "ent_coef": ("-1", "inf"),
              "vf_coef": ("-0.5",)}


def float_settings(m):
    return [name for name, t in typing.get_type_hints(m.Args).items() if float in (t, *typing.get_args(t))]


@pytest.mark.parametrize("m, flag, value", [
    pytest.param(m, flag, value, id=f"{m.SCRIPT}--{flag}={value}")
    for m in (mr, ma) for flag in float_settings(m) for value in BAD_FLOATS[flag]])
def test_bad_float_setting_exits_with_one_line(m, flag, value, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(m, "make_benchmark", lambda *a: pytest.fail(f"--{flag} {value} passed check_args"))
    with pytest.raises(SystemExit) as exc:
        m.cli([f"--{flag.replace('_', '-')}", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: --{flag.replace('_', '-')} must be ")
    assert not os.path.exists("runs")


@both
def test_float_settings_have_ranges_and_accept_their_bounds(m, monkeypatch):
    assert set(float_settings(m)) <= set(BAD_FLOATS)  # every float flag is tested above
    bounds = dict(meta_gamma=1.0, meta_nstep_decay=0.0, meta_ent_coef=0.0, ent_coef=0.0, meta_vf_coef=0.0,
                  meta_target_kl=math.inf, meta_max_grad_norm=math.inf, max_grad_norm=math.inf)
    if m is mr:
        bounds.update(gamma=0.0, gae_lambda=1.0, vf_coef=0.0)
    tiny_args(m, **bounds)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(m.ConfigError, match="--cuda: CUDA is not available here"):
        tiny_args(m, cuda=True)
@both
def test_deterministic_episodes_are_required_and_validation_tasks_only_when_validating(m):
    """(Checked on check_args directly: through the command line, a missing check would start a full run.)"""
    m.check_args(m.Args(val_every=0, val_tasks=0))
    for bad, message in [(dict(eval_deterministic_episodes=0), "--eval-deterministic-episodes must be at least 1"),
                         (dict(val_every=-1), "--val-every must be at least 0"),
                         (dict(val_tasks=0), "--val-tasks at least 1 when validating")]:
        with pytest.raises(m.ConfigError, match=message):
            m.check_args(m.Args(**bad))


@pytest.mark.parametrize("script", ["metareward.py", "metareward_advantage.py"])
def test_bad_input_from_the_command_line(script):
    proc = subprocess.run([sys.executable, os.path.join(HERE, script), "--env-name", "nope"],
                          capture_output=True, text=True, cwd=HERE, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown --env-name 'nope'" in proc.stderr


# Evaluation, baselines, resume, reproducibility, bad checkpoints ------------------------------------

@pytest.mark.parametrize("mode", ["intrinsic", "sparse", "shaped"])
def test_inner_ppo_learns_from_the_chosen_reward(mode, monkeypatch):
    """The rewards GAE receives are r^i, the sparse signal or the shaped reward, block by block."""
    seen = []
    real_gae = mr.gae
    monkeypatch.setattr(mr, "gae", lambda r, *a: seen.append(r.clone()) or real_gae(r, *a))
    args = tiny_args(inner_reward=mode)
    batch = mr.run_lifetimes(FakeEnvs(3, 1), [None] * 3, train_keys(mr, 3), mr.MetaNet(), args)
    source = {"intrinsic": batch["meta_actions"], "sparse": batch["sparse"], "shaped": batch["shaped"]}[mode]
    assert len(seen) == 2  # two inner updates per lifetime
    for i, r in enumerate(seen):
        assert torch.equal(r, source[:, i * 20:(i + 1) * 20])
    if mode != "intrinsic":
        assert torch.all(batch["meta_inputs"] == 0)  # the baselines never run the reward network


@both
def test_evaluation_uses_mean_signal_and_deterministic_episodes(m):
    args = tiny_args(m)
    torch.manual_seed(0)
    net = m.MetaNet()
    lifetimes = m.Lifetimes({}, args)
    lifetimes.envs = FakeEnvs(3, 2)
    rows, first = m.evaluate(lifetimes, [FakeTask("t0"), FakeTask("t1")], net, args, 2, seed=1)
    assert [(r["task"], r["repeat"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    T, L = args.max_episode_steps, args.lifetime_steps
    assert first["success"].shape == (L + 4 * T,)  # 6 learning episodes, then 4 deterministic ones
    per_episode = [float(first["success"][e * T:(e + 1) * T].max()) for e in range(10)]
    assert [rows[0][f"success_ep{e:02d}"] for e in range(1, 7)] == per_episode[:6]
    assert rows[0]["success_det"] == pytest.approx(np.mean(per_episode[6:]))
    record = {"meta_inputs": first["meta_inputs"][None], "meta_actions": first["meta_actions"][None]}
    _, _, means = replay(net, record, 16, 16, m=m)
    torch.testing.assert_close(first["meta_actions"], means[0], atol=1e-5, rtol=0)  # deterministic: the mean


class FakeTask:
    def __init__(self, name):
        self.env_name = name


@both
def test_lifetimes_run_on_a_cpu_copy_of_the_network(m, tmp_path, monkeypatch):
    """--cuda: the lifetimes get their own CPU copy of phi (workers stay on the CPU; the outer PPO's
    network is never touched), and evaluate returns CPU tensors, so that run_evaluation's trace
    (numpy) follows eval.csv. (No GPU here: the device moves themselves are untested.)"""
    nets, real = [], m.run_lifetimes
    monkeypatch.setattr(m, "run_lifetimes", lambda envs, tasks, keys, net, *a, **kw: nets.append(net) or
                        real(envs, tasks, keys, net, *a, **kw))
    args = tiny_args(m, eval_repeats=1)
    lifetimes = m.Lifetimes({}, args)
    lifetimes.envs = FakeEnvs(2, 0)
    tasks, net = [FakeTask("t0"), FakeTask("t1")], m.MetaNet()
    rows, first = m.evaluate(lifetimes, tasks, net, args, 1, seed=1)
    assert nets and all(n is not net and next(n.parameters()).device.type == "cpu" for n in nets)
    assert all(torch.equal(p, q) for p, q in zip(nets[0].parameters(), net.parameters()))
    assert len(rows) == 2 and all(v.device.type == "cpu" for v in first.values())
    benchmark = SimpleNamespace(test_classes={"t0": None, "t1": None}, test_tasks=tasks)
    m.run_evaluation(args, str(tmp_path), benchmark, lifetimes, net)
    assert len(read_csv(tmp_path / m.TRACE_FILE)) == args.lifetime_steps


def test_summary_statistics():
    rows = [{"task": t, "seed": seed, "success_ep01": v, "success_det": d}
            for t, seed, v, d in [(0, 1, 1, .5), (0, 2, 0, .25), (1, 1, 1., 1.), (1, 2, 0., 0.)]]
    summary = {(s["task"], s["episode"]): s for s in mr.summarize(rows, ["success_ep01", "success_det"])}
    assert summary["all", "ep01"]["mean"] == pytest.approx(0.5)
    assert summary["all", "ep01"]["stderr"] == pytest.approx(np.std([1, 0, 1, 0], ddof=1) / np.sqrt(4))
    assert summary["all", "det"]["seed_std"] == pytest.approx(np.std([0.75, 0.125], ddof=1))  # seed means
    assert summary[0, "det"]["mean"] == pytest.approx(0.375) and summary[1, "det"]["lifetimes"] == 2
    assert summary["all", "ep01"]["seeds"] == 2 and np.isnan(mr.summarize(rows[:1], ["success_det"])[0]["seed_std"])


def fake_eval_rows(method, seed_values):
    """eval.csv-like rows (strings, as read back): seed -> per-lifetime (12 episode successes, det)."""
    return [{"task": "0", "seed": str(seed), "inner_reward": method,
             **{f"success_ep{e + 1:02d}": str(float(eps[e])) for e in range(12)}, "success_det": str(det)}
            for seed, lifetimes in seed_values.items() for eps, det in lifetimes]


def test_results_table_and_figure(tmp_path, monkeypatch):
    ones, zeros = [1] * 12, [0] * 12
    half = [0] * 8 + [1] * 4  # solves episodes 9-12 only
    rows = (fake_eval_rows("intrinsic", {1: [(ones, 1.0), (half, 0.5)], 2: [(half, 1.0), (half, 0.0)]})
            + fake_eval_rows("sparse", {1: [(zeros, 0.0), (half, 0.0)]}))
    table = pr.results_table(rows)
    assert table[0] == "| method | networks | seeds | lifetimes | eps 1-4 | eps 5-8 | eps 9-12 | deterministic |"
    # intrinsic: seed means of eps 1-4 are 0.5 and 0, of eps 9-12 both 1, of det 0.75 and 0.5
    std = np.std([0.5, 0.0], ddof=1)
    assert table[2] == (f"| intrinsic | - | 2 | 4 | 0.25 +- {std:.2f} | 0.25 +- {std:.2f} | 1.00 +- 0.00 | "
                        f"0.63 +- {np.std([0.75, 0.5], ddof=1):.2f} |")  # 0.625: half up (pr.fmt)
    # one seed: the error is the standard error over lifetimes
    assert table[3] == "| sparse | - | 1 | 2 | 0.00 +- 0.00 | 0.00 +- 0.00 | 0.50 +- 0.50 | 0.00 +- 0.00 |"
    assert pr.results_table(rows, decimals=3)[3] == \
        "| sparse | - | 1 | 2 | 0.000 +- 0.000 | 0.000 +- 0.000 | 0.500 +- 0.500 | 0.000 +- 0.000 |"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # matplotlib is optional: a clear error without it
    with pytest.raises(pr.ConfigError, match="pip install matplotlib"):
        pr.plot_results(rows, None, str(tmp_path / "r.png"))
    monkeypatch.undo()
    pr.plot_results(rows, None, str(tmp_path / "r.png"))  # the tests install matplotlib (README)
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    import matplotlib.figure
    titles, save = [], matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **kw: titles.append(fig.axes[0].get_title()) or save(fig, *a, **kw))
    pr.main([os.path.join(HERE, "results", "ML10", "train_ppo_sparse"), "--title", "train classes",
             "--plot-file", str(tmp_path / "t.png")])
    pr.plot_results(rows, None, str(tmp_path / "r.png"))
    assert titles == ["train classes", "test tasks"]  # --title, and the default


def test_labels_tell_apart_two_objectives_networks(tmp_path, capsys):
    """--labels: two folders of networks with the same names (seed S update 25 of two objectives) are refused as
    one method's duplicates, and with one label per folder become two methods, each its own row and units."""
    ones, zeros = [1] * 12, [0] * 12
    folders = []
    for name, eps in (("a1", ones), ("a2", ones), ("b1", zeros), ("b2", zeros)):
        folders.append(str(tmp_path / name))
        os.makedirs(folders[-1])
        mr.write_csv(os.path.join(folders[-1], "eval.csv"), [{**r, "env_name": "door-close-v3", "network":
                     f"seed {name[1]} update 25"} for r in fake_eval_rows("intrinsic", {1: [(eps, 1.0)]})])
    with pytest.raises(pr.ConfigError, match="both hold intrinsic rows of network seed 1 update 25"):
        pr.load_results(folders)
    with pytest.raises(pr.ConfigError, match="4 runs but 3 --labels"):
        pr.load_results(folders, ["A", "A", "B"])
    capsys.readouterr()
    pr.main(folders + ["--labels", "A", "A", "B", "B"])
    out = capsys.readouterr().out.splitlines()
    assert "| A | 2 | 1 | 2 | 1.00 +- 0.00 | 1.00 +- 0.00 | 1.00 +- 0.00 | 1.00 +- 0.00 |" in out
    assert "| B | 2 | 1 | 2 | 0.00 +- 0.00 | 0.00 +- 0.00 | 0.00 +- 0.00 | 1.00 +- 0.00 |" in out
    assert "| A, seed 2 update 25 | 1 | 1 | 1 | 1.00 +- 0.00 | 1.00 +- 0.00 | 1.00 +- 0.00 | 1.00 +- 0.00 |" in out
    assert "| A (2) - B (2) | eps 9-12 | +1.00 | - | - | - | - |" in out  # no spread: no test


def test_error_bars_are_over_networks_when_a_method_has_several():
    """The paper's error bar: 3 networks of a method, one with 2 evaluation seeds, give mean +- std over the
    3 networks' means (a network's mean: over its seeds' means); each network's own row follows."""
    ones, zeros, half = [1] * 12, [0] * 12, [0] * 8 + [1] * 4
    rows = []
    for network, seeds in (("seed 1 update 25", {1: [(ones, 1.0)], 2: [(zeros, 0.0)]}),  # network mean 0.5
                           ("seed 2 update 25", {1: [(half, 1.0), (half, 1.0)]}),
                           ("seed 3 update 50", {1: [(zeros, 0.0)]})):
        rows += [{**r, "network": network} for r in fake_eval_rows("advantage", seeds)]
    rows += fake_eval_rows("shaped", {1: [(zeros, 0.0)], 2: [(half, 1.0)]})
    table = pr.results_table(rows)
    det, eps = [0.5, 1.0, 0.0], [0.5, 0.0, 0.0]  # per network: deterministic, eps 1-4
    assert table[2] == (f"| advantage | 3 | 2 | 5 | {np.mean(eps):.2f} +- {np.std(eps, ddof=1):.2f} | "
                        f"{np.mean(eps):.2f} +- {np.std(eps, ddof=1):.2f} | {np.mean([0.5, 1, 0]):.2f} +- "
                        f"{np.std([0.5, 1, 0], ddof=1):.2f} | {np.mean(det):.2f} +- {np.std(det, ddof=1):.2f} |")
    assert table[3] == f"| shaped | - | 2 | 2 | 0.00 +- 0.00 | 0.00 +- 0.00 | 0.50 +- {np.std([0, 1], ddof=1):.2f} | " \
                       f"0.50 +- {np.std([0, 1], ddof=1):.2f} |"  # the baseline: over its seeds, as before
    per_network = pr.results_table(rows, per_network=True)
    assert [line.split(" | ")[0] for line in per_network[2:]] == \
        ["| advantage, seed 1 update 25", "| advantage, seed 2 update 25", "| advantage, seed 3 update 50"]
    assert per_network[3] == "| advantage, seed 2 update 25 | 1 | 1 | 2 | 0.00 +- 0.00 | 0.00 +- 0.00 | " \
                             "1.00 +- 0.00 | 1.00 +- 0.00 |"
    assert pr.seed_sets_note(rows) == ("the advantage networks were evaluated on different seeds (seed 1 update 25: "
                                       "1 2; seed 2 update 25: 1; seed 3 update 50: 1); --network-eval-seeds "
                                       "scores them all on the same ones")
    # --network-eval-seeds 1: every network on seed 1 (the first one's mean is then 1.0), the baseline untouched
    same = pr.select_network_seeds(rows, ["1"])
    assert same == [r for r in rows if not r.get("network") or r["seed"] == "1"]
    assert pr.seed_sets_note(same) is None and pr.results_table(same)[3] == table[3]
    det = [1.0, 1.0, 0.0]
    assert pr.results_table(same)[2].endswith(f"| {np.mean(det):.2f} +- {np.std(det, ddof=1):.2f} |")
    with pytest.raises(pr.ConfigError, match="network seed 2 update 25 has no rows of evaluation seed.s. 2"):
        pr.select_network_seeds(rows, ["2"])


def test_two_sample_comparison_over_networks():
    """The tool's Welch test and power count, against published tables: two-sided 5% (1% at df 2) critical values
    of Student's t, and Cohen's per-group sample sizes for 80% power at d = 0.5 / 0.8 / 1.0 (64 / 26 / 17)."""
    for t, df, p in ((12.706, 1, 0.05), (9.925, 2, 0.01), (2.776, 4, 0.05), (2.228, 10, 0.05), (1.960, 1e6, 0.05)):
        assert pr.t_test_p(t, df) == pytest.approx(p, abs=2e-4) and pr.t_test_p(-t, df) == pr.t_test_p(t, df)
        assert pr.t_quantile(p, df) == pytest.approx(t, abs=2e-3)
    unit = np.array([-1.0, 1.0]) / np.sqrt(2)  # std 1 (ddof 1)
    assert [pr.networks_for_power(unit + d, unit) for d in (0.5, 0.8, 1.0)] == [64, 26, 17]
    a, b = np.array([0.33, 0.37, 0.30]), np.array([0.09, 0.11])
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 2
    t, df, p = pr.welch(a, b)
    assert t == pytest.approx((a.mean() - b.mean()) / np.sqrt(va + vb))
    assert df == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 1)) and p == pytest.approx(pr.t_test_p(t, df))
    assert pr.welch(np.ones(2), np.zeros(3)) is None and pr.networks_for_power(np.ones(2), np.zeros(3)) is None
    assert pr.networks_for_power(np.ones(2), np.ones(2)) is None
    ones, zeros, half = [1] * 12, [0] * 12, [0] * 8 + [1] * 4
    rows = []  # advantage: 2 networks; intrinsic: 2; shaped: a baseline of 2 seeds, its units
    for method, network, lifetimes in (("advantage", "seed 1 update 25", [(ones, 1.0)]),
                                       ("advantage", "seed 2 update 50", [(half, 1.0), (ones, 0.0)]),
                                       ("intrinsic", "seed 1 update 25", [(zeros, 0.0)]),
                                       ("intrinsic", "seed 2 update 25", [(half, 1.0)])):
        rows += [{**r, "network": network} for r in fake_eval_rows(method, {1: lifetimes})]
    rows += fake_eval_rows("shaped", {1: [(zeros, 0.0)], 2: [(half, 0.0)]})
    lines = pr.network_comparison(rows, baselines=())
    assert len(lines) == 2 + 4 and all(line.startswith("| advantage (2) - intrinsic (2) | ") for line in lines[2:])
    x, y = np.array([1.0, 0.5]), np.array([0.0, 0.0])  # episodes 1-4 per network: no variance in intrinsic
    t, df, p = pr.welch(x, y)
    assert lines[2] == (f"| advantage (2) - intrinsic (2) | eps 1-4 | +0.75 | {t:.2f} | {df:.1f} | {p:.3f} | "
                        f"{pr.networks_for_power(x, y)} |")
    assert lines[5] == "| advantage (2) - intrinsic (2) | deterministic | +0.25 | " + \
        " | ".join(f"{v:{f}}" for v, f in zip(pr.welch([1.0, 0.5], [0.0, 1.0]), (".2f", ".1f", ".3f"))) + \
        f" | {pr.networks_for_power(np.array([1.0, 0.5]), np.array([0.0, 1.0]))} |"
    assert pr.network_comparison(rows[::-1], baselines=()) == lines  # the folders' order does not flip the difference
    both = pr.network_comparison(rows)  # by default each method is also tested against PPO shaped's seeds
    assert both[:6] == lines and [line.split(" | ")[0] for line in both[6::4]] == \
        ["| advantage (2) - shaped (2)", "| intrinsic (2) - shaped (2)"] and len(both) == 2 + 3 * 4
    x, y = np.array([1.0, 1.0]), np.array([0.0, 1.0])  # episodes 9-12: per advantage network, per shaped seed
    t, df, p = pr.welch(x, y)
    assert (t, df) == pytest.approx((1.0, 1.0))  # all the variance in the baseline's: t = 0.5 / sqrt(0.5 / 2)
    assert both[8] == (f"| advantage (2) - shaped (2) | eps 9-12 | +0.50 | {t:.2f} | {df:.1f} | {p:.3f} | "
                       f"{pr.networks_for_power(x, y)} |")
    assert pr.network_comparison(rows, baselines=("sparse",)) == lines  # no such baseline: nothing added
    assert pr.network_comparison([r for r in rows if r["inner_reward"] != "intrinsic"], baselines=()) == []
    one_seed = [r for r in rows if r["inner_reward"] != "intrinsic" and str(r["seed"]) != "2"]
    assert pr.network_comparison(one_seed) == []  # a baseline of one seed has no spread over its units


def test_plot_takes_each_seed_of_a_method_from_one_file(tmp_path):
    """The tool's error bars are over the seed column: one method's seed in two files (two networks
    evaluated with the same seed, or a repeated evaluation) is refused, not merged as one seed."""
    for folder, seed in (("a", 1), ("b", 1), ("c", 2)):
        (tmp_path / folder).mkdir()
        mr.write_csv(str(tmp_path / folder / "eval.csv"), fake_eval_rows("intrinsic", {seed: [([1] * 12, 1.0)]}))
    with pytest.raises(pr.ConfigError, match="both hold intrinsic rows of evaluation seed 1"):
        pr.load_results([str(tmp_path / "a"), str(tmp_path / "b")])
    rows, _ = pr.load_results([str(tmp_path / "a"), str(tmp_path / "c")])
    assert pr.results_table(rows)[2].startswith("| intrinsic | - | 2 | 2 |")


@pytest.mark.parametrize("signal", ["intrinsic_reward", "meta_advantage"])  # each script's trace
def test_trace_table(signal):
    """The tool's table of what the network signals: per episode, value by value against a direct computation."""
    x = [0.1, 0.2, 0.3, 0.4, -1.0, 1.0, 2.0, 4.0]  # two episodes of 4 steps
    y = [0.0, 1.0, 2.0, 3.0, 0.5, 0.5, 9.0, 9.0]
    solved = [0, 0, 0, 0, 0, 0, 1, 1]  # episode 2 is solved from its third step on
    trace = [{"step": str(t), "episode": str(t // 4 + 1), signal: str(x[t]), "shaped_reward": str(y[t]),
              "sparse_reward": "0.0", "success": str(float(solved[t]))} for t in range(8)]
    table = pr.trace_table(trace)
    assert table[0].startswith(f"| episode | solved | mean {signal} | before first success |")
    assert table[2] == "| 1 | no | 0.2500 | 0.2500 | - | 1.50 | 1.00 |"
    assert table[3] == f"| 2 | yes | 1.5000 | 0.0000 | 3.0000 | 4.75 | {np.corrcoef(x[4:], y[4:])[0, 1]:.2f} |"
    assert len(table) == 4


def check_eval_dir(run_dir, n_rows, mode, network=""):
    """eval.csv: n_rows lifetimes of one method and network ("seed S update U"; "" for a baseline)."""
    rows = read_csv(os.path.join(run_dir, "eval.csv"))
    assert len(rows) == n_rows and {(r["inner_reward"], r["network"]) for r in rows} == {(mode, network)}
    cols = [f"success_ep{i:02d}" for i in range(1, 7)] + ["success_det"]
    assert all(0.0 <= float(r[c]) <= 1.0 for r in rows for c in cols)
    summary = read_csv(os.path.join(run_dir, "eval_summary.csv"))
    assert len(summary) == (1 + 2) * len(cols)  # all tasks, then each of the 2 tasks
    return rows


@both
def test_train_then_evaluate_then_evaluate_the_saved_network(m, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = m.main(tiny_args(m, seed=3, eval_seeds=(3, 4)))
    mode, trace_file, signal = {mr: ("intrinsic", "reward_trace.csv", "intrinsic_reward"),
                                ma: ("advantage", "advantage_trace.csv", "meta_advantage")}[m]
    rows = check_eval_dir(run_dir, 2 * 2 * 2, mode, "seed 3 update 2")  # the final network
    assert [r["seed"] for r in rows] == ["3"] * 4 + ["4"] * 4
    trace = read_csv(os.path.join(run_dir, trace_file))
    assert len(trace) == 60
    assert set(trace[0]) == {"step", "episode", signal, "shaped_reward", "sparse_reward", "success"}
    out = capsys.readouterr().out
    assert f"corr({mode}, shaped)" in out and "deterministic" in out and "std over 2 evaluation seeds" in out
    # the evaluation depends only on the network and the seeds: the final network, evaluated on its
    # own in a fresh set of envs, gives the training run's rows and trace again
    eval_dir = m.main(tiny_args(m, seed=3, eval_seeds=(3, 4), eval_checkpoint=os.path.join(run_dir, "checkpoint.pt"),
                                exp_name="e"))
    assert read_csv(os.path.join(eval_dir, "eval.csv")) == rows
    assert read_csv(os.path.join(eval_dir, trace_file)) == trace
    assert not os.path.exists(os.path.join(eval_dir, "progress.csv"))  # no meta-training
    best_dir = m.main(tiny_args(m, seed=3, eval_checkpoint=os.path.join(run_dir, "meta_net_best.pt"), exp_name="b"))
    best = torch.load(os.path.join(run_dir, "meta_net_best.pt"), weights_only=True)["update"]
    check_eval_dir(best_dir, 4, mode, f"seed 3 update {best}")
    # tools/plot_results.py reads the run folder back: the results and trace tables, then the figure
    capsys.readouterr()
    with monkeypatch.context() as patch, pytest.raises(SystemExit) as exc:
        patch.setitem(sys.modules, "matplotlib", None)
        pr.main([run_dir, "--plot-file", str(tmp_path / "r.png")])
    out, err = capsys.readouterr()
    assert f"| {mode} | 1 | 2 | 8 |" in out and f"| episode | solved | mean {signal} |" in out  # results, trace tables
    assert exc.value.code == 2 and err.strip().count("\n") == 0 and "pip install matplotlib" in err
    pr.main([run_dir, "--plot-file", str(tmp_path / "r.png")])
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


NES1 = ["--network-eval-seeds", "1"]
DC_RUNS = [f"checkpoints/door-close-v3{kind}_seed{s}" for kind in ("", "_advantage") for s in (1, 2, 3)]
PAPER_RUNS = [f"checkpoints/{task}_seed{s}" for task in ("door-close-v3", "button-press-v3", "reach-v3") for s in (1, 2, 3)]
# Every results table of the README and of results/*/README.md, by (page, section heading): the arguments of
# tools/plot_results.py (folder patterns under results/, options) and of tools/plot_curves.py (run folders, options)
# that print it, and what the section must show of what they print: each method's row ("methods"), each network's
# ("networks"), the two-sample tests ("comparison"), the trace table ("trace"), a training-curve table ("curves").
RESULTS_SECTIONS = [
    ("README.md", "### ML1 door-close", (["door-close-v3/*/"], NES1), None, "methods"),
    ("README.md", "### ML1 button-press", (["button-press-v3/*/"], NES1), None, "methods"),
    ("README.md", "### ML1 reach", (["reach-v3/*/"], NES1), None, "methods"),
    ("README.md", "### ML10: 10 train classes, 5 held-out test classes",
     (["ML10/intrinsic_seed1_update75/", "ML10/advantage_seed1_update50/", "ML10/ppo_*/"], ["--decimals", "3"]), None,
     "methods"),
    ("results/door-close-v3/README.md", "## The networks, three per method", (["door-close-v3/*/"], NES1),
     (DC_RUNS, ["--labels", *[f"{m} {s}" for m in ("intrinsic", "advantage") for s in (1, 2, 3)]]),
     "methods networks comparison curves"),
    ("results/door-close-v3/README.md", "## The baselines and the seed-1 networks",
     (["door-close-v3/intrinsic_seed1_update50/", "door-close-v3/advantage_seed1_update50/", "door-close-v3/ppo_*/"],
      []), None, "methods trace"),
    ("results/door-close-v3/README.md", "## The advantage network beside the intrinsic one",
     (["door-close-v3/advantage_seed1_update50/"], []), None, "trace"),
    ("results/button-press-v3/README.md", "## The networks, three per method", (["button-press-v3/*/"], NES1), None,
     "methods networks comparison"),
    ("results/button-press-v3/README.md", "## The baselines", (["button-press-v3/ppo_*/"], []), None, "methods"),
    ("results/button-press-v3/README.md", "## The seed-1 runs: the comparison, the curves and the drift",
     (["button-press-v3/*_seed1_update25*/", "button-press-v3/ppo_*/"], []),
     (["checkpoints/button-press-v3_seed1", "checkpoints/button-press-v3_advantage_seed1"],
      ["--labels", "intrinsic", "advantage"]), "methods curves"),
    ("results/button-press-v3_update100/README.md", "## The intrinsic-reward run's network at update 100",
     (["button-press-v3_update100/intrinsic_update100/", "button-press-v3/intrinsic_seed1_update25/"], []), None,
     "networks"),
    ("results/button-press-v3_update100/README.md", "## The advantage run's network at update 150",
     (["button-press-v3_update100/advantage_update150/", "button-press-v3/advantage_seed1_update25/"], []), None,
     "networks"),
    ("results/reach-v3/README.md", "## The baselines", (["reach-v3/ppo_*/"], []), None, "methods"),
    ("results/reach-v3/README.md", "## The networks, three per method", (["reach-v3/*/"], NES1), None,
     "methods networks comparison"),
    ("results/reach-v3/README.md", "### What the intrinsic networks reward", (["reach-v3/intrinsic_seed1_update25/"], []),
     None, "trace"),
    ("results/reach-v3/README.md", "### What the advantage networks signal", (["reach-v3/advantage_seed1_update50/"], []),
     None, "trace"),
    ("results/ML10/README.md", "## The test classes (held out)",
     (["ML10/intrinsic_seed1_update75/", "ML10/advantage_seed1_update50/", "ML10/ppo_*/"], ["--decimals", "3"]), None,
     "methods classes"),
    ("results/ML10/README.md", "## What meta-training added: the untrained networks",
     (["ML10/intrinsic_seed1_update*/", "ML10/advantage_seed1_update*/"], ["--decimals", "3"]), None,
     "networks classes"),
    ("results/ML10/README.md", "## The train classes (their training goals)",
     (["ML10/train_intrinsic_seed1_update75/", "ML10/train_advantage_seed1_update50/", "ML10/train_ppo_*/"],
      ["--decimals", "3"]), None, "methods classes"),
    ("results/ML10/README.md", "## The meta-training runs", None,
     (["checkpoints/ML10_seed1", "checkpoints/ML10_advantage_seed1"], ["--labels", "intrinsic", "advantage", "--block",
                                                                       "5"]), "curves"),
    ("results/future_work/README.md", "## The networks on the lifetimes they were meta-trained on (12 episodes, two "
     "inner updates)", (["future_work/teach_seed?/", "door-close-v3/ppo_shaped*/"], []), None,
     "methods networks comparison"),
    ("results/future_work/README.md", "## Longer lifetimes: 16 episodes, three inner updates",
     (["future_work/teach_seed*_L8000/", "future_work/shaped_seed*_L8000/"], []), None, "methods networks comparison"),
    ("results/future_work/README.md", "## Longer lifetimes: 24 episodes, five inner updates",
     (["future_work/teach_seed*_L12000/", "future_work/shaped_seed*_L12000/"], []), None,
     "methods networks comparison"),
    ("results/door-close-v3_teaching/README.md", "## The five networks against the baselines",
     (["door-close-v3_teaching/*/", "door-close-v3/ppo_*/"], []), None, "methods networks comparison"),
    ("results/door-close-v3_teaching/README.md", "## The five runs", None,
     ([f"results/door-close-v3_teaching/seed{s}" for s in (1, 2, 3, 4, 5)], []), "curves"),
    ("results/door-close-v3_teaching/README.md", "## Why door-close, and what did not work", None,
     (PAPER_RUNS, ["--labels", *[f"{t} {s}" for t in ("door-close", "button-press", "reach") for s in (1, 2, 3)]]),
     "curves"),
]
METHOD_LABELS = {"intrinsic rewards": "intrinsic", "meta-learned advantage": "advantage", "PPO shaped": "shaped",
                 "PPO sparse": "sparse"}  # a page's label -> the tool's; a network's row: "intrinsic, seed S update U"


def markdown_sections(page):
    """{heading line: the lines up to the next heading} of a markdown page, code blocks left out."""
    sections, heading, fenced = {}, None, False
    for line in open(os.path.join(HERE, page)).read().splitlines():
        fenced ^= line.startswith("```")
        if line.startswith("#") and not fenced:
            heading = line
            assert heading not in sections, f"{page}: two sections {heading!r}"
            sections[heading] = []
        elif heading and not fenced:
            sections[heading].append(line)
    return sections


def markdown_tables(lines):
    """The tables of some lines: (header cells, data rows as lines), the rows without the |---| line."""
    tables, rows = [], []
    for line in lines + [""]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            tables.append(([c.strip() for c in rows[0].strip("|").split("|")], [r for r in rows[2:]]))
            rows = []
    return tables


RESULT_TABLES = ("method", "comparison", "episode", "updates", "class")  # a results table's first column


def test_every_results_table_is_what_the_tools_print(tmp_path, monkeypatch, capsys):
    """Every results table of the README and of results/*/README.md lies in a section of RESULTS_SECTIONS, and each
    of its rows is what tools/plot_results.py or tools/plot_curves.py prints from the committed CSVs there, cell for
    cell; each section shows all that it should of what they print. The README's plot command runs as written."""
    pages = ["README.md"] + sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "results", "*",
                                                                                             "README.md")))
    listed = {(page, heading) for page, heading, *_ in RESULTS_SECTIONS}
    for page in pages:  # no results table outside a checked section
        for heading, lines in markdown_sections(page).items():
            kinds = [header[0] for header, _ in markdown_tables(lines) if header[0] in RESULT_TABLES]
            assert not kinds or (page, heading) in listed, f"{page}, {heading}: unchecked {kinds} table"
    draw = pr.plot_results
    monkeypatch.setattr(pr, "plot_results", lambda *args: None)  # the tables only; the figure: below
    monkeypatch.setattr(pc, "plot_curves", lambda *args: None)

    def printed(main, argv):
        capsys.readouterr()
        main(argv)
        return capsys.readouterr().out.splitlines()
    for page, heading, results, curves, shows in RESULTS_SECTIONS:
        where = f"{page}, {heading}"
        tables = markdown_tables(markdown_sections(page)[heading])
        out = []
        if results:
            folders, options = results
            runs = [run for f in folders for run in sorted(glob.glob(os.path.join(HERE, "results", f)))]
            out = printed(pr.main, runs + options)
        rows = {cells[0]: cells for cells in (line.strip("| ").split(" | ") for line in out)
                if len(cells) >= 8 and cells[3].isdigit()}  # the tool's method and network rows (4+ columns)
        shown = set()
        for header, lines in tables:
            if header[0] == "method":  # label, networks or seeds x lifetimes, the success columns (, the paper's)
                for line in lines:
                    cells = line.replace("**", "").strip("| ").split(" | ")
                    label = cells[0].split(" (")[0]
                    key = METHOD_LABELS.get(label, label)
                    assert key in rows, f"{where}: the tools print no row {key!r}"
                    units, lifetimes = map(int, cells[1].split(" x "))
                    n_networks, n_seeds = rows[key][1:3]
                    assert (n_networks if n_networks not in ("-", "1") else n_seeds) == str(units), f"{where}: {line}"
                    assert rows[key][3:] == [str(units * lifetimes)] + cells[2:len(rows[key]) - 2], f"{where}: {line}"
                    shown.add(key)
            elif header[0] in ("comparison", "episode", "class"):  # the lines as printed, under their header
                assert all(line in out for line in lines), f"{where}: {[l for l in lines if l not in out]}"
                assert header[0] != "class" or "| " + " | ".join(header) + " |" in out, f"{where}: {header}"
                shown |= set(lines)
            elif header[0] == "updates":  # some rows of the curves table, under its header
                curve_out = printed(pc.main, [os.path.join(HERE, run) for run in curves[0]] + curves[1])
                assert "| " + " | ".join(header) + " |" in curve_out and lines and \
                    all(line in curve_out for line in lines), f"{where}: {lines}"
                shown.add("curves")
        comparison = [line for line in out if line.split(" | ")[0].endswith(")") and " - " in line]
        trace = [line for line in out if line.startswith("| ") and line.split(" | ")[1] in ("yes", "no")]
        classes = out[out.index(next(line for line in out if line.startswith("| class |"))) + 2:] if any(
            line.startswith("| class |") for line in out) else []
        wanted = {"methods": {key for key in rows if ", seed " not in key},
                  "networks": {key for key in rows if ", seed " in key}, "comparison": set(comparison),
                  "trace": set(trace), "curves": {"curves"},
                  "classes": set(classes[:classes.index("")] if "" in classes else classes)}
        for what in shows.split():
            assert wanted[what] and wanted[what] <= shown, f"{where}: {what} missing: {wanted[what] - shown}"
    monkeypatch.setattr(pr, "plot_results", draw)  # the README's command as written: the figure, the same tables
    command = next(line for line in open(os.path.join(HERE, "README.md")).read().splitlines()
                   if line.startswith("python tools/plot_results.py"))
    words = command.split()
    assert words[-2] == "--plot-file" and words[2].endswith("/*/")
    runs = sorted(glob.glob(os.path.join(HERE, words[2])))
    proc = subprocess.run([sys.executable, PLOT_TOOL, *runs, *words[3:-1], str(tmp_path / "r.png")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert proc.stdout.splitlines()[:-1] == printed(pr.main, runs + words[3:-2] + ["--plot-file",
                                                                                  str(tmp_path / "s.png")])[:-1]
    proc = subprocess.run([sys.executable, PLOT_TOOL, "no_such_run"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: no eval.csv at no_such_run"


def load_teach():
    spec = importlib.util.spec_from_file_location("teach", os.path.join(HERE, "tools", "teach.py"))
    teach = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(teach)
    return teach


def test_readme_teaching_command_shrinks_only_the_outer_loop():
    """The README's teaching command is tools/teach.py, whose metareward.py settings (named in the README
    as it prints them) differ from the paper's only where the text says: the meta-batch, the outer
    learning rate, the update count, a validation every 5 updates whose best network is evaluated, one
    evaluation lifetime per test goal."""
    readme = open(os.path.join(HERE, "README.md")).read()
    section = readme[readme.index("## Teaching:"):]
    assert next(line for line in section.splitlines() if line.startswith("python ")).split("#")[0].strip() == \
        "python tools/teach.py"
    teach = load_teach()
    assert f"`python metareward.py {' '.join(teach.TEACHING)}`" in " ".join(section.split())
    args = tyro.cli(mr.Args, args=teach.TEACHING)
    mr.check_args(args)
    paper = mr.Args()
    mr.check_args(paper)
    changed = {k: v for k, v in dataclasses.asdict(args).items() if v != getattr(paper, k)}
    assert changed == dict(lifetimes_per_update=10, meta_learning_rate=3e-4, meta_anneal_lr=True, num_outer_updates=25,
                           val_every=0, eval_repeats=1)
    assert (args.env_name, args.max_episode_steps, args.lifetime_steps) == ("door-close-v3", 500, 6000)


def test_teach_tool_runs_the_teaching_flags_then_compares_and_draws(tmp_path, monkeypatch, capsys):
    """tools/teach.py: metareward.py's cli with TEACHING then the user's flags; after it, the network's
    eps 9-12 and deterministic means +- standard error over its lifetimes against PPO shaped's means over
    the shipped baselines, the margin in standard errors (by hand here), and the figure."""
    teach = load_teach()
    run = tmp_path / "run"
    for name in ("progress.csv", "eval.csv"):
        os.makedirs(run, exist_ok=True)
        (run / name).write_text(open(os.path.join(HERE, "results", "door-close-v3_teaching", "seed1", name)).read())
    seen = []
    monkeypatch.setattr(teach.metareward, "cli", lambda argv: seen.append(argv) or str(run))
    assert teach.main(["--seed", "4"]) == str(run) and seen == [teach.TEACHING + ["--seed", "4"]]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "python metareward.py " + " ".join(teach.TEACHING + ["--seed", "4"])
    rows = read_csv(run / "eval.csv")
    shaped = [r for p in sorted(glob.glob(os.path.join(HERE, "results", "door-close-v3", "ppo_shaped_seeds*",
                                                        "eval.csv"))) for r in read_csv(p)]
    for name, columns, line in (("eps 9-12", [f"success_ep{e:02d}" for e in (9, 10, 11, 12)], out[-3]),
                                ("deterministic", ["success_det"], out[-2])):
        mine = np.array([np.mean([float(r[c]) for c in columns]) for r in rows])
        se = mine.std(ddof=1) / np.sqrt(len(mine))
        base = np.mean([np.mean([np.mean([float(r[c]) for c in columns]) for r in shaped if r["seed"] == s])
                        for s in sorted({r["seed"] for r in shaped})])
        shown = re.fullmatch(rf"  {name}: network (\S+) \+- (\S+), PPO shaped (\S+): (\S+) standard errors, "
                             r"beats PPO shaped", line)
        assert shown, line  # the numbers as printed (3 decimals; the margin 1), whatever the summation order
        want = [mine.mean(), se, base, (mine.mean() - base) / se]
        assert all(abs(float(v) - w) <= tol for v, w, tol in zip(shown.groups(), want, [5e-4 + 1e-9] * 3 + [0.05])), \
            (line, want)
    assert out[-1] == f"wrote {run / 'teaching.png'}" and (run / "teaching.png").read_bytes()[:4] == b"\x89PNG"
    # another --env-name: that task's baselines, not door-close's
    text = (run / "eval.csv").read_text()
    (run / "eval.csv").write_text(text.replace("door-close-v3", "button-press-v3"))
    teach.report(str(run))
    out = capsys.readouterr().out.splitlines()
    shaped = [r for r in read_csv(os.path.join(HERE, "results", "button-press-v3", "ppo_shaped", "eval.csv"))]
    base = np.mean([np.mean([float(r[f"success_ep{e:02d}"]) for e in (9, 10, 11, 12)]) for r in shaped])
    assert out[0] == "against PPO shaped (button-press's baseline, seed 1's test goals):"
    assert f"PPO shaped {base:.3f}:" in out[1], (out[1], base)


TEACHING_PAGE = os.path.join(HERE, "results", "door-close-v3_teaching", "README.md")


def exercise_edits():
    """The teaching page's exercises: each ```diff block as (the script's lines it replaces, the new lines)."""
    blocks = re.findall(r"```diff\n(.*?)```", open(TEACHING_PAGE).read(), re.S)
    return [("".join(line[1:] + "\n" for line in b.splitlines() if line[:1] in " -"),
             "".join(line[1:] + "\n" for line in b.splitlines() if line[:1] in " +")) for b in blocks]


@pytest.mark.parametrize("number", [1, 2, 3])
def test_each_exercise_does_what_the_page_says(number, tmp_path, monkeypatch):
    """Exercise 1 is --outer-reward sparse; 2 and 3 are the page's edits, each applied as written to a copy of
    metareward.py, changing one line. In a tiny run (1: the outer objective is the sparse signal as it is, no
    normaliser, so a reversed sign fails; 2: phi's inputs are s_t and zeros; 3: r^i_t in training is phi's mean,
    nothing sampled)."""
    edits = exercise_edits()
    assert len(edits) == 2
    old, new = edits[number - 2] if number > 1 else ("", "")
    source = open(os.path.join(HERE, "metareward.py")).read()
    if number > 1:
        assert source.count(old) == 1
        diff = [line[0] for line in difflib.ndiff(old.splitlines(), new.splitlines()) if line[0] in "-+"]
        assert max(diff.count("-"), diff.count("+")) == 1  # one line changed, added or removed
        source = source.replace(old, new)
    (tmp_path / "metareward_exercise.py").write_text(source)
    spec = importlib.util.spec_from_file_location("metareward_exercise", tmp_path / "metareward_exercise.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    seen, real_run, real_adv = [], m.run_lifetimes, m.meta_advantages
    monkeypatch.setattr(m, "make_benchmark", cached_make_benchmark)
    monkeypatch.setattr(m, "run_lifetimes", lambda envs, tasks, keys, net, args, evaluation=False, *a, **kw:
                        seen.append(dict(net=copy.deepcopy(net), evaluation=evaluation, record=real_run(
                            envs, tasks, keys, net, args, evaluation, *a, **kw))) or seen[-1]["record"])
    monkeypatch.setattr(m, "meta_advantages", lambda rewards, *a: seen.append(dict(rewards=rewards)) or
                        real_adv(rewards, *a))
    monkeypatch.chdir(tmp_path)
    m.main(tiny_args(m, val_every=0, outer_reward="sparse" if number == 1 else "shaped"))
    training = [(s, n) for s, n in zip(seen, seen[1:]) if "record" in s and not s["evaluation"]]
    assert len(training) == 2 and all("rewards" in n for _, n in training)
    for s, n in training:
        r, x = s["record"], s["record"]["meta_inputs"]
        if number == 1:
            assert torch.equal(n["rewards"], r["sparse"]) and (r["sparse"] < 0).any()  # the sign as r^e's
        elif number == 2:
            assert (x[..., m.OBS_DIM:] == 0).all() and (x[..., :m.OBS_DIM] != 0).any()
        else:
            with torch.no_grad():
                mean = s["net"](x, s["net"].initial_state(len(x)))[0]
            torch.testing.assert_close(r["meta_actions"], mean, atol=1e-5, rtol=0)


def test_results_tool_prints_the_success_per_class_when_there_are_several():
    """tools/plot_results.py's class table (ML10): per class and per method (per network where a method has
    several), the mean over that class's lifetimes of episodes 9-12's success and of the deterministic one;
    '-' where a method has no lifetime of the class. By hand on made-up rows."""
    def row(cls, method, network, last4, det):
        return {"task": "0", "env_name": cls, "repeat": "0", "seed": "1", "inner_reward": method, "network": network,
                **{f"success_ep{e:02d}": str(last4[e - 9] if e >= 9 else 0.0) for e in range(1, 13)},
                "success_det": str(det)}
    rows = [row("a", "intrinsic", "seed 1 update 100", [1, 1, 0, 0], 0.5), row("a", "intrinsic", "seed 1 update 100",
            [0, 0, 0, 0], 1.0), row("b", "intrinsic", "seed 1 update 100", [1, 1, 1, 1], 0.0),
            row("a", "intrinsic", "seed 1 update 0", [0, 0, 0, 1], 0.25), row("b", "shaped", "", [1, 0, 0, 0], 0.75)]
    assert pr.class_table(rows) == [
        "| class | intrinsic, seed 1 update 100: eps 9-12 / det. (lifetimes) | intrinsic, seed 1 update 0: eps 9-12 / "
        "det. (lifetimes) | shaped: eps 9-12 / det. (lifetimes) |", "|---|---|---|---|",
        "| a | 0.25 / 0.75 (2) | 0.25 / 0.25 (1) | - |", "| b | 1.00 / 0.00 (1) | - | 0.25 / 0.75 (1) |"]
    assert pr.class_table(rows, decimals=3)[2:] == ["| a | 0.250 / 0.750 (2) | 0.250 / 0.250 (1) | - |",
                                                   "| b | 1.000 / 0.000 (1) | - | 0.250 / 0.750 (1) |"]


def test_env_rate_tool_steps_every_env_and_refuses_bad_shares(capsys, monkeypatch):
    """tools/env_rate.py: N envs x S steps shared over K processes, the rate over all of them; bad shares
    refused in one line."""
    spec = importlib.util.spec_from_file_location("env_rate", os.path.join(HERE, "tools", "env_rate.py"))
    er = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(er)
    stepped = []
    real = er.step_envs
    monkeypatch.setattr(er, "step_envs", lambda name, goals, steps, seed: stepped.append((list(goals), steps))
                        or real(name, goals, steps, seed))
    rate = er.main(["--num-envs", "3", "--steps", "12", "--workers", "1"])
    out = capsys.readouterr().out.splitlines()
    assert stepped == [([0, 1, 2], 12)] and rate > 0
    assert out == ["door-close-v3: 3 envs x 12 steps in 1 process(es), " + out[0].split(", ")[-1], f"{rate:.0f} env-steps/s"]
    for argv in (["--workers", "4", "--num-envs", "3"], ["--steps", "0"]):
        with pytest.raises(SystemExit) as exc:
            er.main(argv)
        assert exc.value.code == 2 and "need 1 <= --workers <= --num-envs" in capsys.readouterr().err


def test_curves_tool_compares_runs_at_equal_updates(tmp_path, capsys):
    """tools/plot_curves.py: the runs cut at the last update all reached, block means value by value
    (success on the last 4 episodes, shaped return), the figure, and bad input as one line."""
    def progress(name, success, shaped):  # success[u]: every episode of update u+1 at that rate
        (tmp_path / name).mkdir()
        mr.write_csv(str(tmp_path / name / "progress.csv"),
                     [{"update": u + 1, **{f"charts/success_ep{e:02d}": s * (e > 8) for e in range(1, 13)},
                       "charts/shaped_return": r} for u, (s, r) in enumerate(zip(success, shaped))])
    progress("a", [0.0, 0.5, 1.0, 0.25, 0.75, 1.0, 1.0], [10, 20, 30, 40, 50, 60, 70])
    progress("b", [1.0, 1.0, 0.0, 0.0, 0.5], [5, 5, 5, 5, 100])  # 5 updates: both are cut there
    pc.main([str(tmp_path / "a"), str(tmp_path / "b"), "--labels", "A", "B", "--block", "2",
             "--plot-file", str(tmp_path / "c.png")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| updates | A: success / shaped return | B: success / shaped return |"
    assert lines[2:5] == ["| 1-2 | 0.25 / 15 | 1.00 / 5 |", "| 3-4 | 0.62 / 35 | 0.00 / 5 |",
                          "| 5-5 | 0.75 / 50 | 0.50 / 100 |"]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert pc.moving_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist() == [1.0, 2.0, 4.0, 6.0]
    for argv, message in ((["no_such_run"], "error: no progress.csv at no_such_run"),
                          ([str(tmp_path / "a"), "--labels", "A", "B"], "error: 1 runs but 2 --labels")):
        with pytest.raises(SystemExit) as exc:
            pc.main(argv)
        assert exc.value.code == 2 and capsys.readouterr().err.strip() == message


def test_both_baselines_run_the_same_evaluation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for mode in ("sparse", "shaped"):
        run_dir = mr.main(tiny_args(seed=3, inner_reward=mode))
        check_eval_dir(run_dir, 4, mode)
        assert not os.path.exists(os.path.join(run_dir, "progress.csv"))  # no meta-training


def stop_in_update(m, monkeypatch, update, **kw):
    """A tiny run (TINY with kw) stopped by Ctrl-C in the outer PPO of `update`; outer_ppo_update as it was after."""
    real_update, calls = m.outer_ppo_update, []

    def stop(*a):
        calls.append(1)
        if len(calls) == update:
            raise KeyboardInterrupt
        return real_update(*a)
    monkeypatch.setattr(m, "outer_ppo_update", stop)
    with pytest.raises(KeyboardInterrupt):
        m.main(tiny_args(m, **kw))
    monkeypatch.setattr(m, "outer_ppo_update", real_update)


@both
def test_resume_after_a_crash_equals_an_uninterrupted_run(m, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = dict(num_outer_updates=4, save_every=2, eval_tasks=1, eval_repeats=1)
    real_update, shaped = m.outer_ppo_update, []
    monkeypatch.setattr(m, "outer_ppo_update", lambda net, opt, batch, *a: shaped.append(batch["shaped"].double())
                        or real_update(net, opt, batch, *a))
    straight = m.main(tiny_args(m, exp_name="straight", **args))

    stop_in_update(m, monkeypatch, 4, exp_name="crashed", **args)
    crashed = next(d for d in (tmp_path / "runs").iterdir() if "crashed" in d.name)
    assert len(read_csv(crashed / "progress.csv")) == 3  # update 3 was logged after the last checkpoint (2)
    ckpt = torch.load(crashed / "checkpoint.pt", weights_only=True)  # as written before --plot moved to tools/
    torch.save({**ckpt, "args": {**ckpt["args"], "plot": (), "plot_file": "results.png"}}, crashed / "checkpoint.pt")
    resumed = m.main(m.Args(resume=str(crashed / "checkpoint.pt")))
    assert resumed == str(crashed)
    assert untimed(read_csv(os.path.join(straight, "progress.csv"))) == untimed(read_csv(crashed / "progress.csv"))
    # TensorBoard: the resumed run's events replace those logged after the checkpoint
    loss = [(s.step, s.value) for s in tensorboard_scalars(crashed)["losses/value_loss"]]
    assert loss == [(int(r["global_step"]), pytest.approx(float(r["losses/value_loss"]), rel=1e-6))
                    for r in read_csv(crashed / "progress.csv")]
    a, b = (torch.load(os.path.join(d, "checkpoint.pt"), weights_only=True) for d in (straight, crashed))
    assert a["update"] == b["update"] == 4
    assert all(torch.equal(a["meta_net"][k], b["meta_net"][k]) for k in a["meta_net"])
    assert read_csv(os.path.join(straight, "eval.csv")) == read_csv(crashed / "eval.csv")
    # the normaliser: at each checkpoint the mean of every shaped reward so far, restored exactly by --resume
    for saved, updates in ((ckpt, 2), (a, 4), (b, 4)):
        everything = torch.cat([s.flatten() for s in shaped[:updates]])
        assert saved["normalizer"]["count"] == {"door-close-v3": len(everything)}
        assert saved["normalizer"]["mean"]["door-close-v3"] == pytest.approx(everything.mean().item(), rel=1e-12)
    assert a["normalizer"] == b["normalizer"]


@both
def test_same_seed_same_csv_other_seed_differs(m, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # tensorboard is optional
    runs = [m.main(tiny_args(m, seed=s, exp_name=f"r{i}", num_outer_updates=1, eval_tasks=1, eval_repeats=1))
            for i, s in enumerate((5, 5, 6))]
    progress = [untimed(read_csv(os.path.join(r, "progress.csv"))) for r in runs]
    evals = [read_csv(os.path.join(r, "eval.csv")) for r in runs]
    assert progress[0] == progress[1] and evals[0] == evals[1]
    assert progress[0] != progress[2]
    assert "tensorboard is not installed" in capsys.readouterr().out
    assert not any("tfevents" in f for r in runs for f in os.listdir(r))


@pytest.fixture(scope="module")
def saved_checkpoints(tmp_path_factory):
    """A real checkpoint.pt of each script."""
    cwd, folder, paths = os.getcwd(), tmp_path_factory.mktemp("ckpt"), {}
    os.chdir(folder)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for m in (mr, ma):
                patch.setattr(m, "make_benchmark", cached_make_benchmark)
                paths[m] = os.path.join(folder, m.main(tiny_args(m, num_outer_updates=1, eval_tasks=1,
                                                                 eval_repeats=1)), "checkpoint.pt")
    finally:
        os.chdir(cwd)
    return paths


def bad_copy(path, tmp_path, change):
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    out = str(tmp_path / "bad.pt")
    torch.save(ckpt, out)
    return out


@both
@pytest.mark.parametrize("case", ["missing", "truncated", "other_script", "sizes", "sizes_resume", "net_only_resume"])
def test_bad_checkpoints_exit_with_one_line(m, case, saved_checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved_checkpoint = saved_checkpoints[m]
    flag, expected = "--eval-checkpoint", ""
    if case == "missing":
        path, expected = str(tmp_path / "nope.pt"), "checkpoint not found"
    elif case == "truncated":
        path, expected = str(tmp_path / "half.pt"), "truncated or not a checkpoint"
        data = open(saved_checkpoint, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif case == "other_script":  # the other script's real checkpoint
        path = saved_checkpoints[ma if m is mr else mr]
        expected = f"was written by {(ma if m is mr else mr).SCRIPT}.py, not {m.SCRIPT}.py"
    elif case in ("sizes", "sizes_resume"):  # e.g. a network of another input size or recurrence
        path = bad_copy(saved_checkpoint, tmp_path, lambda c: c["meta_net"].update(
            {"fc1.weight": torch.zeros(100, mr.META_INPUT_DIM)}))
        flag = "--resume" if case == "sizes_resume" else flag
        expected = "does not fit this script's network"
    else:
        path = bad_copy(saved_checkpoint, tmp_path, lambda c: c.pop("optimizer"))
        flag, expected = "--resume", "holds only a network"
    with pytest.raises(SystemExit) as exc:
        m.cli([flag, path])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err and expected in err
    assert not os.path.exists("runs")


@both
def test_non_finite_loss_stops_naming_the_update_and_keeps_the_checkpoint(m, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    real, calls = m.meta_advantages, []

    def nan_in_update_2(*a):
        calls.append(1)
        adv, ret = real(*a)
        return (adv * np.nan, ret) if len(calls) == 2 else (adv, ret)

    monkeypatch.setattr(m, "meta_advantages", nan_in_update_2)
    with pytest.raises(SystemExit) as exc:
        m.cli(tiny_argv(num_outer_updates=3))
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err and "update 2: non-finite outer loss" in err
    run_dir = next((tmp_path / "runs").iterdir())
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["update"] == 1


@both
def test_an_error_in_a_worker_process_stops_the_run_with_one_line(m, tmp_path, monkeypatch, capsys):
    """A non-finite inner loss in one worker's lifetimes reaches the main process as the same error,
    and the run stops at once: the other worker, still busy with its share, is stopped, not waited for."""
    monkeypatch.chdir(tmp_path)

    def nan_in_one_share(agents, *a):  # the workers are forked after this patch
        if len(agents.actor_logstd) == 1:  # the tiny meta-batch of 3 over 2 workers: shares of 2 and 1
            raise FloatingPointError("non-finite inner PPO loss in epoch 0")
        time.sleep(120)  # the other share is still busy when the error arrives

    monkeypatch.setattr(m, "inner_ppo_update", nan_in_one_share)
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        m.cli(tiny_argv(num_outer_updates=2, num_workers=2))
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err and "update 1: non-finite inner PPO loss" in err
    assert time.perf_counter() - start < 60  # not the busy worker's 120 s


@both
def test_step_is_forward(m):
    """MetaNet.step (a lifetime's: one step of N rows) is MetaNet.forward (the outer PPO's: S steps at once) from the
    same initial state, whatever the recurrence inside: 3 lifetimes of 20 steps, every output to 1e-5."""
    torch.manual_seed(0)
    net = m.MetaNet()
    x = torch.randn(3, 20, m.META_INPUT_DIM)
    with torch.no_grad():
        mean, std, value, _ = net(x, net.initial_state(3))
        state, stepped = net.initial_state(3), []
        for t in range(20):
            *outputs, state = net.step(x[:, t], state)
            stepped.append(torch.stack(outputs, -1))
    torch.testing.assert_close(torch.stack(stepped, 1), torch.stack([mean, std, value], -1), atol=1e-5, rtol=0)


# tools/row.py: each kind of Results row from one command -----------------------------------------------------------
def load_row():
    spec = importlib.util.spec_from_file_location("row", os.path.join(HERE, "tools", "row.py"))
    row = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(row)
    return row


# Each page's tools/row.py commands (the README's: one per kind of row), and how each kind's runs differ from the
# paper's settings (the script's defaults): as the pages ran them.
ROW_PAGES = {"README.md": ["network --task door-close-v3 --method intrinsic", "network --task ML10 --method intrinsic",
                           "baseline --task door-close-v3 --method shaped", "teaching --seeds 1"],
             **{f"results/{task}/README.md": [f"{kind} --task {task} --method {method}" for kind, method in
                                               (("network", "intrinsic"), ("network", "advantage"),
                                                ("baseline", "shaped"), ("baseline", "sparse"))]
                for task in ("door-close-v3", "button-press-v3", "reach-v3", "ML10")},
             "results/door-close-v3_teaching/README.md": ["teaching --seeds 1"]}


def row_changes(kind, task):
    """What a run of a row changes from the paper's settings (but the task and seed): the meta-training stopped at
    update 50 (ML10: 100) with validations of 10 lifetimes (the default then) every 25 (the default), its best
    network evaluated on evaluation seed 1,
    2 lifetimes per test goal (ML10: 1); the baselines' evaluation of 5 seeds x 2 lifetimes per goal in batches of
    50 (ML10: seed 1, 1 lifetime); the teaching command (tools/teach.py's TEACHING)."""
    ml10 = task == "ML10"
    if kind == "network":
        return {"num_outer_updates": 100 if ml10 else 50, "eval_network": "best", "val_tasks": 10,
                "eval_seeds": (1,), "eval_repeats": 1 if ml10 else 2}
    if kind == "baseline":
        return {"eval_repeats": 1} if ml10 else {"eval_seeds": (1, 2, 3, 4, 5), "eval_repeats": 2,
                                                  "lifetimes_per_update": 50}
    return dict(lifetimes_per_update=10, meta_learning_rate=3e-4, meta_anneal_lr=True, num_outer_updates=25,
                val_every=0, eval_repeats=1)


def test_row_tool_commands_are_on_the_pages_and_run_the_pages_settings(capsys):
    """The README's Results section has one tools/row.py command per kind of row (ML1 network, ML10 network,
    baseline, teaching), each task page its own; each, as a dry run, lists the runs of its page's rows, whose
    settings differ from the paper's only as row_changes says (the flags given after them replace the page's)."""
    row = load_row()
    readme = open(os.path.join(HERE, "README.md")).read()
    section = readme[readme.index("## Results"):readme.index("\n### ", readme.index("## Results"))]
    for page, commands in ROW_PAGES.items():
        text = section if page == "README.md" else open(os.path.join(HERE, page)).read()
        shown = [line.split("#")[0].split(maxsplit=2)[2].strip() for line in text.splitlines()
                 if line.startswith("python tools/row.py ")]
        assert shown == commands, page
    for words in {c for commands in ROW_PAGES.values() for c in commands}:
        capsys.readouterr()
        assert load_row().main(words.split() + ["--dry-run"]) == []
        runs = [line.split() for line in capsys.readouterr().out.splitlines()]
        kind = words.split()[0]
        task = "door-close-v3" if kind == "teaching" else words.split()[2]
        method = "intrinsic" if kind == "teaching" else words.split()[4]
        seeds = [1] if kind != "network" else [1] if task == "ML10" else [1, 2, 3]
        assert len(runs) == len(seeds) if kind != "baseline" else len(runs) == 1, words
        for seed, run in zip(seeds, runs):
            script = {"advantage": "metareward_advantage.py"}.get(method, "metareward.py")
            if kind == "teaching":
                assert run == ["python", "tools/teach.py", "--seed", str(seed)]
                run = ["python", "metareward.py"] + row.teach.TEACHING + run[2:]
            m = ma if script == "metareward_advantage.py" else mr
            assert run[:2] == ["python", script]
            args, paper = tyro.cli(m.Args, args=run[2:]), m.Args(benchmark="ML10" if task == "ML10" else None)
            m.check_args(args), m.check_args(paper)
            assert (args.benchmark, args.env_name, args.seed) == \
                (("ML10", paper.env_name) if task == "ML10" else ("ML1", task)) + (seed,)
            changed = {k: v for k, v in dataclasses.asdict(args).items()
                       if v != getattr(paper, k) and k not in ("benchmark", "env_name", "seed")}
            assert changed == {**row_changes(kind, task), **({"inner_reward": method} if kind == "baseline" else
                                                                     {})}, words
    assert load_row().with_flags(["--seed", "2", "--eval-seeds", "1", "--eval-repeats", "2"],
                                 ["--eval-repeats", "1", "--num-workers", "1"]) == \
        ["--seed", "2", "--eval-seeds", "1", "--eval-repeats", "1", "--num-workers", "1"]


def test_row_tool_network_runs_have_the_shipped_networks_settings():
    """Each shipped network of a Results row (checkpoints/*_updateU.pt) was meta-trained with the settings of its row's
    run, but where that run stops (50 or 100 updates: the shipped runs were stopped there or kept the best up to
    there) and what it evaluates; the rest is names, --num-workers (no number depends on it) and flags older
    checkpoints lack (their defaults)."""
    row = load_row()
    how = {"exp_name", "num_outer_updates", "eval_repeats", "eval_seeds", "eval_network", "resume", "num_workers"}
    defaults = {"ray_address": None, "meta_anneal_lr": False, "keep_every": 0, "val_patience": 0,
                "outer_reward": "shaped"}

    def same(x):  # a checkpoint stores tuples as lists
        return list(x) if isinstance(x, (tuple, list)) else x
    files = sorted(glob.glob(os.path.join(HERE, "checkpoints", "*_update*.pt")))
    assert len(files) == 20
    for path in files:
        name = os.path.basename(path)
        task, m = "ML10" if name.startswith("ML10") else name.split("_")[0], ma if "_advantage_" in name else mr
        seed = int(re.search(r"_seed(\d+)_", name)[1])
        (script, argv), = row.commands("network", task, "advantage" if m is ma else "intrinsic", [seed])
        args = tyro.cli(m.Args, args=argv)
        m.check_args(args)
        saved = {**defaults, **torch.load(path, weights_only=False, map_location="cpu")["args"]}
        differ = {k for k, v in dataclasses.asdict(args).items() if k not in saved or same(v) != same(saved[k])}
        assert differ <= how and script == f"{m.__name__}.py", (name, differ)
        updates, repeats = (100, 1) if task == "ML10" else (50, 2)
        assert (args.num_outer_updates, args.eval_repeats, args.eval_seeds) == (updates, repeats, (1,))


def page_row(line):
    """A results table's row as tools/row.py prints it: the page's bold and the paper's column left out."""
    cells = line.replace("**", "").strip("| ").split(" | ")
    return "| " + " | ".join(cells[:6]) + " |"


def test_row_tool_prints_the_pages_rows_from_their_csvs():
    """tools/row.py's row of each kind, from the committed CSVs of the runs that made it, is the page's row (the
    label of a page's network row also names its shipped file)."""
    row = load_row()

    def printed(folders, kind, task):
        rows, _ = pr.load_results([os.path.join(HERE, "results", f) for f in folders])
        return row.row_lines(rows, kind, task)[2:]
    table = {line.split(" | ")[0][2:].split(" (`")[0]: page_row(line) for page in
             ("README.md", "results/door-close-v3/README.md", "results/door-close-v3_teaching/README.md")
             for line in open(os.path.join(HERE, page)).read().splitlines() if line.startswith("| ")}
    dc = "door-close-v3/"
    for folders, kind, task in (([dc + f"intrinsic_seed{s}_update50" for s in (1, 2, 3)], "network", "door-close-v3"),
                                ([dc + "advantage_seed1_update50", dc + "advantage_seed2_update50",
                                  dc + "advantage_seed3_update25"], "network", "door-close-v3"),
                                (["ML10/advantage_seed1_update50"], "network", "ML10"),
                                ([dc + "ppo_shaped_seeds123", dc + "ppo_shaped_seeds45"], "baseline", "door-close-v3"),
                                (["ML10/ppo_sparse"], "baseline", "ML10"),
                                (["door-close-v3_teaching/seed3"], "teaching", "door-close-v3"),
                                ([f"door-close-v3_teaching/seed{s}" for s in range(1, 6)], "teaching",
                                 "door-close-v3")):
        lines = printed(folders, kind, task)
        assert len(lines) == (1 if len(folders) == 1 or kind == "baseline" else 1 + len(folders))
        for line in lines:
            label = line.split(" | ")[0][2:]
            shown = table[label]
            assert line == shown if " update " not in label else line.split(" | ")[1:] == shown.split(" | ")[1:], \
                (line, shown)


def row_printed(out):
    """tools/row.py's printed row table: the lines after its 'the row (...)' line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("the row ("))
    return lines[start], lines[start + 1:]


def check_row_is_the_tools(lines, folders, options, capsys):
    """Each printed row is what tools/plot_results.py prints from the run folders' eval.csv: its method's row (or
    its one network's), then each network's; units x lifetimes, then the success cells."""
    capsys.readouterr()
    pr.main(folders + options)
    printed = capsys.readouterr().out.splitlines()
    tool = {cells[0]: cells for cells in (line.strip("| ").split(" | ") for line in printed)
            if len(cells) >= 5 and cells[3].isdigit()}
    assert lines[0].startswith("| method | networks or seeds x lifetimes | eps 1-4 | eps 5-6 | deterministic |")
    for line in lines[2:]:
        cells = line.strip("| ").split(" | ")
        label = cells[0] if ", seed " in cells[0] else METHOD_LABELS[cells[0].split(" (")[0]]
        if label not in tool:  # one network: the tool names its row by the method
            label = label.split(",")[0] if ", seed " in label else next(k for k in tool if k.startswith(label + ", "))
        networks, seeds, lifetimes = tool[label][1:4]
        units, each = map(int, cells[1].split(" x "))
        assert (networks if networks not in ("-", "1") else seeds) == str(units) and int(lifetimes) == units * each
        assert cells[2:] == tool[label][4:], (line, tool[label])


def test_row_tool_network_row_of_an_ml1_task(tmp_path, monkeypatch, capsys):
    """A tiny ML1 network row (the advantage's; TINY's runs: 2 outer updates, validated every one): a run per seed,
    each folder with its training curve, its best validated network and that network's eval.csv (evaluation seed
    1), the same rows as the page's second command, --eval-checkpoint of that network with the page's flags (seed
    2's); the row is tools/plot_results.py's: mean +- std over the 2 networks, then each network's."""
    monkeypatch.chdir(tmp_path)
    row = load_row()
    folders = row.main(["network", "--task", "door-close-v3", "--method", "advantage", "--seeds", "1", "2"]
                       + tiny_argv())
    out = capsys.readouterr().out
    assert out.startswith("python metareward_advantage.py --env-name door-close-v3 --seed 1 --eval-network best "
                          f"--eval-seeds 1 {' '.join(tiny_argv())}\n")
    for seed, folder in zip((1, 2), folders):
        assert {"progress.csv", "meta_net_best.pt", "eval.csv"} <= set(os.listdir(folder))
        best = ma.load_checkpoint(os.path.join(folder, "meta_net_best.pt"))["update"]
        rows = read_csv(os.path.join(folder, "eval.csv"))
        assert len(rows) == 2 * 2 and {(r["network"], r["seed"]) for r in rows} == {(f"seed {seed} update {best}", "1")}
    page = ma.cli(["--eval-checkpoint", os.path.join(folder, "meta_net_best.pt"), "--eval-seeds", "1",
                   "--eval-repeats", "2", "--lifetimes-per-update", "50", "--eval-tasks", "2", "--num-workers", "1"])
    assert read_csv(os.path.join(page, "eval.csv")) == rows
    head, lines = row_printed(out)
    assert head.endswith(f"python tools/plot_results.py {' '.join(folders)} --network-eval-seeds 1")
    assert len(lines) == 2 + 3
    assert lines[2].startswith("| meta-learned advantage (mean +- std over 2 networks) | 2 x 4 |")
    check_row_is_the_tools(lines, folders, NES1, capsys)


def test_row_tool_network_row_of_ml10(tmp_path, monkeypatch, capsys):
    """A tiny ML10 network row: seed 1's run (TINY's 2 updates, validated every one) evaluates its best network on
    one lifetime per test goal (the first 2), evaluation seed 1; the row, 3 decimals, is tools/plot_results.py's.
    To build ML10 once, the validation goals come from seed 1's benchmark here (seed 10001's in a real run)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mr, "make_benchmark", lambda args, seed=None: cached_make_benchmark(args, 1))
    row = load_row()
    folders = row.main(["network", "--task", "ML10", "--method", "intrinsic"] + tiny_argv(eval_repeats=1))
    out = capsys.readouterr().out
    assert out.startswith("python metareward.py --benchmark ML10 --seed 1 --eval-network best --eval-seeds 1 "
                          f"{' '.join(tiny_argv(eval_repeats=1))}\n")
    (folder,) = folders
    rows = read_csv(os.path.join(folder, "eval.csv"))
    best = mr.load_checkpoint(os.path.join(folder, "meta_net_best.pt"))["update"]
    assert len(rows) == 2 and {(r["network"], r["seed"]) for r in rows} == {(f"seed 1 update {best}", "1")}
    assert {r["env_name"] for r in rows} <= set(benchmark_of("ML10").test_classes)
    head, lines = row_printed(out)
    assert head.endswith(f"{folder} --network-eval-seeds 1 --decimals 3") and len(lines) == 3
    assert lines[2].startswith(f"| intrinsic rewards (seed 1, update {best}) | 1 x 2 | 0.000 +- ")
    check_row_is_the_tools(lines, folders, NES1 + ["--decimals", "3"], capsys)


def test_row_tool_baseline_row(tmp_path, monkeypatch, capsys):
    """A tiny baseline row: the page's one command (PPO sparse, here 2 evaluation seeds x 2 lifetimes on 2 test
    goals), one folder; the row is tools/plot_results.py's: mean +- std over the seeds."""
    monkeypatch.chdir(tmp_path)
    folders = load_row().main(["baseline", "--method", "sparse", "--seeds", "1", "2"] + tiny_argv())
    out = capsys.readouterr().out
    assert out.startswith("python metareward.py --env-name door-close-v3 --inner-reward sparse --eval-seeds 1 2 "
                          f"{' '.join(tiny_argv())}\n")
    (folder,) = folders
    rows = read_csv(os.path.join(folder, "eval.csv"))
    assert [r["seed"] for r in rows] == ["1"] * 4 + ["2"] * 4 and {r["network"] for r in rows} == {""}
    assert not os.path.exists(os.path.join(folder, "progress.csv"))  # no meta-training
    head, lines = row_printed(out)
    assert head.endswith(f"plot_results.py {folder}") and len(lines) == 3
    assert lines[2].startswith("| PPO sparse | 2 x 4 |")
    check_row_is_the_tools(lines, folders, [], capsys)


def test_row_tool_teaching_row(tmp_path, monkeypatch, capsys):
    """A tiny teaching row: tools/teach.py --seed 1 (TEACHING, then TINY's flags: 2 updates, no validation) runs,
    compares and draws; the row is its last network's on seed 1's goals, tools/plot_results.py's."""
    monkeypatch.chdir(tmp_path)
    row = load_row()
    folders = row.main(["teaching", "--seeds", "1"] + tiny_argv(val_every=0))
    out = capsys.readouterr().out
    assert out.startswith("python tools/teach.py --seed 1 --max-episode-steps 10 ")
    assert f"python metareward.py {' '.join(row.teach.TEACHING)} --seed 1 --max-episode-steps 10 " in out
    (folder,) = folders
    assert {"progress.csv", "eval.csv", "teaching.png"} <= set(os.listdir(folder))
    rows = read_csv(os.path.join(folder, "eval.csv"))
    assert len(rows) == 4 and {(r["network"], r["seed"]) for r in rows} == {("seed 1 update 2", "1")}
    head, lines = row_printed(out)
    assert len(lines) == 3 and lines[2].startswith("| intrinsic, seed 1 update 2 | 1 x 4 |")
    check_row_is_the_tools(lines, folders, [], capsys)


# Faults: runs that must not mix, flags --resume would ignore, a full disk -------------------------------------------
@both
def test_two_runs_started_in_the_same_second_get_two_folders(m, tmp_path, monkeypatch):
    """Same exp-name and seed, the same second (time.time pinned): the second run gets runs/NAME-2, each folder
    holds one whole run; concurrent claims of one name (threads) all get their own folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(m, "make_benchmark", cached_make_benchmark)
    monkeypatch.setattr(m.time, "time", lambda: 1_800_000_000.0)
    first = m.main(tiny_args(m, num_outer_updates=1, val_every=0, eval_repeats=1))
    second = m.main(tiny_args(m, num_outer_updates=1, val_every=0, eval_repeats=1, learning_rate=1e-3))
    assert second == first + "-2"
    for run, lr in ((first, "0.0003"), (second, "0.001")):
        assert m.load_checkpoint(os.path.join(run, "checkpoint.pt"))["args"]["learning_rate"] == float(lr)
        assert len(read_csv(os.path.join(run, "progress.csv"))) == 1
    claims = []
    threads = [threading.Thread(target=lambda: claims.append(m.new_run_dir("same"))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(claims)) == 16 and all(os.path.isdir(c) for c in claims)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "runs").write_text("a file where the runs folder should be")
    with pytest.raises(m.ConfigError, match=r"cannot create the run folder runs/x: "):
        m.new_run_dir("x")


@pytest.mark.parametrize("extra, message", [
    (["--seed", "7"], "--resume continues the run with its own settings, not --seed 7 (the run's: 1)"),
    (["--env-name", "reach-v3", "--lifetimes-per-update", "2"],
     "not --env-name reach-v3 (the run's: door-close-v3), --lifetimes-per-update 2 (the run's: 3)"),
    (["--no-norm-adv"], "not --norm-adv False (the run's: True)"),
    (["--num-outer-updates", "0"], "--num-outer-updates 0: {checkpoint} already holds update 1"),
])
@both
def test_resume_refuses_flags_it_would_ignore_and_fewer_updates(m, extra, message, saved_checkpoints, tmp_path,
                                                                capsys, monkeypatch):
    """--resume with a setting it would not use (another value than the run's) or fewer updates than the checkpoint
    holds: one line, exit status 2, nothing run or rewritten. The run's own value, or what may change, is fine."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(m, "make_benchmark", cached_make_benchmark)
    run = tmp_path / "run"
    shutil.copytree(os.path.dirname(saved_checkpoints[m]), run)
    checkpoint = str(run / "checkpoint.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(SystemExit) as exc:
        m.cli(["--resume", checkpoint, *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message.format(checkpoint=checkpoint) in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    args = m.resumed_args(m.Args(resume=checkpoint, seed=1, num_workers=1), m.load_checkpoint(checkpoint),
                          {"seed", "num_workers", "resume"})  # the run's own seed: accepted
    assert args.num_workers == 1 and args.lifetimes_per_update == 3


@both
def test_smaller_faults_are_one_line_each(m, saved_checkpoints, tmp_path, capsys, monkeypatch):
    """A seed outside numpy's range; --env-name with ML10; an evaluation that has no outer PPO is not held to the
    outer PPO's checks; a progress.csv cut short is refused on --resume; a killed write's *.tmp is removed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(m, "make_benchmark", cached_make_benchmark)
    for argv, message in ((["--seed", "-1"], "--seed must be in [0, 2**32 - 1] (numpy's seeds), got -1"),
                          (["--benchmark", "ML10", "--env-name", "reach-v3"],
                           "--env-name reach-v3 names an ML1 task; ML10 has its own classes")):
        with pytest.raises(SystemExit):
            m.cli(argv)
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, err
    network = saved_checkpoints[m]
    short = dict(tbptt_len=400, lifetime_steps=60, steps_per_update=20, max_episode_steps=10, num_minibatches=2,
                 lifetimes_per_update=3)
    m.check_args(m.Args(eval_checkpoint=network, meta_nsteps=(2200,), **short))  # no outer PPO: not its checks
    with pytest.raises(m.ConfigError, match="--tbptt-len 400 is larger"):
        m.check_args(m.Args(**short))
    run = tmp_path / "run"
    shutil.copytree(os.path.dirname(network), run)
    (run / "checkpoint.pt.tmp").write_bytes(b"half a checkpoint")
    m.main(m.Args(resume=str(run / "checkpoint.pt"), num_outer_updates=3))
    assert not list(run.glob("*.tmp"))
    rows = (run / "progress.csv").read_text().splitlines()
    (run / "progress.csv").write_text("\n".join(rows[:2]) + "\n")  # the header and update 1 of 3
    with pytest.raises(m.ConfigError, match=r"progress.csv lacks rows of updates 1-3, which .* holds \(cut short"):
        m.main(m.Args(resume=str(run / "checkpoint.pt"), num_outer_updates=4))


@both
def test_a_resume_between_two_validations_keeps_the_best_network_and_the_score_to_beat(m, tmp_path, monkeypatch):
    """Validations at updates 2 and 4 scoring 0.5 then 0.25, the run stopped in update 3 and resumed: its
    meta_net_best.pt (update, score, weights) and the checkpoint's best score are the uninterrupted run's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(m, "make_benchmark", cached_make_benchmark)
    scores, current = {2: 0.5, 4: 0.25}, []
    real_validate, real_evaluate = m.Run.validate, m.evaluate
    monkeypatch.setattr(m.Run, "validate", lambda run, update, net: current.append(update) or
                        real_validate(run, update, net))

    def evaluate(lifetimes, tasks, net, args, repeats, seed, kind=m.EVALUATION):  # validation scored by update
        if kind != m.VALIDATION:
            return real_evaluate(lifetimes, tasks, net, args, repeats, seed, kind)
        return [{c: scores[current[-1]] for c in m.success_columns(args)} for _ in tasks], None
    monkeypatch.setattr(m, "evaluate", evaluate)
    args = dict(num_outer_updates=4, val_every=2, save_every=1, eval_tasks=1, eval_repeats=1)
    straight = m.main(tiny_args(m, exp_name="straight", **args))

    stop_in_update(m, monkeypatch, 3, exp_name="stopped", **args)
    stopped = next(str(d) for d in (tmp_path / "runs").iterdir() if "stopped" in d.name)
    assert m.load_checkpoint(os.path.join(stopped, "checkpoint.pt"))["update"] == 2
    resumed = m.main(m.Args(resume=os.path.join(stopped, "checkpoint.pt")))
    a, b = (m.load_checkpoint(os.path.join(d, "meta_net_best.pt")) for d in (straight, resumed))
    assert a["update"] == b["update"] == 2 and a["val_score"] == b["val_score"] == 0.5
    assert all(torch.equal(a["meta_net"][k], b["meta_net"][k]) for k in a["meta_net"])
    assert [m.load_checkpoint(os.path.join(d, "checkpoint.pt"))["best_val"] for d in (straight, resumed)] == [0.5, 0.5]


def small_disk(argv, folder, size_kb, fill_kb=None):
    """Run a script's command line in folder/disk, a filesystem of size_kb (fill_kb of it taken first; None: all):
    a tmpfs in a private mount namespace (unshare, as root); where that is not allowed, writes of eval.csv and of
    the second checkpoint fail with ENOSPC through a patched os.fsync. Returns (returncode, stdout, stderr)."""
    disk = os.path.join(folder, "disk")
    os.makedirs(disk)
    fill = f"dd if=/dev/zero of=fill bs=1k count={size_kb if fill_kb is None else fill_kb} 2>/dev/null; "
    command = " ".join(map(shlex.quote, [sys.executable, *argv]))
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True) if shutil.which("unshare") else None
    if probe is not None and probe.returncode == 0:
        script = f"mount -t tmpfs -o size={size_kb}k tmpfs {shlex.quote(disk)} && cd {shlex.quote(disk)} && {fill}{command}"
        proc = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True)
    else:  # the fallback: ENOSPC from the call that makes a write durable
        patch = ("import errno, os, runpy, sys\nreal, seen = os.fsync, []\n"
                 "def fsync(fd):\n    name = os.readlink(f'/proc/self/fd/{fd}')\n    seen.append(name)\n"
                 "    if name.endswith('eval.csv.tmp') or name.endswith('checkpoint.pt.tmp') and seen.count(name) > 1:\n"
                 "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n    real(fd)\n"
                 "os.fsync = fsync\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")
        proc = subprocess.run([sys.executable, "-c", patch, *argv], cwd=disk, capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


@both
def test_a_full_disk_keeps_the_results_and_says_what_is_whole(m, saved_checkpoints, tmp_path):
    """A full disk: an evaluation's results are on the terminal before its CSV fails; in training, the failed
    checkpoint leaves the last one whole. Each is one line that names the file, exit status 2."""
    script = os.path.join(HERE, f"{m.SCRIPT}.py")
    evaluation = tiny_argv(eval_checkpoint=saved_checkpoints[m], eval_repeats=1)
    code, out, err = small_disk([script, *evaluation], tmp_path / "evaluation", 64)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert re.search(r"^error: the evaluation: cannot write runs/\S+/eval.csv: No space left on device "
                     r"\(\d+ MB free\); runs/\S+/eval.csv holds 0 of its 1 seeds: evaluate again with", lines[0]), lines[0]
    assert re.search(r"evaluation \(\w+, test tasks\): success rate over 2 lifetimes on 2 tasks", out), out
    assert re.search(r"\| deterministic \d\.\d{3} \+- \d\.\d{3}\n  per episode: ", out), out
    code, out, err = small_disk([script, *tiny_argv(num_outer_updates=3, val_every=0)], tmp_path / "training", 4096, 0)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert re.search(r"^error: update 2: cannot write runs/\S+/checkpoint.pt: (No space left on device|cut short) "
                     r"\(\d+ MB free\); runs/\S+/checkpoint.pt holds update 1: continue with python "
                     rf"{m.SCRIPT}.py --resume runs/\S+/checkpoint.pt$", lines[0]), lines[0]


# Stopping a run: SIGTERM, SIGKILL, Ctrl-C, a worker's death -------------------------------------------------------
STOP_RUN = dict(num_workers=2, num_outer_updates=100, save_every=1, val_every=0, eval_tasks=1, eval_repeats=1)


def children(pid):
    """The pids of a process's children (Linux)."""
    return [int(c) for task in glob.glob(f"/proc/{pid}/task/*/children") for c in open(task).read().split()]


def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def all_gone(pids, seconds):
    deadline = time.time() + seconds
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    return not any(alive(p) for p in pids)


def start_run(m, folder, after_update=2):
    """Script m on a tiny 2-worker run of 100 updates, a process of its own session (as a terminal's job), once it
    has printed update after_update's line: the process and its workers' pids."""
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, f"{m.SCRIPT}.py"), *tiny_argv(**STOP_RUN)],
                            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,  # Ctrl-C's default, even where a shell started us in background:
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if line.startswith(f"update {after_update}/"):
            return proc, children(proc.pid)
    pytest.fail(f"the run ended before update {after_update}: {proc.communicate()[1]}")


def stopped_line(proc, folder):
    """The one line on stderr of a stopped run and the update its checkpoint holds (checked against the file)."""
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    found = re.search(r"; (\S+) holds update (\d+): continue with python (\S+) --resume (\S+)$", lines[0])
    assert found, lines[0]
    assert found[1] == found[4] and found[3] == os.path.basename(proc.args[1])  # the script that ran
    assert torch.load(os.path.join(folder, found[4]), weights_only=True)["update"] == int(found[2])
    return lines[0], int(found[2]), os.path.join(folder, found[4])


def assert_resume_equals_uninterrupted(m, checkpoint, saved, folder):
    """--resume to update saved + 2 gives the run that was never stopped (lived in this process), bit for bit."""
    resumed = m.main(m.Args(resume=checkpoint, num_outer_updates=saved + 2))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        reference = os.path.join(folder, m.main(tiny_args(m, **{**STOP_RUN, "num_workers": 1,
                                                                "num_outer_updates": saved + 2}, exp_name="straight")))
    assert untimed(read_csv(os.path.join(resumed, "progress.csv"))) == \
        untimed(read_csv(os.path.join(reference, "progress.csv")))
    assert read_csv(os.path.join(resumed, "eval.csv")) == read_csv(os.path.join(reference, "eval.csv"))
    a, b = (torch.load(os.path.join(d, "checkpoint.pt"), weights_only=True)["meta_net"] for d in (resumed, reference))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads processes from /proc (Linux)")
@both
def test_sigterm_stops_the_run_and_its_workers_with_one_line(m, tmp_path):
    """kill <pid> (a scheduler's preemption, `timeout`): the workers end with the run, which says in one line where
    it stopped, what the checkpoint holds and the command that continues it; exit status 143."""
    proc, workers = start_run(m, tmp_path)
    assert len(workers) == 2 and all(alive(p) for p in workers)
    proc.send_signal(signal.SIGTERM)
    line, _, _ = stopped_line(proc, tmp_path)
    assert proc.returncode == 128 + signal.SIGTERM and line.startswith("stopped by SIGTERM in update ")
    assert all_gone(workers, 10)
    assert not glob.glob(str(tmp_path / "runs" / "*" / "*.tmp"))  # no half-written file


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads processes from /proc (Linux)")
@both
def test_ctrl_c_stops_the_run_and_its_workers_with_one_line(m, tmp_path):
    """Ctrl-C in a terminal (SIGINT to the whole process group): one line with the resume command, no traceback from
    any process, exit status 130, no worker left."""
    proc, workers = start_run(m, tmp_path)
    os.killpg(proc.pid, signal.SIGINT)
    line, _, _ = stopped_line(proc, tmp_path)
    assert proc.returncode == 128 + signal.SIGINT and line.startswith("stopped by Ctrl-C in update ")
    assert all_gone(workers, 10)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads processes from /proc (Linux)")
@both
def test_workers_end_by_themselves_when_the_main_process_is_killed(m, tmp_path):
    """kill -9 of the main process (or the out-of-memory killer): nothing can clean up, yet the workers see that
    their parent is gone and end within a few seconds."""
    proc, workers = start_run(m, tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert all_gone(workers, 10)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads processes from /proc (Linux)")
@both
def test_a_killed_worker_stops_the_run_with_one_line_and_a_resume_continues_exactly(m, tmp_path, monkeypatch):
    """A worker killed mid-update (any signal, out of memory): the run stops with one line naming the worker and
    the signal, exit status 2, the other worker ended, the checkpoint intact; --resume gives the uninterrupted run."""
    proc, workers = start_run(m, tmp_path)
    os.kill(workers[1], signal.SIGKILL)
    line, saved, checkpoint = stopped_line(proc, tmp_path)
    assert proc.returncode == 2
    assert re.match(rf"error: update \d+: lifetime worker 2 of 2 \(pid {workers[1]}\) died \(killed by SIGKILL\); ",
                    line), line
    assert all_gone(workers, 10)
    assert_resume_equals_uninterrupted(m, checkpoint, saved, tmp_path)


# Golden runs: a tiny meta-training pinned, so that moving code around changes no number --------------------
def golden_numbers(m, tmp_path):
    """A tiny run of script m (2 updates, validated at each, 2 workers, then its evaluation): progress.csv but its
    timing columns, each weight tensor's sum and sum of squares, eval.csv's mean per success column, rounded."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        run_dir = os.path.join(tmp_path, m.main(tiny_args(m, num_workers=2, exp_name="golden")))
    progress = [{k: round(float(v), 6) for k, v in row.items()}
                for row in untimed(read_csv(os.path.join(run_dir, "progress.csv")))]
    weights = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["meta_net"]
    weights = {k: [round(v.double().sum().item(), 6), round(v.double().pow(2).sum().item(), 6)]
               for k, v in weights.items()}
    rows = read_csv(os.path.join(run_dir, "eval.csv"))
    evaluation = {c: round(float(np.mean([float(r[c]) for r in rows])), 6) for c in rows[0] if c.startswith("success")}
    return dict(progress=progress, weights=weights, evaluation=evaluation)


GOLDEN = {  # m.SCRIPT -> golden_numbers(m), pinned before the restructure of issue 41 (see the test below)
    "metareward": dict(
        progress=[
            {"update": 1.0, "global_step": 180.0, "charts/success_ep01": 0.0, "charts/success_ep02": 0.0,
             "charts/success_ep03": 0.0, "charts/success_ep04": 0.0, "charts/success_ep05": 0.0,
             "charts/success_ep06": 0.0, "charts/shaped_return": 0.163148, "charts/meta_action_mean": -0.010913,
             "charts/meta_action_std": 0.202847, "losses/explained_variance": -0.358232,
             "losses/policy_loss": 0.02751, "losses/value_loss": 3.4e-05, "losses/entropy": -0.191045,
             "losses/old_approx_kl": 7.5e-05, "losses/approx_kl": 3e-06, "losses/clipfrac": 0.0, "losses/epochs": 2.0,
             "val/success_last4": 0.0, "val/success_det": 0.0},
            {"update": 2.0, "global_step": 360.0, "charts/success_ep01": 0.0, "charts/success_ep02": 0.0,
             "charts/success_ep03": 0.0, "charts/success_ep04": 0.0, "charts/success_ep05": 0.0,
             "charts/success_ep06": 0.0, "charts/shaped_return": 0.16343, "charts/meta_action_mean": -0.018718,
             "charts/meta_action_std": 0.208986, "losses/explained_variance": -1.614424,
             "losses/policy_loss": -0.017322, "losses/value_loss": 2.4e-05, "losses/entropy": -0.19134,
             "losses/old_approx_kl": 0.000315, "losses/approx_kl": 4e-06, "losses/clipfrac": 0.0,
             "losses/epochs": 2.0, "val/success_last4": 0.0, "val/success_det": 0.0},
        ],
        weights={"fc1.weight": [-4.703607, 93.99745], "fc1.bias": [-0.001204, 5e-06],
                 "fc2.weight": [-4.581788, 55.999506], "fc2.bias": [-0.000622, 1e-06],
                 "lstm.weight_ih_l0": [3.941095, 31.998518], "lstm.weight_hh_l0": [-2.218932, 128.00081],
                 "lstm.bias_ih_l0": [-0.003001, 5e-06], "lstm.bias_hh_l0": [-0.003001, 5e-06],
                 "mean_head.0.weight": [1.919593, 255.996656], "mean_head.0.bias": [-0.000523, 1e-06],
                 "mean_head.2.weight": [17.716888, 255.998879], "mean_head.2.bias": [0.001807, 1e-06],
                 "mean_head.4.weight": [0.021802, 0.000105], "mean_head.4.bias": [2.2e-05, 0.0],
                 "logstd_head.0.weight": [21.807237, 256.001187], "logstd_head.0.bias": [0.002396, 2e-06],
                 "logstd_head.2.weight": [-0.013626, 0.000107], "logstd_head.2.bias": [-0.000152, 0.0],
                 "critic.0.weight": [-2.249563, 255.997606], "critic.0.bias": [-0.000818, 2e-05],
                 "critic.2.weight": [-0.289753, 0.99921], "critic.2.bias": [-0.00023, 0.0]},
        evaluation={"success_ep01": 0.0, "success_ep02": 0.0, "success_ep03": 0.0, "success_ep04": 0.0,
                    "success_ep05": 0.0, "success_ep06": 0.0, "success_det": 0.0}),
    "metareward_advantage": dict(
        progress=[
            {"update": 1.0, "global_step": 180.0, "charts/success_ep01": 0.0, "charts/success_ep02": 0.0,
             "charts/success_ep03": 0.0, "charts/success_ep04": 0.0, "charts/success_ep05": 0.0,
             "charts/success_ep06": 0.0, "charts/shaped_return": 0.175365, "charts/meta_action_mean": -0.075898,
             "charts/meta_action_std": 1.038321, "losses/explained_variance": -2.265354,
             "losses/policy_loss": -0.095118, "losses/value_loss": 8.4e-05, "losses/entropy": 1.418526,
             "losses/old_approx_kl": 0.000165, "losses/approx_kl": 1e-06, "losses/clipfrac": 0.0,
             "losses/epochs": 2.0, "val/success_last4": 0.0, "val/success_det": 0.0},
            {"update": 2.0, "global_step": 360.0, "charts/success_ep01": 0.0, "charts/success_ep02": 0.0,
             "charts/success_ep03": 0.0, "charts/success_ep04": 0.0, "charts/success_ep05": 0.0,
             "charts/success_ep06": 0.0, "charts/shaped_return": 0.164246, "charts/meta_action_mean": -0.142541,
             "charts/meta_action_std": 1.004097, "losses/explained_variance": -2.974145,
             "losses/policy_loss": 0.035614, "losses/value_loss": 3.9e-05, "losses/entropy": 1.418368,
             "losses/old_approx_kl": -6e-06, "losses/approx_kl": 0.0, "losses/clipfrac": 0.0, "losses/epochs": 2.0,
             "val/success_last4": 0.0, "val/success_det": 0.0},
        ],
        weights={"fc1.weight": [-4.702021, 93.999712], "fc1.bias": [-0.001946, 4e-06],
                 "fc2.weight": [-4.509767, 55.99862], "fc2.bias": [0.000594, 1e-06],
                 "lstm.weight_ih_l0": [3.903893, 31.999849], "lstm.weight_hh_l0": [-2.221804, 128.001341],
                 "lstm.bias_ih_l0": [-0.004282, 9e-06], "lstm.bias_hh_l0": [-0.004282, 9e-06],
                 "mean_head.0.weight": [1.921766, 255.997795], "mean_head.0.bias": [0.000184, 1e-06],
                 "mean_head.2.weight": [17.718365, 255.998163], "mean_head.2.bias": [0.000688, 1e-06],
                 "mean_head.4.weight": [0.019635, 0.000101], "mean_head.4.bias": [5.7e-05, 0.0],
                 "logstd_head.0.weight": [21.819535, 256.000303], "logstd_head.0.bias": [0.003067, 3e-06],
                 "logstd_head.2.weight": [-0.013259, 0.000104], "logstd_head.2.bias": [-0.000177, 0.0],
                 "critic.0.weight": [-2.255234, 255.99666], "critic.0.bias": [-0.000462, 1.1e-05],
                 "critic.2.weight": [-0.29457, 0.998793], "critic.2.bias": [-0.000196, 0.0]},
        evaluation={"success_ep01": 0.0, "success_ep02": 0.0, "success_ep03": 0.0, "success_ep04": 0.0,
                    "success_ep05": 0.0, "success_ep06": 0.0, "success_det": 0.0}),
}


@both
def test_golden_run_is_unchanged(m, tmp_path):
    """The whole method end to end on a tiny run: every logged number, the final weights and the evaluation as
    pinned (to 1e-5; the shipped networks' tolerance). A change of the method moves them: re-pin, and say why."""
    got, pinned = golden_numbers(m, tmp_path), GOLDEN[m.SCRIPT]
    assert len(got["progress"]) == len(pinned["progress"]) == 2
    for row, pinned_row in zip(got["progress"], pinned["progress"]):
        assert row.keys() == pinned_row.keys()
        assert row == pytest.approx(pinned_row, abs=1e-5, nan_ok=True)
    assert got["weights"].keys() == pinned["weights"].keys()
    for k, pinned_value in pinned["weights"].items():
        assert got["weights"][k] == pytest.approx(pinned_value, abs=1e-5), k
    assert got["evaluation"] == pytest.approx(pinned["evaluation"], abs=1e-5)


def markdown_links(text):
    """The targets of a markdown text's inline links and images, code left out."""
    text = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)", text)


def github_anchor(heading):
    """The anchor GitHub gives a heading: lower case, all but letters, digits, _, - and spaces dropped, spaces -."""
    return re.sub(r"[^\w\- ]", "", heading.lstrip("#").strip().lower()).replace(" ", "-")


def test_every_link_and_image_in_the_markdown_resolves():
    """Every relative link and image of every *.md of the repository names a file of the repository that exists,
    and a heading of it where it names one (#anchor); only http(s) links are left out."""
    pages = []
    for root, dirs, files in os.walk(HERE):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("runs", "__pycache__")]  # not the repo's
        pages += [os.path.join(root, name) for name in files if name.endswith(".md")]
    assert os.path.join(HERE, "README.md") in pages and os.path.join(HERE, "docs", "metareward.md") in pages
    checked = 0
    for page in pages:
        for target in markdown_links(open(page).read()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            file = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            where = f"{os.path.relpath(page, HERE)}: ({target})"
            assert os.path.commonpath([file, HERE]) == HERE and os.path.exists(file), f"{where}: no such file"
            if anchor:
                assert anchor in {github_anchor(h) for h in markdown_sections(os.path.relpath(file, HERE))}, \
                    f"{where}: no such heading"
            checked += 1
    assert checked > 30


def against_shaped(folder):
    """A teaching-geometry network's cells, from its folder's eval.csv: "mean +- standard error (margin)" on
    episodes 9-12 and at the deterministic point, the margin over PPO shaped in its standard errors; the margins."""
    rows = read_csv(os.path.join(folder, "eval.csv"))
    columns = [c for c in rows[0] if c.startswith("success_")]
    shaped = [r for p in sorted(glob.glob(os.path.join(HERE, "results", "door-close-v3", "ppo_shaped_seeds*",
                                                        "eval.csv"))) for r in read_csv(p)]
    mine, base = mr.table_row(rows, columns), mr.table_row(shaped, columns)
    cells, margins = [], []
    for name in ("eps 9-12", "deterministic"):
        (m, se), b = mine[name], base[name][0]
        margins.append((m - b) / se)
        cells.append(f"{pr.fmt(m, 2)} +- {pr.fmt(se, 2)} ({margins[-1]:+.1f})")  # the tables' rounding
    return cells, margins


def teaching_row(seed):
    """The README's seeds-table row of a teaching run, from its folder: the wall clock and raw env rates of
    its run.log, the cells against PPO shaped (against_shaped), the verdict (both margins above 2)."""
    folder = os.path.join(HERE, "results", "door-close-v3_teaching", f"seed{seed}")
    log = open(os.path.join(folder, "run.log")).read()
    wall = re.search(r"wall clock (\d+ min \d+ s)", log)[1]
    rates = re.findall(r"raw rate (?:before|after): (\d+) env-steps/s", log)
    assert {r["network"] for r in read_csv(os.path.join(folder, "eval.csv"))} == {f"seed {seed} update 25"}
    cells, margins = against_shaped(folder)
    return [str(seed), f"{wall} ({' / '.join(rates)})", *cells, "yes" if min(margins) > 2 else "no"]


def test_teaching_page_exercises_table_is_the_runs():
    """The teaching page's exercises table, row for row: the unedited seed-1 run, the untrained network and the
    three exercise runs (results/door-close-v3_teaching_exercises/), each its seed, its cells against PPO shaped
    (against_shaped) and its training lifetimes' success on episodes 9-12 over updates 21-25 (- without training);
    each exercise run's console log names the page's edit of that number."""
    page = open(TEACHING_PAGE).read()
    (header, rows), = [t for t in markdown_tables(page.splitlines()) if t[0][0] == "change"]
    exercises = os.path.join(HERE, "results", "door-close-v3_teaching_exercises")
    folders = [os.path.join(HERE, "results", "door-close-v3_teaching", "seed1"), os.path.join(exercises, "update0"),
               *[os.path.join(exercises, f"exercise{n}") for n in (1, 2, 3)]]
    assert len(rows) == len(folders)
    for row, folder in zip(rows, folders):
        cells = [c.strip() for c in row.strip("|").split("|")]
        progress = os.path.join(folder, "progress.csv")
        last5 = read_csv(progress)[20:25] if os.path.exists(progress) else []
        trained = (f"{np.mean([float(r[f'charts/success_ep{e:02d}']) for r in last5 for e in (9, 10, 11, 12)]):.2f}"
                   if last5 else "-")
        seed = read_csv(os.path.join(folder, "eval.csv"))[0]["seed"]
        assert cells[1:] == [seed, *against_shaped(folder)[0], trained], (cells, folder)
    log = open(os.path.join(exercises, "exercise1", "run.log")).read()  # exercise 1, now a flag, ran as the edit that
    assert 'meta_advantages(batch["sparse"], batch["meta_values"], args)' in log  # computes what the flag does
    for n, (old, new) in enumerate(exercise_edits(), 2):
        log = open(os.path.join(exercises, f"exercise{n}", "run.log")).read()
        changed = set(old.splitlines()) ^ set(new.splitlines())  # the lines the edit removes or adds
        assert changed and all(line.strip() in log for line in changed), n


def test_readme_teaching_output_and_seeds_table_are_the_runs():
    """The output the README shows for its teaching command is seed 1's run.log, line for line, and the time
    it gives is that log's wall clock; the teaching page's seeds table is the five runs' folders (teaching_row)."""
    readme = open(os.path.join(HERE, "README.md")).read()
    start = readme.index("## Teaching:")
    section = readme[start:readme.index("\n## ", start)]
    shown = section[section.index("```text\n") + len("```text\n"):]
    shown = shown[:shown.index("```")].splitlines()
    log = open(os.path.join(HERE, "results", "door-close-v3_teaching", "seed1", "run.log")).read()
    assert len(shown) >= 5 and all(line in log.splitlines() for line in shown)
    wall = re.search(r"wall clock (\d+ min \d+ s)", log)[1]
    assert f"**{wall}**" in section.split("```")[0]
    runs = markdown_sections(os.path.join("results", "door-close-v3_teaching", "README.md"))["## The five runs"]
    (header, rows), = [t for t in markdown_tables(runs) if t[0][0] == "seed"]
    assert [[c.strip() for c in row.strip("|").split("|")] for row in rows] == [teaching_row(s) for s in range(1, 6)]


# The shipped networks (checkpoints/) ----------------------------------------------------------------
# Per (task, meta-training seed), the network file and its mean output at steps 0, 5, 10, 12 (the success step), 19 of
# fixed_meta_input() when it shipped.
SHIPPED = {
    ("door-close-v3", 1): ("door-close-v3_seed1_update50.pt", [-0.035799, 0.035447, -0.021396, -0.063259, -0.068456]),
    ("button-press-v3", 1): ("button-press-v3_seed1_update25.pt", [0.022218, 0.009428, 0.020312, 0.013444, -0.00359]),
    ("button-press-v3", 2): ("button-press-v3_seed2_update25.pt", [0.019189, -0.029732, -0.030703, -0.077315, -0.084626]),
    ("button-press-v3", 3): ("button-press-v3_seed3_update50.pt", [0.077906, 0.007621, 0.075263, 0.06604, -0.005312]),
    ("door-close-v3", 2): ("door-close-v3_seed2_update50.pt", [0.155091, 0.084273, 0.224321, 0.006219, 0.008894]),
    ("door-close-v3", 3): ("door-close-v3_seed3_update50.pt", [0.003657, 0.027034, -0.009099, -0.00684, -0.072168]),
    ("reach-v3", 1): ("reach-v3_seed1_update25.pt", [0.011436, 0.021346, 0.039822, -0.025907, -0.000815]),
    ("reach-v3", 2): ("reach-v3_seed2_update25.pt", [0.004948, -0.036125, -0.039549, -0.068053, -0.090092]),
    ("reach-v3", 3): ("reach-v3_seed3_update25.pt", [0.06663, 0.075934, 0.124373, 0.025772, 0.041971]),
    ("ML10", 1): ("ML10_seed1_update75.pt", [0.122072, 0.04158, 0.127015, 0.196592, 0.081764]),
}
SHIPPED_ADVANTAGE = {
    ("door-close-v3", 1): ("door-close-v3_advantage_seed1_update50.pt", [0.406415, 0.506746, 0.461644, 0.685982, 0.328066]),
    ("button-press-v3", 1): ("button-press-v3_advantage_seed1_update25.pt", [0.125735, 0.123634, 0.143956, 0.312005, 0.217337]),
    ("button-press-v3", 2): ("button-press-v3_advantage_seed2_update50.pt", [-0.171821, -0.115986, -0.209435, -0.409178, -0.404501]),
    ("button-press-v3", 3): ("button-press-v3_advantage_seed3_update50.pt", [-0.172612, -0.487906, -0.323785, -0.489555, -0.469081]),
    ("door-close-v3", 2): ("door-close-v3_advantage_seed2_update50.pt", [0.591458, 0.815776, 0.823608, 0.610218, 0.512912]),
    ("door-close-v3", 3): ("door-close-v3_advantage_seed3_update25.pt", [0.04881, 0.0522, 0.013848, 0.065269, -0.025267]),
    ("reach-v3", 1): ("reach-v3_advantage_seed1_update50.pt", [0.206084, 0.292497, 0.282998, 0.745714, 0.483643]),
    ("reach-v3", 2): ("reach-v3_advantage_seed2_update25.pt", [0.038883, -0.091628, -0.09217, -0.268147, -0.334068]),
    ("reach-v3", 3): ("reach-v3_advantage_seed3_update50.pt", [-0.334474, -0.433545, -0.472942, -0.481558, -0.432797]),
    ("ML10", 1): ("ML10_advantage_seed1_update50.pt", [-0.050546, -0.091203, -0.198422, 0.065345, 0.021472]),
}


def fixed_meta_input(S=20, T=10):
    """A hand-made (1, S, 47) input without random numbers: smooth observations with the goal zeroed,
    episode flags every T steps, one success (k = 2 of episode 2), small densities and r^i_(t-1)."""
    t = torch.arange(S, dtype=torch.float64)[:, None]
    x = 0.5 * torch.sin(0.1 * t + torch.arange(mr.META_INPUT_DIM, dtype=torch.float64))
    x[:, 36:39] = 0
    x[:, -4] = 0.05 * (1 + torch.cos(t[:, 0]))
    x[:, -3] = 0.0
    x[12, -3] = 3 * (1 - 0.7 * 2 / T)
    x[:, -2] = torch.tensor([2.0 if k % T == 0 else 0.0 for k in range(S)])
    x[:, -1] = 0.02 * torch.sin(t[:, 0])
    return x.float()[None]


def check_shipped_network(m, path, env_name, pinned, settings, seed=1):
    """A shipped network of script m: meta-trained on env_name (an ML1 task, or "ML10") with the paper's settings
    and the given seed, the network's shapes, the outputs it gave when it shipped on a fixed input, and on a short
    lifetime of one of the benchmark's test goals finite, non-constant outputs that are its mean on what it saw."""
    ckpt = m.load_checkpoint(path)
    ml10 = env_name == "ML10"
    paper = m.Args(benchmark="ML10") if ml10 else m.Args()
    m.check_args(paper)  # the defaults filled in (ML10's own outer entropy coefficient)
    paper = dataclasses.asdict(paper)
    settings += ("meta_ent_coef",) if ml10 else ()
    assert {k: ckpt["args"][k] for k in settings} == {k: paper[k] for k in settings}
    assert ckpt["args"]["benchmark" if ml10 else "env_name"] == env_name and ckpt["args"]["seed"] == seed
    meta_net = m.load_meta_net(path)
    assert {k: v.shape for k, v in meta_net.state_dict().items()} == \
        {k: v.shape for k, v in m.MetaNet().state_dict().items()}
    with torch.no_grad():
        mean = meta_net(fixed_meta_input(), meta_net.initial_state(1))[0][0]
    assert mean[[0, 5, 10, 12, 19]].tolist() == pytest.approx(pinned, abs=1e-5)
    bench = benchmark_of(env_name)
    args = tiny_args(m, lifetimes_per_update=2)
    tasks = m.sample_tasks(bench.test_classes, bench.test_tasks, 2, None)
    batch = m.run_lifetimes(m.EnvGroup(bench.test_classes, args.max_episode_steps), tasks, train_keys(m, 2),
                            meta_net, args, evaluation=True)
    out = batch["meta_actions"]
    assert out.shape == (2, args.lifetime_steps) and torch.isfinite(out).all()
    assert out.std() > 0
    _, _, means = replay(meta_net, {k: v for k, v in batch.items() if k.startswith("meta_")}, 16, 16, m=m)
    torch.testing.assert_close(out, means, atol=1e-5, rtol=0)  # evaluation: the mean, of this network


@pytest.mark.parametrize("env_name, seed", SHIPPED)
def test_shipped_network_loads_and_rewards_a_real_lifetime(env_name, seed):
    """The reward networks shipped for each task and meta-training seed (see check_shipped_network)."""
    name, pinned = SHIPPED[env_name, seed]
    check_shipped_network(mr, os.path.join(HERE, "checkpoints", name), env_name, pinned,
                          ("benchmark", "lifetimes_per_update", "lifetime_steps", "steps_per_update",
                           "max_episode_steps", "meta_learning_rate", "meta_std_scale", "tbptt_len",
                           "meta_update_epochs"), seed)


@pytest.mark.parametrize("env_name, seed", SHIPPED_ADVANTAGE)
def test_shipped_advantage_network_loads_and_signals_a_real_lifetime(env_name, seed):
    """The advantage networks shipped for each task and meta-training seed (see check_shipped_network),
    with the variant's own paper settings; metareward.py refuses them."""
    name, pinned = SHIPPED_ADVANTAGE[env_name, seed]
    path = os.path.join(HERE, "checkpoints", name)
    check_shipped_network(ma, path, env_name, pinned,
                          ("benchmark", "lifetimes_per_update", "lifetime_steps", "steps_per_update",
                           "max_episode_steps", "meta_learning_rate", "meta_std_scale", "meta_ent_coef",
                           "tbptt_len", "meta_update_epochs"), seed)
    assert ma.Args().meta_std_scale == 1.0 and ma.Args().meta_ent_coef == 0.0005
    with pytest.raises(mr.ConfigError, match="written by metareward_advantage.py, not metareward.py"):
        mr.load_meta_net(path)


# Beyond one machine: the lifetimes on a Ray cluster (--ray-address) --------------------------------
# Last in the file: the module's cluster lives from the first of these tests to the end of the module.
RAY_RUN = dict(num_outer_updates=2, val_every=2, eval_tasks=1, eval_repeats=2)  # update 2 validates: on Ray too


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of two nodes of one CPU each (ray.cluster_utils.Cluster), its address. On the loopback
    only (Ray's single-machine mode: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), include_dashboard=False, no usage
    statistics."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        from ray.cluster_utils import Cluster
        cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, include_dashboard=False))
        try:
            cluster.add_node(num_cpus=1)
            yield cluster.address
        finally:
            cluster.shutdown()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """m -> the folder of script m's tiny RAY_RUN lived in this process (--num-workers 1), made once."""
    runs = {}

    def run(m):
        if m not in runs:
            folder = tmp_path_factory.mktemp(f"local_{m.SCRIPT}")
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(folder)
                runs[m] = os.path.join(folder, m.main(tiny_args(m, exp_name="local", **RAY_RUN)))
        return runs[m]
    return run


def assert_same_run(m, run_dir, reference, trained=True):
    """Script m's run_dir and reference: the same eval.csv and trace file and, if trained, the same progress.csv
    (but its timing columns) and final weights."""
    for name in ("eval.csv", m.TRACE_FILE):
        assert read_csv(os.path.join(run_dir, name)) == read_csv(os.path.join(reference, name)), name
    if trained:
        assert untimed(read_csv(os.path.join(run_dir, "progress.csv"))) == \
            untimed(read_csv(os.path.join(reference, "progress.csv")))
        a, b = (torch.load(os.path.join(d, "checkpoint.pt"), weights_only=True) for d in (run_dir, reference))
        assert a["update"] == b["update"] == RAY_RUN["num_outer_updates"]
        assert all(torch.equal(a["meta_net"][k], b["meta_net"][k]) for k in b["meta_net"])


@both
def test_training_on_a_ray_cluster_gives_the_same_run(m, ray_cluster, uninterrupted, tmp_path, monkeypatch, capsys):
    """--ray-address: the lifetimes (training and validation) lived by Ray actors on two nodes give the run of
    --num-workers 1 bit for bit; --num-workers unset is the cluster's CPUs (2), one actor on each node."""
    monkeypatch.chdir(tmp_path)
    reference = uninterrupted(m)
    capsys.readouterr()
    run_dir = m.main(tiny_args(m, exp_name="ray", num_workers=None, ray_address=ray_cluster, **RAY_RUN))
    assert f"env steps in 2 Ray actor(s) on {ray_cluster}, then the evaluation" in capsys.readouterr().out
    assert read_csv(os.path.join(run_dir, "progress.csv"))[-1]["val/success_det"] != ""  # validated on Ray too
    assert_same_run(m, run_dir, reference)


@both
def test_evaluation_on_a_ray_cluster_gives_the_same_eval_and_trace(m, ray_cluster, uninterrupted, tmp_path,
                                                                   monkeypatch):
    """--eval-checkpoint on one Ray actor (--num-workers 1) gives the eval.csv and trace file that the run which
    wrote the checkpoint gave in this process."""
    monkeypatch.chdir(tmp_path)
    reference = uninterrupted(m)
    run_dir = m.cli(tiny_argv(**RAY_RUN) + ["--eval-checkpoint", os.path.join(reference, "checkpoint.pt"),
                                            "--ray-address", ray_cluster])  # TINY's --num-workers 1
    assert_same_run(m, run_dir, reference, trained=False)


class ExitOnArrival:
    """A task whose unpickling, in the Ray actor it is sent to, ends that process (os._exit(1)): a node lost."""

    def __init__(self, env_name):
        self.env_name = env_name

    def __reduce__(self):
        return os._exit, (1,)


@both
def test_a_lost_ray_actor_stops_the_run_with_one_line_and_a_resume_continues_exactly(m, ray_cluster, uninterrupted,
                                                                                    tmp_path, monkeypatch, capsys):
    """An actor whose process dies in update 2 (of 2 actors) stops the run with one line (exit status 2; Ray's own
    notice of the dead worker may come before it), the checkpoint of update 1 intact; --resume on the cluster (one
    actor now) then gives the uninterrupted run bit for bit."""
    monkeypatch.chdir(tmp_path)
    reference = uninterrupted(m)
    real_sample, train_calls = m.sample_tasks, []

    def exit_in_update_2(classes, tasks, n, rng, *flag):
        sampled = real_sample(classes, tasks, n, rng, *flag)
        if rng is not None:  # a meta-batch (validation and evaluation take their tasks in order: rng None)
            train_calls.append(1)
            if len(train_calls) == 2:  # update 2: the last lifetime, the second actor's share
                sampled = sampled[:-1] + [ExitOnArrival(sampled[-1].env_name)]
        return sampled

    monkeypatch.setattr(m, "sample_tasks", exit_in_update_2)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        m.cli(tiny_argv(exp_name="crashed", num_workers=2, ray_address=ray_cluster, **RAY_RUN))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert exc.value.code == 2 and len(errors) == 1
    assert errors[0].startswith("error: update 2: a Ray actor living lifetimes was lost (")
    crashed = next((tmp_path / "runs").iterdir())
    assert torch.load(crashed / "checkpoint.pt", weights_only=True)["update"] == 1
    assert len(read_csv(crashed / "progress.csv")) == 1
    monkeypatch.setattr(m, "sample_tasks", real_sample)
    resumed = m.cli(["--resume", str(crashed / "checkpoint.pt"), "--ray-address", ray_cluster, "--num-workers", "1"])
    assert resumed == str(crashed)
    assert_same_run(m, resumed, reference)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads processes from /proc (Linux)")
@both
def test_sigterm_on_a_ray_cluster_stops_with_one_line_and_exit_143(m, ray_cluster, tmp_path):
    """ray.init installs its own SIGTERM handler (sys.exit(15), nothing printed): under --ray-address a SIGTERM still
    gives the one line with the resume command and exit status 143, as with local workers."""
    argv = tiny_argv(**{**STOP_RUN, "num_workers": 1}) + ["--ray-address", ray_cluster]
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, f"{m.SCRIPT}.py"), *argv], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("update 2/"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    ours = [line for line in err.splitlines() if line.startswith(("stopped", "error", "Traceback"))]
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert len(ours) == 1 and re.match(r"stopped by SIGTERM in update \d+; \S+ holds update \d+: continue with", ours[0])


@both
def test_no_ray_a_wrong_address_or_too_many_actors_stop_with_one_line(m, ray_cluster, tmp_path, monkeypatch, capsys):
    """Without Ray, --ray-address stops with one line naming the package and the version the tests install; so do
    an address where nothing or something else listens, and more actors than the cluster's CPUs (each would wait
    for long or for ever). Nothing is started."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(m, "RAY_WAIT", 1)
    listener = socket.create_server(("127.0.0.1", 0))  # something listens, but no Ray head (ray.init: 14 minutes)
    port = listener.getsockname()[1]
    pin = next(word for word in open(os.path.join(HERE, "README.md")).read().split() if word.startswith("ray=="))
    for argv, ray_missing, message in (
            (["--ray-address", "auto"], True, f"--ray-address needs Ray: pip install {pin}"),  # the tests' Ray
            (["--ray-address", "127.0.0.1:1"], False, "--ray-address 127.0.0.1:1: no Ray head answers there ("),
            (["--ray-address", f"127.0.0.1:{port}"], False, f"127.0.0.1:{port}: no Ray head answers there (no answer in 1 s)"),
            (["--ray-address", ray_cluster, "--num-workers", "3"], False,
             f"--num-workers 3: the Ray cluster at {ray_cluster} has 2 CPUs")):
        with monkeypatch.context() as patch:
            if ray_missing:
                patch.setitem(sys.modules, "ray", None)
            with pytest.raises(SystemExit) as exc:
                m.cli(tiny_argv(**RAY_RUN) + argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and err[-1].startswith("error: ") and message in err[-1]
        assert sum(line.startswith("error") for line in err) == 1 and not os.path.exists("runs")
