"""The original design's seven tests, ported with the same meaning (see ../shared/origin/).

No `from __future__ import annotations` here: FastAPI must see the route's real annotations.
"""

import asyncio
import threading
from pathlib import Path
from typing import Annotated

import httpx
import pytest
import torch
from fastapi import APIRouter, Depends, FastAPI, HTTPException
from pydantic import BaseModel

from ckptserve import ModelRegistry
from ckptserve.inference import act

#: The original actor has no weights to tell its observation size, and ckptserve never serves a
#: model it could not probe: the size is configured, as `--obs-dim` would.
OBS_DIM = 3


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return tmp_path / "models" / "rl" / "stat_pair"


@pytest.fixture
def dummy_actor() -> torch.jit.ScriptModule:
    """The original's minimal scripted actor."""

    class _Actor(torch.nn.Module):
        def forward(self, state: torch.Tensor, deterministic: bool = True):
            action = torch.tanh(state[:, :1])
            log_prob = torch.zeros(state.shape[0], 1)
            return action, log_prob

    return torch.jit.script(_Actor())


class PredictRequest(BaseModel):
    state: list[float]


def minimal_router(registry: ModelRegistry) -> FastAPI:
    """The original router, on ckptserve's registry: POST /rl/predict and GET /rl/status."""
    router = APIRouter(prefix="/rl")

    def get_registry() -> ModelRegistry:
        return registry

    @router.post("/predict")
    def predict(
        req: PredictRequest,
        registry: Annotated[ModelRegistry, Depends(get_registry)],
        force_reload: bool = False,
    ) -> dict:
        model = registry.get_model(force_reload=force_reload)
        action = act(model, torch.tensor(req.state, dtype=torch.float32).unsqueeze(0))
        if action.shape[-1] != 1:
            raise HTTPException(500, f"actor output shape mismatch: {action.shape[-1]}")
        return {
            "action": action.squeeze(0).tolist(),
            "model_version": registry.status()["last_mtime"],
            "load_count": registry.load_count,
        }

    @router.get("/status")
    def status(registry: Annotated[ModelRegistry, Depends(get_registry)]) -> dict:
        return registry.status()

    app = FastAPI()
    app.include_router(router)
    return app


class TestModelRegistry:
    def test_cold_start_raises_before_file_exists(self, model_dir):
        """Before the file exists the registry is not loaded."""
        model_dir.mkdir(parents=True)
        registry = ModelRegistry(model_dir / "actor_latest.pt", obs_dim=OBS_DIM)
        assert not registry.is_loaded

    def test_loads_on_first_get(self, model_dir, dummy_actor):
        """The first get_model() loads the checkpoint."""
        model_dir.mkdir(parents=True)
        path = model_dir / "actor_latest.pt"
        torch.jit.save(dummy_actor, path)
        registry = ModelRegistry(path, obs_dim=OBS_DIM)
        registry.get_model()
        assert registry.is_loaded
        assert registry.load_count == 1

    def test_auto_swap_on_mtime_change(self, model_dir, dummy_actor):
        """A new save of the checkpoint is reloaded automatically."""
        model_dir.mkdir(parents=True)
        path = model_dir / "actor_latest.pt"
        torch.jit.save(dummy_actor, path)
        registry = ModelRegistry(path, obs_dim=OBS_DIM)
        registry.get_model()
        assert registry.load_count == 1
        # The original slept 10 ms to get a new mtime; the stat key needs no sleep, and the
        # new save must differ in content, or it is recognised as the same model (issue 5).
        dummy_actor.eval()
        torch.jit.save(dummy_actor, path, _extra_files={"note": "second save"})
        registry.get_model()
        assert registry.load_count == 2

    def test_no_reload_when_mtime_unchanged(self, model_dir, dummy_actor):
        """Without a change, repeated calls load only once."""
        model_dir.mkdir(parents=True)
        path = model_dir / "actor_latest.pt"
        torch.jit.save(dummy_actor, path)
        registry = ModelRegistry(path, obs_dim=OBS_DIM)
        registry.get_model()
        registry.get_model()
        registry.get_model()
        assert registry.load_count == 1

    def test_forced_reload(self, model_dir, dummy_actor):
        """force_reload=True reloads whatever the mtime says."""
        model_dir.mkdir(parents=True)
        path = model_dir / "actor_latest.pt"
        torch.jit.save(dummy_actor, path)
        registry = ModelRegistry(path, obs_dim=OBS_DIM)
        registry.get_model()
        registry.get_model(force_reload=True)
        assert registry.load_count == 2

    def test_shape_validation_passes(self, model_dir, dummy_actor):
        """A request with a correctly shaped state is answered with a one-element action."""
        model_dir.mkdir(parents=True)
        path = model_dir / "actor_latest.pt"
        torch.jit.save(dummy_actor, path)
        app = minimal_router(ModelRegistry(path, obs_dim=OBS_DIM))

        async def call() -> tuple[httpx.Response, httpx.Response]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                predicted = await client.post("/rl/predict", json={"state": [0.5, 0.1, -0.2]})
                return predicted, await client.get("/rl/status")

        response, status_response = asyncio.run(call())
        assert response.status_code == 200
        body = response.json()
        assert body["action"] == pytest.approx([torch.tanh(torch.tensor(0.5)).item()])
        assert body["load_count"] == 1
        assert body["model_version"] > 0
        status = status_response.json()
        assert {"loaded", "model_path", "load_count", "last_mtime"} <= set(status)
        assert status["loaded"] is True

    def test_concurrent_reload_safety(self, model_dir, dummy_actor):
        """10 threads x 100 forced reloads: no race, no error."""
        model_dir.mkdir(parents=True)
        path = model_dir / "actor_latest.pt"
        torch.jit.save(dummy_actor, path)
        registry = ModelRegistry(path, obs_dim=OBS_DIM)
        errors = []

        def reload_worker():
            try:
                for _ in range(100):
                    registry.get_model(force_reload=True)
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=reload_worker) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(errors) == 0
        assert registry.load_count == 10 * 100
