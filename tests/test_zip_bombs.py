"""LOAD: a zip checkpoint's directory is checked before anything is inflated, so a zip bomb is
refused from its directory alone, and every archive PyTorch writes still passes."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch
from safetensors.torch import save as save_safetensors

from ckptserve import CheckpointError, IntegrityError, load_checkpoint, publish, sniff
from ckptserve.formats import _zipcheck, check_zip
from ckptserve.formats._zipcheck import MAX_INFLATED_BYTES, MAX_ZIP_ENTRIES, read_directory
from core_helpers import FORMATS, action_of, loader_for
from policies import seeded_actor

# ---- a zip writer that can lie ---------------------------------------------------------------


@dataclass
class Member:
    """One entry as written: the bytes in the file, and what its directory entry claims."""

    name: str
    payload: bytes  # the (compressed) bytes in the file
    method: int = 0
    size: int | None = None  # the declared uncompressed size (default: len(payload))
    crc: int | None = None  # default: the CRC-32 of the payload (right for stored entries)
    zip64: bool = False  # write sizes and offset in a zip64 extra field
    flags: int = 0
    offset: int = field(default=0, init=False)


def _local(m: Member) -> bytes:
    name = m.name.encode()
    return (
        struct.pack(
            "<4sHHHHHIIIHH", b"PK\x03\x04", 45, m.flags, m.method, 0, 0, 0, 0, 0, len(name), 0
        )
        + name
    )


def _central(m: Member, name: str | None = None, offset: int | None = None) -> bytes:
    raw = (name or m.name).encode()
    size = len(m.payload) if m.size is None else m.size
    crc = zlib.crc32(m.payload) if m.crc is None else m.crc
    where = m.offset if offset is None else offset
    extra = b""
    fields = (len(m.payload), size, where)
    if m.zip64:
        extra = struct.pack("<HHQQQ", 1, 24, size, len(m.payload), where)
        fields = (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    csize, usize, off = fields
    return struct.pack(
        "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45, m.flags, m.method, 0, 0, crc,
        csize, usize, len(raw), len(extra), 0, 0, 0, 0, off,
    ) + raw + extra  # fmt: skip


def build_zip(
    members: list[Member],
    directory: list[tuple[Member, str | None, int | None]] | None = None,
    *,
    count: int | None = None,
) -> bytes:
    """Members laid out one after another, then a central directory (by default one entry
    per member; `directory` lists (member, name, offset) to point entries anywhere), then
    the zip64 end records and the end record, as PyTorch writes them."""
    out = bytearray()
    for m in members:
        m.offset = len(out)
        out += _local(m) + m.payload
    cd_offset = len(out)
    for m, name, offset in directory or [(m, None, None) for m in members]:
        out += _central(m, name, offset)
    cd_size = len(out) - cd_offset
    n = len(directory or members) if count is None else count
    record_at = len(out)
    out += struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, cd_size, cd_offset)
    out += struct.pack("<4sIQI", b"PK\x06\x07", 0, record_at, 1)
    out += struct.pack(
        "<4sHHHHIIH", b"PK\x05\x06", 0, 0, min(n, 0xFFFF), min(n, 0xFFFF), 0xFFFFFFFF,
        0xFFFFFFFF, 0,
    )  # fmt: skip
    return bytes(out)


def deflate_bomb(inflated_mib: int) -> bytes:
    """A raw deflate stream of zeros, `inflated_mib` MiB inflated, ~1 KiB per MiB compressed:
    one fully flushed block of 1 MiB of zeros (its output is the same every time) repeated."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(bytes(1 << 20)) + deflate.flush(zlib.Z_FULL_FLUSH)
    return block * inflated_mib + b"\x03\x00"  # an empty final block ends the stream


@pytest.fixture
def inflation(monkeypatch) -> Iterator[dict[str, int]]:
    """Counts what the zip check computes: CRC-32 calls and bytes inflated."""
    counts = {"crc32": 0, "inflated": 0}
    real_crc32, real_decompressobj = zlib.crc32, zlib.decompressobj

    class Counting:
        def __init__(self, *args: object) -> None:
            self._inflate = real_decompressobj(*args)  # type: ignore[arg-type]

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self._inflate.decompress(data, max_length)
            counts["inflated"] += len(out)
            return out

        def __getattr__(self, name: str) -> object:
            return getattr(self._inflate, name)

    def crc32(data: bytes, value: int = 0) -> int:
        counts["crc32"] += 1
        return real_crc32(data, value)

    fake = type("zlib", (), {"crc32": staticmethod(crc32), "decompressobj": Counting,
                             "error": zlib.error})  # fmt: skip
    monkeypatch.setattr(_zipcheck, "zlib", fake)
    yield counts


def torchscript_looking(code: Member) -> list[Member]:
    return [
        Member("archive/data.pkl", b"\x80\x02}q\x00."),
        Member("archive/constants.pkl", b"\x80\x02)."),
        code,
    ]


# ---- bombs -----------------------------------------------------------------------------------


