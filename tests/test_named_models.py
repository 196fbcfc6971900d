"""Models that are not policies: a critic's `forward(state, action) -> q`, published with
`example_inputs`, described by its metadata (`"inputs": {"state": 8, "action": 1}`, `"outputs":
{"q": 1}`), probed on zeros of each input and called with them by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ckptserve import ModelRegistry, PublishError, publish
from ckptserve.errors import ValidationError
from ckptserve.formats import FORMATS
from ckptserve.inference import call_named
from ckptserve.validation import expectations_for
from policies import ACT, OBS, Critic, TwinCritic, examples


def metadata_of(directory: Path, name: str = "critic") -> dict[str, object]:
    return dict(json.loads((directory / f"{name}_latest.json").read_text())["metadata"])


@pytest.mark.parametrize("fmt", ["export", "torchscript"])
def test_a_published_critic_is_served_and_answers_by_name(tmp_path: Path, fmt: str) -> None:
    critic = Critic()
    publish(critic, tmp_path, name="critic", format=fmt, example_inputs=examples(), output_name="q")
    meta = metadata_of(tmp_path)
    assert meta["inputs"] == {"state": OBS, "action": ACT} and meta["outputs"] == {"q": 1}
    assert "obs_dim" not in meta and "action_dim" not in meta
    with ModelRegistry(tmp_path, name="critic") as registry:
        attempt = registry.check()
        assert attempt is not None and attempt.result == "ok", registry.last_error
        live = registry.current
        assert live is not None
        assert live.expect.inputs == (("action", ACT), ("state", OBS))
        assert live.expect.outputs == (("q", 1),)
        assert live.expect.named() == "action[1], state[8] -> q[1]"
        state, action = torch.rand(3, OBS), torch.rand(3, ACT)
        got = call_named(live.model, {"action": action, "state": state}, ["q"])
        torch.testing.assert_close(got["q"], critic(state, action))


def test_a_model_returning_a_dict_names_its_outputs(tmp_path: Path) -> None:
    publish(TwinCritic(), tmp_path, name="critic", example_inputs=examples(2))
    assert metadata_of(tmp_path)["outputs"] == {"q1": 1, "q2": 1}
    with ModelRegistry(tmp_path, name="critic") as registry:
        registry.check()
        live = registry.current
        assert live is not None and live.expect.outputs == (("q1", 1), ("q2", 1))
        got = call_named(live.model, examples(4), ["q1", "q2"])
        assert {k: list(v.shape) for k, v in got.items()} == {"q1": [4, 1], "q2": [4, 1]}


def test_publish_refuses_what_a_server_could_not_serve(tmp_path: Path) -> None:
    """Several outputs without names, a policy's sizes beside named inputs, both example kinds,
    an output name for a dict, and a name a server does not take are refused at publish."""

    class Pair(Critic):
        def forward(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
            q = super().forward(state, action)
            return q, q

    cases = [
        (Pair(), {"example_inputs": examples()}, "returns a dict"),
        (Critic(), {"example_inputs": examples(), "metadata": {"obs_dim": 8}}, "not obs_dim"),
        (Critic(), {"example_inputs": examples(), "example_input": torch.zeros(1, 9)}, "not both"),
        (TwinCritic(), {"example_inputs": examples(), "output_name": "q"}, "drop output_name"),
        (Critic(), {"example_inputs": examples(), "output_name": "q value"}, "is not a name"),
        (Critic(), {"output_name": "q"}, "with example_inputs"),
    ]
    for model, kwargs, message in cases:
        with pytest.raises(PublishError, match=message):
            publish(model, tmp_path, name="critic", **kwargs)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_the_live_model_locks_its_inputs_and_outputs(tmp_path: Path) -> None:
    """A critic that is live is not replaced by a policy or by a critic with other inputs (its
    clients were built against them) unless an admin forces it."""
    publish(Critic(), tmp_path, name="critic", example_inputs=examples(), output_name="q")
    with ModelRegistry(tmp_path, name="critic") as registry:
        registry.check()
        first = registry.current
        assert first is not None
        publish(Critic(1), tmp_path, name="critic", example_inputs=examples(), output_name="v")
        attempt = registry.check()
        assert attempt is not None and attempt.result == "rejected", attempt
        assert "the live model serves action[1], state[8] -> q[1]" in str(attempt.reason)
        assert registry.current is first
        attempt = registry.check(reload=True, force=True)
        assert attempt is not None and attempt.result == "ok", registry.last_error
        assert registry.current is not None and registry.current.expect.outputs == (("v", 1),)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"inputs": {"state": 8}}, "inputs or its outputs, not both"),
        ({"inputs": {}, "outputs": {"q": 1}}, "must map 1 to 16 names"),
        ({"inputs": [8, 1], "outputs": {"q": 1}}, "inputs or its outputs, not both"),
        ({"inputs": {"state\n": 8}, "outputs": {"q": 1}}, "is not a name"),
        ({"inputs": {"state": 0}, "outputs": {"q": 1}}, "must be at least 1"),
        ({"inputs": {"state": True}, "outputs": {"q": 1}}, "must be a whole number"),
        ({"inputs": {"state": float("nan")}, "outputs": {"q": 1}}, "must be a whole number"),
        ({"inputs": {"state": 1 << 30}, "outputs": {"q": 1}}, "over the"),
        ({"inputs": {f"x{i}": 1 for i in range(17)}, "outputs": {"q": 1}}, "1 to 16"),
    ],
)
def test_malformed_named_metadata_is_refused(metadata: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        expectations_for(metadata)


def test_configured_policy_sizes_do_not_apply_to_a_critic() -> None:
    meta = {"inputs": {"state": 8, "action": 1}, "outputs": {"q": 1}}
    with pytest.raises(ValidationError, match="--obs-dim and --action-dim describe a policy"):
        expectations_for(meta, obs_dim=8)


def written(directory: Path, metadata: dict[str, object]) -> Path:
    """A TorchScript critic file with `metadata` inside, as no publish() would write it."""
    path = directory / "critic.pt"
    path.write_bytes(FORMATS["torchscript"].write(Critic(), json.dumps(metadata), None))
    return path


def test_a_critic_whose_output_is_not_what_its_metadata_says_is_rejected(tmp_path: Path) -> None:
    """The probe runs the model on zeros of each input and checks every output's size."""
    path = written(tmp_path, {"inputs": {"state": OBS, "action": ACT}, "outputs": {"q": 2}})
    with ModelRegistry(path) as registry:
        attempt = registry.check()
        assert attempt is not None and attempt.result == "rejected", attempt
        assert "probe output q has shape [1, 1], expected [1, 2]" in str(attempt.reason)
        assert registry.current is None


