"""Stream a 7z archive's members straight out of liblzma, using the coder parameters py7zr reads from its header.

py7zr spends ~0.5 ms of Python per member (FACTS.md: 148 s for test.7z's 300,000 members, liblzma alone 54 s);
here a solid folder whose coders liblzma implements (LZMA, LZMA2, and BCJ/delta filters before them) is
decompressed with the standard library's `lzma` in 1 MiB chunks and cut into members by the sizes in the
header, each checked against its CRC32. Folders with any other coder layout (bzip2, zstd, 7zAES, complex
bindings, ...) are reported as unsupported, and the caller uses py7zr's own extraction.
"""

from __future__ import annotations

import lzma
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import py7zr
from py7zr.compressor import SupportedMethods
from py7zr.exceptions import UnsupportedCompressionMethodError

_LIBLZMA_FILTERS = {
    lzma.FILTER_LZMA1, lzma.FILTER_LZMA2, lzma.FILTER_DELTA, lzma.FILTER_X86, lzma.FILTER_POWERPC,
    lzma.FILTER_IA64, lzma.FILTER_ARM, lzma.FILTER_ARMTHUMB, lzma.FILTER_SPARC,
}  # fmt: skip
_CHUNK = 1 << 20


class StreamError(ValueError):
    """The packed stream ends early, fails to decompress, or a member fails its CRC."""


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    crc: int | None


@dataclass(frozen=True)
class Folder:
    """One solid block: where its packed bytes lie, its liblzma filter, and its members in stream order."""

    offset: int
    packed_size: int
    lzma_filters: tuple[dict, ...]
    members: tuple[Member, ...]


def plan_folders(archive: py7zr.SevenZipFile) -> list[Folder] | None:
    """The archive's folders if liblzma can decode every one as a raw filter chain, else None (use py7zr)."""
    streams = getattr(archive.header, "main_streams", None)
    if streams is None or archive.password_protected:
        return None
    folders, packinfo = streams.unpackinfo.folders, streams.packinfo
    if len(packinfo.packsizes) != len(folders):  # one packed stream per folder
        return None
    plan = []
    for index, folder in enumerate(folders):
        lzma_filters = _liblzma_chain(folder.coders)
        if lzma_filters is None:
            return None
        members = tuple(
            Member(name=info["filename"], size=int(info["uncompressed"]), crc=info.get("digest"))
            for info in (folder.files.files_list if folder.files is not None else [])
        )
        plan.append(Folder(archive.afterheader + packinfo.packpositions[index], packinfo.packsizes[index],
                           lzma_filters, members))  # fmt: skip
    return plan


def _liblzma_chain(coders: list[dict]) -> tuple[dict, ...] | None:
    """The raw liblzma filter chain for a folder's coders, built as py7zr builds it, or None."""
    chain: list[dict] = []
    for coder in coders:
        if coder["numinstreams"] != 1 or coder["numoutstreams"] != 1:
            return None
        try:
            filter_id = SupportedMethods.get_filter_id(coder)
        except (KeyError, UnsupportedCompressionMethodError):
            return None
        if filter_id not in _LIBLZMA_FILTERS:
            return None
        properties = coder.get("properties")
        # the private helper is what py7zr itself uses to turn 7z coder properties into a liblzma filter
        chain.insert(0, lzma._decode_filter_properties(filter_id, properties) if properties else {"id": filter_id})
    if not chain or chain[-1]["id"] not in (lzma.FILTER_LZMA1, lzma.FILTER_LZMA2):
        return None
    return tuple(chain)


def iter_members(fp: BinaryIO, folder: Folder) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each member of `folder`, in stream order, CRC-checked; memory stays ~ a few MiB."""
    decompressor = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=list(folder.lzma_filters))
    fp.seek(folder.offset)
    unread = folder.packed_size
    buffer, start = bytearray(), 0
    for member in folder.members:
        while len(buffer) - start < member.size:
            if decompressor.eof:
                raise StreamError(f"the packed stream ends before member {member.name!r}")
            chunk = b""
            if decompressor.needs_input:
                chunk = fp.read(min(_CHUNK, unread))
                if not chunk:
                    raise StreamError(f"the file ends inside member {member.name!r}")
                unread -= len(chunk)
            try:
                buffer += decompressor.decompress(chunk, max_length=4 * _CHUNK)
            except lzma.LZMAError as exc:
                raise StreamError(f"liblzma fails near member {member.name!r}: {exc}") from exc
        data = bytes(buffer[start : start + member.size])
        start += member.size
        if start > _CHUNK:  # drop what was handed out, at most once per MiB
            del buffer[:start]
            start = 0
        if member.crc is not None and zlib.crc32(data) != member.crc:
            raise StreamError(f"member {member.name!r} fails its CRC check")
        yield member.name, data
