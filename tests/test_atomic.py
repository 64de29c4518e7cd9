import pytest

from pipeline.atomic import atomic_dir, atomic_file


def test_atomic_file_lands_whole_or_not_at_all_and_clears_stale_temps(tmp_path):
    final = tmp_path / "scores.npz"
    stale = tmp_path / ".scores.npz.killed.tmp"
    stale.write_text("left by a process killed mid-write")
    with pytest.raises(RuntimeError, match="crash"), atomic_file(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert not final.exists() and not stale.exists() and list(tmp_path.iterdir()) == []
    with atomic_file(final) as tmp:
        tmp.write_text("whole")
    assert final.read_text() == "whole" and list(tmp_path.iterdir()) == [final]


def test_atomic_dir_replaces_the_old_folder_only_on_success(tmp_path):
    final = tmp_path / "data"
    final.mkdir()
    (final / "old.npy").write_text("old")
    with pytest.raises(RuntimeError, match="crash"), atomic_dir(final) as tmp:
        (tmp / "new.npy").write_text("new")
        raise RuntimeError("crash")
    assert [p.name for p in final.iterdir()] == ["old.npy"]
    with atomic_dir(final) as tmp:
        (tmp / "new.npy").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.npy"] and sorted(p.name for p in tmp_path.iterdir()) == ["data"]
