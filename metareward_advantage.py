"""Black-box meta-learning of an advantage function for sparse-reward environments (Pappalardo, Santos, Ramele, 2024,
arXiv 2407.21546, Sec. 5.2; the variant of metareward.py): an LSTM advantage agent phi (MetaNet) watches fresh
actor-only PPO agents learn a MetaWorld task from a sparse signal and gives them an advantage A^m_t for each
(s_t, a_t), used directly by their clipped surrogate (no critic, no GAE).
PPO (truncated BPTT) trains phi so that the agents reach a high *shaped* return. The method comes first, in the order
of Algorithm 1, down to `meta_train`; below the banner "WHAT RUNS IT": workers, checkpoints, logs, flag checks, `main`.
Sections, equations, Algorithm 1's lines and tables are those of arXiv v1. Where the code is not the paper's, a tag says
whose choice it is: [authors' code] (https://github.com/Octavio-Pappalardo/Meta-learning-rewards) or [ours: why]. The
README's deviations table lists each with its place.
"""
import copy
import csv
import math
import multiprocessing as mp
import os
import pickle
import random
import shutil
import signal
import socket
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal, Optional, Tuple

import metaworld
import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.distributions.normal import Normal

OBS_DIM, ACT_DIM = 39, 4  # MetaWorld's observation and action sizes (Appendix A.1)
# x_t, phi's input (Sec. 3), part by part: one place for its layout, used by run_lifetimes (which builds x_t in this
# order), MetaNet (which re-attaches the SCALARS parts after each encoder layer) and the tests. Add an input here.
# [authors' code] Sec. 3's tuple also holds pi^A_phi(A^m_(t-1)), the probability of phi's previous action: left out.
META_INPUT = dict(s=slice(0, 39), a=slice(39, 43), pi=slice(43, 44), r_e=slice(44, 45), d=slice(45, 46),
                  prev=slice(46, 47))  # s_t, a_t, pi(a_t|s_t), r^e_t, d_t, A^m_(t-1)
