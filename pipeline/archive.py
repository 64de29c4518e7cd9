"""Kaggle's 7z archives of 32x32 PNGs -> one packed `(n_images, 32, 32, 3)` uint8 array, in id order.

py7zr hands each member to our writer as it is decompressed; the writer decodes the PNG when py7zr closes
it and stores the pixels at row `id - 1`, so only one compressed member is held at a time and nothing is
written to disk but the array.
"""

from __future__ import annotations

import io
import lzma
import re
import threading
from pathlib import Path

import numpy as np
import py7zr
import py7zr.exceptions
import py7zr.io
from PIL import Image
from tqdm import tqdm

from pipeline.competition import IMAGE_SHAPE
from pipeline.errors import PipelineError

# A 32x32 RGB image is 3,072 bytes raw; a PNG of it is ~2.3 KB. Anything far larger is not one of ours.
MAX_MEMBER_BYTES = 64 * 1024


class ArchiveError(PipelineError):
    """A 7z archive is corrupt, truncated, or does not hold the images Kaggle's layout promises."""


def read_member_ids(archive_path: Path, split: str) -> np.ndarray:
    """Ids of the `<split>/<id>.png` members, checked to be exactly 1..N (no gaps, no duplicates)."""
    pattern = re.compile(rf"{re.escape(split)}/([1-9][0-9]*)\.png")
    with _opened(archive_path) as archive:
        names = [info.filename for info in archive.list() if not info.is_directory]
    ids = []
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            raise ArchiveError(f"{archive_path}: member {name!r} is not named '{split}/<id>.png'.")
        ids.append(int(match.group(1)))
    if not ids:
        raise ArchiveError(f"{archive_path}: holds no '{split}/<id>.png' images.")
    ids_array = np.sort(np.asarray(ids, dtype=np.int64))
    expected = np.arange(1, len(ids_array) + 1)
    if not np.array_equal(ids_array, expected):
        first = int(np.flatnonzero(ids_array != expected)[0])
        raise ArchiveError(
            f"{archive_path}: image ids must be exactly 1..{len(ids_array)}; the first break is near id"
            f" {int(expected[first])} (found {int(ids_array[first])}), a missing or duplicate image."
        )
    return ids_array


def decode_archive_into(archive_path: Path, split: str, out: np.ndarray) -> None:
    """Decode every `<split>/<id>.png` member into `out[id - 1]`; `out` is `(n_images, 32, 32, 3)` uint8."""
    factory = _DecodingFactory(archive_path, out)
    with _opened(archive_path) as archive:
        with tqdm(total=len(out), desc=f"decode {Path(archive_path).name}", unit="img", mininterval=1) as bar:
            factory.progress = bar
            try:
                archive.extractall(factory=factory)
            except (ArchiveError, MemoryError):
                raise
            except (py7zr.exceptions.ArchiveError, lzma.LZMAError, EOFError, OSError, ValueError) as exc:
                raise _corrupt(archive_path, exc) from exc
    if factory.n_decoded != len(out):
        raise ArchiveError(
            f"{archive_path}: decoded {factory.n_decoded} of {len(out)} images; the archive is truncated."
            " Delete it and re-run the download stage."
        )


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


class _opened:
    """`py7zr.SevenZipFile` whose open errors name the archive."""

    def __init__(self, archive_path: Path):
        self.path = archive_path

    def __enter__(self) -> py7zr.SevenZipFile:
        try:
            self.archive = py7zr.SevenZipFile(self.path, "r")
        except FileNotFoundError as exc:
            raise ArchiveError(f"{self.path}: not found; run the download stage first.") from exc
        except (py7zr.exceptions.ArchiveError, lzma.LZMAError, EOFError, OSError, ValueError, KeyError) as exc:
            raise _corrupt(self.path, exc) from exc
        return self.archive

    def __exit__(self, *exc_info) -> None:
        self.archive.close()


class _PngMember(py7zr.io.Py7zIO):
    """Buffers one member's bytes; decodes them into the output array when py7zr closes it."""

    def __init__(self, factory: _DecodingFactory, name: str):
        self.factory, self.name, self.buffer = factory, name, io.BytesIO()

    def write(self, s: bytes | bytearray) -> int:
        if self.buffer.tell() + len(s) > MAX_MEMBER_BYTES:
            raise ArchiveError(
                f"{self.factory.archive_path}: member {self.name!r} is over {MAX_MEMBER_BYTES} bytes,"
                " far more than a 32x32 PNG needs; refusing it."
            )
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
    def __init__(self, archive_path: Path, out: np.ndarray):
        self.archive_path, self.out = archive_path, out
        self.n_decoded = 0
        self.progress: tqdm | None = None
        self._lock = threading.Lock()  # py7zr may decompress several folders in worker threads

    def create(self, filename: str) -> py7zr.io.Py7zIO:
        return _PngMember(self, filename)

    def store(self, name: str, data: bytes) -> None:
        image_id = int(Path(name).stem)  # names were checked by read_member_ids
        self.out[image_id - 1] = decode_png(data, f"{self.archive_path}: member {name!r}")
        with self._lock:
            self.n_decoded += 1
            if self.progress is not None:
                self.progress.update()
