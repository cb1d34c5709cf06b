"""Tests for datamodules.image_folder on tiny image trees written with PIL into tmp_path."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from datamodules import image_folder
from datamodules.image_folder import DataError, find_classes, load_image_folder


def write_image(path: Path, colour: tuple[int, int, int] | int, size: int = 8, mode: str = "RGB") -> None:
    """Write a solid image; PNG keeps colours exact, so tests can check pixel values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.new(mode, (size, size), colour).save(path, format=fmt)


def make_split(root: Path) -> Path:
    """A split with two classes, mixed suffixes and some files that must be ignored."""
    split = root / "train"
    write_image(split / "dog" / "b.png", (0, 0, 255))
    write_image(split / "dog" / "a.PNG", (0, 255, 0))
    write_image(split / "cat" / "x.png", (255, 0, 0))
    write_image(split / "cat" / "y.JPEG", (128, 128, 128))
    (split / "cat" / "notes.txt").write_text("not an image")
    write_image(split / ".ipynb_checkpoints" / "z.png", (1, 2, 3))
    return split


def bump_mtime(path: Path) -> None:
    # Coarse file-system clocks can give a rewritten file the same mtime; force a new one.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("decoded although the cache should have been used")

    monkeypatch.setattr(image_folder, "decode_image", fail)


def cache_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.pt"))


def test_reads_classes_labels_paths_and_pixels(tmp_path: Path) -> None:
    data = load_image_folder(make_split(tmp_path))

    assert data.classes == ["cat", "dog"]
    assert data.paths == ["cat/x.png", "cat/y.JPEG", "dog/a.PNG", "dog/b.png"]
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert data.labels.dtype == torch.int64
    assert data.images.dtype == torch.uint8
    assert data.images.shape == (4, 3, 8, 8)
    assert data.images[0, :, 0, 0].tolist() == [255, 0, 0]
    assert data.images[3, :, 0, 0].tolist() == [0, 0, 255]
    # JPEG is lossy; a solid grey still decodes close to grey.
    assert (data.images[1].int() - 128).abs().max() <= 3
    assert len(data) == 4


def test_cache_hit_returns_equal_tensors_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    split = make_split(tmp_path)
    first = load_image_folder(split)
    assert len(cache_files(tmp_path / ".cache")) == 1

    forbid_decoding(monkeypatch)
    second = load_image_folder(split)

    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)
    assert (first.classes, first.paths) == (second.classes, second.paths)


def test_cache_rebuilt_when_a_file_changes_or_is_added(tmp_path: Path) -> None:
    split = make_split(tmp_path)
    load_image_folder(split)

    write_image(split / "cat" / "x.png", (7, 8, 9))
    bump_mtime(split / "cat" / "x.png")
    changed = load_image_folder(split)
    assert changed.images[0, :, 0, 0].tolist() == [7, 8, 9]

    write_image(split / "dog" / "c.png", (9, 9, 9))
    added = load_image_folder(split)
    assert added.paths[-1] == "dog/c.png"
    assert added.images.shape[0] == 5
    assert len(cache_files(tmp_path / ".cache")) == 1  # rewritten in place, not accumulated


def test_channels_change_the_cache_key(tmp_path: Path) -> None:
    split = make_split(tmp_path)
    assert load_image_folder(split, channels=3).images.shape[1] == 3
    assert load_image_folder(split, channels=1).images.shape[1] == 1


def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split = make_split(tmp_path)
    expected = load_image_folder(split)
    (cache,) = cache_files(tmp_path / ".cache")
    cache.write_bytes(cache.read_bytes()[:100])  # as if a copy stopped half way

    with pytest.warns(UserWarning, match="unreadable"):
        rebuilt = load_image_folder(split)
    assert torch.equal(rebuilt.images, expected.images)

    forbid_decoding(monkeypatch)  # the rebuilt cache is valid again
    assert torch.equal(load_image_folder(split).images, expected.images)


