"""The zip directory of a checkpoint, read and checked by hand before anything is inflated.

PyTorch's archives (TorchScript, export, state_dict) store their records uncompressed; only
TorchScript deflates its code files, which are small. So a zip that a hostile writer made to
inflate to gigabytes, or whose directory points many entries at the same bytes (a zip bomb), is
refused from its directory alone: every entry stored (or deflated within `MAX_INFLATED_BYTES` in
all), inside the file, overlapping no other entry, at most `MAX_ZIP_ENTRIES` of them. Only then
are the CRC-32s checked, stored entries straight from the buffer (no copy, no inflation).
"""

from __future__ import annotations

import mmap
import struct
import zlib
from typing import NamedTuple

from ..errors import CheckpointError, IntegrityError, one_line

__all__ = ["MAX_INFLATED_BYTES", "MAX_ZIP_ENTRIES", "ZipEntry", "check_crcs", "read_directory"]

#: The most entries a checkpoint's zip directory may list: a model of a few thousand tensors
#: has about as many entries; reading 20,000 takes ~0.1 s.
MAX_ZIP_ENTRIES = 20_000
#: The most bytes the deflated entries of one archive may inflate to, all together.
MAX_INFLATED_BYTES = 32 << 20

Buffer = bytes | memoryview | mmap.mmap

_STORED, _DEFLATED = 0, 8
_EOCD = struct.Struct("<4sHHHHIIH")  # end of central directory
_LOCATOR = struct.Struct("<4sIQI")  # zip64 end of central directory locator
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")  # zip64 end of central directory record
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # central directory file header
_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # local file header
_CHUNK = 1 << 20


class ZipEntry(NamedTuple):
    """One record of a checked zip directory: where its bytes lie and what they must be."""

    name: str
    method: int
    start: int  # first byte of the (compressed) data
    compressed: int
    size: int  # after inflating; equal to `compressed` for a stored entry
    crc: int


def _unreadable(reason: str) -> CheckpointError:
    return CheckpointError(f"not a readable zip archive: {reason}")


def _end_of_directory(data: memoryview) -> tuple[int, int, int]:
    """(entry count, directory offset, directory size), from the (zip64) end records."""
    end = len(data)
    found = bytes(data[max(0, end - _EOCD.size - 0xFFFF) :]).rfind(b"PK\x05\x06")
    if found < 0:
        raise _unreadable("no end-of-directory record (truncated, or not a zip)")
    at = max(0, end - _EOCD.size - 0xFFFF) + found
    if at + _EOCD.size > end:
        raise _unreadable("the end-of-directory record is cut off")
    _, disk, cd_disk, on_disk, count, cd_size, cd_offset, comment = _EOCD.unpack_from(data, at)
    if at + _EOCD.size + comment != end:
        raise _unreadable("bytes after the end-of-directory record")
    if disk or cd_disk or on_disk != count:
        raise _unreadable("a multi-volume archive")
    directory_end = at
    locator_at = at - _LOCATOR.size
    if locator_at >= 0 and bytes(data[locator_at : locator_at + 4]) == b"PK\x06\x07":
        _, _, record_at, _ = _LOCATOR.unpack_from(data, locator_at)
        if record_at + _EOCD64.size > locator_at:
            raise _unreadable("the zip64 end record lies outside the file")
        sig, record_size, *_, on_disk64, count64, cd_size64, cd_offset64 = _EOCD64.unpack_from(
            data, record_at
        )
        if sig != b"PK\x06\x06" or record_at + 12 + record_size != locator_at:
            raise _unreadable("the zip64 end record is damaged")
        if on_disk64 != count64:
            raise _unreadable("a multi-volume archive")
        count, cd_size, cd_offset, directory_end = count64, cd_size64, cd_offset64, record_at
    if cd_offset + cd_size != directory_end:
        raise _unreadable("the central directory is not where its end record says")
    return count, cd_offset, cd_size


