"""Stable-Baselines3: publish a policy's deterministic action function while it trains.

`PublishCallback` is used the way SB3's `CheckpointCallback` is; `publish_policy` publishes once,
and `export_policy` only exports. The published program takes a raw observation (flattened) and
returns exactly what `model.predict(obs, deterministic=True)[0]` returns: with `VecNormalize`,
its statistics at publish time are baked in (so the server answers a raw observation `o` with
`model.predict(vec_normalize.normalize_obs(o), deterministic=True)[0]`), and Box actions are
rescaled from [-1, 1] (SAC, TD3, squashed PPO) or clipped to the action space as SB3 does.
A Discrete action is served as one number, the index of the chosen action (the argmax).

Example:
    from stable_baselines3 import PPO
    from ckptserve.integrations.sb3 import PublishCallback

    model = PPO("MlpPolicy", "Pendulum-v1")
    model.learn(100_000, callback=PublishCallback("models/", every_steps=10_000))
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecNormalize

from ..errors import PublishError
from ..publishing import publish

__all__ = ["PublishCallback", "export_policy", "policy_metadata", "publish_policy"]

Metadata = Mapping[str, Any] | Callable[[BaseAlgorithm], Mapping[str, Any]] | None


class _DeterministicAction(torch.nn.Module):
    """Raw observations `[batch, obs_size]` -> the actions `model.predict` returns, `[batch, n]`."""

    obs_mean: torch.Tensor
    obs_scale: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    def __init__(self, policy: BasePolicy, vec_normalize: VecNormalize | None) -> None:
        super().__init__()
        obs_space, action_space = policy.observation_space, policy.action_space
        if not isinstance(obs_space, spaces.Box):
            raise PublishError(
                f"only Box observation spaces can be served as a list of numbers, not {obs_space}"
            )
        if not isinstance(action_space, (spaces.Box, spaces.Discrete)):
            raise PublishError(
                f"only Box and Discrete action spaces are supported, not {action_space}"
            )
        self.acting = _acting_part(policy)
        self.obs_shape = tuple(int(d) for d in obs_space.shape)
        self.discrete = isinstance(action_space, spaces.Discrete)
        self.squash = bool(policy.squash_output) and not self.discrete
        self.normalize = vec_normalize is not None and bool(vec_normalize.norm_obs)
        self.clip_obs = 0.0
        if self.normalize:
            assert vec_normalize is not None
            rms = vec_normalize.obs_rms
            if not isinstance(rms, RunningMeanStd):
                raise PublishError("VecNormalize over Dict observations is not supported")
            # float64, as VecNormalize.normalize_obs computes before its cast to float32
            mean = torch.as_tensor(np.asarray(rms.mean, dtype=np.float64).reshape(self.obs_shape))
            scale = torch.as_tensor(
                np.sqrt(np.asarray(rms.var, dtype=np.float64) + vec_normalize.epsilon).reshape(
                    self.obs_shape
                )
            )
            self.register_buffer("obs_mean", mean)
            self.register_buffer("obs_scale", scale)
            self.clip_obs = float(vec_normalize.clip_obs)
        if isinstance(action_space, spaces.Box):
            self.register_buffer("low", torch.as_tensor(action_space.low.reshape(-1)))
            self.register_buffer("high", torch.as_tensor(action_space.high.reshape(-1)))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        obs = state.reshape(-1, *self.obs_shape)
        if self.normalize:
            obs = ((obs.double() - self.obs_mean) / self.obs_scale).clamp(
                -self.clip_obs, self.clip_obs
            )
            obs = obs.float()
        # SB3's own deterministic path, the one `predict()` runs.
        action = self.acting._predict(obs, deterministic=True)
        if self.discrete:
            return action.reshape(-1, 1).to(torch.float32)
        action = action.reshape(obs.shape[0], -1)
        if self.squash:
            action = self.low + 0.5 * (action + 1.0) * (self.high - self.low)
        # np.clip, as predict() does for unsquashed actions. After rescaling SB3 does not clip,
        # but a saturated tanh can overshoot a bound by one float32 ulp there, which the
        # server's action-bound check would refuse.
        return torch.minimum(torch.maximum(action, self.low), self.high)


def _acting_part(policy: BasePolicy) -> BasePolicy:
    """The part of a policy that acts: SAC's and TD3's actor, DQN's Q-network, or the whole
    (actor-critic) policy. Exporting only it leaves the critics out of the checkpoint."""
    for attribute in ("actor", "q_net"):
        part = getattr(policy, attribute, None)
        if isinstance(part, BasePolicy):
            return part
    return policy


@contextmanager
def _no_distribution_checks() -> Iterator[None]:
    """torch.distributions checks their parameters with data-dependent branches, which
    torch.export cannot trace; SB3 builds a distribution even for the deterministic action."""
    previous = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(previous)


def export_policy(
    model: BaseAlgorithm, vec_normalize: VecNormalize | None = None
) -> torch.export.ExportedProgram:
    """The policy's deterministic action function as a torch.export program on the CPU.

    Args:
        model: a trained (or training) SB3 model: PPO, A2C, SAC, TD3, DDPG or DQN.
        vec_normalize: observation statistics to bake in; defaults to the model's own
            `VecNormalize` wrapper, if its environment has one.

    Raises:
        PublishError: an unsupported space, or a policy torch.export cannot trace.
    """
    if vec_normalize is None:
        vec_normalize = model.get_vec_normalize_env()
    policy = model.policy
    if policy.device.type != "cpu":
        policy = copy.deepcopy(policy).to("cpu")
    module = _DeterministicAction(policy, vec_normalize)
    example = torch.zeros(2, math.prod(module.obs_shape))
    was_training = policy.training
    policy.set_training_mode(False)
    try:
        with _no_distribution_checks():
            return torch.export.export(
                module.eval(), (example,), dynamic_shapes={"state": {0: torch.export.Dim("batch")}}
            )
    except PublishError:
        raise
    except Exception as exc:
        raise PublishError(
            f"the {type(policy).__name__} of {type(model).__name__} cannot be exported: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        policy.set_training_mode(was_training)


def _bounds(space: spaces.Space[Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if isinstance(space, spaces.Box):
        low, high = space.low.reshape(-1), space.high.reshape(-1)
        if np.isfinite(low).all() and np.isfinite(high).all():
            meta["low"], meta["high"] = low.tolist(), high.tolist()
    elif isinstance(space, spaces.Discrete):
        start = int(space.start)
        meta["low"], meta["high"] = [start], [start + int(space.n) - 1]
    return meta


def policy_metadata(model: BaseAlgorithm, vec_normalize: VecNormalize | None) -> dict[str, Any]:
    """What the published checkpoint says about the policy: step, algorithm, spaces, bounds."""
    meta: dict[str, Any] = {
        "step": int(model.num_timesteps),
        "algorithm": type(model).__name__,
        "action_space": type(model.action_space).__name__,
        "obs_shape": list(model.observation_space.shape or ()),
        "vec_normalize": vec_normalize is not None and bool(vec_normalize.norm_obs),
    }
    obs = _bounds(model.observation_space)  # raw observations arrive: the raw space's bounds
    if obs:
        meta["obs_low"], meta["obs_high"] = obs["low"], obs["high"]
    action = _bounds(model.action_space)
    if action:
        meta["action_low"], meta["action_high"] = action["low"], action["high"]
    if isinstance(model.action_space, spaces.Discrete):
        meta["n_actions"] = int(model.action_space.n)
    return meta


def publish_policy(
    model: BaseAlgorithm,
    model_dir: str | Path,
    *,
    vec_normalize: VecNormalize | None = None,
    name: str = "actor",
    keep: int = 10,
    metadata: Mapping[str, Any] | None = None,
    signing_key: str | bytes | None = None,
) -> Path:
    """Export the deterministic policy (see `export_policy`) and `publish()` it to `model_dir`.

    The metadata holds `step` (the model's `num_timesteps`), the algorithm, the spaces and, for
    bounded spaces, `obs_low`/`obs_high` and `action_low`/`action_high`, which the server checks;
    `metadata` adds to it (and wins).

    Returns:
        The path of the new timestamped checkpoint.
    """
    if vec_normalize is None:
        vec_normalize = model.get_vec_normalize_env()
    program = export_policy(model, vec_normalize)
    meta = {**policy_metadata(model, vec_normalize), **(metadata or {})}
    return publish(program, model_dir, name, keep, meta, signing_key=signing_key)


class PublishCallback(BaseCallback):
    """Publish the policy every `every_steps` environment steps (summed over the vectorized
    environments, like `model.num_timesteps`), and once more when training ends.

    The step count is looked at when a rollout starts, right after each update, so what is
    published is the updated policy: PPO and A2C publish at the first rollout boundary at or past
    each multiple of `every_steps` (their weights change only there), SAC, TD3 and DQN after
    the update of that step.

    Args:
        model_dir: the directory `ckptserve serve` watches.
        every_steps: environment steps between two publications.
        name: checkpoint name prefix (`{name}_latest.json`, ...).
        keep: timestamped checkpoints kept in `model_dir`.
        metadata: extra metadata, or a function of the model returning it (e.g. an evaluation).
        vec_normalize: statistics to bake in; default: the model's `VecNormalize`, if any.
        publish_at_start: also publish the untrained policy when training starts.
        publish_at_end: publish the final policy when training ends.
        verbose: 1 prints one line per publication.

    Example:
        model.learn(200_000, callback=PublishCallback("models/", every_steps=10_000))
    """

    def __init__(
        self,
        model_dir: str | Path,
        every_steps: int = 10_000,
        *,
        name: str = "actor",
        keep: int = 10,
        metadata: Metadata = None,
        vec_normalize: VecNormalize | None = None,
        publish_at_start: bool = False,
        publish_at_end: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if every_steps < 1:
            raise ValueError("every_steps must be at least 1")
        self.model_dir = Path(model_dir)
        self.every_steps = every_steps
        self.name = name
        self.keep = keep
        self.metadata = metadata
        self.vec_normalize = vec_normalize
        self.publish_at_start = publish_at_start
        self.publish_at_end = publish_at_end
        self.published: list[Path] = []
        self._next = every_steps

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.every_steps + 1) * self.every_steps
        if self.publish_at_start:
            self.publish()

    def _on_rollout_start(self) -> None:
        # A rollout starts right after an update: the weights published are the new ones (in
        # _on_step, as CheckpointCallback saves, they would be those before the coming update).
        self.num_timesteps = self.model.num_timesteps
        if self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.every_steps + 1) * self.every_steps
            self.publish()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if self.publish_at_end:  # the last update came after the last rollout started
            self.publish()

    def publish(self) -> Path:
        """Publish the policy as it is now; returns the new checkpoint's path."""
        extra = self.metadata(self.model) if callable(self.metadata) else self.metadata
        path = publish_policy(
            self.model, self.model_dir, vec_normalize=self.vec_normalize, name=self.name,
            keep=self.keep, metadata=extra,
        )  # fmt: skip
        self.published.append(path)
        if self.verbose >= 1:
            print(f"ckptserve: published {path.name} at step {self.model.num_timesteps}")
        return path
