"""The three formats PyTorch writes as zip archives: export, TorchScript and state_dict.

Each is a `Format` for the table in `formats`: detected from the archive's entry names,
checked by the CRC-32 of every record, read with PyTorch's own loader (state_dict with
`weights_only=True`), written by `publish()`.
"""

from __future__ import annotations

import io
import pickletools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, PublishError, one_line
from ..manifest import METADATA_FILE, METADATA_KEY
from ._codec import Buffer, Format, Loaded, Sniffed, metadata_from_json
from ._zipcheck import check_crcs

__all__ = ["EXPORT", "PICKLED_MODULE", "STATE_DICT", "TORCHSCRIPT", "ExportedPolicy", "cpu_weights"]


class ExportedPolicy(torch.nn.Module):
    """A `torch.export` program callable as `policy(state)` or `policy(state, deterministic)`, or
    with its inputs by name (`critic(state=..., action=...)`).

    It calls the program's graph with its lifted parameters directly, skipping the input guards of
    `ExportedProgram.module()` (about 3x the forward cost of a small actor). The graph is the one
    exported, so `deterministic` is accepted for the calling convention and otherwise ignored.
    """

    def __init__(self, program: torch.export.ExportedProgram, device: str) -> None:
        super().__init__()
        from torch.export.graph_signature import InputKind, OutputKind

        self.program = program
        self.graph = program.graph_module
        sig = program.graph_signature
        lifted: list[torch.Tensor] = []
        for spec in sig.input_specs:
            if spec.kind == InputKind.USER_INPUT:
                continue
            if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                raise CheckpointError(f"exported program has an unsupported input kind {spec.kind}")
            target = str(spec.target)
            value = program.state_dict.get(target)
            if value is None:
                value = program.constants[target]
            lifted.append(value.detach().to(device))
        self._lifted = tuple(lifted)
        self._user_outputs = [
            i for i, s in enumerate(sig.output_specs) if s.kind == OutputKind.USER_OUTPUT
        ]
        self._n_user_inputs = sum(1 for s in sig.input_specs if s.kind == InputKind.USER_INPUT)
        self._input_names = tuple(sig.user_inputs)  # forward's argument names, in its order
        self._out_spec = program.call_spec.out_spec
        # The generated forward, without nn.Module.__call__ around it (~2 us of a ~30 us call).
        self._graph_forward = self.graph.forward
        # The common case, `return action, log_prob`: the graph's outputs are the result as is.
        n = len(sig.output_specs)
        self._plain_tuple = len(self._user_outputs) == n and self._out_spec == (
            torch.utils._pytree.tree_structure((0,) * n)
        )

    def forward(self, *args: Any, **named: torch.Tensor) -> Any:
        # (state, deterministic) for a policy, whose graph takes the state alone; a model with
        # named inputs (a critic's state and action) is called with them by name.
        if named:
            try:
                args = tuple(named[n] for n in self._input_names)
            except KeyError as missing:
                raise TypeError(f"the program takes {', '.join(self._input_names)}, "
                                f"not {', '.join(named)} (no {missing})") from None  # fmt: skip
        flat = self._graph_forward(*self._lifted, *args[: self._n_user_inputs])
        if self._plain_tuple:
            return tuple(flat)
        outs = [flat[i] for i in self._user_outputs]
        if self._out_spec is None:
            return outs[0] if len(outs) == 1 else tuple(outs)
        return torch.utils._pytree.tree_unflatten(outs, self._out_spec)

    # Bypass nn.Module's hook machinery on the hot path: this wrapper has no hooks.
    __call__ = forward


def _check_records(data: Buffer, sniffed: Sniffed) -> None:
    check_crcs(data, sniffed.entries or ())


def _is_export(sniffed: Sniffed) -> bool:
    names = sniffed.names
    return "archive_format" in names or any(n.startswith("models/") for n in names)


def _read_export(path: Path, device: str) -> Loaded:
    extra = {METADATA_FILE: ""}
    # An open file, not a path: torch wants a `.pt2` name and logs a warning for anything else
    # (publish() names every checkpoint `.pt`).
    with open(path, "rb") as f:
        program = torch.export.load(f, extra_files=extra)
    return Loaded(
        ExportedPolicy(program, device),
        "export",
        metadata_from_json(extra[METADATA_FILE], "export"),
    )