SCALARS = ("pi", "r_e", "d", "prev")  # the parts re-attached after each encoder layer
N_SCALARS = sum(META_INPUT[k].stop - META_INPUT[k].start for k in SCALARS)  # 4
META_INPUT_DIM = max(part.stop for part in META_INPUT.values())  # 47
SCRIPT = "metareward_advantage"  # checkpoints name the script that wrote them
TRACE_FILE = "advantage_trace.csv"  # per step of one evaluation lifetime: A^m next to the shaped reward
TRAIN, VALIDATION, EVALUATION = 0, 1, 2  # the first number of a lifetime's key
VALIDATION_SEED_OFFSET = 10_000  # the validation goals come from the benchmark built with seed + this
UPDATE_THREADS = torch.get_num_threads()  # the outer PPO's; lifetimes use 1 per process (one result whatever the count)


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (task sampling, network initialisation, sampling)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled, use CUDA for the outer PPO (an error where it is not available; lifetimes stay on the CPU)"""

    # Environments: MetaWorld's ML1 / ML10 (Sec. 4.1)
    benchmark: Optional[Literal["ML1", "ML10"]] = None
    """the MetaWorld meta-learning benchmark (None = ML1; with --eval-checkpoint, the network's)"""
    env_name: Optional[str] = None
    """the ML1 task class, ignored for ML10 (None = door-close-v3; with --eval-checkpoint, the network's)"""
    max_episode_steps: int = 500
    """episode length T (MetaWorld's max_path_length; lower it only for quick tests)"""
    num_workers: Optional[int] = None
    """processes (or Ray actors) living the lifetimes, a share each (None = the cores or the Ray cluster's CPUs, at
    most N; 1 = in this process); no result depends on it"""
    ray_address: Optional[str] = None
    """live the lifetimes on this Ray cluster: 'auto' (`ray start` on this machine) or HOST:PORT of its head (None =
    local processes); the outer PPO, logs and checkpoints stay here. Needs `pip install ray==2.60.0`"""

    # Meta-training: the outer loop (Algorithm 1; Table 2)
    num_outer_updates: Optional[int] = None
    """outer PPO updates (None = the authors' code: 500 for ML1, 1500 for ML10; 0 = evaluate the untrained network)"""
    lifetimes_per_update: int = 30
    """N, lifetimes per outer update (num_inner_loops_per_update); also the batch size of evaluation and validation"""
    lifetime_steps: int = 6000
    """env steps of one lifetime, L (Table 1's total_timesteps): L / T episodes, L / U - 1 inner updates (12 and 2 at
    the defaults); a longer L adds inner updates, each judged by the outer objective over --meta-nsteps steps"""
    meta_learning_rate: float = 5e-5
    """Adam learning rate of the reward network"""
    meta_anneal_lr: bool = False
    """decay the outer learning rate linearly to 0 over --num-outer-updates (the paper's is constant)"""
    meta_gamma: float = 0.9
    """per-episode discount of the outer objective J(phi) (Eq. 1 with A.2.2's per-episode discount)"""
    meta_nsteps: tuple[int, ...] = (2200, 2500, 2800, 3100, 3400, 3700)
    """horizons n of the n-step meta-advantages A^(n)_t (ae.starting_n 2200, ae.skip_rate 300, 6 estimates); n counts
    at step t if it reaches past the next inner update, n > U - t mod U: keep them above --steps-per-update"""
    meta_nsteps_fallback: tuple[int, ...] = (1, 301, 601, 901, 1201, 1501)
    """horizons used where no horizon of --meta-nsteps qualifies (the authors' code)"""
    meta_nstep_decay: float = 0.85
    """weight decay over horizons, ae.bootstrapping_lambda: A_t = sum_k 0.85^k A^(n_k) / sum_k 0.85^k"""
    reward_scale: float = 1e-4
    """e_rewards_target_mean: r~ = r / (exact mean of every per-step shaped reward of the class so far + 1e-7) * this"""
    outer_reward: Literal["shaped", "sparse"] = "shaped"
    """the reward of the outer objective J(phi): MetaWorld's shaped reward, normalised (the paper's, Sec. 4.1), or the
    agents' sparse signal r^e as it is (an open question of Sec. 6; see meta_train)"""
    tbptt_len: int = 400
    """truncated-BPTT chunk length of the outer PPO (ppo.k)"""
    meta_update_epochs: int = 12
    """epochs of the outer PPO"""
    meta_clip_coef: float = 0.2
    """surrogate clipping coefficient of the outer PPO"""
    meta_ent_coef: float = 0.0005
    """entropy coefficient of the outer PPO (Table 2's for the advantages)"""
    meta_vf_coef: float = 0.5
    """value-loss coefficient of the outer PPO"""
    meta_max_grad_norm: float = 0.5
    """gradient-norm clip of the outer PPO"""
    meta_target_kl: float = 0.01
    """stop the outer epochs once an epoch's approximate KL exceeds this"""
    meta_std_scale: float = 1.0
    """initial_std: the std of the meta-learned advantage is meta_std_scale * exp(head(h_t))"""

    # The inner PPO (Algorithm 1's inner loop; Table 1), re-initialised for every lifetime
    steps_per_update: int = 2000
    """U, env steps per inner PPO update (num_steps): L / U - 1 updates a lifetime, 2 at the defaults"""
    learning_rate: float = 3e-4
    """Adam learning rate of the inner agents"""
    update_epochs: int = 64
    """epochs of each inner PPO update"""
    num_minibatches: int = 16
    """minibatches per inner epoch"""
    norm_adv: bool = True
    """normalise the inner advantages per minibatch"""
    clip_coef: float = 0.2
    """surrogate clipping coefficient of the inner PPO"""
    ent_coef: float = 0.0
    """entropy coefficient of the inner PPO"""
    max_grad_norm: float = 0.5
    """gradient-norm clip of the inner PPO (per agent)"""

    # Evaluation (Sec. 4.3); the baselines (Sec. 5.1) are metareward.py's --inner-reward sparse|shaped
    eval_checkpoint: Optional[str] = None
    """evaluate this saved advantage network instead of meta-training one"""
    eval_split: Literal["train", "test"] = "test"
    """the tasks of the final evaluation"""
    eval_tasks: Optional[int] = None
    """evaluate on the first this-many tasks of the split (None = all)"""
    eval_repeats: int = 10
    """lifetimes per evaluation task"""
    eval_seeds: Tuple[int, ...] = ()
    """evaluation seeds, mean +- std over them (the paper's +- is over networks: see tools/); none: --seed alone"""
    eval_deterministic_episodes: int = 4
    """episodes of the deterministic final policy after each evaluation lifetime"""
    val_every: int = 25
    """validate the reward network every this many outer updates (0 = never); keeps the best"""
    val_tasks: int = 60
    """validation lifetimes (Table 2), one per fresh goal of the train classes: 60 take about 3.5 min on 2 cores here
    (8 s per update at --val-every 25), 10 (the shipped update-50 runs) about 40 s"""
    val_patience: int = 0
    """stop meta-training once validation has not improved for this many updates (A.2.2: 200); 0 = never
    ([authors' code] a fixed --num-outer-updates)"""
    eval_network: Literal["last", "best"] = "last"
    """the network a meta-training run evaluates at its end: the last, or the best validated (meta_net_best.pt)"""

    # Checkpoints
    save_every: int = 5
    """write the checkpoint every this many outer updates (and at the end)"""
    keep_every: int = 0
    """also keep the network every this many outer updates, and the untrained one, as meta_net_uNNN.pt beside
    checkpoint.pt (0 = never): learning curves afterwards, each file an --eval-checkpoint"""
    resume: Optional[str] = None
    """continue the run of this checkpoint (its settings; --num-outer-updates may extend it)"""


# Tasks, environments and the sparse signal (Sec. 4.1, Appendix A.1) -------------------------------------------------
def make_benchmark(args, seed=None):
    """The MetaWorld benchmark; its seed (default --seed) fixes the train/test goal positions. [ours: MetaWorld v3,
    the maintained release; the paper's is v2]"""
    seed = args.seed if seed is None else seed
    return metaworld.ML1(args.env_name, seed=seed) if args.benchmark == "ML1" else metaworld.ML10(seed=seed)


def sample_tasks(classes, tasks, n, rng, flag="--lifetimes-per-update"):
    """Algorithm 1, line 4: n tasks M^i ~ p(M), lifetime i on class i mod C and a distinct goal of it drawn with rng
    (None: in order); flag names n in the error."""
    names = list(classes)
    by_class = {c: [t for t in tasks if t.env_name == c] for c in names}
    need, have = math.ceil(n / len(names)), min(len(v) for v in by_class.values())
    if need > have:
        raise ConfigError(f"{flag} {n} needs {need} distinct tasks per class, but there are only {have}")
    perms = {c: rng.permutation(len(by_class[c])) if rng else np.arange(len(by_class[c])) for c in names}
    return [by_class[names[i % len(names)]][perms[names[i % len(names)]][i // len(names)]] for i in range(n)]


def evaluation_tasks(args, benchmark):
    """The tasks of the final evaluation: the first --eval-tasks of --eval-split, class by class in turn."""
    classes, tasks = ((benchmark.test_classes, benchmark.test_tasks) if args.eval_split == "test"
                      else (benchmark.train_classes, benchmark.train_tasks))
    return sample_tasks(classes, tasks, args.eval_tasks or len(tasks), None, "--eval-tasks")


def validation_tasks(args):
    """Table 2's validation goals, fresh goals of the train classes: [ours: the paper does not say which] the train,
    then the test goals of another seed's benchmark (ML1 has 50 of each, so 60 lifetimes fit)."""
    val = make_benchmark(args, args.seed + VALIDATION_SEED_OFFSET)
    return sample_tasks(val.train_classes, val.train_tasks + val.test_tasks, args.val_tasks, None, "--val-tasks")


class EnvGroup:
    """The environments of some lifetimes, stepped one after another. What comes in is MetaWorld's observation
    with the goal position (obs[36:39]) zeroed, its default (Appendix A.1): the goal must be found, not read."""

    def __init__(self, classes, max_episode_steps):
        self.classes, self.max_episode_steps, self.envs, self.seconds = classes, max_episode_steps, [], 0.0

    def set_tasks(self, tasks):
        """Give each env its lifetime's task (re-using envs of the right class); return the first observations."""
        start, old = time.perf_counter(), {}
        for env in self.envs:
            old.setdefault(env.__class__, []).append(env)
        self.envs = []
        for task in tasks:
            cls = self.classes[task.env_name]
            env = old[cls].pop() if old.get(cls) else cls()
            env.max_path_length = self.max_episode_steps
            env.set_task(task)
            self.envs.append(env)
        obs = np.stack([env.reset()[0] for env in self.envs]).astype(np.float32)
        self.seconds += time.perf_counter() - start
        return obs

    def step(self, actions):
        """Step every env; at an episode's end the returned obs is the next episode's first."""
        start, results = time.perf_counter(), []
        for env, action in zip(self.envs, actions):
            o, r, _, truncated, info = env.step(action)
            if truncated:  # episodes are exactly max_episode_steps long: success does not end one
                o, _ = env.reset()
            results.append((o, r, info["success"]))
        obs, rewards, successes = zip(*results)
        self.seconds += time.perf_counter() - start
        return np.stack(obs).astype(np.float32), np.array(rewards, np.float32), np.array(successes) > 0


def sparse_reward(success, k, solved, episode_len):
    """The sparse signal r^e_t (Sec. 4.1, "Availability of Rewards"): 1 - 0.7 k/T at the first success of an episode
    (k = 0-based step index), -0.2 at its last step if it never succeeded, 0 otherwise. Returns (r^e_t, solved)."""
    if k == 0:
        solved = torch.zeros_like(solved)
    first = success & ~solved
    solved = solved | success
    r = torch.where(first, 1.0 - 0.7 * k / episode_len, 0.0)
    if k == episode_len - 1:
        r = torch.where(solved, r, -0.2)
    return r, solved


# The inner agents (Sec. 4.2; A.2.2 "Architectures") -----------------------------------------------------------------
def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class InnerAgents(nn.Module):
    """N fresh actor-only PPO agents theta (Sec. 5.2, A.2.2: no inner critic): 39 -> 64 -> 64 -> 4, state-independent
    log-std."""

    def __init__(self, n, generators=None):
        super().__init__()
        # StackedMLP (below): N independent MLPs, tanh, orthogonal init (gain sqrt(2), the last given)
        self.actor_mean = StackedMLP(n, [OBS_DIM, 64, 64, ACT_DIM], out_gain=0.01, generators=generators)
        self.actor_logstd = nn.Parameter(torch.zeros(n, 1, ACT_DIM))  # log(1.0)

    def get_action(self, obs, action=None, noise=None):
        """obs (N, B, 39). Without `action`, a ~ pi(.|s) is drawn as mean + std * noise (N, B, 4)."""
        mean = self.actor_mean(obs)
        probs = Normal(mean, self.actor_logstd.exp().expand_as(mean), validate_args=False)
        if action is None:
            action = mean + probs.stddev * noise
        return action, probs.log_prob(action).sum(-1), probs.entropy().sum(-1)


# N agents in one batch: each agent's numbers the same whatever N is -------------------------------------------------
class StackedMLP(nn.Module):
    """N independent tanh MLPs, one per agent: weights (N, in, out), one batched matmul per layer
    (a matmul per agent of the same shape whatever N is, so an agent's numbers do not depend on N)."""

    def __init__(self, n, sizes, out_gain, generators=None):
        super().__init__()
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            gain = out_gain if i == len(sizes) - 2 else np.sqrt(2)
            w = torch.empty(n, fan_out, fan_in)
            for agent in range(n):  # orthogonal init of each agent's (out, in) matrix, as nn.Linear
                torch.nn.init.orthogonal_(w[agent], gain, generator=generators[agent] if generators else None)
            self.weights.append(nn.Parameter(w.transpose(1, 2).contiguous()))
            self.biases.append(nn.Parameter(torch.zeros(n, 1, fan_out)))

    def forward(self, x):  # x: (N, B, in) -> (N, B, out)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            # a one-output layer as a sum of products: bmm rounds its 1-agent, 1-output case differently
            x = b + (x * w.transpose(1, 2)).sum(-1, keepdim=True) if w.shape[-1] == 1 else torch.baddbmm(b, x, w)
            if i < len(self.weights) - 1:
                x = torch.tanh(x)
        return x


def clip_grad_norm_per_agent_(params, max_norm):
    """torch.nn.utils.clip_grad_norm_ for each agent's slice (the leading dim) separately."""
    norms = sum(p.grad.pow(2).flatten(1).sum(1) for p in params).sqrt()  # (N,), summed in the same order for any N
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(scale.view(-1, *([1] * (p.dim() - 1))))


# The reward network phi (Sec. 3; A.2.2 "Architectures"; Table 2) ----------------------------------------------------
class MetaNet(nn.Module):
    """phi, the advantage agent pi^A_phi(A^m_t | x_1..x_t): an encoder of (128, 32) with the SCALARS scalar
    inputs re-attached after each layer (so the layers are 128 - N_SCALARS and 32 - N_SCALARS wide), an LSTM of 128 over
    the whole lifetime, heads for A^m_t's mean (arctan of a (128, 128) MLP) and std, and the outer critic V_t."""

    def __init__(self, std_scale=1.0, hidden=128):
        super().__init__()
        self.std_scale = std_scale
        self.fc1 = layer_init(nn.Linear(META_INPUT_DIM, 128 - N_SCALARS))
        self.fc2 = layer_init(nn.Linear(128, 32 - N_SCALARS))
        self.lstm = nn.LSTM(32, hidden, batch_first=True)  # rnn_input_size 32, rnn_hidden_state_size 128
        for name, param in self.lstm.named_parameters():
            if "bias" in name:
                nn.init.constant_(param, 0)
            elif "weight" in name:
                nn.init.orthogonal_(param, 1.0)
        self.mean_head = nn.Sequential(layer_init(nn.Linear(hidden, 128)), nn.Tanh(),
                                       layer_init(nn.Linear(128, 128)), nn.Tanh(),
                                       layer_init(nn.Linear(128, 1), std=0.01))
        self.logstd_head = nn.Sequential(layer_init(nn.Linear(hidden, 128)), nn.Tanh(),
                                         layer_init(nn.Linear(128, 1), std=0.01))
        self.critic = nn.Sequential(layer_init(nn.Linear(hidden, 512)), nn.Tanh(),
                                    layer_init(nn.Linear(512, 1), std=1.0))

    def initial_state(self, n, device=None):  # the recurrent state at the start of n lifetimes
        return tuple(torch.zeros(1, n, self.lstm.hidden_size, device=device) for _ in range(2))  # (h, c)

    def detach_state(self, state):  # the state without its graph (truncated BPTT)
        return tuple(s.detach() for s in state)

    def forward(self, x, state):
        """x: (N, S, 47) inputs of S consecutive steps -> mean, std, value (N, S) and the recurrent state."""
        scalars = torch.cat([x[..., META_INPUT[k]] for k in SCALARS], -1)
        h = torch.cat([torch.relu(self.fc1(x)), scalars], -1)  # [authors' code] ReLU (A.2.2: all others tanh)
        h = torch.cat([torch.relu(self.fc2(h)), scalars], -1)
        h, state = self.lstm(h, state)
        mean = torch.atan(self.mean_head(h)).squeeze(-1)
        std = self.std_scale * torch.exp(self.logstd_head(h)).squeeze(-1)
        return mean, std, self.critic(h).squeeze(-1), state

    def step(self, x, state):
        """forward() for one step of N lifetimes (x: (N, 47)), the same function written out row by row: how a
        batched matmul or torch.sigmoid rounds depends on its row count, so forward(x[:, None]) would make a
        lifetime's A^m depend on the lifetimes beside it, i.e. on --num-workers (test_worker_processes_give_the_same_
        run fails). Change forward, change this too: test_step_is_forward compares them."""
        def linear(v, weight, bias):  # v @ weight.T + bias, one (1, in) @ (in, out) product per row
            return torch.baddbmm(bias, v[:, None], weight.t().expand(len(v), -1, -1))[:, 0]

        def per_row(module, v):  # module(v), each nn.Linear through linear()
            for layer in module:
                v = linear(v, layer.weight, layer.bias) if isinstance(layer, nn.Linear) else layer(v)
            return v
        scalars = torch.cat([x[:, META_INPUT[k]] for k in SCALARS], -1)
        h = torch.cat([torch.relu(linear(x, self.fc1.weight, self.fc1.bias)), scalars], -1)
        h = torch.cat([torch.relu(linear(h, self.fc2.weight, self.fc2.bias)), scalars], -1)
        h0, c0 = state[0][0], state[1][0]  # one LSTM cell step, gates in PyTorch's order i, f, g, o
        gates = (linear(h, self.lstm.weight_ih_l0, self.lstm.bias_ih_l0)
                 + linear(h0, self.lstm.weight_hh_l0, self.lstm.bias_hh_l0))
        i, f, g, o = gates.chunk(4, 1)
        sigmoid = lambda v: 1 / (1 + torch.exp(-v))  # torch.sigmoid's rounding depends on the batch size
        c = sigmoid(f) * c0 + sigmoid(i) * torch.tanh(g)
        h = sigmoid(o) * torch.tanh(c)
        mean = torch.atan(per_row(self.mean_head, h)).squeeze(-1)
        std = self.std_scale * torch.exp(per_row(self.logstd_head, h)).squeeze(-1)
        return mean, std, per_row(self.critic, h).squeeze(-1), (h[None], c[None])


# The inner PPO (Algorithm 1, line 10; Table 1) ----------------------------------------------------------------------
def inner_ppo_update(agents, optimizer, obs, actions, logprobs, advantages, perms, args):
    """PPO on each agent's own (N, B) batch and shuffles perms (epochs, N, B): the loss sums per-agent means, so
    each agent's gradient is its own; the clipped surrogate on the meta-learned advantages."""
    n, b = advantages.shape
    mb = b // args.num_minibatches
    rows = torch.arange(n, device=obs.device)[:, None]
    params = list(agents.parameters())
    for epoch in range(args.update_epochs):
        p = perms[epoch]
        e_obs, e_act, e_logp, e_adv = (x[rows, p] for x in (obs, actions, logprobs, advantages))
        for start in range(0, b, mb):
            sl = slice(start, start + mb)
            _, newlogprob, entropy = agents.get_action(e_obs[:, sl], e_act[:, sl])
            ratio = (newlogprob - e_logp[:, sl]).exp()
            mb_adv = e_adv[:, sl]
            if args.norm_adv:
                mb_adv = (mb_adv - mb_adv.mean(1, keepdim=True)) / (mb_adv.std(1, keepdim=True) + 1e-8)
            pg_loss = torch.max(-mb_adv * ratio, -mb_adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef))
            loss = (pg_loss - args.ent_coef * entropy).mean(1).sum()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite inner PPO loss in epoch {epoch}")
            optimizer.zero_grad()
            loss.backward()
            clip_grad_norm_per_agent_(params, args.max_grad_norm)  # clip_grad_norm_ of each agent's own
            optimizer.step()


# A lifetime (Algorithm 1, lines 6-12) -------------------------------------------------------------------------------
def run_lifetimes(envs, tasks, keys, meta_net, args, evaluation=False, on_block=None):
    """N fresh agents each live one lifetime, learning only from phi's advantages A^m (sampled; their mean in
    evaluation, Sec. 4.3).
    Evaluation then runs the final policy's mean action for a few episodes. on_block(steps done) after each block of
    U steps. Returns the record, tensors (N, steps, ...)."""
    n, L, T, U = len(tasks), args.lifetime_steps, args.max_episode_steps, args.steps_per_update
    steps = L + (args.eval_deterministic_episodes * T if evaluation else 0)
    # every random number of a lifetime (theta's init, the action and A^m noise, the shuffles) comes from its key, so
    # that it is the same in any worker: (TRAIN, seed, update, i), (VALIDATION or EVALUATION, seed, task, repeat)
    # [ours: the authors' code seeds every worker alike, or not at all]
    generators = [torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0])) for key in keys]
    agents = InnerAgents(n, generators)  # line 6: pi_theta (no inner critic), new for every lifetime
    optimizer = torch.optim.Adam(agents.parameters(), lr=args.learning_rate, eps=1e-5)
    noise = torch.stack([torch.randn(steps, ACT_DIM + 1, generator=g) for g in generators])  # a_t's (4), A^m_t's (1)
    z = lambda *shape: torch.zeros((n, steps) + shape)
    obs, actions, logprobs = z(OBS_DIM), z(ACT_DIM), z()
    # phi's inputs x_t, actions A^m_t, their log-probs, its values V_t; r^e_t, the shaped reward, the success flags
    meta_inputs, meta_actions, meta_logprobs, meta_values = z(META_INPUT_DIM), z(), z(), z()
    sparse, shaped, success = z(), z(), z()
    next_obs = torch.as_tensor(envs.set_tasks(tasks))
    state = meta_net.initial_state(n)
    prev_a, solved = torch.zeros(n), torch.zeros(n, dtype=torch.bool)  # A^m_(t-1); each episode solved so far
    for t in range(steps):  # lines 8-12: the lifetime, in blocks of U steps
        k = t % T  # step index within the episode
        obs[:, t] = next_obs
        with torch.no_grad():
            if t < L:  # line 9: a_t ~ pi_theta(.|s_t), from the lifetime's noise
                action, logprob, _ = agents.get_action(next_obs[:, None], noise=noise[:, t, None, :ACT_DIM])
                actions[:, t], logprobs[:, t] = action[:, 0], logprob[:, 0]
            else:  # evaluation: the final policy made deterministic (its mean action)
                action = agents.actor_mean(next_obs[:, None])
        o, r, s = envs.step(action[:, 0].clamp(-1, 1).numpy())  # stored unclipped, clipped for the env
        next_obs, shaped[:, t], success[:, t] = torch.as_tensor(o), torch.as_tensor(r), torch.as_tensor(s)
        sparse[:, t], solved = sparse_reward(success[:, t] > 0, k, solved, T)
        if t < L:
            # phi's input (Sec. 3, as for r^i): x_t = [s_t, a_t, pi(a_t|s_t), r^e_t x 3, d_t x 2, A^m_(t-1)], with
            # d_t = 1 at an episode's first step; [authors' code] the scale factors 3 and 2, no pi^A_phi(A^m_(t-1))
            parts = dict(s=obs[:, t], a=actions[:, t], pi=logprobs[:, t, None].exp(), r_e=3.0 * sparse[:, t, None],
                         d=torch.full((n, 1), 2.0 if k == 0 else 0.0), prev=prev_a[:, None])
            x = torch.cat([parts[name] for name in META_INPUT], 1)  # in META_INPUT's order
            meta_inputs[:, t] = x
            with torch.no_grad():
                mean, std, meta_values[:, t], state = meta_net.step(x, state)
                # A^m_t ~ N(mean, std) in training (its mean in evaluation): the inner advantage, and fed back
                prev_a = mean if evaluation else mean + std * noise[:, t, ACT_DIM]
                meta_actions[:, t] = prev_a
                meta_logprobs[:, t] = Normal(mean, std, validate_args=False).log_prob(prev_a)
        if (t + 1) % U == 0 and t + 1 < L:  # line 10: PPO on the block just lived, with A^m as its advantages
            blk = slice(t + 1 - U, t + 1)
            perms = torch.stack([torch.rand(args.update_epochs, U, generator=g).argsort(-1) for g in generators], 1)
            inner_ppo_update(agents, optimizer, obs[:, blk], actions[:, blk], logprobs[:, blk],
                             meta_actions[:, blk], perms, args)
        if on_block and ((t + 1) % U == 0 or t + 1 == steps):
            on_block(t + 1)
    return dict(meta_inputs=meta_inputs[:, :L], meta_actions=meta_actions[:, :L], meta_logprobs=meta_logprobs[:, :L],
                meta_values=meta_values[:, :L], sparse=sparse, shaped=shaped, success=success)


