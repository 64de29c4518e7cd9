"""Kaggle's 7z archives of 32x32 PNGs -> one packed `(n_images, 32, 32, 3)` uint8 array, in id order.

Members are decoded as they stream out of the archive and stored at row `id - 1`; nothing but the array is
written anywhere. For LZMA/LZMA2 folders (Kaggle's) the stream comes from `seven_zip_stream`, decompressed on
this thread while a worker thread decodes the PNGs, so the whole runs at about the speed of liblzma alone;
any other coder layout goes through py7zr's own extraction, decoding each member when py7zr closes it.
"""

from __future__ import annotations

import collections
import contextlib
import io
import lzma
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import py7zr
import py7zr.exceptions
import py7zr.io
from PIL import Image
from tqdm import tqdm

from pipeline import seven_zip_stream
from pipeline.competition import IMAGE_SHAPE
from pipeline.errors import PipelineError

# A 32x32 RGB image is 3,072 bytes raw; a PNG of it is ~2.3 KB. Anything far larger is not one of ours.
MAX_MEMBER_BYTES = 64 * 1024
_BATCH = 512
_MAX_PENDING_BATCHES = 8


class ArchiveError(PipelineError):
    """A 7z archive is corrupt, truncated, or does not hold the images Kaggle's layout promises."""


@contextlib.contextmanager
def open_archive(archive_path: Path) -> Iterator[py7zr.SevenZipFile]:
    """py7zr's reader of the archive (its header parsed once: ~4 s for test.7z); errors name the archive."""
    try:
        archive = py7zr.SevenZipFile(archive_path, "r")
    except FileNotFoundError as exc:
        raise ArchiveError(f"{archive_path}: not found; run the download stage first.") from exc
    except (py7zr.exceptions.ArchiveError, lzma.LZMAError, EOFError, OSError, ValueError, KeyError) as exc:
        raise _corrupt(archive_path, exc) from exc
    with archive:
        yield archive


def read_member_ids(archive: py7zr.SevenZipFile, archive_path: Path, split: str) -> np.ndarray:
    """Ids of the `<split>/<id>.png` members, checked to be exactly 1..N (no gaps, no duplicates)."""
    pattern = re.compile(rf"{re.escape(split)}/([1-9][0-9]*)\.png")
    ids = []
    for info in archive.files:
        if info.is_directory:
            continue
        name = info.filename
        match = pattern.fullmatch(name)
        if match is None:
            raise ArchiveError(f"{archive_path}: member {name!r} is not named '{split}/<id>.png'.")
        if info.uncompressed > MAX_MEMBER_BYTES:
            raise ArchiveError(
                f"{archive_path}: member {name!r} unpacks to {info.uncompressed} bytes, far more than a 32x32 PNG"
                f" needs (limit {MAX_MEMBER_BYTES}); refusing the archive."
            )
        ids.append(int(match.group(1)))
    if not ids:
        raise ArchiveError(f"{archive_path}: holds no '{split}/<id>.png' images.")
    ids_array = np.sort(np.asarray(ids, dtype=np.int64))
    repeated = ids_array[1:][ids_array[1:] == ids_array[:-1]]
    if len(repeated):
        raise ArchiveError(f"{archive_path}: image id {int(repeated[0])} appears in more than one member.")
    expected = np.arange(1, len(ids_array) + 1)
    if not np.array_equal(ids_array, expected):
        first = int(np.flatnonzero(ids_array != expected)[0])
        raise ArchiveError(
            f"{archive_path}: image ids must be exactly 1..{len(ids_array)}; id {int(expected[first])} is missing"
            f" (the next id found is {int(ids_array[first])})."
        )
    return ids_array


def decode_archive_into(archive: py7zr.SevenZipFile, archive_path: Path, out: np.ndarray) -> None:
    """Decode every member into `out[id - 1]`; `out` is `(n_images, 32, 32, 3)` uint8.

    Call `read_member_ids` first: it checks the names and ids this relies on.
    """
    filled = np.zeros(len(out), dtype=bool)
    folders = seven_zip_stream.plan_folders(archive)
    with tqdm(total=len(out), desc=f"decode {Path(archive_path).name}", unit="img", mininterval=1) as bar:
        try:
            if folders is None:
                _decode_with_py7zr(archive, archive_path, out, filled, bar)
            else:
                _decode_streams(archive.fp, folders, archive_path, out, filled, bar)
        except (ArchiveError, MemoryError):
            raise
        except (seven_zip_stream.StreamError, py7zr.exceptions.ArchiveError, lzma.LZMAError, EOFError,
                OSError, ValueError) as exc:  # fmt: skip
            raise _corrupt(archive_path, exc) from exc
    if not filled.all():
        missing = int(np.flatnonzero(~filled)[0]) + 1
        raise ArchiveError(
            f"{archive_path}: {int((~filled).sum())} of {len(out)} images were not decoded, the first is id {missing}"
            " (an empty member, or a truncated archive). Delete it and re-run the download stage."
        )