def _export(
    model: torch.nn.Module, example: torch.Tensor | Mapping[str, torch.Tensor]
) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch")
    attempts: list[tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor], Any]]
    if isinstance(example, Mapping):  # named inputs, by name: one batch size for all of them
        named = dict(example)
        attempts = [((), named, {name: {0: batch} for name in named})]
    else:  # forward's first argument may not be named `state`
        attempts = [((example,), {}, {"state": {0: batch}}), ((example,), {}, ({0: batch},))]
    first: Exception | None = None
    for args, kwargs, shapes in attempts:
        try:
            return torch.export.export(model, args, kwargs, dynamic_shapes=shapes)
        except Exception as exc:
            first = first or exc
    raise PublishError(
        f"{type(model).__name__} cannot be exported with torch.export "
        f"({type(first).__name__}: {one_line(str(first), 200)}); publish with "
        "format='state_dict' or 'safetensors' (and serve with state_dict_loader), or "
        "format='torchscript' if it can be scripted"
    ) from first


def _write_export(model: Any, metadata_json: str, example: Any) -> bytes:
    program = model if isinstance(model, torch.export.ExportedProgram) else _export(model, example)
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={METADATA_FILE: metadata_json})
    return buf.getvalue()


def _is_torchscript(sniffed: Sniffed) -> bool:
    names = sniffed.names
    return "constants.pkl" in names or any(n.startswith("code/") for n in names)


def _read_torchscript(path: Path, device: str) -> Loaded:
    extra = {METADATA_FILE: ""}
    model = torch.jit.load(str(path), map_location=device, _extra_files=extra)  # type: ignore[no-untyped-call]
    model.eval()
    return Loaded(model, "torchscript", metadata_from_json(extra[METADATA_FILE], "TorchScript"))


def _write_torchscript(model: Any, metadata_json: str, example: Any) -> bytes:
    if isinstance(model, torch.export.ExportedProgram):
        raise PublishError("an ExportedProgram cannot be saved as TorchScript: use format='export'")
    if not isinstance(model, torch.jit.ScriptModule):
        try:
            model = torch.jit.script(model)
        except Exception as exc:
            raise PublishError(
                f"{type(model).__name__} cannot be scripted ({type(exc).__name__}: "
                f"{one_line(str(exc), 200)}); publish with format='export' (the default) or "
                "'safetensors'"
            ) from exc
    buf = io.BytesIO()
    torch.jit.save(model, buf, _extra_files={METADATA_FILE: metadata_json})
    return buf.getvalue()


def _is_state_dict(sniffed: Sniffed) -> bool:
    return "data.pkl" in sniffed.names


#: Why a full pickle of a module is refused, and how to re-save it: one line, for every reader.
PICKLED_MODULE = (
    "a pickled module (torch.save(model)): unpickling it can run any code, so it is never "
    "loaded; re-save it with ckptserve.publish(model, directory), or save "
    "torch.save(model.state_dict(), path) and serve it with --factory package.module:make_model"
)
# Where the globals of a plain state_dict pickle come from (tensors, storages, containers).
_PLAIN = ("torch", "collections", "builtins", "__builtin__", "copyreg", "_codecs", "numpy")
_SCANNED = 16 << 20  # bigger pickles are left to torch's own weights_only check
_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
            "BINSTRING", "STRING"}  # fmt: skip


