"""docs/sb3.md's plain training loop (CleanRL style) runs as written, and what it publishes is
served as its actor answers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ckptserve import ModelRegistry
from ckptserve.inference import act

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[2] / "docs" / "sb3.md"


def test_the_plain_training_loop_publishes_what_the_server_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    loop = [b for b in blocks if "ckptserve.publish(actor" in b]
    assert len(loop) == 1, "docs/sb3.md has no plain-loop example publishing `actor`"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "sb3_docs_loop"}
    exec(compile(loop[0], str(DOC), "exec"), namespace)
    published = sorted((tmp_path / "models").glob("actor_2*.pt"))
    assert len(published) == 5, [p.name for p in published]
    states = torch.randn(32, 3)
    with ModelRegistry(tmp_path / "models") as registry:
        served = act(registry.get_model(), states)
        assert registry.version is not None and registry.version.metadata["step"] == 999
    actor = namespace["actor"]
    assert isinstance(actor, torch.nn.Module)
    with torch.no_grad():
        want = actor(states)
    worst = float((served - want).abs().max())
    assert worst <= 1e-5, f"served actions differ from the actor's by up to {worst}"