def test_interrupted_write_keeps_the_old_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split = make_split(tmp_path)
    load_image_folder(split)
    (cache,) = cache_files(tmp_path / ".cache")
    before = cache.read_bytes()

    def die_half_way(obj, fh) -> None:
        fh.write(b"partial")
        raise KeyboardInterrupt

    write_image(split / "dog" / "c.png", (9, 9, 9))
    monkeypatch.setattr(image_folder.torch, "save", die_half_way)
    with pytest.raises(KeyboardInterrupt):
        load_image_folder(split)

    assert cache.read_bytes() == before
    assert [p.name for p in (tmp_path / ".cache").iterdir()] == [cache.name]  # no temp file left


def test_unwritable_data_dir_falls_back_to_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A regular file where the cache folder would go makes the default location unwritable for
    # every user, root included (chmod does not stop root).
    split = make_split(tmp_path / "data")
    (tmp_path / "data" / ".cache").write_text("in the way")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    first = load_image_folder(split)
    assert len(cache_files(tmp_path / "xdg" / "cifar-attention")) == 1

    forbid_decoding(monkeypatch)
    assert torch.equal(load_image_folder(split).images, first.images)


def test_cache_dir_argument_overrides_default(tmp_path: Path) -> None:
    split = make_split(tmp_path)
    load_image_folder(split, cache_dir=tmp_path / "mine")
    assert len(cache_files(tmp_path / "mine")) == 1
    assert not (tmp_path / ".cache").exists()


def test_missing_and_empty_split_dirs_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="nope") as err:
        find_classes(missing)
    assert "\nHINT: " in str(err.value)

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders") as err:
        load_image_folder(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value)


def test_class_folder_without_images_is_named(tmp_path: Path) -> None:
    split = make_split(tmp_path)
    (split / "frog").mkdir()
    (split / "frog" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="frog") as err:
        find_classes(split)
    assert "HINT:" in str(err.value).splitlines()[-1]


def add_broken_files(split: Path) -> list[str]:
    (split / "cat" / "empty.jpg").write_bytes(b"")
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(png, format="PNG")
    (split / "cat" / "truncated.png").write_bytes(png.getvalue()[:40])
    (split / "dog" / "page.jpg").write_text("<html>404 not found</html>")
    return ["cat/empty.jpg", "cat/truncated.png", "dog/page.jpg"]


def test_all_broken_files_are_reported_in_one_error(tmp_path: Path) -> None:
    split = make_split(tmp_path)
    broken = add_broken_files(split)
    with pytest.raises(DataError) as err:
        load_image_folder(split)
    message = str(err.value)
    for rel in broken:
        assert rel in message
    assert "empty file" in message
    assert message.splitlines()[-1].startswith("HINT:")


def test_skip_broken_skips_with_a_warning_also_from_cache(tmp_path: Path) -> None:
    split = make_split(tmp_path)
    broken = add_broken_files(split)
    with pytest.warns(UserWarning) as record:
        data = load_image_folder(split, skip_broken=True)
    warned = "\n".join(str(w.message) for w in record)
    assert all(rel in warned for rel in broken)
    assert data.paths == ["cat/x.png", "cat/y.JPEG", "dog/a.PNG", "dog/b.png"]
    assert data.labels.tolist() == [0, 0, 1, 1]

    # The cache remembers what it skipped, so a strict run still refuses the broken files.
    with pytest.raises(DataError, match="page.jpg"):
        load_image_folder(split)


def test_mismatched_sizes_name_a_path_and_both_sizes(tmp_path: Path) -> None:
    split = make_split(tmp_path)
    write_image(split / "dog" / "big.png", (5, 5, 5), size=10)
    with pytest.raises(DataError, match=r"dog/big\.png is 3x10x10.*3x8x8"):
        load_image_folder(split)


def test_grayscale_reads_one_channel_and_rgb_expands_gray(tmp_path: Path) -> None:
    split = tmp_path / "mnist"
    write_image(split / "0" / "a.png", 200, mode="L")
    write_image(split / "1" / "b.png", (255, 0, 0))

    gray = load_image_folder(split, channels=1)
    assert gray.images.shape == (2, 1, 8, 8)
    assert gray.images[0, 0, 0, 0].item() == 200
    assert 70 <= gray.images[1, 0, 0, 0].item() <= 80  # 0.299 * 255: red seen as gray

    rgb = load_image_folder(split, channels=3)
    assert rgb.images[0, :, 0, 0].tolist() == [200, 200, 200]


def test_bad_channels_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="channels"):
        load_image_folder(make_split(tmp_path), channels=4)
