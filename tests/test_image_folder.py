"""Decode-once image folders: labels, cache reuse and rebuild, broken files."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

import datamodules.image_folder as image_folder
from datamodules.image_folder import DataError, load_image_folder
from tests.conftest import write_image_folder


@pytest.fixture
def split(tmp_path: Path) -> Path:
    write_image_folder(tmp_path / "data", classes=("a", "b"), per_class={"train": 3}, size=8)
    return tmp_path / "data" / "train"


def test_labels_classes_and_paths(split, tmp_path):
    result = load_image_folder(split, cache_dir=tmp_path / "cache")
    assert result.classes == ["a", "b"]
    assert result.images.shape == (6, 3, 8, 8) and result.images.dtype == torch.uint8
    assert result.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert result.paths[0] == "a/000.png" and result.paths[-1] == "b/002.png"


def test_second_load_comes_from_the_cache(split, tmp_path, monkeypatch):
    first = load_image_folder(split, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite a valid cache")

    monkeypatch.setattr(image_folder, "_decode_all", no_decoding)
    second = load_image_folder(split, cache_dir=tmp_path / "cache")
    assert torch.equal(first.images, second.images) and first.paths == second.paths


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_cache_file_gets_the_umask_permissions(split, tmp_path, umask):
    """Written through the one atomic writer: a shared cache is readable as the umask allows, not 0600."""
    previous = os.umask(umask)
    try:
        load_image_folder(split, cache_dir=tmp_path / "cache")
    finally:
        os.umask(previous)
    (cached,) = (tmp_path / "cache").glob("*.pt")
    assert cached.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cached.name]  # no temporary left behind


def test_cache_is_rebuilt_when_a_file_changes_or_appears(split, tmp_path):
    cache = tmp_path / "cache"
    load_image_folder(split, cache_dir=cache)
    (split / "a" / "000.png").write_bytes((split / "b" / "000.png").read_bytes())
    changed = load_image_folder(split, cache_dir=cache)
    assert torch.equal(changed.images[0], changed.images[3])
    (split / "b" / "009.png").write_bytes((split / "b" / "000.png").read_bytes())
    assert len(load_image_folder(split, cache_dir=cache).labels) == 7
    assert len(list(cache.glob("*.pt"))) == 1  # stale caches of this split are removed


def test_corrupt_cache_is_rebuilt_with_a_warning(split, tmp_path):
    cache = tmp_path / "cache"
    expected = load_image_folder(split, cache_dir=cache)
    (cached,) = cache.glob("*.pt")
    cached.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="Rebuilding"):
        rebuilt = load_image_folder(split, cache_dir=cache)
    assert torch.equal(rebuilt.images, expected.images)


def test_read_only_data_falls_back_to_the_user_cache(split, tmp_path, monkeypatch):
    monkeypatch.setattr(image_folder, "USER_CACHE", tmp_path / "user_cache")
    os.chmod(split.parent, 0o555)
    try:
        load_image_folder(split)
    finally:
        os.chmod(split.parent, 0o755)
    assert not (split.parent / ".cache").exists()
    assert len(list((tmp_path / "user_cache").glob("*.pt"))) == 1


def test_writable_data_caches_beside_it(split):
    load_image_folder(split)
    assert len(list((split.parent / ".cache").glob("train-*.pt"))) == 1


def _break_files(split: Path) -> dict[str, Path]:
    png = (split / "a" / "000.png").read_bytes()
    broken = {
        "empty": split / "a" / "empty.png",
        "truncated": split / "a" / "truncated.png",
        "text": split / "b" / "notes.jpg",
    }
    broken["empty"].write_bytes(b"")
    broken["truncated"].write_bytes(png[: len(png) // 2])
    broken["text"].write_text("this is not an image")
    return broken


def test_broken_files_are_all_named_in_one_error(split, tmp_path):
    broken = _break_files(split)
    with pytest.raises(DataError) as error:
        load_image_folder(split, cache_dir=tmp_path / "cache")
    message = str(error.value)
    assert "3 image file(s) cannot be read" in message and "HINT:" in message
    for path in broken.values():
        assert str(path) in message


def test_skip_broken_warns_and_keeps_the_rest(split, tmp_path):
    broken = _break_files(split)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = load_image_folder(split, cache_dir=tmp_path / "cache", skip_broken=True)
    assert len(result.labels) == 6
    assert any(str(broken["text"]) in str(w.message) for w in caught)


def test_truncated_jpeg_is_found(tmp_path):
    from PIL import Image

    folder = tmp_path / "train" / "x"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "good.jpg")
    data = (folder / "good.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) - 40])
    with pytest.raises(DataError, match="cut.jpg: truncated JPEG"):
        load_image_folder(tmp_path / "train", cache_dir=tmp_path / "cache")


def test_missing_and_empty_class_folders_are_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "train" / "empty").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders|hold no"):
        load_image_folder(tmp_path / "train")


def test_mixed_sizes_name_an_example(tmp_path):
    write_image_folder(tmp_path, classes=("a",), per_class={"train": 2}, size=8)
    write_image_folder(tmp_path / "other", classes=("a",), per_class={"train": 1}, size=10)
    (tmp_path / "other" / "train" / "a" / "000.png").rename(tmp_path / "train" / "a" / "big.png")
    with pytest.raises(DataError, match="big.png"):
        load_image_folder(tmp_path / "train", cache_dir=tmp_path / "cache")


def test_grayscale_reads_one_channel(tmp_path):
    write_image_folder(tmp_path, classes=("0", "1"), per_class={"train": 2}, size=28, channels=1)
    result = load_image_folder(tmp_path / "train", channels=1, cache_dir=tmp_path / "cache")
    assert result.images.shape == (4, 1, 28, 28)