def test_a_critic_with_a_wrong_input_name_is_rejected_by_the_probe(tmp_path: Path) -> None:
    path = written(tmp_path, {"inputs": {"obs": OBS, "action": ACT}, "outputs": {"q": 1}})
    with ModelRegistry(path) as registry:
        attempt = registry.check()
        assert attempt is not None and attempt.result == "rejected", attempt
        assert "probe with obs[1, 8], action[1, 1] failed" in str(attempt.reason), attempt.reason


def test_a_policy_may_use_inputs_and_outputs_for_its_own_metadata(tmp_path: Path) -> None:
    """Only objects of sizes name a model's tensors: a policy published with other values under
    those keys is served as a policy; objects under them are refused at publish."""
    from policies import seeded_actor

    publish(seeded_actor(0), tmp_path, metadata={"inputs": "camera+lidar", "outputs": ["steer"]})
    with ModelRegistry(tmp_path) as registry:
        attempt = registry.check()
        assert attempt is not None and attempt.result == "ok", registry.last_error
        assert registry.current is not None and registry.current.expect.inputs is None
    with pytest.raises(PublishError, match="publish it with example_inputs="):
        publish(seeded_actor(0), tmp_path / "other", metadata={"inputs": {"state": 4}})


def test_the_same_inputs_in_another_order_are_the_same_inputs(tmp_path: Path) -> None:
    """Inputs are passed by name: a checkpoint listing them in another order is no change."""
    path = written(tmp_path, {"inputs": {"state": OBS, "action": ACT}, "outputs": {"q": 1}})
    with ModelRegistry(path) as registry:
        registry.check()
        first = registry.current
        written(tmp_path, {"inputs": {"action": ACT, "state": OBS}, "outputs": {"q": 1}})
        attempt = registry.check()
        assert attempt is not None and attempt.result == "ok", registry.last_error
        assert registry.current is not first
