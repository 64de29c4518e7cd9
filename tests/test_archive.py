import io
import re
from pathlib import Path

import numpy as np
import py7zr
import pytest
from PIL import Image

from pipeline import archive, seven_zip_stream
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


def bmp(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="BMP")
    return buf.getvalue()


@pytest.mark.parametrize("filters", [None, [{"id": py7zr.FILTER_COPY}]], ids=["streamed", "py7zr"])
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a png at all", "member 'train/2.png': is not a readable PNG"),
        (bmp(random_images(1)[0]), "member 'train/2.png': is not a readable PNG"),  # an image, but not a PNG
        (png(np.zeros((32, 31, 3), np.uint8)), "member 'train/2.png': is 31x32, expected 32x32"),
        (b"\x89PNG" + bytes(MAX_MEMBER_BYTES), "member 'train/2.png' unpacks to 65540 bytes, far more"),
    ],
)
def test_bad_members_are_rejected_naming_them(tmp_path, data, message, filters):
    members = {"train/1.png": encode_png(random_images(1)[0]), "train/2.png": data}
    path = seven_zip(tmp_path / "train.7z", members, filters)
    with pytest.raises(ArchiveError) as excinfo:
        decode(path)
    assert message in str(excinfo.value) and str(excinfo.value).startswith(f"{path}: member 'train/2.png'")


def test_a_member_of_exactly_the_size_limit_is_allowed(tmp_path):
    path = seven_zip(tmp_path / "train.7z", {"train/1.png": bytes(MAX_MEMBER_BYTES)})
    with open_archive(path) as opened:
        assert read_member_ids(opened, path, "train").tolist() == [1]


def test_directory_entries_are_skipped_and_an_archive_of_only_directories_holds_no_images(tmp_path):
    (tmp_path / "tree" / "train").mkdir(parents=True)
    (tmp_path / "tree" / "empty" / "train").mkdir(parents=True)
    (tmp_path / "tree" / "train" / "1.png").write_bytes(encode_png(random_images(1)[0]))
    path, empty = tmp_path / "train.7z", tmp_path / "empty.7z"
    with py7zr.SevenZipFile(path, "w") as out:
        out.writeall(tmp_path / "tree" / "train", "train")
    with py7zr.SevenZipFile(empty, "w") as out:
        out.writeall(tmp_path / "tree" / "empty" / "train", "train")
    with open_archive(path) as opened:
        assert [info.is_directory for info in opened.files] == [True, False]  # the directory comes first
        assert read_member_ids(opened, path, "train").tolist() == [1]
    no_images = f"^{re.escape(str(empty))}: holds no 'train/<id>.png' images.$"
    with pytest.raises(ArchiveError, match=no_images), open_archive(empty) as opened:
        read_member_ids(opened, empty, "train")


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
def test_streamed_and_py7zr_paths_give_the_same_pixels(tmp_path, monkeypatch, filters, streamed):
    images = random_images(30, seed=2)
    path = seven_zip(
        tmp_path / "test.7z", {f"test/{i + 1}.png": encode_png(im) for i, im in enumerate(images)}, filters
    )
    with py7zr.SevenZipFile(path) as opened:
        assert (seven_zip_stream.plan_folders(opened) is not None) == streamed
    streamed_names = []
    iter_members = seven_zip_stream.iter_members

    def spy(fp, folder):
        for name, data in iter_members(fp, folder):
            streamed_names.append(name)
            yield name, data

    monkeypatch.setattr(seven_zip_stream, "iter_members", spy)
    assert np.array_equal(decode(path, "test"), images)
    assert len(streamed_names) == (30 if streamed else 0)  # liblzma's layouts never fall back to py7zr


def test_a_flipped_byte_in_the_packed_stream_is_caught(tmp_path):
    images = random_images(60, seed=3)
    path = seven_zip(tmp_path / "train.7z", {f"train/{i + 1}.png": encode_png(im) for i, im in enumerate(images)})
    data = bytearray(path.read_bytes())
    data[32 + len(data) // 3] ^= 0xFF  # inside the packed stream, past the 32-byte signature header
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError) as excinfo:
        decode(path)
    cause = excinfo.value.__cause__
    assert str(excinfo.value) == (
        f"{path}: corrupt or truncated 7z archive ({type(cause).__name__}: {cause})."
        " Delete it and re-run the download stage (`dvc repro download`)."
    )


def test_an_empty_member_is_named(tmp_path):
    path = seven_zip(tmp_path / "train.7z", {"train/1.png": encode_png(random_images(1)[0]), "train/2.png": b""})
    with pytest.raises(
        ArchiveError, match="(1 of 2 images were not decoded, the first is id 2|'train/2.png': is not a)"
    ):
        decode(path)


def test_decoding_shows_one_progress_bar_counting_the_archive_images(tmp_path, capsys):
    images = random_images(25)
    path = seven_zip(tmp_path / "train.7z", {f"train/{i + 1}.png": encode_png(im) for i, im in enumerate(images)})
    decode(path)
    err = capsys.readouterr().err
    assert "decode train.7z: 100%" in err and "| 25/25 [" in err and "img/s]" in err


def test_full_batches_and_a_full_queue_give_the_same_pixels_and_name_a_bad_member(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(archive, "_BATCH", 4)  # 30 images: 7 full batches and a last one of 2
    monkeypatch.setattr(archive, "_MAX_PENDING_BATCHES", 1)  # so the reader waits for the decoder
    images = random_images(30, seed=4)
    members = {f"train/{i + 1}.png": encode_png(im) for i, im in enumerate(images)}
    path = seven_zip(tmp_path / "train.7z", members)
    assert np.array_equal(decode(path), images)
    assert "| 30/30 [" in capsys.readouterr().err
    bad = seven_zip(tmp_path / "bad.7z", {**members, "train/3.png": b"not a png"})  # in the first full batch
    with pytest.raises(ArchiveError, match=f"^{re.escape(str(bad))}: member 'train/3.png': is not a readable PNG"):
        decode(bad)


def test_members_the_stream_never_delivers_are_counted_and_the_first_named(tmp_path, monkeypatch):
    images = random_images(5)
    path = seven_zip(tmp_path / "train.7z", {f"train/{i + 1}.png": encode_png(im) for i, im in enumerate(images)})
    iter_members = seven_zip_stream.iter_members

    def dropping_2_and_4(fp, folder):
        yield from ((n, d) for n, d in iter_members(fp, folder) if n not in ("train/2.png", "train/4.png"))

    monkeypatch.setattr(seven_zip_stream, "iter_members", dropping_2_and_4)
    with pytest.raises(ArchiveError) as excinfo:
        decode(path)
    assert str(excinfo.value) == (
        f"{path}: 2 of 5 images were not decoded, the first is id 2 (an empty member, or a truncated archive)."
        " Delete it and re-run the download stage."
    )


def test_a_member_buffer_is_a_file_that_hands_its_bytes_over_when_py7zr_closes_it():
    stored = []
    factory = archive._DecodingFactory(Path("train.7z"), np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, bool), None)
    factory.store = lambda name, data: stored.append((name, data))
    member = factory.create("train/1.png")
    assert member.write(b"0123456789") == 10 and member.size() == 10
    assert member.seek(2) == 2 and member.read(3) == b"234"
    assert member.seek(-4, 2) == 6 and member.read() == b"6789"
    member.flush()
    member.close()
    assert stored == [("train/1.png", b"0123456789")] and member.size() == 0
