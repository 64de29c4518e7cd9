import io

import numpy as np
import py7zr
import pytest
from PIL import Image

from pipeline import seven_zip_stream
from pipeline.archive import MAX_MEMBER_BYTES, ArchiveError, decode_archive_into, open_archive, read_member_ids
from pipeline.sample import encode_png


def png(image: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def seven_zip(path, members: dict[str, bytes] | list[tuple[str, bytes]], filters=None):
    with py7zr.SevenZipFile(path, "w", filters=filters) as archive:
        for name, data in members.items() if isinstance(members, dict) else members:
            archive.writestr(data, name)
    return path


def decode(path, split="train") -> np.ndarray:
    with open_archive(path) as archive:
        ids = read_member_ids(archive, path, split)
        out = np.zeros((len(ids), 32, 32, 3), dtype=np.uint8)
        decode_archive_into(archive, path, out)
    return out


def test_pixels_equal_pil_in_id_order_whatever_the_member_order(tmp_path):
    images = random_images(25)
    order = np.random.default_rng(1).permutation(25)  # and ids 10 and 2 sort differently as text
    path = seven_zip(tmp_path / "train.7z", {f"train/{i + 1}.png": encode_png(images[i]) for i in order})
    assert np.array_equal(decode(path), images)


def test_other_colour_types_are_converted_to_rgb(tmp_path):
    gray = np.repeat(random_images(1)[..., :1], 3, axis=3)[0]
    path = seven_zip(tmp_path / "train.7z", {"train/1.png": png(gray, "L"), "train/2.png": png(gray, "RGBA")})
    assert np.array_equal(decode(path), np.stack([gray, gray]))


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["train/1.png", "train/3.png"], "ids must be exactly 1..2; id 2 is missing (the next id found is 3)"),
        (["train/2.png", "train/3.png"], "id 1 is missing"),
        (["train/1.png", "train/2.png", "train/2.png"], "image id 2 appears in more than one member"),
        (["train/1.png", "train/../2.png"], "member 'train/../2.png' is not named 'train/<id>.png'"),
        (["train/1.png", "train/01.png"], "member 'train/01.png' is not named 'train/<id>.png'"),
        (["train/1.png", "test/2.png"], "member 'test/2.png' is not named 'train/<id>.png'"),
        (["train/1.png", "train/2.jpg"], "member 'train/2.jpg' is not named"),
    ],
)
def test_bad_member_names_and_ids_are_rejected(tmp_path, names, message):
    image = encode_png(random_images(1)[0])
    path = seven_zip(tmp_path / "train.7z", [(name, image) for name in names])
    with pytest.raises(ArchiveError) as excinfo, open_archive(path) as archive:
        read_member_ids(archive, path, "train")
    assert str(path) in str(excinfo.value) and message in str(excinfo.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a png at all", "member 'train/2.png': is not a readable PNG"),
        (png(np.zeros((32, 31, 3), np.uint8)), "member 'train/2.png': is 31x32, expected 32x32"),
        (b"\x89PNG" + bytes(MAX_MEMBER_BYTES), "member 'train/2.png' unpacks to 65540 bytes, far more"),
    ],
)
def test_bad_members_are_rejected_naming_them(tmp_path, data, message):
    path = seven_zip(tmp_path / "train.7z", {"train/1.png": encode_png(random_images(1)[0]), "train/2.png": data})
    with pytest.raises(ArchiveError) as excinfo:
        decode(path)
    assert message in str(excinfo.value)


@pytest.mark.parametrize("seed", range(8))
def test_archive_truncated_at_a_random_offset_is_one_clear_error_naming_it(tmp_path, seed):
    images = random_images(40)
    whole = seven_zip(tmp_path / "whole.7z", {f"train/{i + 1}.png": encode_png(im) for i, im in enumerate(images)})
    data = whole.read_bytes()
    path = tmp_path / "train.7z"
    path.write_bytes(data[: int(np.random.default_rng(seed).integers(1, len(data)))])
    with pytest.raises(ArchiveError) as excinfo:
        decode(path)
    assert f"{path}: corrupt or truncated 7z archive" in str(excinfo.value) or "is truncated" in str(excinfo.value)


def test_missing_archive_says_to_run_the_download(tmp_path):
    with pytest.raises(ArchiveError, match="not found; run the download stage first"):
        decode(tmp_path / "train.7z")


@pytest.mark.parametrize(
    ("filters", "streamed"),
    [
        (None, True),  # py7zr's default, LZMA2, as Kaggle's archives
        ([{"id": py7zr.FILTER_LZMA}], True),
        ([{"id": py7zr.FILTER_X86}, {"id": py7zr.FILTER_LZMA2}], True),  # py7zr's default for writing
        ([{"id": py7zr.FILTER_DELTA}, {"id": py7zr.FILTER_LZMA2}], True),
        ([{"id": py7zr.FILTER_COPY}], False),  # not liblzma: py7zr extracts
        ([{"id": py7zr.FILTER_BZIP2}], False),
    ],
)
def test_streamed_and_py7zr_paths_give_the_same_pixels(tmp_path, filters, streamed):
    images = random_images(30, seed=2)
    path = seven_zip(
        tmp_path / "test.7z", {f"test/{i + 1}.png": encode_png(im) for i, im in enumerate(images)}, filters
    )
    with py7zr.SevenZipFile(path) as archive:
        assert (seven_zip_stream.plan_folders(archive) is not None) == streamed
    assert np.array_equal(decode(path, "test"), images)


def test_a_flipped_byte_in_the_packed_stream_is_caught(tmp_path):
    images = random_images(60, seed=3)
    path = seven_zip(tmp_path / "train.7z", {f"train/{i + 1}.png": encode_png(im) for i, im in enumerate(images)})
    data = bytearray(path.read_bytes())
    data[32 + len(data) // 3] ^= 0xFF  # inside the packed stream, past the 32-byte signature header
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="corrupt or truncated 7z archive"):
        decode(path)


def test_an_empty_member_is_named(tmp_path):
    path = seven_zip(tmp_path / "train.7z", {"train/1.png": encode_png(random_images(1)[0]), "train/2.png": b""})
    with pytest.raises(
        ArchiveError, match="(1 of 2 images were not decoded, the first is id 2|'train/2.png': is not a)"
    ):
        decode(path)
