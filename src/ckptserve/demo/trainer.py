"""The demo's training loop: SAC on the pairs-trading env, publishing a checkpoint every K steps.

    python -m ckptserve.demo.trainer --dir models/ --steps 20000 --publish-every 1000 --seed 0

The untrained policy is published first (step 0), then one checkpoint every `--publish-every`
environment steps, each with metadata `{step, eval_return, action_low, action_high}`; one line is
printed per publish.

`--broken-step N` publishes, right after the checkpoint of the first publish step at or after N,
a deliberately broken one: the same policy with its output negated (every action changes sign,
`"broken": true` in its metadata), as one bad training step would. A server with
`--max-sign-flips` refuses it; training goes on from the good weights.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import numpy as np
import torch

from ..publishing import publish
from .env import PairsTradingEnv
from .sac import SAC, Actor, ReplayBuffer, SACConfig

__all__ = ["EVAL_SEED", "Published", "broken_copy", "evaluate", "main", "train"]

EVAL_SEED = 10_000
"""Evaluation episodes use seeds EVAL_SEED, EVAL_SEED + 1, ...: the same set for every checkpoint."""


@dataclass(frozen=True, slots=True)
class Published:
    """One checkpoint the trainer wrote."""

    step: int
    eval_return: float
    path: Path
    sha256: str
    seconds: float
    broken: bool = False


def broken_copy(actor: Actor) -> Actor:
    """`actor` with its output negated: tanh(-u) = -tanh(u), so every action changes sign."""
    bad = copy.deepcopy(actor)
    with torch.no_grad():
        for param in bad.mean.parameters():
            param.neg_()
    return bad


def evaluate(actor: torch.nn.Module, episodes: int = 5) -> float:
    """Mean return of the deterministic policy over the fixed evaluation episodes.

    The episodes run side by side (one batched forward per step) on seeds `EVAL_SEED + i`.
    """
    envs = [PairsTradingEnv() for _ in range(episodes)]
    obs = np.stack([e.reset(seed=EVAL_SEED + i)[0] for i, e in enumerate(envs)])
    totals = np.zeros(episodes)
    done = False
    with torch.no_grad():
        while not done:
            actions, _ = actor(torch.from_numpy(obs), True)
            results = [e.step(a) for e, a in zip(envs, actions.numpy(), strict=True)]
            obs = np.stack([r[0] for r in results])
            totals += [r[1] for r in results]
            done = all(r[2] or r[3] for r in results)
    return float(totals.mean())


def train(
    directory: str | os.PathLike[str],
    *,
    steps: int,
    publish_every: int,
    seed: int = 0,
    warmup: int = 500,
    eval_episodes: int = 5,
    keep: int = 10,
    config: SACConfig | None = None,
    on_publish: Callable[[Published], None] | None = None,
    broken_step: int | None = None,
) -> list[Published]:
    """Train SAC for `steps` env steps, publishing at step 0 and every `publish_every` steps.

    Args:
        directory: the model directory (what the server watches).
        steps: environment steps in total.
        publish_every: environment steps between checkpoints.
        seed: seeds torch, the replay buffer and the training episodes.
        warmup: uniformly random actions before the first gradient step.
        eval_episodes: episodes in the fixed evaluation set.
        keep: timestamped checkpoints to keep (passed to `publish`).
        config: SAC hyper-parameters.
        on_publish: called after each checkpoint is written.
        broken_step: after the checkpoint of the first publish step at or after this one (>= 1),
            also publish a broken copy of it (`broken_copy`; metadata `"broken": true`).

    Example:
        train("models/", steps=5000, publish_every=1000, on_publish=print)
    """
    if publish_every < 1:
        raise ValueError("publish_every must be at least 1")
    if broken_step is not None and broken_step < 1:
        raise ValueError("broken_step must be at least 1: a broken first checkpoint has nothing "
                         "live to be compared with")  # fmt: skip
    torch.manual_seed(seed)
    env = PairsTradingEnv()
    obs_dim = env.obs_dim
    agent = SAC(obs_dim, 1, config)
    buffer = ReplayBuffer(obs_dim, 1, agent.config.buffer_size, seed=seed)
    rng = np.random.default_rng(seed)
    published: list[Published] = []
    started = time.perf_counter()

    def checkpoint(step: int, actor: torch.nn.Module, broken: bool = False) -> None:
        eval_return = evaluate(actor, eval_episodes)
        path = publish(
            actor,
            directory,
            keep=keep,
            new_run=step == 0,  # a fresh training run: its steps start again at 0
            metadata={
                "step": step,
                "eval_return": round(eval_return, 4),
                "action_low": -1.0,
                "action_high": 1.0,
                **({"broken": True} if broken else {}),
            },
        )
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        record = Published(step, eval_return, path, sha, time.perf_counter() - started, broken)
        published.append(record)
        if on_publish is not None:
            on_publish(record)

    def checkpoints(step: int) -> None:
        checkpoint(step, agent.actor)
        if broken_step is not None and step >= broken_step and not any(p.broken for p in published):
            checkpoint(step, broken_copy(agent.actor), broken=True)

    checkpoints(0)
    obs, _ = env.reset(seed=seed)
    episode = 0
    for step in range(1, steps + 1):
        if step <= warmup:
            action = rng.uniform(-1.0, 1.0, size=1).astype(np.float32)
        else:
            action = agent.act(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated)
        obs = next_obs
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed * 1_000_003 + episode)
        if step > warmup:
            agent.update(buffer.sample(agent.config.batch_size))
        if step % publish_every == 0:
            checkpoints(step)
    return published


def _print_line(record: Published) -> None:
    print(
        f"step {record.step:>7,}  eval_return {record.eval_return:+8.2f}  "
        f"sha256 {record.sha256[:12]}  {record.path.name}  t={record.seconds:6.1f}s"
        + ("  BROKEN on purpose: every action negated" if record.broken else ""),
        flush=True,
    )


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """The trainer's command line; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m ckptserve.demo.trainer",
        description="Train SAC on the pairs-trading env and publish checkpoints as it learns.",
    )
    parser.add_argument("--dir", required=True, help="model directory to publish into")
    parser.add_argument("--steps", type=int, default=20_000, help="environment steps in total")
    parser.add_argument("--publish-every", type=int, default=1_000, help="steps between publishes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=500, help="random steps before learning")
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--keep", type=int, default=10, help="timestamped checkpoints to keep")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--broken-step", type=int, default=None,
                        help="also publish a broken copy (actions negated) at this step")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    signal.signal(signal.SIGTERM, _stop)
    try:
        train(
            args.dir,
            steps=args.steps,
            publish_every=args.publish_every,
            seed=args.seed,
            warmup=args.warmup,
            eval_episodes=args.eval_episodes,
            keep=args.keep,
            on_publish=_print_line,
            broken_step=args.broken_step,
        )
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