def _zip64_values(extra: bytes, wanted: list[bool]) -> list[int]:
    """The 8-byte values of the zip64 extra field (id 1) that `wanted` says are present."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if tag == 1:
            n = sum(wanted)
            if len(body) < 8 * n:
                raise _unreadable("a zip64 extra field is too short")
            return list(struct.unpack_from(f"<{n}Q", body))
        pos += 4 + length
    raise _unreadable("an entry needs a zip64 extra field it does not have")


def read_directory(buffer: Buffer) -> tuple[ZipEntry, ...]:
    """Parse and check the zip directory of `buffer`; raise CheckpointError for a bomb.

    Raises CheckpointError when the directory cannot be read or describes something PyTorch
    does not write (more than `MAX_ZIP_ENTRIES` entries, compression other than stored or a
    bounded deflate, encryption, two entries sharing bytes or a name), and IntegrityError when
    an entry's bytes lie past the end of the data (a truncated or torn file).
    """
    with memoryview(buffer) as data:  # released on the way out, so an mmap can be closed
        return _read_directory(data)


def _shown(name: str) -> str:
    return one_line(name, 120)  # a hostile name may hold newlines or terminal escapes


def _read_directory(data: memoryview) -> tuple[ZipEntry, ...]:
    count, cd_offset, cd_size = _end_of_directory(data)
    if count > MAX_ZIP_ENTRIES:
        raise CheckpointError(f"zip archive lists {count} entries (at most {MAX_ZIP_ENTRIES})")
    if count * _CENTRAL.size > cd_size:
        raise _unreadable(f"{count} entries cannot fit a {cd_size}-byte directory")
    directory = bytes(data[cd_offset : cd_offset + cd_size])  # one copy, then parsed in place
    central, local = _CENTRAL.unpack_from, _LOCAL.unpack_from
    entries: list[tuple[int, ZipEntry]] = []
    pos, inflated = 0, 0
    for _ in range(count):
        if pos + _CENTRAL.size > cd_size:
            raise _unreadable("the central directory is cut off")
        (sig, _, _, flags, method, _, _, crc, compressed, size, name_len, extra_len,
         comment_len, disk, _, _, offset) = central(directory, pos)  # fmt: skip
        if sig != b"PK\x01\x02":
            raise _unreadable("a damaged central directory entry")
        extra_at = pos + _CENTRAL.size + name_len
        raw_name = directory[pos + _CENTRAL.size : extra_at]
        pos = extra_at + extra_len + comment_len
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        if size == 0xFFFFFFFF or compressed == 0xFFFFFFFF or offset == 0xFFFFFFFF:
            wanted = [size == 0xFFFFFFFF, compressed == 0xFFFFFFFF, offset == 0xFFFFFFFF]
            values = iter(_zip64_values(directory[extra_at : extra_at + extra_len], wanted))
            size = next(values) if wanted[0] else size
            compressed = next(values) if wanted[1] else compressed
            offset = next(values) if wanted[2] else offset
        if flags & 0x41:
            raise CheckpointError(f"zip entry {_shown(name)} is encrypted")
        if disk and disk != 0xFFFF:
            raise _unreadable("a multi-volume archive")
        if method == _STORED:
            if compressed != size:
                raise _unreadable(f"stored entry {_shown(name)} has two sizes")
        elif method == _DEFLATED:
            inflated += size
            if inflated > MAX_INFLATED_BYTES:
                raise CheckpointError(
                    f"zip entry {_shown(name)} is deflated to {size} bytes: PyTorch stores its "
                    f"data uncompressed, and at most {MAX_INFLATED_BYTES} bytes are inflated"
                )
        else:
            raise CheckpointError(f"zip entry {_shown(name)} uses compression method {method}")
        if offset + _LOCAL.size > cd_offset:
            raise IntegrityError(
                f"zip entry {_shown(name)} starts past the data (truncated or torn)"
            )
        (local_sig, _, _, local_method, _, _, _, _, _, local_name_len,
         local_extra_len) = local(data, offset)  # fmt: skip
        name_at = offset + _LOCAL.size
        start = name_at + local_name_len + local_extra_len
        if local_sig != b"PK\x03\x04" or local_method != method:
            raise _unreadable(f"the local header of {_shown(name)} is damaged")
        if local_name_len != name_len or data[name_at : name_at + name_len] != raw_name:
            raise _unreadable(f"the local header of {_shown(name)} names another file")
        if start + compressed > cd_offset:
            raise IntegrityError(f"zip entry {_shown(name)} ends past the data (truncated or torn)")
        entries.append((offset, ZipEntry(name, method, start, compressed, size, crc)))
    if pos != cd_size:
        raise _unreadable("the central directory has bytes its entries do not account for")
    entries.sort(key=lambda e: e[0])
    end = 0
    for offset, entry in entries:
        if offset < end:
            raise CheckpointError(
                f"zip entry {_shown(entry.name)} overlaps another entry's bytes (a zip bomb?)"
            )
        end = entry.start + entry.compressed
    if len({entry.name for _, entry in entries}) != len(entries):
        raise CheckpointError("zip archive lists one name twice")
    return tuple(entry for _, entry in entries)


def check_crcs(buffer: Buffer, entries: tuple[ZipEntry, ...]) -> None:
    """Raise IntegrityError unless every entry's bytes match the CRC-32 in the directory.

    Stored entries are checked in place (zlib releases the GIL for large buffers); deflated
    ones are inflated chunk by chunk and never past their declared size.
    """
    with memoryview(buffer) as data:
        for entry in entries:
            with data[entry.start : entry.start + entry.compressed] as raw:
                got = zlib.crc32(raw) if entry.method == _STORED else _inflated_crc(raw, entry)
            if got != entry.crc:
                raise IntegrityError(
                    f"zip record {one_line(entry.name, 120)} fails its CRC-32 check"
                    " (torn or corrupt write)"
                )


def _inflated_crc(raw: memoryview, entry: ZipEntry) -> int:
    inflate = zlib.decompressobj(-15)
    crc, left = 0, entry.size
    try:
        for at in range(0, len(raw), _CHUNK):
            pending = bytes(raw[at : at + _CHUNK])
            while pending:
                out = inflate.decompress(pending, left + 1)
                if len(out) > left:
                    raise IntegrityError(
                        f"zip record {one_line(entry.name, 120)} inflates past its size"
                    )
                crc, left = zlib.crc32(out, crc), left - len(out)
                pending = inflate.unconsumed_tail
                if not out and pending:  # no progress possible: a broken stream
                    break
    except zlib.error as exc:
        raise IntegrityError(
            f"zip record {one_line(entry.name, 120)} does not inflate: {exc}"
        ) from None
    if left or not inflate.eof:
        raise IntegrityError(f"zip record {one_line(entry.name, 120)} inflates short of its size")
    return crc
