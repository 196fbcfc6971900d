"""VALIDATE: expectations from configuration and metadata, the probe, and the user's check."""

from __future__ import annotations

import math

import pytest
import torch

from ckptserve import ValidationError
from ckptserve.validation import Bounds, expectations_for, probe, run_checks
from policies import Actor, ConstantActor, seeded_actor


def test_metadata_fills_what_is_not_configured():
    """obs/action sizes and bounds come from metadata unless configured."""
    expect = expectations_for({"obs_dim": 4, "action_dim": 2, "action_low": -1, "action_high": 1})
    assert (expect.obs_dim, expect.action_dim) == (4, 2)
    assert expect.action_bounds == Bounds((-1.0,), (1.0,))
    assert expectations_for({}).action_dim is None  # nothing says: the first model decides


def test_configuration_wins_and_contradictions_are_rejected():
    """A configured bound overrides metadata; a configured size that disagrees rejects."""
    expect = expectations_for({"action_high": 5.0}, action_high=1.0)
    assert expect.action_bounds.high == (1.0,)
    with pytest.raises(ValidationError, match="obs_dim=4"):
        expectations_for({"obs_dim": 4}, obs_dim=8)


@pytest.mark.parametrize(
    "metadata",
    [
        {"obs_dim": "four"},
        {"obs_dim": 2.5},
        {"action_dim": 0},
        {"obs_low": "low"},
        {"obs_dim": 3, "obs_low": [0, 0]},
        {"action_high": [math.nan]},
        {"action_low": []},
    ],
)
def test_malformed_expectations_are_validation_errors(metadata):
    """Sizes and bounds that make no sense are rejected with a ValidationError."""
    with pytest.raises(ValidationError):
        expectations_for(metadata)


def test_bounds_report_the_first_violation():
    """first_violation gives the index and value of the first element outside the bounds."""
    bounds = Bounds.build([-1, -2, -3], 1.0, 3, "obs")
    assert bounds.first_violation([0.0, -2.0, 0.5]) is None
    assert bounds.first_violation([0.0, -2.5, 9.0]) == (1, -2.5)
    assert bounds.first_violation([0.0, 0.0, 1e30]) == (2, 1e30)


@pytest.mark.parametrize(
    ("low", "high"),
    [(-1.0, 1.0), ([-1, -2, -3], 1.0), (-1.0, [1, 2, 3]), (None, [1, 2, 3]), ([-1, -2, -3], None)],
    ids=["scalar", "vector-low", "vector-high", "high-only", "low-only"],
)
def test_first_violation_is_the_first_element_outside_its_own_bound(low, high):
    """first_violation agrees with at(i) element by element, NaN (never outside) included."""
    bounds = Bounds.build(low, high, 3, "obs")
    nan = math.nan
    rows = [[0.0, 0.0, 0.0], [-1.5, 0.0, 0.0], [0.0, -2.5, 0.0], [0.0, 0.0, 2.5], [9, -9, 9]]
    rows += [[nan, -9.0, 9.0], [0.0, nan, 9.0], [nan, nan, nan], []]
    for row in rows:
        outside = [(i, v) for i, v in enumerate(row) if _outside(v, *bounds.at(i))]
        assert bounds.first_violation(row) == (outside[0] if outside else None), row


def _outside(v: float, low: float | None, high: float | None) -> bool:
    return (low is not None and v < low) or (high is not None and v > high)


def test_bounds_at_gives_each_elements_limits():
    """A single value is every element's limit; a list gives element i its own; None is open."""
    assert Bounds.build(-1, [1, 2, 3], 3, "obs").at(2) == (-1.0, 3.0)
    assert Bounds.build([-1, -2, -3], None, 3, "obs").at(1) == (-2.0, None)


def test_probe_accepts_a_good_model_and_infers_the_observation_size():
    """A model with finite [batch, 1] actions passes; obs size comes from its first weight."""
    assert probe(seeded_actor(0), expectations_for({})).obs_dim == 4


@pytest.mark.parametrize(
    ("model", "metadata", "message"),
    [
        (Actor(action_dim=2), {"obs_dim": 4, "action_dim": 1}, "shape .*--action-dim"),
        (ConstantActor(math.nan), {"obs_dim": 4}, "not finite"),
        (ConstantActor(math.inf), {"obs_dim": 4}, "not finite"),
        (ConstantActor(3.0), {"obs_dim": 4, "action_high": 1.0}, "action bounds"),
        (Actor(obs_dim=4), {"obs_dim": 6}, "probe with a \\[1, 6\\] state failed"),
    ],
    ids=["shape", "nan", "inf", "bounds", "obs-size"],
)
def test_probe_rejects_bad_models(model, metadata, message):
    """Wrong shape, non-finite actions, actions out of bounds and a failing forward are rejected."""
    with pytest.raises(ValidationError, match=message):
        probe(model.eval(), expectations_for(metadata))