def _decode_streams(fp, folders, archive_path: Path, out: np.ndarray, filled: np.ndarray, bar: tqdm) -> None:
    """Decompress on this thread; decode PNGs in batches on a worker thread (liblzma and zlib release the GIL)."""
    pending: collections.deque[Future] = collections.deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="png") as pool:
        for folder in folders:
            batch = []
            for name, data in seven_zip_stream.iter_members(fp, folder):
                batch.append((name, data))
                if len(batch) == _BATCH:
                    pending.append(pool.submit(_decode_batch, batch, archive_path, out, filled))
                    batch = []
                    while len(pending) > _MAX_PENDING_BATCHES:  # bounded memory: wait for the decoder
                        bar.update(pending.popleft().result())
            if batch:
                pending.append(pool.submit(_decode_batch, batch, archive_path, out, filled))
        while pending:
            bar.update(pending.popleft().result())


def _decode_batch(batch: list[tuple[str, bytes]], archive_path: Path, out: np.ndarray, filled: np.ndarray) -> int:
    for name, data in batch:
        row = int(Path(name).stem) - 1  # names were checked by read_member_ids
        out[row] = decode_png(data, f"{archive_path}: member {name!r}")
        filled[row] = True
    return len(batch)


def _decode_with_py7zr(archive, archive_path: Path, out: np.ndarray, filled: np.ndarray, bar: tqdm) -> None:
    factory = _DecodingFactory(archive_path, out, filled, bar)
    archive.extractall(factory=factory)


def decode_png(data: bytes, where: str) -> np.ndarray:
    """A 32x32 PNG -> `(32, 32, 3)` uint8 RGB (other colour types are converted); anything else is an error."""
    try:
        with Image.open(io.BytesIO(data), formats=("PNG",)) as image:
            if image.size != IMAGE_SHAPE[:2]:
                raise ArchiveError(f"{where}: is {image.size[0]}x{image.size[1]}, expected 32x32.")
            return np.asarray(image.convert("RGB"))
    except ArchiveError:
        raise
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError... on bad data
        raise ArchiveError(f"{where}: is not a readable PNG ({exc}).") from exc


def _corrupt(archive_path: Path, exc: BaseException) -> ArchiveError:
    return ArchiveError(
        f"{archive_path}: corrupt or truncated 7z archive ({type(exc).__name__}: {exc})."
        " Delete it and re-run the download stage (`dvc repro download`)."
    )


class _PngMember(py7zr.io.Py7zIO):
    """Buffers one member's bytes; decodes them into the output array when py7zr closes it."""

    def __init__(self, factory: _DecodingFactory, name: str):
        self.factory, self.name, self.buffer = factory, name, io.BytesIO()

    def write(self, s: bytes | bytearray) -> int:
        return self.buffer.write(s)

    def read(self, size: int | None = None) -> bytes:
        return self.buffer.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.buffer.seek(offset, whence)

    def flush(self) -> None:
        pass

    def size(self) -> int:
        return self.buffer.getbuffer().nbytes

    def close(self) -> None:
        self.factory.store(self.name, self.buffer.getvalue())
        self.buffer = io.BytesIO()


class _DecodingFactory(py7zr.io.WriterFactory):
    def __init__(self, archive_path: Path, out: np.ndarray, filled: np.ndarray, bar: tqdm):
        self.archive_path, self.out, self.filled, self.bar = archive_path, out, filled, bar
        self._lock = threading.Lock()  # py7zr may decompress several folders in worker threads

    def create(self, filename: str) -> py7zr.io.Py7zIO:
        return _PngMember(self, filename)

    def store(self, name: str, data: bytes) -> None:
        _decode_batch([(name, data)], self.archive_path, self.out, self.filled)
        with self._lock:
            self.bar.update()