def test_a_deflated_entry_declaring_gigabytes_is_refused_before_inflating(tmp_path, inflation):
    """A 4 MiB TorchScript-looking zip whose code entry inflates to 4 GiB (5 s of CRC work per
    attempt for zipfile) is refused from its directory: nothing inflated, no CRC computed."""
    stream = deflate_bomb(4096)
    code = Member("archive/code/__torch__/m.py", stream, method=8, size=4 << 30, crc=0, zip64=True)
    data = build_zip(torchscript_looking(code))
    assert 3 << 20 < len(data) < 5 << 20, len(data)
    path = tmp_path / "bomb.pt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"deflated to 4294967296 bytes") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert inflation == {"crc32": 0, "inflated": 0}


def test_a_deflated_entry_that_inflates_past_its_declared_size_stops_there(tmp_path, inflation):
    """A small declared size over a stream that inflates to 4 GiB: inflating stops one byte
    past the declared size and the record is refused."""
    stream = deflate_bomb(4096)
    code = Member("archive/code/__torch__/m.py", stream, method=8, size=1000, crc=0)
    path = tmp_path / "bomb.pt"
    path.write_bytes(build_zip(torchscript_looking(code)))
    with pytest.raises(IntegrityError, match="inflates past its size"):
        load_checkpoint(path)
    assert inflation["inflated"] <= 1001, inflation


def forty_at_one(member: Member) -> bytes:
    pickle = Member("archive/data.pkl", b"\x80\x02}q\x00.")
    return build_zip([pickle, member], [(pickle, None, None)] + [(member, None, None)] * 40)


def test_forty_entries_pointing_at_one_member_are_refused(tmp_path, inflation):
    """A 257 KB zip with 40 directory entries at one stored 256 KiB member is refused as
    overlapping before any CRC is computed."""
    data = forty_at_one(Member("archive/data/0", bytes(256 << 10)))
    assert 256 << 10 < len(data) < 270 << 10, len(data)
    path = tmp_path / "bomb.pt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="overlaps another entry") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert inflation == {"crc32": 0, "inflated": 0}


def test_forty_entries_at_one_deflated_member_are_refused_uninflated(tmp_path, inflation):
    """The same with a 256 KB deflated member that inflates to 256 MiB (10 GiB in all: 13.8 s
    for zipfile to pass): refused from the directory, nothing inflated."""
    stream = deflate_bomb(256)
    data = forty_at_one(Member("archive/data/0", stream, method=8, size=256 << 20, crc=0))
    path = tmp_path / "bomb.pt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="deflated to 268435456 bytes"):
        load_checkpoint(path)
    assert inflation == {"crc32": 0, "inflated": 0}


def test_an_entry_quoting_another_inside_its_data_is_refused(inflation):
    """Distinct names, every local header matching its entry, CRCs right: entry A's stored
    bytes contain entry B (the overlapping layout of non-recursive zip bombs)."""
    inner = Member("archive/data/1", bytes(4096))
    inner_bytes = _local(inner) + inner.payload
    outer = Member("archive/data/0", inner_bytes)
    pickle = Member("archive/data.pkl", b"\x80\x02}q\x00.")
    build_zip([pickle, outer])  # lays the members out: outer.offset is known from here
    inner_at = outer.offset + len(_local(outer))
    directory = [(pickle, None, None), (outer, None, None), (inner, None, inner_at)]
    data = build_zip([pickle, outer], directory)
    assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None  # zipfile lets it through
    with pytest.raises(CheckpointError, match="overlaps another entry"):
        check_zip(data)
    assert inflation == {"crc32": 0, "inflated": 0}


def test_the_entry_count_is_bounded(inflation):
    """A directory claiming more than MAX_ZIP_ENTRIES entries is refused before it is read."""
    pickle = Member("archive/data.pkl", b"\x80\x02}q\x00.")
    data = build_zip([pickle], count=MAX_ZIP_ENTRIES + 1)
    with pytest.raises(CheckpointError, match=f"lists {MAX_ZIP_ENTRIES + 1} entries"):
        sniff(data)


def test_deflated_entries_may_inflate_to_the_bound_in_all():
    """Small deflated records (TorchScript's code files) pass; more than MAX_INFLATED_BYTES
    inflated across entries is refused."""
    text = b"def forward(self, x):\n    return x\n" * 100
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = deflate.compress(text) + deflate.flush()
    ok = Member("archive/code/__torch__/m.py", stream, method=8, size=len(text),
                crc=zlib.crc32(text))  # fmt: skip
    check_zip(build_zip(torchscript_looking(ok)))
    half = MAX_INFLATED_BYTES // 2 + 1
    entries = [
        Member(f"archive/code/{i}.py", b"\x03\x00", method=8, size=half, crc=0) for i in range(2)
    ]
    with pytest.raises(CheckpointError, match="deflated"):
        read_directory(build_zip([Member("archive/data.pkl", b"x"), *entries]))


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([Member("archive/data.pkl", b"x", method=12)], "compression method 12"),
        ([Member("archive/data.pkl", b"x", flags=1)], "encrypted"),
        ([Member("archive/data.pkl", b"x"), Member("archive/data.pkl", b"y")], "one name twice"),
        ([Member("archive/data.pkl", b"x", size=5)], "two sizes"),
    ],
    ids=["bzip2", "encrypted", "duplicate-name", "stored-sizes"],
)
def test_directories_pytorch_never_writes_are_refused(members, message):
    """Other compression, encryption, a name listed twice, a stored entry with two sizes."""
    with pytest.raises(CheckpointError, match=message):
        read_directory(build_zip(members))


