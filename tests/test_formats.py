"""LOAD: every checkpoint format is recognised by its bytes and loads as a callable policy."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

import ckptserve
from ckptserve import (
    CheckpointError,
    ExportedPolicy,
    IntegrityError,
    load_checkpoint,
    publish,
    sniff,
    state_dict_loader,
)
from ckptserve.formats import check_safetensors, check_zip, read_weights
from ckptserve.naming import FORMAT_NAMES
from core_helpers import FORMATS, WEIGHTS_FORMATS, action_of, loader_for, record_span
from policies import Actor, make_actor, make_actor_from, seeded_actor


def load(data: bytes, tmp_path: Path, **kwargs) -> object:
    path = tmp_path / "checkpoint.bin"
    path.write_bytes(data)
    return load_checkpoint(path, **kwargs)


@pytest.mark.parametrize("fmt", FORMATS)
def test_sniff_names_every_format_from_its_bytes(fmt, checkpoint_bytes):
    """The format is read from inside the file, whatever its suffix."""
    assert sniff(checkpoint_bytes(fmt, 0)) == fmt


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_loads_as_a_policy(fmt, tmp_path, checkpoint_bytes):
    """Each format loads into a model callable as model(state) and model(state, True)."""
    loaded = load(checkpoint_bytes(fmt, 0), tmp_path, loader=loader_for(fmt))
    assert loaded.format == fmt
    assert loaded.metadata["obs_dim"] == 4 and loaded.metadata["format"] == fmt
    reference = seeded_actor(0)
    for batch in (1, 64):
        state = torch.randn(batch, 4)
        with torch.inference_mode():
            want = reference(state)[0]
            got = loaded.model(state)[0]
            got_det = loaded.model(state, True)[0]
        assert got.shape == (batch, 1)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got_det, want)


@pytest.mark.parametrize("fmt", WEIGHTS_FORMATS)
def test_read_weights_gives_the_tensors_and_metadata_without_a_factory(
    fmt, tmp_path, checkpoint_bytes
):
    """A weights file's tensors and metadata, as the factory's module would receive them."""
    path = tmp_path / "weights.bin"
    path.write_bytes(checkpoint_bytes(fmt, 0))
    state, metadata = read_weights(path, fmt)
    assert metadata["obs_dim"] == 4 and metadata["format"] == fmt
    want = seeded_actor(0).state_dict()
    assert state.keys() == want.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(state[name], tensor)


def test_exported_program_is_served_through_exported_policy(tmp_path, checkpoint_bytes):
    """An export checkpoint loads as ExportedPolicy, which skips the program's input guards."""
    loaded = load(checkpoint_bytes("export", 0), tmp_path)
    assert isinstance(loaded.model, ExportedPolicy)
    assert action_of(loaded.model) == pytest.approx(action_of(seeded_actor(0)))


def test_state_dict_loader_accepts_a_module_factory_string(tmp_path, checkpoint_bytes):
    """`state_dict_loader("module:factory")` imports the factory and fills in the weights."""
    loaded = load(
        checkpoint_bytes("state_dict", 0),
        tmp_path,
        loader=state_dict_loader("policies:make_actor"),
    )
    assert action_of(loaded.model) == pytest.approx(action_of(seeded_actor(0)))


@pytest.mark.parametrize("factory", [make_actor, make_actor_from, Actor], ids=lambda f: f.__name__)
@pytest.mark.parametrize("fmt", WEIGHTS_FORMATS)
def test_state_dict_loader_accepts_a_callable(fmt, factory, tmp_path, checkpoint_bytes):
    """A callable factory works, with no argument or with the checkpoint's metadata."""
    loaded = load(checkpoint_bytes(fmt, 0), tmp_path, loader=state_dict_loader(factory))
    assert action_of(loaded.model) == pytest.approx(action_of(seeded_actor(0)))
    assert not any(p.is_meta for p in loaded.model.parameters())


@pytest.mark.parametrize("fmt", WEIGHTS_FORMATS)
def test_weights_without_a_factory_say_what_to_configure(fmt, tmp_path, checkpoint_bytes):
    """A weights-only file under loader="auto" names state_dict_loader in the error."""
    with pytest.raises(CheckpointError, match="state_dict_loader"):
        load(checkpoint_bytes(fmt, 0), tmp_path)


def test_weights_that_do_not_fit_the_factory_are_refused(tmp_path, checkpoint_bytes):
    """A state_dict for another architecture is a CheckpointError, not a half-loaded module."""
    loader = state_dict_loader(lambda: Actor(hidden=16))
    with pytest.raises(CheckpointError, match="do not fit"):
        load(checkpoint_bytes("state_dict", 0), tmp_path, loader=loader)


