"""Extract benchmark: our streaming extract vs the decompression floor and the naive baseline, in one run.

Builds (or reuses) a synthetic Kaggle-layout archive pair (train.7z, test.7z: 32x32 RGB PNGs, one solid LZMA2
stream each, as Kaggle's), then times for each archive, each in a fresh process so peak memory is its own:
  floor     liblzma alone decompressing the archive's packed stream (a solid stream is sequential)
  baseline  what notebooks do: py7zr extracts every PNG to disk, then PIL reads them one by one
  ours      the extract stage's `read_member_ids` + `decode_archive_into` into a .npy memmap
and checks that our pixels equal the baseline's PIL pixels for every image.

    python benchmarks/extract.py            # full size: 50,000 + 300,000 images (~15 min here)
    python benchmarks/extract.py --small    # 5,000 + 30,000 images
"""

from __future__ import annotations

import argparse
import lzma
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np
import py7zr
from PIL import Image

from pipeline import seven_zip_stream
from pipeline.archive import open_archive, read_member_ids
from pipeline.dataset import write_images_npy
from pipeline.host import describe_host
from pipeline.sample import draw_image, encode_png

# pixel noise that gives PNGs of ~2.26 KB on average, as Kaggle's (2.27 KB)
NOISE = 7.0


def build_archive(path: Path, split: str, n_images: int) -> None:
    """A solid LZMA2 7z (7-Zip's default level 5) of `<split>/<id>.png`: unique synthetic images of Kaggle's size."""
    if path.exists():
        return
    tmp = path.with_suffix(".partial")
    with mp.Pool(2) as pool, py7zr.SevenZipFile(tmp, "w", filters=[{"id": py7zr.FILTER_LZMA2, "preset": 5}]) as z:
        for start in range(0, n_images, 5000):
            ids = range(start + 1, min(start + 5000, n_images) + 1)
            for image_id, png in zip(ids, pool.map(_png_of_id, ids, chunksize=250), strict=True):
                z.writestr(png, f"{split}/{image_id}.png")
            print(f"  {path.name}: {ids[-1]}/{n_images} images", flush=True)
    tmp.rename(path)


def _png_of_id(image_id: int) -> bytes:
    rng = np.random.default_rng(image_id)
    return encode_png(draw_image(int(rng.integers(10)), rng, noise=NOISE))


def floor(archive: Path, folders: list[seven_zip_stream.Folder]) -> None:
    """liblzma alone on the packed stream(s); the header was parsed beforehand, outside the timing."""
    with open(archive, "rb") as fp:
        for folder in folders:
            decompressor = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=list(folder.lzma_filters))
            fp.seek(folder.offset)
            unread = folder.packed_size
            while unread:
                chunk = fp.read(min(1 << 20, unread))
                unread -= len(chunk)
                decompressor.decompress(chunk)


def baseline(archive: Path, split: str, out_npy: Path) -> None:
    with tempfile.TemporaryDirectory(dir=out_npy.parent) as tmp:
        with py7zr.SevenZipFile(archive) as z:
            z.extractall(path=tmp)
        files = sorted(Path(tmp, split).glob("*.png"), key=lambda p: int(p.stem))
        images = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
        for i, path in enumerate(files):
            images[i] = np.asarray(Image.open(path).convert("RGB"))
    np.save(out_npy, images)


def ours(archive_path: Path, split: str, out_npy: Path) -> None:
    with open_archive(archive_path) as archive:
        ids = read_member_ids(archive, archive_path, split)
        write_images_npy(archive, archive_path, len(ids), out_npy)


def _timed(fn, args, queue) -> None:
    start = time.perf_counter()
    fn(*args)
    seconds = time.perf_counter() - start
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so a spawned child would report its parent's peak
    status = Path("/proc/self/status").read_text()
    peak_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    queue.put((seconds, peak_kib / 1024))


def measure(fn, *args) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of `fn(*args)` in a fresh process."""
    queue = mp.get_context("spawn").Queue()
    process = mp.get_context("spawn").Process(target=_timed, args=(fn, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="5,000 + 30,000 images instead of 50,000 + 300,000")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cifar10-extract-bench")
    args = parser.parse_args()

    sizes = {"train": 5_000, "test": 30_000} if args.small else {"train": 50_000, "test": 300_000}
    workdir = args.workdir / f"{'small' if args.small else 'full'}-noise{NOISE:g}"
    workdir.mkdir(parents=True, exist_ok=True)
    rows, t_floor_of, t_base_of = [], {}, {}
    for split, n_images in sizes.items():
        archive = workdir / f"{split}.7z"
        print(f"building {archive} ({n_images} images) unless present ...", flush=True)
        build_archive(archive, split, n_images)
        with py7zr.SevenZipFile(archive) as z:
            folders = seven_zip_stream.plan_folders(z)
        t_floor, m_floor = measure(floor, archive, folders)
        t_base, m_base = measure(baseline, archive, split, workdir / f"{split}_baseline.npy")
        t_ours, m_ours = measure(ours, archive, split, workdir / f"{split}_ours.npy")
        same = np.array_equal(np.load(workdir / f"{split}_ours.npy"), np.load(workdir / f"{split}_baseline.npy"))
        mean_png_kb = archive.stat().st_size / n_images / 1000
        label = f"{split}.7z ({n_images}, {archive.stat().st_size / 2**20:.0f} MiB)"
        print(f"{archive}: {mean_png_kb:.2f} KB per member after compression", flush=True)
        rows += [
            (label, "floor", t_floor, m_floor, ""),
            (label, "baseline", t_base, m_base, ""),
            (label, "ours", t_ours, m_ours, "yes" if same else "NO"),
        ]
        t_floor_of[label], t_base_of[label] = t_floor, t_base
        for leftover in ("baseline", "ours"):
            (workdir / f"{split}_{leftover}.npy").unlink()

    print(f"\n{describe_host()}")
    print(f"\n{'archive':<28} {'method':<9} {'seconds':>8} {'x floor':>8} {'speedup vs baseline':>20} "
          f"{'peak MiB':>9} {'pixels == PIL':>14}")  # fmt: skip
    for label, name, seconds, peak, same in rows:
        vs_floor, speedup = seconds / t_floor_of[label], t_base_of[label] / seconds
        print(f"{label:<28} {name:<9} {seconds:8.1f} {vs_floor:8.2f} {speedup:20.2f} {peak:9.0f} {same:>14}")


if __name__ == "__main__":
    main()
