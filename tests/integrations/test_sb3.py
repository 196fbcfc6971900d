"""Stable-Baselines3: `PublishCallback` publishes, during a few hundred steps of training, a
program whose action for a raw observation is `model.predict(normalize_obs(o), deterministic=True)`
to 1e-5, loaded by the registry and served over HTTP; Box (PPO, SAC) and Discrete (PPO)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from ckptserve import ModelRegistry
from ckptserve.errors import PublishError
from ckptserve.inference import act
from ckptserve.integrations.sb3 import PublishCallback, export_policy

pytestmark = pytest.mark.slow

TOLERANCE = 1e-5


def small() -> dict[str, Any]:
    """Small networks (a fresh dict each time: SB3 adds keys to the one it is given)."""
    return {"net_arch": [32, 32]}


def observations(env_id: str, n: int = 64, seed: int = 0) -> np.ndarray:
    """Raw observations as a policy meets them: from random-action rollouts of the raw env."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    seen = []
    while len(seen) < n:
        seen.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    return np.asarray(seen, dtype=np.float32)


def served_by_registry(model_dir: Path, obs: np.ndarray) -> np.ndarray:
    with ModelRegistry(model_dir) as registry:
        return act(registry.get_model(), torch.from_numpy(obs.reshape(len(obs), -1))).numpy()


def expected(model: BaseAlgorithm, obs: np.ndarray, vec: VecNormalize | None) -> np.ndarray:
    action, _ = model.predict(
        vec.normalize_obs(obs) if vec is not None else obs, deterministic=True
    )
    return np.asarray(action, dtype=np.float32).reshape(len(obs), -1)


def manifest(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "actor_latest.json").read_text())  # type: ignore[no-any-return]


def assert_close(served: np.ndarray, want: np.ndarray) -> None:
    assert served.shape == want.shape, (served.shape, want.shape)
    worst = float(np.abs(served - want).max())
    assert worst <= TOLERANCE, f"served actions differ from predict() by up to {worst}"


def test_ppo_with_vecnormalize_serves_what_predict_returns_for_raw_observations(
    tmp_path: Path,
) -> None:
    """Pendulum (Box), PPO, VecNormalize: published every 128 steps with the statistics of
    that moment; the last one answers raw observations as predict() does on normalized ones."""
    vec = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    model = PPO("MlpPolicy", vec, n_steps=64, batch_size=64, n_epochs=2, seed=0,
                policy_kwargs=small(), device="cpu")  # fmt: skip
    callback = PublishCallback(tmp_path, every_steps=128)
    model.learn(384, callback=callback)
    assert len({p.name for p in callback.published}) == 3  # at 128, 256, and when learn() ends
    meta = manifest(tmp_path)["metadata"]
    assert meta["step"] == 384 and meta["algorithm"] == "PPO" and meta["vec_normalize"] is True
    assert meta["action_low"] == [-2.0] and meta["action_high"] == [2.0]
    assert meta["obs_dim"] == 3 and meta["action_dim"] == 1
    obs = observations("Pendulum-v1")
    assert float(np.abs(vec.normalize_obs(obs) - obs).max()) > 0.1  # the statistics matter
    assert_close(served_by_registry(tmp_path, obs), expected(model, obs, vec))


def test_sac_serves_what_predict_returns_rescaled_to_the_action_space(tmp_path: Path) -> None:
    """Pendulum (Box in [-2, 2]), SAC without VecNormalize: the squashed action, rescaled as
    predict() rescales it; the critics stay out of the checkpoint."""
    model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=100, batch_size=32, seed=0,
                policy_kwargs=small(), device="cpu")  # fmt: skip
    model.learn(300, callback=PublishCallback(tmp_path, every_steps=150))
    assert manifest(tmp_path)["metadata"]["step"] == 300
    obs = observations("Pendulum-v1")
    served = served_by_registry(tmp_path, obs)
    assert_close(served, expected(model, obs, None))
    assert float(np.abs(served).max()) <= 2.0
    program = export_policy(model)
    assert not [k for k in program.state_dict if "critic" in k], list(program.state_dict)


def test_ppo_on_a_discrete_space_serves_the_index_of_the_chosen_action(tmp_path: Path) -> None:
    """CartPole (Discrete(2)): the served action is one number, the argmax, as predict() says."""
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=128, batch_size=64, n_epochs=2, seed=0,
                policy_kwargs=small(), device="cpu")  # fmt: skip
    model.learn(256, callback=PublishCallback(tmp_path, every_steps=128))
    meta = manifest(tmp_path)["metadata"]
    assert meta["n_actions"] == 2 and meta["action_low"] == [0] and meta["action_high"] == [1]
    obs = observations("CartPole-v1")
    served = served_by_registry(tmp_path, obs)
    assert served.shape == (64, 1) and set(np.unique(served)) <= {0.0, 1.0}
    assert_close(served, expected(model, obs, None))


def test_every_steps_counts_the_steps_of_all_environments(tmp_path: Path) -> None:
    """With 4 environments, every_steps=64 publishes at num_timesteps 64, 128, ... (and at
    the start when asked), not every 64 calls of the callback."""
    model = PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=4, seed=0), n_steps=16,
                batch_size=64, n_epochs=1, seed=0, policy_kwargs=small(), device="cpu")  # fmt: skip
    steps: list[int] = []

    def evaluation(m: BaseAlgorithm) -> dict[str, int]:
        steps.append(m.num_timesteps)
        return {"eval": len(steps)}

    callback = PublishCallback(tmp_path, every_steps=64, publish_at_start=True, metadata=evaluation)
    model.learn(192, callback=callback)
    assert steps == [0, 64, 128, 192]
    assert manifest(tmp_path)["metadata"]["eval"] == 4


def test_unsupported_spaces_are_refused_by_name() -> None:
    class TwoKnobs(gym.Env[np.ndarray, np.ndarray]):
        observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        action_space = gym.spaces.MultiDiscrete([2, 3])

        def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
            return np.zeros(3, np.float32), {}

        def step(self, action: Any) -> Any:
            return np.zeros(3, np.float32), 0.0, True, False, {}

    with pytest.raises(PublishError, match="MultiDiscrete"):
        export_policy(PPO("MlpPolicy", TwoKnobs(), n_steps=8, batch_size=8, device="cpu"))


def test_exporting_leaves_distribution_argument_checks_as_they_were() -> None:
    before = torch.distributions.Distribution._validate_args
    export_policy(PPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8, device="cpu"))
    assert torch.distributions.Distribution._validate_args == before


def test_a_real_server_answers_raw_observations_as_predict_does(tmp_path: Path) -> None:
    """`ckptserve serve` over the directory the callback publishes to: `/rl/predict` with a
    batch of raw Pendulum observations answers what predict() says for the normalized ones."""
    from server.serverkit import ServerProcess

    vec = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=1))
    model = PPO("MlpPolicy", vec, n_steps=64, batch_size=64, n_epochs=2, seed=1,
                policy_kwargs=small(), device="cpu")  # fmt: skip
    model_dir = tmp_path / "models"
    model.learn(256, callback=PublishCallback(model_dir, every_steps=128))
    obs = observations("Pendulum-v1", seed=1)
    with ServerProcess([str(model_dir)], log=tmp_path / "server.log") as server:
        server.wait_ready()
        reply = server.client.post("/rl/predict", json={"states": obs.tolist()})
        assert reply.status_code == 200, reply.text
        assert reply.json()["checkpoint"] == manifest(model_dir)["checkpoint"]
        assert_close(np.asarray(reply.json()["actions"], np.float32), expected(model, obs, vec))