def test_state_dict_is_read_without_running_pickled_code(tmp_path):
    """A torch.save file holding arbitrary objects is refused by weights_only loading."""
    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(1), "payload": pickle.loads(pickle.dumps(Path("/x")))}, buf)
    with pytest.raises(CheckpointError, match="weights_only"):
        load(buf.getvalue(), tmp_path, loader=state_dict_loader(make_actor))


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"\x80\x02legacy pickle", b"PK\x03\x04broken zip", b"{not safetensors"],
    ids=["empty", "garbage", "legacy-pickle", "broken-zip", "text"],
)
def test_garbage_is_a_checkpoint_error(data, tmp_path):
    """Anything that is not a known checkpoint raises CheckpointError."""
    with pytest.raises(CheckpointError):
        load(data, tmp_path)


def test_zip_that_is_not_a_checkpoint_is_refused(tmp_path):
    """A valid zip archive without PyTorch records is not a checkpoint."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/readme.txt", "hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load(buf.getvalue(), tmp_path)


@pytest.mark.parametrize("fmt", ["export", "torchscript", "state_dict"])
def test_flipped_bit_in_a_zip_record_fails_the_crc_check(fmt, checkpoint_bytes):
    """A single flipped bit inside a zip-based checkpoint's weights is an IntegrityError."""
    data = bytearray(checkpoint_bytes(fmt, 0))
    start, end = record_span(bytes(data), "0")  # the first weight tensor's record
    data[(start + end) // 2] ^= 0x01
    check_zip(checkpoint_bytes(fmt, 0))
    with pytest.raises(IntegrityError, match="CRC-32"):
        check_zip(bytes(data))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_file_is_checked_where_it_lies(fmt, tmp_path, checkpoint_bytes):
    """Loaded by path (no bytes in memory), a flipped bit is still a CRC or sha256 failure."""
    data = bytearray(checkpoint_bytes(fmt, 0))
    if fmt == "safetensors":
        data[-3] ^= 0x01
    else:
        start, end = record_span(bytes(data), "0")
        data[(start + end) // 2] ^= 0x01
    with pytest.raises(IntegrityError, match="CRC-32" if fmt != "safetensors" else "sha256"):
        load(bytes(data), tmp_path, loader=loader_for(fmt))
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load(b"", tmp_path)


@pytest.mark.parametrize("fmt", ["export", "torchscript"])
def test_allow_formats_refuses_before_loading(fmt, tmp_path, checkpoint_bytes):
    """A format outside allow_formats is refused without being loaded."""
    with pytest.raises(CheckpointError, match="not allowed"):
        load(checkpoint_bytes(fmt, 0), tmp_path, allow_formats={"safetensors"})


def test_safetensors_file_written_by_hand_loads_with_a_factory(tmp_path):
    """Plain safetensors weights (no ckptserve metadata) load through a factory."""
    actor = seeded_actor(3)
    data = save_safetensors({k: v.contiguous() for k, v in actor.state_dict().items()})
    assert sniff(data) == "safetensors"
    loaded = load(data, tmp_path, loader=state_dict_loader(make_actor))
    assert loaded.metadata == {}
    assert action_of(loaded.model) == pytest.approx(action_of(actor))


def test_publish_then_load_round_trips_an_exported_program(tmp_path):
    """An ExportedProgram given to publish() is served like an exported module."""
    actor = seeded_actor(4)
    program = torch.export.export(
        actor, (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    path = publish(program, tmp_path)
    loaded = load_checkpoint(path)
    assert loaded.format == "export"
    assert action_of(loaded.model) == pytest.approx(action_of(actor))


class BareActor(torch.nn.Module):
    """Returns the action alone, without a log-prob."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, state: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return torch.tanh(self.linear(state))


def test_exported_policy_keeps_the_output_structure(tmp_path):
    """An exported model returning a bare tensor is served returning a bare tensor."""
    torch.manual_seed(5)
    actor = BareActor().eval()
    loaded = load_checkpoint(publish(actor, tmp_path))
    state = torch.randn(3, 4)
    with torch.inference_mode():
        got = loaded.model(state, True)
        want = actor(state)
    assert isinstance(got, torch.Tensor)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("fmt", FORMATS)
def test_half_rewritten_file_never_loads_with_mixed_weights(fmt, tmp_path, checkpoint_bytes):
    """A file caught between two writes of an in-place copy (new head, old tail) either fails
    its checksum or loads exactly one of the two models, never a mix."""
    old, new = checkpoint_bytes(fmt, 0), checkpoint_bytes(fmt, 1)
    assert len(old) == len(new)
    answers = [action_of(seeded_actor(0)), action_of(seeded_actor(1))]
    for cut in range(0, len(new), max(1, len(new) // 24)):
        try:
            loaded = load(new[:cut] + old[cut:], tmp_path, loader=loader_for(fmt))
        except CheckpointError:
            continue
        action = action_of(loaded.model)
        assert any(action == pytest.approx(a) for a in answers), f"mixed weights at byte {cut}"


def test_safetensors_published_by_ckptserve_carry_a_data_checksum(checkpoint_bytes):
    """A flipped bit in the data of a published safetensors file fails its header's sha256."""
    data = bytearray(checkpoint_bytes("safetensors", 0))
    check_safetensors(bytes(data))
    data[-3] ^= 0x01
    with pytest.raises(IntegrityError, match="sha256"):
        check_safetensors(bytes(data))


def test_truncated_safetensors_without_checksum_is_refused(tmp_path):
    """A third-party safetensors file cut short fails the length check."""
    data = save_safetensors({k: v.contiguous() for k, v in seeded_actor(0).state_dict().items()})
    with pytest.raises(IntegrityError, match="truncated"):
        check_safetensors(data[:-4])


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_of_the_table_reads_what_it_writes(name, tmp_path):
    """`FORMATS[name]` writes bytes that `sniff` names `name`, that pass its check, and that its
    read gives back with the metadata; the weights formats read as a dict of tensors."""
    fmt = ckptserve.FORMATS[name]
    data = fmt.write(seeded_actor(0), json.dumps({"obs_dim": 4}), torch.zeros(2, 4))
    assert sniff(data) == name
    path = tmp_path / "checkpoint.bin"
    path.write_bytes(data)
    loaded = fmt.read(path, "cpu")
    assert loaded.format == name and loaded.metadata == {"obs_dim": 4}
    if fmt.needs_factory:
        assert loaded.model.keys() == seeded_actor(0).state_dict().keys()
    else:
        assert action_of(loaded.model) == pytest.approx(action_of(seeded_actor(0)))


def test_the_format_table_is_named_as_naming_declares():
    """`ckptserve.FORMATS` maps the names of `naming.FORMAT_NAMES`, in that order, to formats;
    only TorchScript runs code on load, and the weights formats need a factory."""
    assert tuple(ckptserve.FORMATS) == FORMAT_NAMES
    assert {n for n, f in ckptserve.FORMATS.items() if f.needs_factory} == set(WEIGHTS_FORMATS)
    assert [n for n, f in ckptserve.FORMATS.items() if f.runs_code_on_load] == ["torchscript"]


# ---- a pickled module, and reasons in one line --------------------------------------------------


class FlatActor(torch.nn.Module):
    """A module with its own parameters and no submodules."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, 4))

    def forward(self, state, deterministic=True):
        return state @ self.weight.T, None


def assert_one_line(reason: str) -> None:
    assert "\n" not in reason and "\x1b" not in reason and len(reason) < 400, repr(reason)


@pytest.mark.parametrize(
    ("model", "protocol"),
    [(seeded_actor(0), 2), (seeded_actor(0), 4), (FlatActor(), 2)],
    ids=["actor", "actor-protocol-4", "flat-module"],
)
@pytest.mark.parametrize("with_factory", [False, True], ids=["auto", "factory"])
def test_a_pickled_module_is_named_as_one_with_the_two_ways_to_resave_it(
    model, protocol, with_factory, tmp_path
):
    """`torch.save(model)` is reported as a pickled module that can run code, refused, with
    publish() and state_dict() + --factory as the ways out, in one line without escapes; not
    as a weights file that needs a factory, and not as PyTorch's page of advice."""
    path = tmp_path / "model.pt"
    torch.save(model, path, pickle_protocol=protocol)
    loader = state_dict_loader(make_actor) if with_factory else "auto"
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, loader=loader)
    reason = str(info.value)
    assert reason.startswith("a pickled module (torch.save(model))"), reason
    assert "run any code" in reason and "publish(" in reason
    assert "torch.save(model.state_dict(), path)" in reason and "--factory" in reason
    assert "weights_only=False" not in reason
    assert_one_line(reason)


def test_torch_refusing_a_pickle_is_told_in_one_line(tmp_path, monkeypatch):
    """Where only torch's weights_only check sees the pickle (too big to scan here), its
    refusal becomes one line naming the global it refused, without its advice."""
    monkeypatch.setattr("ckptserve.formats._pytorch._SCANNED", 0)
    path = tmp_path / "model.pt"
    torch.save(seeded_actor(0), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, loader=state_dict_loader(make_actor))
    reason = str(info.value)
    assert "references policies.Actor" in reason and "weights_only=False" not in reason
    assert_one_line(reason)


def test_a_state_dict_with_a_modules_key_is_not_a_module(tmp_path):
    """Plain tensors under keys named like a module's state still load."""
    path = tmp_path / "weights.pt"
    torch.save({"_modules": torch.zeros(1), "_parameters": torch.ones(1)}, path)
    state, _ = read_weights(path, "state_dict")
    assert set(state) == {"_modules", "_parameters"}


def test_every_load_error_reason_is_one_line(tmp_path, checkpoint_bytes):
    """A loader's multi-line reason with terminal escapes, and a factory whose module does not
    fit (PyTorch's reason spans lines), come out of load_checkpoint as one line."""

    def noisy(path, fmt, device):
        raise IntegrityError("first line\n\tsecond \x1b[1mbold\x1b[0m line")

    data = checkpoint_bytes("state_dict", 0)
    with pytest.raises(IntegrityError) as info:
        load(data, tmp_path, loader=noisy)
    assert str(info.value) == "first line second bold line"
    with pytest.raises(CheckpointError, match="do not fit") as info:
        load(data, tmp_path, loader=state_dict_loader(lambda: Actor(hidden=16)))
    assert_one_line(str(info.value))