# The outer reward and the meta-advantage estimator (Eq. 1; A.2.2; Table 2's ae.* rows) -----------------------------
class ShapedRewardNormalizer:
    """The outer reward (A.2.2, reward normalisation): the shaped reward normalised per task class,
    r~ = r / (mean of the class's per-step shaped reward + 1e-7) * scale (e_rewards_target_mean). [ours: the exact
    mean of every reward of the class so far, this batch's included; the authors' code keeps a running mean]"""

    def __init__(self, class_names, scale):
        self.scale, self.count, self.mean = scale, {c: 0 for c in class_names}, {c: 0.0 for c in class_names}

    def update(self, shaped, class_names):
        for c in set(class_names):
            rows = shaped[[i for i, name in enumerate(class_names) if name == c]]
            total = self.count[c] + rows.numel()
            self.mean[c] += (rows.double().mean().item() - self.mean[c]) * rows.numel() / total
            self.count[c] = total

    def __call__(self, shaped, class_names):
        means = torch.tensor([self.mean[c] for c in class_names], device=shaped.device)[:, None]
        return shaped / (means + 1e-7) * self.scale


def meta_advantages(rewards, values, args):
    """A.2.2's "bootstrapping skipping uninfluenced future rewards" on (N, L) rewards r~ and values V.
    phi's action at t first changes behaviour at the next inner update, s_t = t + u_t with u_t = U - (t mod U): the
    rewards before s_t are skipped. With ep(j) the episode of step j and g = meta_gamma (Eq. 1, discounted per
    episode), for each horizon n with u_t < n and t + n < L:
      A^(n)_t = sum_{j=s_t}^{t+n-1} g^(ep(j)-ep(s_t)) r~_j + g^(ep(t+n)-ep(s_t)) V_(t+n) - V_t,
    and A_t = sum_k decay^k A^(n_k) / sum_k decay^k over the qualifying n_k in increasing order. The horizons are
    Table 2's: n = ae.starting_n + k ae.skip_rate for k < ae.num_n_step_estimates (2200, 2500, ..., 3700), decay =
    ae.bootstrapping_lambda (0.85). Where none qualifies, the authors' code's fallback horizons (1, 301, ..., 1501);
    where none of those either (the last block, whose rewards feed no update), the Monte-Carlo target
    sum_{j>=t} g^(ep(j)-ep(t)) r~_j [ours: the authors' code has NaN there], so the critic learns wherever it
    bootstraps. Returns A_t and A_t + V_t."""
    L, T, U, g = rewards.shape[1], args.max_episode_steps, args.steps_per_update, args.meta_gamma
    dev = rewards.device
    r, v = rewards.double(), values.double()
    t = torch.arange(L, device=dev)
    s = (t // U + 1) * U  # s_t = t + u_t
    # prefix sums: C[:, j] = sum_{i<j} g^ep(i) r~_i, so the discounted sum over [a, e) is (C_e - C_a) / g^ep(a)
    disc = g ** torch.arange(L // T + 1, device=dev).double()  # g^ep for ep = 0 .. L/T
    C = torch.cat([torch.zeros_like(r[:, :1]), torch.cumsum(disc[t // T] * r, 1)], 1)

    def nstep(horizons):  # the decay-weighted mean of A^(n)_t + V_t over the qualifying n; where any qualifies
        n = torch.tensor(horizons, device=dev)[:, None]  # (K, 1)
        e = t + n  # (K, L)
        valid = (s - t < n) & (e < L)
        e = e.clamp(max=L - 1)
        sc = s.clamp(max=L)
        ret = (C[:, e] - C[:, sc].unsqueeze(1)) / disc[sc // T] + disc[e // T] / disc[sc // T] * v[:, e]  # (N, K, L)
        # decay^k, k counting only the qualifying horizons of step t (its k-th qualifying one gets decay^k)
        weights = args.meta_nstep_decay ** (valid.cumsum(0) - 1).clamp(min=0).double() * valid
        return (weights * ret).sum(1) / weights.sum(0).clamp(min=1e-12), valid.any(0)
    primary, has_primary = nstep(args.meta_nsteps)
    fallback, has_fallback = nstep(args.meta_nsteps_fallback)
    monte_carlo = (C[:, L:] - C[:, :L]) / disc[t // T]
    targets = torch.where(has_primary, primary, torch.where(has_fallback, fallback, monte_carlo))
    advantages = targets - v
    return advantages.float(), targets.float()


# The outer PPO (Algorithm 1, line 15; A.2.2 truncated BPTT; Table 2) ------------------------------------------------
def tbptt_chunks(num_steps, tbptt_len, offset):
    """Chunk bounds [0, d), [d, d + len), ... over num_steps: the first chunk has the random length d."""
    bounds = [0] + list(range(offset, num_steps, tbptt_len)) + [num_steps]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def outer_ppo_update(meta_net, optimizer, batch, advantages, returns, args):
    """PPO on phi, truncated BPTT from a lifetime's initial state, one Adam step per chunk of all N lifetimes (Table 2's
    num_minibatches "0", A.2.2). The policy and entropy terms use the steps before the last inner update (later
    rewards feed no update), the value loss every step [ours: the estimator bootstraps from V at every step]."""
    x, r, old_logprobs = batch["meta_inputs"], batch["meta_actions"], batch["meta_logprobs"]
    n, L = r.shape
    policy_steps = L - args.steps_per_update
    adv = advantages[:, :policy_steps]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # normalised over the whole batch
    stats = dict(policy_loss=[], value_loss=[], entropy=[], old_approx_kl=[], approx_kl=[], clipfrac=[])
    for epoch in range(args.meta_update_epochs):
        # [authors' code] a random first chunk, d in [1, ppo.k], each epoch (torch's generator: --resume restores it)
        offset = int(torch.randint(1, args.tbptt_len + 1, ()))
        state = meta_net.initial_state(n, x.device)
        kl_sum, kl_count = 0.0, 0
        for a, b in tbptt_chunks(L, args.tbptt_len, offset):
            mean, std, newvalue, state = meta_net(x[:, a:b], state)  # the stored inputs, replayed exactly
            state = meta_net.detach_state(state)
            v_loss = 0.5 * (newvalue - returns[:, a:b]).pow(2).mean()
            loss = args.meta_vf_coef * v_loss
            pb = min(b, policy_steps)
            if pb > a:
                probs = Normal(mean[:, : pb - a], std[:, : pb - a], validate_args=False)
                logratio = probs.log_prob(r[:, a:pb]) - old_logprobs[:, a:pb]
                ratio = logratio.exp()
                mb_adv = adv[:, a:pb]
                pg_loss = torch.max(-mb_adv * ratio, -mb_adv * ratio.clamp(1 - args.meta_clip_coef,
                                                                           1 + args.meta_clip_coef)).mean()
                entropy = probs.entropy().mean()
                loss = loss + pg_loss - args.meta_ent_coef * entropy
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - logratio).mean()
                    kl_sum, kl_count = kl_sum + approx_kl.item() * logratio.numel(), kl_count + logratio.numel()
                    clipfrac = ((ratio - 1).abs() > args.meta_clip_coef).float().mean()
                    for k, v in dict(policy_loss=pg_loss, entropy=entropy, old_approx_kl=(-logratio).mean(),
                                     approx_kl=approx_kl, clipfrac=clipfrac).items():
                        stats[k].append(v.item())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite outer loss in epoch {epoch}, steps [{a}, {b})")
            stats["value_loss"].append(v_loss.item())
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(meta_net.parameters(), args.meta_max_grad_norm)
            optimizer.step()
        if kl_count and kl_sum / kl_count > args.meta_target_kl:
            break
    return {**{k: float(np.mean(v)) if v else float("nan") for k, v in stats.items()}, "epochs": epoch + 1}


# Evaluation (Sec. 4.3) ----------------------------------------------------------------------------------------------
def episode_success(success, episode_len):
    """(N, steps) per-step success flags -> (N, episodes): 1 where the episode succeeded at some step."""
    return success.view(len(success), -1, episode_len).amax(-1)


def success_columns(args):
    return [f"success_ep{e + 1:02d}" for e in range(args.lifetime_steps // args.max_episode_steps)] + ["success_det"]


def evaluate(lifetimes, tasks, meta_net, args, repeats, seed, kind=EVALUATION):
    """The paper's evaluation: per task, `repeats` fresh agents each live a lifetime taught by phi's mean, then
    episodes of their final policy's mean action. Keys (kind, seed, task, repeat), batches of at most N. Returns a
    row per lifetime (success per episode; success_det over the deterministic episodes) and the first's record."""
    lifetimes_ = [(i, rep) for i in range(len(tasks)) for rep in range(repeats)]
    episodes, rows, first = args.lifetime_steps // args.max_episode_steps, [], None
    progress = Progress(f"{['', 'validation', 'evaluation'][kind]} seed {seed}: lifetimes", len(lifetimes_),
                        logged=kind == EVALUATION)
    for chunk in np.array_split(np.arange(len(lifetimes_)), math.ceil(len(lifetimes_) / args.lifetimes_per_update)):
        chunk = [lifetimes_[c] for c in chunk]
        batch = lifetimes.run([tasks[i] for i, _ in chunk], [(kind, seed, i, rep) for i, rep in chunk],
                              meta_net, args, evaluation=True)
        for (i, rep), s in zip(chunk, episode_success(batch["success"], args.max_episode_steps).tolist()):
            rows.append({"task": i, "env_name": tasks[i].env_name, "repeat": rep, "seed": seed,
                         **dict(zip(success_columns(args), s[:episodes] + [float(np.mean(s[episodes:]))]))})
        first = first or {k: v[0] for k, v in batch.items()}
        progress(len(rows))
    return rows, first


def validate(lifetimes, tasks, meta_net, args):
    """Table 2's validation: phi's mean teaches one fresh agent per validation goal. Returns the success on the last 4
    episodes, deterministic, and the score that keeps the best phi [ours: the paper does not say how]: their mean
    (a later phi is kept only if it scores higher)."""
    rows, _ = evaluate(lifetimes, tasks, meta_net, args, 1, args.seed, VALIDATION)
    last4 = float(np.mean([[r[c] for c in success_columns(args)[-5:-1]] for r in rows]))
    det = float(np.mean([r["success_det"] for r in rows]))
    return last4, det, (last4 + det) / 2


def patience_over(update, best_update, args):
    """A.2.2's stopping rule: after `update`, validation has not improved for --val-patience updates (0: never)."""
    return bool(args.val_patience) and update - best_update >= args.val_patience


# Algorithm 1 --------------------------------------------------------------------------------------------------------
def meta_train(args, benchmark, lifetimes, run):
    """Algorithm 1: outer PPO updates of phi on the lifetimes it teaches. `run` (below the banner) keeps the run's
    folder: its logs, validation, checkpoints and --resume."""
    meta_net = MetaNet(args.meta_std_scale).to(run.device)  # line 1: phi and the outer critic
    optimizer = torch.optim.Adam(meta_net.parameters(), lr=args.meta_learning_rate, eps=1e-5)
    normalizer = ShapedRewardNormalizer(benchmark.train_classes, args.reward_scale)
    task_rng = np.random.default_rng(args.seed)  # line 1: p(M), the train tasks
    run.restore(meta_net, optimizer, normalizer, task_rng)  # --resume: all of it as checkpointed
    for update in run.updates():  # line 2: --num-outer-updates, or (A.2.2) until validation stops improving
        if patience_over(update - 1, run.best_update, args):
            print(f"validation has not improved for {args.val_patience} updates (the best: update {run.best_update}): "
                  "meta-training stops (A.2.2)")
            break
        if args.meta_anneal_lr:  # not the paper's: a schedule for short runs (the teaching command)
            optimizer.param_groups[0]["lr"] = (1 - (update - 1) / args.num_outer_updates) * args.meta_learning_rate
        # line 4: a batch of N tasks from p(M), each lifetime's random numbers drawn from its key
        tasks = sample_tasks(benchmark.train_classes, benchmark.train_tasks, args.lifetimes_per_update, task_rng)
        keys = [(TRAIN, args.seed, update, i) for i in range(len(tasks))]
        batch = lifetimes.run(tasks, keys, meta_net, args, progress=run.progress_line(update))  # lines 5-14
        batch = {k: v.to(run.device) for k, v in batch.items()}
        # the outer reward r~ and the meta-advantages A_t of Eq. 1's objective. [ours: --outer-reward sparse] r^e as it
        # is: the normaliser would divide it by its class mean, negative while nothing succeeds, reversing the
        # objective. r^e is alike for every class, and the outer PPO normalises the advantages over the batch: only
        # the critic sees its scale (-0.2 to 1 per episode; the normalised shaped reward: about 0.05 = 500 x 1e-4)
        classes = [task.env_name for task in tasks]
        normalizer.update(batch["shaped"], classes)
        outer = normalizer(batch["shaped"], classes) if args.outer_reward == "shaped" else batch["sparse"]
        advantages, returns = meta_advantages(outer, batch["meta_values"], args)
        stats = outer_ppo_update(meta_net, optimizer, batch, advantages, returns, args)  # line 15
        run.validate(update, meta_net)  # every --val-every updates: held-out lifetimes; the best phi kept
        run.log(update, batch, returns, stats)  # progress.csv, TensorBoard, one line
        run.checkpoint(update, meta_net, optimizer, normalizer, task_rng)  # every --save-every updates
    return meta_net


# ====================================================================================================================
# WHAT RUNS IT: flag checks, lifetime workers (processes or Ray actors), checkpoints and --resume, logs, results, main.
# Nothing below changes a number of the method above: it decides where the lifetimes are lived, what is written and
# when, and which flags are accepted (tests compare runs on 1, 2 and 3 workers, on Ray and resumed, number for number).
# ====================================================================================================================
class ConfigError(ValueError):
    """Bad input (settings or checkpoint): reported as one line and a non-zero exit, before any work is done."""


class WorkerLost(RuntimeError):
    """A worker living lifetimes died (its process or Ray node): one line and exit status 2, the last checkpoint kept
    for --resume."""


class WriteError(RuntimeError):
    """A file that could not be written (a full disk, a read-only folder): one line naming it and what is whole."""


class Stopped(KeyboardInterrupt):
    """SIGTERM (from a scheduler, `timeout`, `kill`), raised as Ctrl-C's KeyboardInterrupt: one line, no traceback."""


def check_args(args):
    """Fill the benchmark-dependent defaults and reject inconsistent settings early."""
    args.benchmark, args.env_name = args.benchmark or "ML1", args.env_name or "door-close-v3"
    if args.num_outer_updates is None:
        args.num_outer_updates = 500 if args.benchmark == "ML1" else 1500
    if args.benchmark == "ML1" and args.env_name not in metaworld.ML1.ENV_NAMES:
        raise ConfigError(f"unknown --env-name {args.env_name!r}; valid: {', '.join(metaworld.ML1.ENV_NAMES)}")
    if args.num_workers is None and not args.ray_address:  # one process per core here, at most one per lifetime
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        args.num_workers = min(cores, args.lifetimes_per_update)
    ranges = {  # what each flag must be (NaN fails every comparison; None is --eval-tasks' default: all)
        "at least 0": ("num_outer_updates keep_every val_patience", lambda x: x >= 0),
        "in [0, 2**32 - 1] (numpy's seeds)": ("seed", lambda x: 0 <= x < 2**32),
        "at least 1": ("max_episode_steps lifetime_steps steps_per_update lifetimes_per_update "
                       "tbptt_len num_workers update_epochs num_minibatches meta_update_epochs save_every "
                       "eval_repeats eval_deterministic_episodes eval_tasks", lambda x: x is None or x >= 1),
        "finite and > 0": ("meta_learning_rate learning_rate meta_std_scale reward_scale", lambda x: 0 < x < math.inf),
        "in (0, 1]": ("meta_gamma", lambda x: 0 < x <= 1),  # the estimator divides by meta_gamma^episode
        "in [0, 1]": ("meta_nstep_decay", lambda x: 0 <= x <= 1),
        "> 0": ("meta_clip_coef clip_coef meta_max_grad_norm max_grad_norm meta_target_kl", lambda x: x > 0),
        "finite and >= 0": ("meta_ent_coef meta_vf_coef ent_coef", lambda x: 0 <= x < math.inf)}
    for what, (names, valid) in ranges.items():
        for name in names.split():
            if not valid(getattr(args, name)):
                raise ConfigError(f"--{name.replace('_', '-')} must be {what}, got {getattr(args, name)}")
    L, U, T = args.lifetime_steps, args.steps_per_update, args.max_episode_steps
    training = not args.eval_checkpoint and args.num_outer_updates > 0
    checks = [  # (bad, message), in order
        (training and (args.val_every < 0 or (args.val_every and args.val_tasks < 1)), "--val-every must be at least "
         f"0 and --val-tasks at least 1 when validating, got {args.val_every} and {args.val_tasks}"),
        (L % U, f"--lifetime-steps {L} is not a multiple of --steps-per-update {U}"),
        (U % T, f"--steps-per-update {U} is not a multiple of the episode length --max-episode-steps {T}"),
        (L // U < 2, "a lifetime needs at least one inner update and a block after it: "
         "--lifetime-steps must be at least 2 x --steps-per-update"),
        (U % args.num_minibatches, f"--steps-per-update {U} is not divisible by --num-minibatches "
         f"{args.num_minibatches}"),
        (training and args.tbptt_len > L, f"--tbptt-len {args.tbptt_len} is larger than the {L} steps the outer PPO "
         "replays")]
    checks += [(training and not 0 < n < L, f"meta n-step horizon {n} must lie in [1, --lifetime-steps)")
               for n in tuple(args.meta_nsteps) + tuple(args.meta_nsteps_fallback)]
    checks += [
        (len(set(args.eval_seeds)) < len(args.eval_seeds),
         f"--eval-seeds repeats a seed: {' '.join(map(str, args.eval_seeds))}"),
        (training and args.val_patience and not args.val_every, f"--val-patience {args.val_patience} needs a "
         "validation: --val-every at least 1"),
        (training and args.eval_network == "best" and not 0 < args.val_every <= args.num_outer_updates,
         f"--eval-network best needs a validation: --val-every between 1 and --num-outer-updates "
         f"({args.num_outer_updates}), got {args.val_every}"),
        ((args.num_workers or 0) > args.lifetimes_per_update,
         f"--num-workers {args.num_workers} exceeds --lifetimes-per-update {args.lifetimes_per_update}"),
        (args.cuda and not torch.cuda.is_available(),
         f"--cuda: CUDA is not available here (torch {torch.__version__}); drop --cuda to use the CPU")]
    for bad, message in checks:
        if bad:
            raise ConfigError(message)


def check_tasks(args, benchmark, trained):
    """Enough distinct train tasks per class for a meta-batch, and no test goal that the network was meta-trained
    on (the test split is held out); trained: the network's settings. The train split is its training goals."""
    sample_tasks(benchmark.train_classes, benchmark.train_tasks, args.lifetimes_per_update, None)
    if args.eval_split == "train":
        return  # the network's own goals (print_plan says so)
    same_classes = (trained["benchmark"], trained["env_name"]) == (args.benchmark, args.env_name)
    trained_on = benchmark if same_classes else make_benchmark(
        replace(args, benchmark=trained["benchmark"], env_name=trained["env_name"]), trained["seed"])

    def goal(task):  # MetaWorld's goal and object positions of a task
        return task.env_name, pickle.loads(task.data)["rand_vec"].tobytes()
    seen = {goal(task) for task in trained_on.train_tasks}
    overlap = sum(goal(task) in seen for task in evaluation_tasks(args, benchmark))
    if overlap:
        raise ConfigError(f"{overlap} of the evaluation's test tasks are goals the network was meta-trained on "
                          f"(seed {trained['seed']}): evaluate it on held-out goals")


class Progress:
    """A phase's progress and ETA: one line rewritten in place on a terminal, else printed if `logged`."""

    def __init__(self, label, total, logged=True):
        self.label, self.total, self.logged, self.start = label, total, logged, time.perf_counter()

    def __call__(self, done):
        tty, elapsed = sys.stdout.isatty(), time.perf_counter() - self.start
        line = f"  {self.label} {done}/{self.total} ({elapsed:.0f} s, ETA {elapsed / done * (self.total - done):.0f} s)"
        if tty or self.logged:
            print(f"\r{line}\x1b[K" if tty else line, end="" if tty and done < self.total else "\n", flush=True)


# Lifetime workers: each lives a share of a batch's lifetimes whole, so no number depends on where or how many -------
def live_share(envs, meta_net, tasks, keys, args, evaluation, on_block=None):
    """A worker's job: its share of lifetimes taught by meta_net (a CPU copy, or None for a baseline). Returns the
    record and the seconds spent stepping the envs and on the rest (the agents, phi, the inner PPO)."""
    start, env_start = time.perf_counter(), envs.seconds
    record = run_lifetimes(envs, tasks, keys, meta_net, args, evaluation, on_block)
    env = envs.seconds - env_start
    return record, {"env": env, "agents": time.perf_counter() - start - env}


WORKER = {}  # a worker process's environments and progress queue (start_worker)


def start_worker(classes, max_episode_steps, parent, blocks):
    """ProcessPoolExecutor's initializer: a worker process with its own environments, on one torch thread. Ctrl-C is
    the main process's to handle, and a thread ends the worker once the main process is gone, however it ended."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the main process stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=exit_with_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(1)
    WORKER.update(envs=EnvGroup(classes, max_episode_steps), blocks=blocks)


def exit_with_parent(parent):
    while os.getppid() == parent:  # an orphan is adopted by another process
        time.sleep(1.0)
    os._exit(1)


def live_in_worker(share, job):
    """live_share in a worker process, each block reported. The job and the result are pickled here: the pool's
    queues would send tensors as shared memory, which a stop leaves behind and which made the main process's torch
    2x slower after (measured: the outer PPO)."""
    on_block = lambda steps: WORKER["blocks"].put((share, steps))
    return pickle.dumps(live_share(WORKER["envs"], *pickle.loads(job), on_block))


class LifetimeActor:
    """A worker as a Ray actor (--ray-address): its own environments, one share of lifetimes per call."""

    def __init__(self, classes, max_episode_steps):
        torch.set_num_threads(1)
        self.envs = EnvGroup(classes, max_episode_steps)

    def run(self, meta_net, tasks, keys, args, evaluation):
        try:
            return live_share(self.envs, meta_net, tasks, keys, args, evaluation)
        except Exception as e:  # re-raised in the driver, as a local worker's
            return e


class Lifetimes:
    """Lives N lifetimes here (--num-workers 1) or in the worker processes of a ProcessPoolExecutor, each living a
    share whole; records in order. `times` holds the last batch's seconds: lifetimes (waiting for them), env and
    agents (the workers' mean)."""

    def __init__(self, classes, args):
        self.num_workers, self.times, self.futures = args.num_workers, {}, []
        if self.num_workers == 1:
            self.envs = EnvGroup(classes, args.max_episode_steps)
            return
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.blocks = ctx.SimpleQueue()  # (share, steps done) after each block
        self.pool = ProcessPoolExecutor(self.num_workers, ctx, initializer=start_worker,
                                        initargs=(classes, args.max_episode_steps, os.getpid(), self.blocks))
        self.pool.submit(int).result()  # the workers start now, before any thread (TensorBoard's) does
        self.procs = list(self.pool._processes.values())  # (a private list) to name a dead one, stop busy ones

    def run(self, tasks, keys, meta_net, args, evaluation=False, progress=None):
        """The record (N, steps, ...) on the CPU; progress(the slowest worker's steps) after each block."""
        start = time.perf_counter()
        net = copy.deepcopy(meta_net).cpu()  # the outer PPO's own stays untouched
        shares = [s for s in np.array_split(np.arange(len(tasks)), self.num_workers) if len(s)]
        jobs = [(net, [tasks[i] for i in share], [keys[i] for i in share], args, evaluation) for share in shares]
        results = self.live(jobs, progress)  # each share's record and seconds, in order
        self.times = {part: float(np.mean([sec[part] for _, sec in results])) for part in ("env", "agents")}
        self.times["lifetimes"] = time.perf_counter() - start
        return {k: torch.cat([record[k] for record, _ in results]) for k in results[0][0]}

    def live(self, jobs, progress):
        if self.num_workers == 1:
            torch.set_num_threads(1)
            try:
                return [live_share(self.envs, *jobs[0], progress)]
            finally:
                torch.set_num_threads(UPDATE_THREADS)
        try:  # a worker that died, now or before, breaks the pool
            self.futures = [self.pool.submit(live_in_worker, w, pickle.dumps(job)) for w, job in enumerate(jobs)]
            done = [0] * len(jobs)
            while True:
                failed = [f for f in self.futures if f.done() and f.exception()]
                finished = failed or all(f.done() for f in self.futures)
                while not self.blocks.empty():  # a share finished a block
                    share, done[share] = self.blocks.get()
                    if progress and done[share] == min(done):
                        progress(done[share])
                if finished:
                    return [pickle.loads(f.result()) for f in failed + self.futures]  # the first failure re-raised
                wait(self.futures, timeout=0.1, return_when=FIRST_EXCEPTION)
        except BrokenProcessPool:  # the pool stops the others
            for proc in self.procs:
                proc.join(timeout=10)
            # the dead one: not ended by the pool's SIGTERM (if all were, the first)
            w = next((w for w, p in enumerate(self.procs) if p.exitcode not in (None, -signal.SIGTERM)), 0)
            proc = self.procs[w]
            how = f"killed by {signal.Signals(-proc.exitcode).name}" if proc.exitcode < 0 else \
                f"exit status {proc.exitcode}"
            raise WorkerLost(f"lifetime worker {w + 1} of {len(self.procs)} (pid {proc.pid}) died ({how})") from None

    def close(self):
        """Stop the workers: at once if a batch was cut short (an error, a stop), else when they are idle."""
        if self.num_workers > 1:
            if not all(f.done() for f in self.futures):  # living lifetimes that nobody will read
                for proc in self.procs:
                    proc.terminate()
            self.pool.shutdown(cancel_futures=True)


RAY_WAIT = 10  # seconds a Ray head has to answer --ray-address


class RayLifetimes(Lifetimes):
    """Lifetimes on a Ray cluster (--ray-address): --num-workers actors of one CPU each, each living a share whole;
    phi is put in the object store once per call. Progress comes when the slowest share is done."""

    def __init__(self, classes, args):
        try:
            import ray  # optional, as matplotlib and TensorBoard
        except ImportError:
            raise ConfigError("--ray-address needs Ray: pip install ray==2.60.0") from None
        self.ray, self.actors, self.times = ray, [], {}
        if args.ray_address != "auto":  # ray.init would retry for about 14 minutes where no head answers
            host, _, port = args.ray_address.split("://")[-1].rpartition(":")
            try:  # a Ray head (gRPC) answers HTTP/2's client preface with a SETTINGS frame (RFC 9113, 3.4)
                with socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_WAIT) as s:
                    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\4\0\0\0\0\0")
                    if s.recv(9)[3:4] != b"\x04":
                        raise ConnectionError("what answers does not speak gRPC")
            except (OSError, ValueError) as e:
                raise ConfigError(f"--ray-address {args.ray_address}: no Ray head answers there "
                                  f"({f'no answer in {RAY_WAIT} s' if isinstance(e, TimeoutError) else e})") from None
        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(address=args.ray_address)
        except (ConnectionError, ValueError) as e:
            raise ConfigError(f"--ray-address {args.ray_address}: {str(e).strip().splitlines()[0]}") from None
        finally:  # ray.init installs its own SIGTERM handler (sys.exit): ours gives the one line and exit 143
            signal.signal(signal.SIGTERM, sigterm)
        cpus = int(ray.cluster_resources().get("CPU", 0))
        args.num_workers = args.num_workers or min(cpus, args.lifetimes_per_update)
        if not 1 <= args.num_workers <= cpus:  # an actor beyond the CPUs would wait for one forever
            self.close()
            raise ConfigError(f"--num-workers {args.num_workers}: the Ray cluster at {args.ray_address} has "
                              f"{cpus} CPUs")
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors get this file's code as it runs
        self.num_workers, actor = args.num_workers, ray.remote(num_cpus=1)(LifetimeActor)
        self.actors = [actor.remote(classes, args.max_episode_steps) for _ in range(self.num_workers)]

    def live(self, jobs, progress):
        net = self.ray.put(jobs[0][0])
        calls = {actor.run.remote(net, *job[1:]): w for w, (actor, job) in enumerate(zip(self.actors, jobs))}
        results = [None] * len(jobs)
        while calls:
            [ref], _ = self.ray.wait(list(calls))
            try:
                message = self.ray.get(ref)
            except self.ray.exceptions.RayError as e:  # the actor's process or node died
                raise WorkerLost(f"a Ray actor living lifetimes was lost ({type(e).__name__})") from None
            if isinstance(message, Exception):  # re-raised here
                raise message
            results[calls.pop(ref)] = message
        if progress:
            progress(results[0][0]["success"].shape[1])
        return results

    def close(self):
        for actor in self.actors:
            self.ray.kill(actor)
        self.ray.shutdown()
        signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGTERM))  # shutdown resets it in C, not in Python


# Checkpoints: written atomically; --resume restores every piece of state, so a resumed run is the same run ----------
def save_checkpoint(path, args, update, meta_net, **state):
    state = {"script": SCRIPT, "args": asdict(args), "update": update, "meta_net": meta_net.state_dict(), **state}
    write_atomically(path, lambda f: torch.save(state, f), "wb")


def write_atomically(path, write, mode="w"):
    """A stop or a crash, even of the machine, leaves the previous file or the new one whole: a temp file, on the
    disk (fsync) before it is renamed; Ctrl-C and SIGTERM wait until it is done."""
    handlers, stops = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}, []
    for s, handler in handlers.items():
        if callable(handler):  # not where the shell told us to ignore it
            signal.signal(s, lambda signum, frame: stops.append(signum))
    try:
        with open(path + ".tmp", mode, **({} if "b" in mode else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        raise WriteError(f"cannot write {path}: {e.strerror if isinstance(e, OSError) else 'cut short'} "
                         f"({shutil.disk_usage(os.path.dirname(path) or '.').free // 2**20} MB free)") from None
    finally:
        if os.path.exists(path + ".tmp"):  # an error while writing (a full disk)
            os.remove(path + ".tmp")
        for s, handler in handlers.items():
            signal.signal(s, handler)
        if stops:  # the stop, now that the file is whole
            handlers[stops[0]](stops[0], None)


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"cannot read checkpoint {path} (truncated or not a checkpoint): {type(e).__name__}")
    if not isinstance(ckpt, dict) or not {"script", "args", "meta_net"} <= set(ckpt):
        raise ConfigError(f"{path} is not a checkpoint of this project")
    if ckpt["script"] != SCRIPT:
        raise ConfigError(f"{path} was written by {ckpt['script']}.py, not {SCRIPT}.py")
    return ckpt


def load_weights(meta_net, ckpt, path):
    try:
        meta_net.load_state_dict(ckpt["meta_net"])
    except RuntimeError as e:
        raise ConfigError(f"{path} does not fit this script's network: {str(e).strip().splitlines()[-1].strip()}")
    return meta_net


def load_meta_net(path, device="cpu", ckpt=None):
    """The reward network of a checkpoint (checkpoint.pt or meta_net_best.pt; ckpt: already loaded from path)."""
    ckpt = ckpt or load_checkpoint(path)
    return load_weights(MetaNet(ckpt["args"]["meta_std_scale"]).to(device), ckpt, path)


def rng_state(task_rng):
    """Every random generator's state (numpy's keys as a tensor: torch.load(weights_only=True) refuses numpy)."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "task": task_rng.bit_generator.state,
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}


def set_rng_state(state, task_rng):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    task_rng.bit_generator.state = state["task"]
    np.random.set_state((state["numpy"][0], state["numpy"][1].numpy().astype(np.uint32), *state["numpy"][2:]))


class Run:
    """A meta-training run's folder, beside Algorithm 1: progress.csv and TensorBoard rows, the validation that keeps
    the best network, the checkpoint every --save-every updates, and --resume from it."""

    def __init__(self, args, run_dir, val_tasks, lifetimes, device, ckpt=None):
        self.args, self.dir, self.lifetimes, self.device, self.ckpt = args, run_dir, lifetimes, device, ckpt
        self.csv, self.steps = os.path.join(run_dir, "progress.csv"), args.lifetimes_per_update * args.lifetime_steps
        self.rows, self.best_val, self.best_update, self.first_update, self.tb = [], -np.inf, 0, 1, None
        self.update = None  # the update in progress (an error names it); self.last: the last one done
        self.val_tasks = val_tasks

    def restore(self, meta_net, optimizer, normalizer, task_rng):
        """A new folder, or (--resume) every piece of state as checkpointed, the CSV rows after it dropped."""
        if self.ckpt is None:
            self.keep(0, meta_net)  # the untrained network, update 0 of a learning curve
        else:
            ckpt = self.ckpt
            load_weights(meta_net, ckpt, self.args.resume)
            optimizer.load_state_dict(ckpt["optimizer"])
            normalizer.count, normalizer.mean = dict(ckpt["normalizer"]["count"]), dict(ckpt["normalizer"]["mean"])
            set_rng_state(ckpt["rng"], task_rng)
            self.best_val, self.first_update = ckpt["best_val"], ckpt["update"] + 1
            best = os.path.join(self.dir, "meta_net_best.pt")  # checkpoints before --val-patience lack best_update
            self.best_update = ckpt.get("best_update", load_checkpoint(best)["update"] if os.path.isfile(best) else 0)
            if not os.path.isfile(self.csv):
                raise ConfigError(f"the run folder of {self.args.resume} has no progress.csv to continue")
            with open(self.csv, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["update"]) <= ckpt["update"]]
            if [int(r["update"]) for r in self.rows] != list(range(1, ckpt["update"] + 1)):
                raise ConfigError(f"{self.csv} lacks rows of updates 1-{ckpt['update']}, which {self.args.resume} "
                                  "holds (cut short?): restore it to continue the run")
            for name in os.listdir(self.dir):  # what a killed write left
                if name.endswith(".tmp"):
                    os.remove(os.path.join(self.dir, name))
        try:  # the rows as TensorBoard scalars too (`tensorboard --logdir runs`) when tensorboard is installed
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(self.dir, purge_step=self.first_update * self.steps if self.ckpt else None)
        except ImportError:
            print("tensorboard is not installed: progress.csv only (pip install tensorboard for live curves)")

    def updates(self):
        """The updates to run; self.update is the one in progress (an error names it)."""
        self.start, self.last = time.time(), self.first_update - 1
        for self.update in range(self.first_update, self.args.num_outer_updates + 1):
            self.update_start = time.perf_counter()
            yield self.update
        self.update = None

    def progress_line(self, update):
        return Progress(f"update {update}: lifetime steps", self.args.lifetime_steps, logged=False)

    def validate(self, update, meta_net):
        """Every --val-every updates, phi's mean teaches --val-tasks fresh agents; the best network is kept. The
        update's clock stops here: seconds per update (and its times, before validation's lifetimes replace them)
        leave validation out."""
        self.seconds = time.perf_counter() - self.update_start
        self.times = {**self.lifetimes.times, "outer": self.seconds - self.lifetimes.times["lifetimes"]}
        self.val = {"val/success_last4": "", "val/success_det": ""}
        if not self.args.val_every or update % self.args.val_every:
            return
        last4, det, score = validate(self.lifetimes, self.val_tasks, meta_net, self.args)
        self.val = {"val/success_last4": last4, "val/success_det": det}
        if score > self.best_val:
            self.best_val, self.best_update = score, update
            save_checkpoint(os.path.join(self.dir, "meta_net_best.pt"), self.args, update, meta_net, val_score=score)

    def log(self, update, batch, returns, stats):
        """The update's row of progress.csv (rewritten whole; columns new to a resumed older run go last), the same
        as TensorBoard scalars over global_step, and a line on the terminal."""
        args, T, columns = self.args, self.args.max_episode_steps, success_columns(self.args)
        success = episode_success(batch["success"], T).mean(0)  # per episode index
        var, error = returns.var(), returns - batch["meta_values"]
        row = {"update": update, "global_step": update * self.steps, "charts/SPS": self.steps / self.seconds,
               "charts/seconds_per_update": self.seconds, **{f"charts/{c}": float(v) for c, v in zip(columns, success)},
               "charts/shaped_return": float(batch["shaped"].view(len(success), -1, T).sum(-1).mean()),
               "charts/meta_action_mean": float(batch["meta_actions"].mean()),
               "charts/meta_action_std": float(batch["meta_actions"].std()),
               "losses/explained_variance": float("nan") if var == 0 else float(1 - error.var() / var),
               **{f"losses/{k}": v for k, v in stats.items()}, **{f"time/{k}": v for k, v in self.times.items()},
               **self.val}
        self.rows.append(row)
        write_csv(self.csv, self.rows, list(dict.fromkeys(k for r in self.rows for k in r)))
        if self.tb:
            for tag in [k for k in row if "/" in k and row[k] != ""]:
                self.tb.add_scalar(tag, row[tag], row["global_step"])
            self.tb.flush()
        eta = (time.time() - self.start) / (update - self.first_update + 1) * (args.num_outer_updates - update)
        val = "" if self.val["val/success_det"] == "" else \
            f" | val last4 {self.val['val/success_last4']:.2f} det {self.val['val/success_det']:.2f}"
        last4 = np.mean([row[f"charts/{c}"] for c in columns[-5:-1]])
        print(f"update {update}/{args.num_outer_updates} | SPS {row['charts/SPS']:.0f} | success last 4 eps "
              f"{last4:.2f} | shaped return {row['charts/shaped_return']:.1f} | kl {stats['approx_kl']:.4f}{val} | "
              f"ETA {eta / 3600:.1f} h", flush=True)

    def checkpoint(self, update, meta_net, optimizer, normalizer, task_rng):
        """Every --save-every updates and at the last (the last planned, or where --val-patience stops): all that
        --resume needs to continue exactly."""
        if update % self.args.save_every == 0 or update == self.args.num_outer_updates or \
                patience_over(update, self.best_update, self.args):
            save_checkpoint(os.path.join(self.dir, "checkpoint.pt"), self.args, update, meta_net,
                            optimizer=optimizer.state_dict(), normalizer={"count": normalizer.count,
                                                                          "mean": normalizer.mean},
                            rng=rng_state(task_rng), best_val=self.best_val, best_update=self.best_update)
        self.keep(update, meta_net)
        self.last = update

    def keep(self, update, meta_net):
        """Every --keep-every updates (and update 0), the network alone as meta_net_uNNN.pt."""
        if self.args.keep_every and update % self.args.keep_every == 0:
            save_checkpoint(os.path.join(self.dir, f"meta_net_u{update:03d}.pt"), self.args, update, meta_net)

    def close(self):
        if self.tb:
            self.tb.close()


# Results: eval.csv, its summary and the Results row --------------------------------------------------------------
def seed_means(rows, columns):
    """(seeds, columns): each evaluation seed's mean over its lifetimes (rows of eval.csv)."""
    seeds = sorted({str(r["seed"]) for r in rows})
    return np.array([np.mean([[float(r[c]) for c in columns] for r in rows if str(r["seed"]) == s], 0)
                     for s in seeds])


def summarize(rows, columns):
    """Per success column, over all tasks then per task: mean, stderr over lifetimes, std over seeds' means."""
    out = []
    for task in ["all"] + sorted({r["task"] for r in rows}):
        selected = [r for r in rows if task == "all" or r["task"] == task]
        values, per_seed = np.array([[r[c] for c in columns] for r in selected], float), seed_means(selected, columns)
        stderr = values.std(0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.full(len(columns), np.nan)
        seed_std = per_seed.std(0, ddof=1) if len(per_seed) > 1 else np.full(len(columns), np.nan)
        out += [{"task": task, "episode": c.removeprefix("success_"), "mean": m, "stderr": e, "lifetimes": len(values),
                 "seed_std": sd, "seeds": len(per_seed)}
                for c, m, e, sd in zip(columns, values.mean(0), stderr, seed_std)]
    return out


def table_row(rows, columns):
    """A Results row: success on eps 1-4, 5-8, 9-12 and deterministic (as read from the paper's Figs. 1-3) ->
    (mean, std over seeds' means, else stderr over lifetimes; NaN for one lifetime)."""
    e = len(columns) - 1
    spans = {f"eps {a + 1}-{min(a + 4, e)}": slice(a, min(a + 4, e)) for a in range(0, e, 4)}
    spans["deterministic"] = slice(e, e + 1)
    per_seed = seed_means(rows, columns)
    if len(per_seed) > 1:
        return {name: (per_seed[:, s].mean(), per_seed[:, s].mean(1).std(ddof=1)) for name, s in spans.items()}
    values = np.array([[float(r[c]) for c in columns] for r in rows])
    v = {name: values[:, s].mean(1) for name, s in spans.items()}  # per lifetime
    return {name: (x.mean(), x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else np.nan) for name, x in v.items()}


def write_csv(path, rows, fieldnames=None):
    """Atomic, as the checkpoints; a row without a column leaves its cell empty."""
    def write(f):
        writer = csv.DictWriter(f, fieldnames=fieldnames or list(rows[0]), restval="")
        writer.writeheader()
        writer.writerows(rows)
    write_atomically(path, write)


def trace_columns(record, args):
    """Per step of one evaluation lifetime, A^m next to the shaped and sparse rewards and the success."""
    L = args.lifetime_steps
    return {"meta_advantage": record["meta_actions"], "shaped_reward": record["shaped"][:L],
            "sparse_reward": record["sparse"][:L], "success": record["success"][:L]}


def trace_correlations(record, args):
    """corr(A^m, shaped) and corr(A^m, sparse) over one lifetime (NaN where one is constant)."""
    columns = trace_columns(record, args)
    signal = columns["meta_advantage"]
    return tuple(float(np.corrcoef(signal, other)[0, 1]) if signal.std() > 0 and other.std() > 0 else float("nan")
                 for other in (columns["shaped_reward"], columns["sparse_reward"]))


def write_trace(path, record, args):
    columns = trace_columns(record, args)
    write_csv(path, [{"step": t, "episode": t // args.max_episode_steps + 1,
                      **{k: float(v[t]) for k, v in columns.items()}} for t in range(args.lifetime_steps)])


def run_evaluation(args, run_dir, benchmark, lifetimes, meta_net, network=""):
    """The Results row; network names the evaluated one ("seed S update U") in eval.csv.
    The CSVs are rewritten after each seed (a stop keeps those)."""
    tasks, columns, seeds = evaluation_tasks(args, benchmark), success_columns(args), args.eval_seeds or (args.seed,)
    method, rows, first = "advantage", [], None
    for seed in seeds:
        seed_rows, record = evaluate(lifetimes, tasks, meta_net, args, args.eval_repeats, seed)
        rows += [{**row, "inner_reward": method, "network": network} for row in seed_rows]
        first = first or record
        try:
            if seed == seeds[-1]:  # the results on the terminal first: a failed write loses none of them
                print_results(args, rows, len(tasks), len(seeds), first, meta_net)
            write_csv(os.path.join(run_dir, "eval.csv"), rows)
            write_csv(os.path.join(run_dir, "eval_summary.csv"), summarize(rows, columns))
        except WriteError:
            if seed != seeds[-1]:
                print_results(args, rows, len(tasks), len(seeds), first, meta_net)
            raise
    if meta_net is not None:
        write_trace(os.path.join(run_dir, TRACE_FILE), first, args)
    print(f"wrote {os.path.join(run_dir, 'eval.csv')}")
    return rows


def print_results(args, rows, n_tasks, n_seeds, first, meta_net):
    """The Results row over the rows so far, the success per episode, and the first lifetime's correlations."""
    method, columns = "advantage", success_columns(args)
    seeds = len({r["seed"] for r in rows})
    spread = f"std over {seeds} evaluation seeds" if seeds > 1 else "standard error over lifetimes"
    print(f"evaluation ({method}, {args.eval_split} tasks): success rate over {len(rows)} lifetimes on {n_tasks} "
          f"tasks (mean +- {spread}){'' if seeds == n_seeds else f'; {seeds} of {n_seeds} seeds'}")
    print("  " + " | ".join(f"{name} {m:.3f} " + ("(one lifetime: no standard error)" if np.isnan(e) else f"+- {e:.3f}")
                            for name, (m, e) in table_row(rows, columns).items()))
    print("  per episode: " + " ".join(f"{m:.2f}" for m in seed_means(rows, columns).mean(0)[:-1]))
    if meta_net is not None:  # the network's signal in the first lifetime, beside the shaped and sparse rewards
        c_shaped, c_sparse = trace_correlations(first, args)
        print(f"  first lifetime: corr({method}, shaped) = {c_shaped:.3f}, corr({method}, sparse) = {c_sparse:.3f}")


# main: one run (meta-training then its evaluation, or the evaluation of a saved network or of a baseline) ------------
# the lifetime an evaluated network brings from its checkpoint (its episodes, inner updates and inner PPO)
LIFETIME = ("max_episode_steps", "lifetime_steps", "steps_per_update", "learning_rate", "update_epochs",
            "num_minibatches", "norm_adv", "clip_coef", "ent_coef", "max_grad_norm")
RESUME_FLAGS = ("resume", "num_workers", "ray_address", "cuda", "num_outer_updates")  # what --resume may set


def main(args, given=()):
    """given: the flags named on the command line (cli); those that differ from the defaults count as given too."""
    path = args.resume or args.eval_checkpoint
    ckpt = load_checkpoint(path) if path else None
    given = set(given) | {f.name for f in fields(Args) if getattr(args, f.name) != getattr(Args, f.name, None)}
    if args.resume:
        args = resumed_args(args, ckpt, given)
    elif "env_name" in given and (args.benchmark or (ckpt["args"]["benchmark"] if ckpt else "ML1")) == "ML10":
        raise ConfigError(f"--env-name {args.env_name} names an ML1 task; ML10 has its own classes: drop one of them")
    if args.eval_checkpoint:  # the network's benchmark, task and lifetimes, unless given (print_plan notes those)
        args = replace(args, **{k: ckpt["args"][k] for k in ("benchmark", "env_name") + LIFETIME if k not in given})
    check_args(args)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    trained = ckpt["args"] if args.eval_checkpoint else asdict(args)  # the network's meta-training settings
    benchmark = make_benchmark(args, trained["seed"])  # an evaluated network's goals: those of its own seed
    check_tasks(args, benchmark, trained)
    mode = "eval" if args.eval_checkpoint else "meta"
    task_name = args.env_name if args.benchmark == "ML1" else "ML10"
    val_tasks = validation_tasks(args) if mode == "meta" and args.val_every else []
    meta_net = load_meta_net(args.eval_checkpoint, device, ckpt) if args.eval_checkpoint else None
    lifetimes = (RayLifetimes if args.ray_address else Lifetimes)({**benchmark.train_classes,
                                                                   **benchmark.test_classes}, args)
    network = f"seed {trained['seed']} update {ckpt['update']}" if mode == "eval" else ""  # eval.csv's name for it
    run, run_dir, evaluating = None, None, False
    try:
        run_dir = os.path.dirname(args.resume) if args.resume else new_run_dir(
            f"{task_name}__{args.exp_name}__{mode}__{args.seed}__{int(time.time())}")
        print_plan(args, run_dir, benchmark, trained, mode, ckpt)
        if mode == "meta":
            run = Run(args, run_dir, val_tasks, lifetimes, device, ckpt if args.resume else None)
            meta_net = meta_train(args, benchmark, lifetimes, run)
            network = f"seed {args.seed} update {run.last}"
            if args.eval_network == "best":  # the best validated network instead of the last
                best = os.path.join(run_dir, "meta_net_best.pt")
                meta_net, update = load_meta_net(best, device), load_checkpoint(best)["update"]
                network = f"seed {args.seed} update {update}"
                print(f"evaluating the best validated network, update {update} ({best})")
        evaluating = True
        run_evaluation(args, run_dir, benchmark, lifetimes, meta_net, network)
    except (FloatingPointError, WorkerLost, WriteError, KeyboardInterrupt) as e:
        where = f"update {run.update}" if run and run.update else "the evaluation" if evaluating else "the start"
        if isinstance(e, KeyboardInterrupt):  # Ray's waits turn our Stopped into a KeyboardInterrupt: SIGTERMS
            sigterm = isinstance(e, Stopped) or bool(SIGTERMS)
            e = (Stopped if sigterm else KeyboardInterrupt)(
                f"stopped by {'SIGTERM' if sigterm else 'Ctrl-C'} in {where}")
        else:
            e = type(e)(f"{where}: {e}")
        raise type(e)(f"{e}; {how_to_continue(args, run_dir, mode, evaluating)}") from None
    finally:
        if run:
            run.close()
        lifetimes.close()
    return run_dir


def resumed_args(args, ckpt, given):
    """--resume: the checkpoint's settings, of which only RESUME_FLAGS may change; another flag given with a value
    that differs from the run's is refused (it would be ignored), and so is ending before the checkpoint's update."""
    if "optimizer" not in ckpt:
        raise ConfigError(f"{args.resume} holds only a network; --resume needs a run's checkpoint.pt")
    try:  # older checkpoints also hold --plot's settings (now tools/plot_results.py)
        saved = Args(**{k: v for k, v in ckpt["args"].items() if k not in ("plot", "plot_file")})
    except TypeError as e:
        raise ConfigError(f"{args.resume} has settings this script does not know: {e}")

    def value(a, name):  # a checkpoint stores tuples as lists
        v = getattr(a, name)
        return tuple(v) if isinstance(v, list) else v
    ignored = [f"--{n.replace('_', '-')} {value(args, n)} (the run's: {value(saved, n)})" for n in sorted(given)
               if n not in RESUME_FLAGS and value(args, n) != value(saved, n)]
    if ignored:
        raise ConfigError(f"--resume continues the run with its own settings, not {', '.join(ignored)}; only "
                          f"{', '.join('--' + n.replace('_', '-') for n in RESUME_FLAGS[1:])} may change")
    updates = saved.num_outer_updates if args.num_outer_updates is None else args.num_outer_updates
    if updates < ckpt["update"]:
        raise ConfigError(f"--num-outer-updates {updates}: {args.resume} already holds update {ckpt['update']}")
    return replace(saved, resume=args.resume, num_workers=args.num_workers, ray_address=args.ray_address,
                   cuda=args.cuda, num_outer_updates=updates)


def new_run_dir(name):
    """runs/NAME created here, or runs/NAME-2, -3, ... if another run owns it (two runs started in the same second
    never share a folder: mkdir is exclusive)."""
    path = os.path.join("runs", name)
    try:
        os.makedirs("runs", exist_ok=True)
        for k in range(2, 1000):
            try:
                os.mkdir(path)
                return path
            except FileExistsError:
                path = os.path.join("runs", f"{name}-{k}")
    except OSError as e:
        raise ConfigError(f"cannot create the run folder {path}: {e.strerror}") from None
    raise ConfigError(f"cannot create the run folder {path}: 999 runs of this name")


def how_to_continue(args, run_dir, mode, evaluating):
    """What a stopped run keeps, and the command that continues it."""
    if run_dir is None:
        return "nothing was written"
    checkpoint = os.path.join(run_dir, "checkpoint.pt")
    if mode == "meta" and not evaluating:
        if not os.path.isfile(checkpoint):
            return f"no checkpoint yet (the first is written at update {args.save_every}): start again"
        saved = load_checkpoint(checkpoint)["update"]
        return f"{checkpoint} holds update {saved}: continue with python {SCRIPT}.py --resume {checkpoint}"
    path, seeds = os.path.join(run_dir, "eval.csv"), 0
    if evaluating and os.path.isfile(path):  # rewritten after each evaluation seed
        with open(path, newline="") as f:
            seeds = len({row["seed"] for row in csv.DictReader(f)})
    again = f"python {SCRIPT}.py --resume {checkpoint}" if mode == "meta" else "the same command"
    return f"{path} holds {seeds} of its {len(args.eval_seeds or (args.seed,))} seeds: evaluate again with {again}"


def print_plan(args, run_dir, benchmark, trained, mode, ckpt):
    """What is about to run, before the long work (the ETA follows each outer update and each evaluation batch)."""
    task_name, trained_on = (a["env_name"] if a["benchmark"] == "ML1" else "ML10" for a in (asdict(args), trained))
    print(f"run folder: {run_dir}\nevaluation tasks: the {args.eval_split} split of the benchmark built with seed "
          f"{trained['seed']} ({task_name})")
    if trained_on != task_name:  # only when asked for: an evaluated network's task is the default
        print(f"note: a transfer test: the network was meta-trained on {trained_on} and is evaluated on {task_name}")
    other = [f"--{k.replace('_', '-')} {getattr(args, k)} ({trained[k]})" for k in LIFETIME
             if trained[k] != getattr(args, k)]
    if other:  # likewise its lifetimes and inner PPO
        print(f"note: lifetimes other than those the network was meta-trained on: {', '.join(other)}")
    if args.eval_split == "train" and mode in ("meta", "eval"):
        print("note: the train split holds the goals the network was meta-trained on (the paper's Fig. 3, top row), "
              "not held-out ones")
    workers = f"{args.num_workers} " + (f"Ray actor(s) on {args.ray_address}" if args.ray_address else "process(es)")
    if mode == "meta":
        todo = args.num_outer_updates - (ckpt["update"] if args.resume else 0)
        print(f"meta-training: {todo} outer updates x {args.lifetimes_per_update} lifetimes x {args.lifetime_steps} "
              f"steps = {todo * args.lifetimes_per_update * args.lifetime_steps / 1e6:.1f}M env steps in "
              f"{workers}, then the evaluation")
    n_eval = len(evaluation_tasks(args, benchmark)) * args.eval_repeats * len(args.eval_seeds or (args.seed,))
    steps = args.lifetime_steps + args.eval_deterministic_episodes * args.max_episode_steps
    print(f"evaluation: {n_eval} lifetimes x {steps} steps = {n_eval * steps / 1e6:.1f}M env steps in "
          f"{workers}, in batches of {args.lifetimes_per_update}")


def cli(argv=None):
    """Parse the command line and run; bad input exits with one line and status 2."""
    argv = sys.argv[1:] if argv is None else argv
    args = tyro.cli(Args, args=argv)
    names = {word[2:].split("=")[0].replace("-", "_") for word in argv if word.startswith("--")}
    stop = signal.signal(signal.SIGTERM, raise_stopped)
    try:
        return main(args, {n.removeprefix("no_") if n.removeprefix("no_") in Args.__dataclass_fields__ else n
                           for n in names})
    except (ConfigError, FloatingPointError, WorkerLost, WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM, made one line by main
        print(str(e) or "stopped before the run began", file=sys.stderr)
        sys.exit(128 + (signal.SIGTERM if isinstance(e, Stopped) else signal.SIGINT))
    finally:
        signal.signal(signal.SIGTERM, stop)


SIGTERMS = []  # each SIGTERM received (Ray's waits re-raise Stopped as a plain KeyboardInterrupt)


def raise_stopped(signum, frame):
    SIGTERMS.append(signum)
    raise Stopped()


if __name__ == "__main__":
    cli()
