"""A file name is whatever the directory writer chose: a newline, a space, a byte that is not
UTF-8. None of them may break a response: the header is percent-encoded, the bodies stay JSON."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest
from serverkit import OBS_DIM, InProcessServer, seeded, state, torch_script

from ckptserve import publish
from ckptserve.server.names import printable, version_header
from ckptserve.server.routing import route_table

MakeServer = Callable[..., InProcessServer]

SHA = "0123456789abcdef" * 4
NAMES = {
    "newline": b"actor_a\nX.pt",
    "carriage-return": b"actor_a\r\nSet-Cookie: x.pt",
    "space-and-percent": b"actor 100%.pt",
    "non-ascii": "actor_é.pt".encode(),
    "not-utf8": b"actor_\xff\xfe.pt",
    "tab-and-del": b"actor\t\x7f.pt",
}


@pytest.mark.parametrize("raw", NAMES.values(), ids=NAMES.keys())
def test_version_header_holds_only_visible_ascii_and_decodes_to_the_tag(raw: bytes) -> None:
    """Every byte outside visible ASCII, and `%`, is percent-encoded; decoding gives the tag."""
    header = version_header(os.fsdecode(raw), SHA)
    assert all(0x21 <= b <= 0x7E for b in header), header
    assert unquote_to_bytes(header.decode()) == raw + b"@" + SHA[:12].encode()


def test_an_ordinary_name_is_its_own_header() -> None:
    assert (
        version_header("actor_20260412_143022.pt", SHA) == b"actor_20260412_143022.pt@0123456789ab"
    )


def test_printable_shows_bytes_that_are_not_utf8_and_keeps_the_rest() -> None:
    assert printable(os.fsdecode(b"actor_\xff.pt")) == "actor_\\xff.pt"
    assert printable("actor_é\n.pt") == "actor_é\n.pt"


@pytest.mark.parametrize("raw", [NAMES["newline"], NAMES["not-utf8"]], ids=["newline", "not-utf8"])
def test_a_strange_checkpoint_name_never_breaks_a_response(
    tmp_path: Path, make_server: MakeServer, raw: bytes
) -> None:
    """Served from a file with that name: predict, infer, their errors and every GET route answer
    over real HTTP, the header percent-encoded and the bodies naming the file."""
    publish(torch_script(seeded(0)), tmp_path / "published")
    source = next((tmp_path / "published").glob("actor_2*.pt"))
    path = os.path.join(os.fsencode(tmp_path), raw)
    shutil.copyfile(source, path)
    server = make_server(os.fsdecode(path))
    header = version_header(os.fsdecode(raw), "")[:-1].decode()  # the name part

    r = server.client.post("/rl/predict", json=state())
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == f"{header}@{r.json()['sha256'][:12]}"
    assert r.json()["checkpoint"] == printable(os.fsdecode(raw))
    r = server.client.post("/rl/predict", json={"state": [0.0]})
    assert r.status_code == 422 and r.headers["x-model-version"].startswith(header + "@")
    infer = {"inputs": [{"name": "state", "shape": [1, OBS_DIM], "datatype": "FP32",
                         "data": [0.0] * OBS_DIM}]}  # fmt: skip
    r = server.client.post("/v2/models/actor/infer", json=infer)
    assert r.status_code == 200 and r.headers["x-model-version"].startswith(header + "@")
    assert r.json()["model_version"].startswith(printable(os.fsdecode(raw)) + "@")
    for route in route_table("/rl"):
        if route.method == "GET" and route.in_schema:
            where = route.path.replace("{model}", "actor").replace("{name}", "actor")
            r = server.client.get(where)
            assert r.status_code == 200, (where, r.status_code, r.text[:300])
