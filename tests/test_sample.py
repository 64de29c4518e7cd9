import io
import zipfile

import numpy as np
import py7zr
from PIL import Image

from pipeline.competition import CLASSES, FILES
from pipeline.sample import write_sample_competition


def read_members(zip_path, archive):
    with zipfile.ZipFile(zip_path) as z, py7zr.SevenZipFile(io.BytesIO(z.read(archive))) as seven:
        factory = py7zr.io.BytesIOFactory(1 << 20)
        seven.extractall(factory=factory)
        return {name: factory.get(name).read() for name in factory.products}


def test_sample_is_kaggle_shaped(sample_zip):
    with zipfile.ZipFile(sample_zip) as z:
        assert sorted(z.namelist()) == sorted(FILES)
        train_csv = z.read("trainLabels.csv").decode().splitlines()
        sample_csv = z.read("sampleSubmission.csv").decode().splitlines()
    assert train_csv[0] == "id,label" and sample_csv[0] == "id,label"
    assert {row.split(",")[1] for row in train_csv[1:]} == set(CLASSES)
    assert {row.split(",")[1] for row in sample_csv[1:]} == {"cat"}
    members = read_members(sample_zip, "train.7z")
    assert sorted(members, key=lambda n: int(n[6:-4])) == [f"train/{i}.png" for i in range(1, len(train_csv))]
    png = Image.open(io.BytesIO(members["train/1.png"]))
    assert (png.format, png.mode, png.size, png.info.get("interlace", 0)) == ("PNG", "RGB", (32, 32), 0)


def test_sample_is_deterministic(tmp_path):
    hidden_a = write_sample_competition(tmp_path / "a.zip", 30, 10, seed=3)
    hidden_b = write_sample_competition(tmp_path / "b.zip", 30, 10, seed=3)
    assert np.array_equal(hidden_a, hidden_b)
    assert read_members(tmp_path / "a.zip", "test.7z") == read_members(tmp_path / "b.zip", "test.7z")
    # byte for byte, archives and all (no member stamped with the time now): the download stage's output is the
    # same on every machine, so a run-cache shared between machines matches it
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