def _pickle_globals(pickle: bytes) -> tuple[list[str], bool]:
    """The globals a pickle references (`module.name`), and whether it holds nn.Module state
    (`_modules` and `_parameters` keys); read opcode by opcode, nothing is unpickled."""
    found: list[str] = []
    keys: set[str] = set()
    memo: dict[int, str] = {}  # memo slots that hold strings
    slots = 0  # MEMOIZE numbers the memo in order (protocol 4)
    top: list[str] = []  # the strings just pushed, for STACK_GLOBAL (module, name)
    try:
        for op, arg, _ in pickletools.genops(pickle):
            name = op.name
            if name in _STRINGS:
                top = [*top[-1:], str(arg)]
                keys.add(str(arg))
            elif name == "MEMOIZE":
                if top:
                    memo[slots] = top[-1]
                slots += 1
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                if top and isinstance(arg, int):
                    memo[arg] = top[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET") and isinstance(arg, int) and arg in memo:
                top = [*top[-1:], memo[arg]]
            else:
                if name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif name == "STACK_GLOBAL" and len(top) == 2:
                    found.append(".".join(top))
                top = []
    except (ValueError, KeyError, TypeError):  # not a well-formed pickle: torch refuses it
        pass
    return found, {"_modules", "_parameters"} <= keys


def _refuse_pickled_objects(data: Buffer, sniffed: Sniffed) -> None:
    """Refuse a state_dict file whose pickle is a module or other Python objects, with the
    reason in one line (torch's own weights_only refusal is a page of advice)."""
    entry = next(
        (e for e in sniffed.entries or () if e.name.split("/", 1)[1:] == ["data.pkl"]), None
    )
    if entry is None or entry.method != 0 or entry.compressed > _SCANNED:
        return
    globals_, module_state = _pickle_globals(bytes(data[entry.start : entry.start + entry.size]))
    foreign = [g for g in globals_ if g.split(".", 1)[0] not in _PLAIN]
    if any(g.startswith("torch.nn.modules.") for g in globals_) or (module_state and foreign):
        raise CheckpointError(PICKLED_MODULE)
    if foreign:
        raise CheckpointError(
            f"state_dict refused by weights_only loading: its pickle references "
            f"{one_line(foreign[0], 80)}, not only tensors and plain containers (unpickling "
            "it could run code)"
        )


def _check_state_dict(data: Buffer, sniffed: Sniffed) -> None:
    check_crcs(data, sniffed.entries or ())
    _refuse_pickled_objects(data, sniffed)


def _read_state_dict(path: Path, device: str) -> Loaded:
    try:
        state = torch.load(str(path), map_location=device, weights_only=True, mmap=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ...
        raise CheckpointError(_weights_only_reason(str(exc))) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"state_dict file holds {type(state).__name__}, not a dict")
    raw = state.pop(METADATA_KEY, None)
    if raw is not None and not isinstance(raw, str):
        raise CheckpointError(f"{METADATA_KEY} in a state_dict must be a JSON string")
    return Loaded(state, "state_dict", metadata_from_json(raw, "state_dict"))


def _weights_only_reason(text: str) -> str:
    """torch's weights_only refusal in one line: the global it refused, not its advice to
    load with `weights_only=False`, which ckptserve never does."""
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if refused:
        what = f"its pickle references {refused[1]}, not only tensors and plain containers"
    elif text.startswith("Weights only load failed"):
        what = "its pickle holds objects other than tensors and plain containers"
    else:
        what = one_line(text, 200)
    return f"state_dict refused by weights_only loading: {what}"


def cpu_weights(model: Any, *, unshared: bool = False) -> dict[str, torch.Tensor]:
    """The model's tensors on the CPU; `unshared` copies tied ones (safetensors refuses them)."""
    state = (
        model.state_dict if isinstance(model, torch.export.ExportedProgram) else model.state_dict()
    )
    weights: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in state.items():
        t = v.detach().cpu().contiguous()
        if unshared:
            where = t.untyped_storage().data_ptr()
            if where in seen:
                t = t.clone()
            seen.add(where)
        weights[k] = t
    return weights


def _write_state_dict(model: Any, metadata_json: str, example: Any) -> bytes:
    state: dict[str, Any] = dict(cpu_weights(model))
    state[METADATA_KEY] = metadata_json
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


EXPORT = Format(
    "export", needs_factory=False, runs_code_on_load=False, detect=_is_export,
    check=_check_records, read=_read_export, write=_write_export,
)  # fmt: skip
TORCHSCRIPT = Format(
    "torchscript", needs_factory=False, runs_code_on_load=True, detect=_is_torchscript,
    check=_check_records, read=_read_torchscript, write=_write_torchscript,
)  # fmt: skip
STATE_DICT = Format(
    "state_dict", needs_factory=True, runs_code_on_load=False, detect=_is_state_dict,
    check=_check_state_dict, read=_read_state_dict, write=_write_state_dict,
)  # fmt: skip
