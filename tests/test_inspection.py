"""INSPECT: `describe` (and `ckptserve inspect`) take a file, a manifest or a directory, as
`serve` does, and report what a server would do with the checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ckptserve import publish
from ckptserve.formats._pytorch import PICKLED_MODULE
from ckptserve.inspection import describe
from core_helpers import FORMATS, WEIGHTS_FORMATS
from policies import Critic, examples, seeded_actor

FACTORY = "policies:make_actor"


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_directory_is_described_through_the_file_a_server_follows(fmt, tmp_path):
    """Given the model directory, the checkpoint its manifest names is described and checked
    against the manifest's sha256, with the manifest's metadata."""
    checkpoint = publish(seeded_actor(0), tmp_path, format=fmt, metadata={"step": 7})
    factory = FACTORY if fmt in WEIGHTS_FORMATS else None
    info = describe(tmp_path, factory=factory)
    assert info["directory"] == str(tmp_path)
    assert info["manifest"] == str(tmp_path / "actor_latest.json")
    assert info["file"] == str(checkpoint)
    assert info["format"] == fmt and info["probe"] == "ok", info
    assert info["metadata"]["step"] == 7 and info["signed"] is False
    assert "error" not in info


def test_a_critic_is_described_by_its_named_inputs_and_outputs(tmp_path):
    publish(Critic(), tmp_path, name="critic", example_inputs=examples(), output_name="q")
    info = describe(tmp_path / "critic_latest.json")
    assert info["probe"] == "ok" and "error" not in info, info
    assert info["inputs"] == {"action": [1, 1], "state": [1, 8]}
    assert info["outputs"] == {"q": [1, 1]}


def test_a_manifest_is_described_with_its_signature_checked(tmp_path):
    """A signed manifest and the right key: "valid"; the wrong key: an error, not a report."""
    publish(seeded_actor(0), tmp_path, signing_key="key")
    manifest = tmp_path / "actor_latest.json"
    info = describe(manifest, signing_key="key")
    assert info["signed"] is True and info["signature"] == "valid" and info["probe"] == "ok"
    wrong = describe(manifest, signing_key="other")
    assert "signature does not match" in wrong["error"] and "format" not in wrong


def test_a_manifest_whose_checkpoint_was_swapped_is_refused(tmp_path):
    """The checkpoint behind a manifest must be the one it names: other bytes are an error."""
    checkpoint = publish(seeded_actor(0), tmp_path, format="torchscript")
    other = publish(seeded_actor(1), tmp_path / "other", format="torchscript")
    checkpoint.write_bytes(other.read_bytes())
    info = describe(tmp_path)
    assert "does not match the manifest" in info["error"], info


def test_an_empty_directory_has_nothing_to_describe(tmp_path):
    """Nothing published yet is an OSError (the CLI prints it as one line)."""
    with pytest.raises(FileNotFoundError):
        describe(tmp_path)


def test_inspect_a_directory_from_the_command_line_without_fastapi(tmp_path):
    """`python -m ckptserve inspect DIR --json` describes the latest checkpoint and never
    imports FastAPI, uvicorn or starlette."""
    publish(seeded_actor(0), tmp_path)
    code = (
        "import json, runpy, sys\n"
        f"sys.argv = ['ckptserve', 'inspect', {str(tmp_path)!r}, '--json']\n"
        "try:\n"
        "    runpy.run_module('ckptserve', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "loaded = [m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules]\n"
        "print(json.dumps(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    *report, last = result.stdout.strip().splitlines()
    assert json.loads(last) == []
    info = json.loads("\n".join(report))
    assert info["format"] == "export" and info["probe"] == "ok"
    assert info["manifest"].endswith("actor_latest.json")


def test_inspect_says_a_pickled_module_is_one(tmp_path):
    """`ckptserve inspect` on `torch.save(model)` gives the same one-line reason as a load."""
    path = tmp_path / "model.pt"
    torch.save(seeded_actor(0), path)
    info = describe(path)
    assert info["format"] == "state_dict"
    assert info["error"] == f"load failed: {PICKLED_MODULE}"