def test_an_entry_whose_local_header_names_another_file_is_refused():
    """The directory and the local header must agree on the name (the loader reads both)."""
    member = Member("archive/data.pkl", b"x")
    data = build_zip([member], [(member, "archive/other.pkl", None)])
    with pytest.raises(CheckpointError, match="names another file"):
        read_directory(data)


def test_a_truncated_archive_is_refused(checkpoint_bytes):
    """Cut anywhere, a PyTorch archive is refused by the directory check or the CRCs."""
    data = checkpoint_bytes("state_dict", 0)
    for cut in range(1, len(data), max(1, len(data) // 40)):
        with pytest.raises(CheckpointError):
            check_zip(data[:cut])


# ---- what PyTorch writes still passes ---------------------------------------------------------


def _jit_script(actor: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(actor), buf)
    return buf.getvalue()


def _jit_trace(actor: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(actor, torch.zeros(2, 4)), buf)
    return buf.getvalue()


def _export_save(actor: torch.nn.Module) -> bytes:
    batch = torch.export.Dim("batch")
    program = torch.export.export(actor, (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def _torch_save(actor: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(actor.state_dict(), buf)
    return buf.getvalue()


def _safetensors_save(actor: torch.nn.Module) -> bytes:
    return save_safetensors({k: v.contiguous() for k, v in actor.state_dict().items()})


TORCH_WRITERS = {
    "jit.save(script)": (_jit_script, "torchscript"),
    "jit.save(trace)": (_jit_trace, "torchscript"),
    "export.save": (_export_save, "export"),
    "torch.save(state_dict)": (_torch_save, "state_dict"),
    "safetensors.save": (_safetensors_save, "safetensors"),
}
ZIP_WRITERS = [how for how, (_, fmt) in TORCH_WRITERS.items() if fmt != "safetensors"]


@pytest.mark.parametrize("how", TORCH_WRITERS)
def test_checkpoints_written_by_plain_torch_calls_still_load(how, tmp_path):
    """torch.jit.save, torch.export.save, torch.save and safetensors' save pass the checks."""
    write, fmt = TORCH_WRITERS[how]
    path = tmp_path / "checkpoint.bin"
    path.write_bytes(write(seeded_actor(2).eval()))
    loaded = load_checkpoint(path, loader=loader_for(fmt))
    assert loaded.format == fmt
    state = torch.full((1, 4), 0.5)
    with torch.inference_mode():  # a traced module takes the state only
        torch.testing.assert_close(loaded.model(state)[0], seeded_actor(2)(state)[0])


@pytest.mark.parametrize("fmt", FORMATS)
def test_checkpoints_written_by_publish_still_load(fmt, tmp_path):
    """Every format publish() writes passes the directory check and loads."""
    loaded = load_checkpoint(publish(seeded_actor(2), tmp_path, format=fmt), loader=loader_for(fmt))
    assert action_of(loaded.model) == pytest.approx(action_of(seeded_actor(2)))


@pytest.mark.parametrize("how", ZIP_WRITERS)
def test_the_directory_reads_as_zipfile_reads_it(how):
    """For archives PyTorch writes, every entry's name, size, CRC and data offset are the ones
    Python's zipfile finds."""
    data = TORCH_WRITERS[how][0](seeded_actor(2).eval())
    ours = {e.name: (e.size, e.crc, e.start) for e in read_directory(data)}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        theirs = {
            i.filename: (i.file_size, i.CRC, i.header_offset + len(_local_header(data, i)))
            for i in zf.infolist()
        }
    assert ours == theirs


def _local_header(data: bytes, info: zipfile.ZipInfo) -> bytes:
    at = info.header_offset
    name_len, extra_len = struct.unpack_from("<HH", data, at + 26)
    return data[at : at + 30 + name_len + extra_len]


def test_zip64_sizes_and_offsets_in_the_extra_field_are_read():
    """An entry whose sizes and offset are in its zip64 extra field (as for records over
    4 GiB) is read and CRC-checked like any other."""
    payload = bytes(range(256)) * 16
    members = [Member("archive/data.pkl", b"\x80\x02}q\x00."), Member("archive/data/0", payload,
               zip64=True)]  # fmt: skip
    data = build_zip(members)
    entries = {e.name: e for e in read_directory(data)}
    assert entries["archive/data/0"].size == len(payload)
    assert data[entries["archive/data/0"].start :][: len(payload)] == payload
    check_zip(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.read("archive/data/0") == payload