def test_user_validate_errors_become_validation_errors():
    """Any exception from validate() rejects the model with its message."""

    def validate(model: torch.nn.Module) -> None:
        raise AssertionError("return below 100")

    with pytest.raises(ValidationError, match="return below 100"):
        run_checks(seeded_actor(0), expectations_for({}), validate)
    calls = []
    run_checks(seeded_actor(0), expectations_for({}), calls.append)
    assert len(calls) == 1


class EchoActor(torch.nn.Module):
    """Answers the first observation as its action."""

    def forward(self, state: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return state[:, :1]


def test_probe_state_lies_inside_the_observation_bounds():
    """With obs bounds that exclude zero, the probe asks about a state inside them."""
    expect = expectations_for(
        {"obs_dim": 3, "obs_low": [0.5, -1, -1], "obs_high": 2.0, "action_high": 1.0}
    )
    assert probe(EchoActor(), expect).obs_dim == 3
    with pytest.raises(ValidationError, match="action bounds"):
        probe(EchoActor(), expectations_for({"obs_dim": 3, "obs_low": 1.5, "action_high": 1.0}))


def test_with_nothing_said_the_model_gives_the_action_shape():
    """No flag, no metadata, nothing live: a 2-action model is served with 2 actions."""
    assert probe(Actor(action_dim=2).eval(), expectations_for({})).action_dim == 2


def test_the_live_models_sizes_lock_what_a_candidate_may_have():
    """A candidate whose actions (or declared sizes) differ from the live model's is rejected,
    and the refusal says what sets the size."""
    served = probe(seeded_actor(0), expectations_for({}))
    with pytest.raises(ValidationError, match=r"shape \[1, 2\], expected \[1, 1\].*--action-dim"):
        probe(Actor(action_dim=2).eval(), expectations_for({}, served=served))
    with pytest.raises(ValidationError, match="declares action_dim=2, the live model serves 1"):
        expectations_for({"action_dim": 2}, served=served)
    assert expectations_for({"action_dim": 2}, action_dim=2, served=served).action_dim == 2


def test_a_model_whose_observation_size_nobody_states_is_refused():
    """The probe is never skipped: without obs_dim anywhere, the refusal names --obs-dim."""
    with pytest.raises(ValidationError, match="--obs-dim"):
        probe(EchoActor(), expectations_for({}))


def test_a_huge_observation_size_is_refused_before_anything_is_allocated():
    """obs_dim=5e8 in metadata would cost 2 GB for the probe state: refused up front."""
    with pytest.raises(ValidationError, match="over the"):
        expectations_for({"obs_dim": 5e8})


class FlatActor(torch.nn.Module):
    """Returns one action per state as a 1-D tensor `[batch]`."""

    def __init__(self) -> None:
        super().__init__()
        self.mu = torch.nn.Linear(4, 1)

    def forward(self, state: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return torch.tanh(self.mu(state))[:, 0]


def test_a_one_dimensional_action_is_one_action_per_state():
    """`[batch]` is served as `[batch, 1]`, by the probe as by the server."""
    assert probe(FlatActor().eval(), expectations_for({})).action_dim == 1


def test_a_model_on_another_device_is_called_with_cpu_states_and_answers_on_the_cpu():
    """The probe and requests build CPU tensors; a model on an accelerator gets them moved to
    its device and answers on the CPU (checked here with the wrapper on the CPU device)."""
    from ckptserve.inference import _OnDevice, act, on_device

    seen = []

    class Recording(torch.nn.Module):
        def forward(self, state: torch.Tensor, deterministic: bool = True) -> tuple:
            seen.append(state.device)
            return state[:, :1] * 2, torch.zeros(state.shape[0], 1)

    model = Recording()
    assert on_device(model, "cpu") is model  # nothing to move on the CPU
    wrapped = _OnDevice(model, "cpu")
    action = act(wrapped, torch.ones(2, 4))
    assert seen == [torch.device("cpu")] and action.device.type == "cpu"
    assert action.tolist() == [[2.0], [2.0]]
