"""The user's own data files: every bad file is refused with an error naming it (and what is wrong), never loaded
into something else silently; paths are stored absolute so a run works from any directory."""

import os
import re

import numpy as np
import pytest

from unidm.config import RunConfig, apply_overrides, resolve_data_paths, validate_config
from unidm.data import build_dataset, load_array
from unidm.data.discrete import text_file_dataset
from unidm.data.images import image_array_dataset


def _save(path, arr) -> str:
    np.save(path, arr)
    return str(path)


@pytest.mark.parametrize("loader", [load_array, lambda p: build_dataset("array", path=p), image_array_dataset])
def test_missing_file_is_named(tmp_path, loader):
    path = str(tmp_path / "nowhere.npy")
    with pytest.raises(FileNotFoundError, match="nowhere.npy"):
        loader(path)


def test_missing_text_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        build_dataset("text-file", path=str(tmp_path / "nowhere.txt"))


@pytest.mark.parametrize("name", ["array", "image-array", "image-folder", "text-file"])
def test_user_dataset_without_path_names_data_path(name):
    with pytest.raises(ValueError, match=f"dataset '{name}' needs data.path"):
        build_dataset(name)
    with pytest.raises(ValueError, match="data.path"):
        validate_config(apply_overrides(RunConfig(), [f"data.name={name}"]))


@pytest.mark.parametrize("ext", [".npy", ".npz", ".csv"])
def test_empty_file_is_named_and_called_empty(tmp_path, ext):
    path = tmp_path / f"empty{ext}"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"empty{ext} is empty \(0 bytes\)"):
        load_array(str(path))


def test_empty_image_and_text_files(tmp_path):
    (tmp_path / "e.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=r"e\.npy is empty"):
        image_array_dataset(str(tmp_path / "e.npy"))
    (tmp_path / "e.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"e\.txt is empty"):
        text_file_dataset(str(tmp_path / "e.txt"))


@pytest.mark.parametrize("shape", [(0,), (0, 3), (5, 0)])
def test_array_without_entries_is_refused_with_its_shape(tmp_path, shape):
    path = _save(tmp_path / "none.npy", np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match=re.escape(f"none.npy holds an empty array (shape {tuple(shape)})")):
        load_array(path)


def test_empty_image_array_is_refused(tmp_path):
    path = _save(tmp_path / "none.npy", np.zeros((0, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"none\.npy holds an empty array"):
        image_array_dataset(path)


def test_header_only_csv_is_empty(tmp_path):
    path = tmp_path / "head.csv"
    path.write_text("a,b,c\n")
    with pytest.raises(ValueError, match=r"head\.csv holds an empty array"):
        load_array(str(path))


def test_zero_d_array_names_file_and_shape(tmp_path):
    path = _save(tmp_path / "scalar.npy", np.float32(3.0))
    with pytest.raises(ValueError, match=r"scalar\.npy holds a single number \(a 0-d array, shape \(\)\)"):
        load_array(path)
    with pytest.raises(ValueError, match=r"scalar\.npy has shape \(\)"):
        image_array_dataset(path)


@pytest.mark.parametrize("shape", [(10, 4, 4), (10, 4, 4, 3), (6, 2, 2, 2, 2)])
def test_images_are_not_flattened_into_vectors(tmp_path, shape):
    path = _save(tmp_path / "imgs.npy", np.random.default_rng(0).random(shape).astype(np.float32))
    with pytest.raises(ValueError) as info:
        build_dataset("array", path=path)
    msg = str(info.value)
    assert "imgs.npy" in msg and str(shape) in msg and "data.name=image-array" in msg, msg
    assert load_array(path).shape == shape  # the loader itself keeps the shape


def test_vectors_load(tmp_path):
    x = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    d = build_dataset("array", path=_save(tmp_path / "v.npy", x), test_fraction=0.25)
    assert d.train.shape == (15, 3) and d.test.shape == (5, 3)
    col = build_dataset("array", path=_save(tmp_path / "c.npy", x[:, 0]))
    assert col.train.shape[1:] == (1,)


@pytest.mark.parametrize("fraction", [0, 1, -0.5, 1.5])
def test_array_test_fraction_out_of_range(tmp_path, fraction):
    path = _save(tmp_path / "v.npy", np.zeros((20, 2), np.float32))
    with pytest.raises(ValueError, match=rf"data\.test_fraction must be in \(0, 1\), got {fraction}"):
        build_dataset("array", path=path, test_fraction=fraction)


def test_non_utf8_csv_names_file_and_byte_offset(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"1,2\n3,\xff4\n")
    with pytest.raises(ValueError, match=r"latin\.csv is not UTF-8 text: byte 0xff at byte offset 6"):
        load_array(str(path))


def test_non_utf8_csv_after_a_byte_order_mark_counts_the_mark(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf1,2\n\xe9,3\n")
    with pytest.raises(ValueError, match=r"bom\.csv is not UTF-8 text: byte 0xe9 at byte offset 7"):
        load_array(str(path))


def test_non_utf8_text_file_names_file_and_byte_offset(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(("hello world " * 20).encode() + b"\x80")
    with pytest.raises(ValueError, match=r"t\.txt is not UTF-8 text: byte 0x80 at byte offset 240"):
        text_file_dataset(str(path), seq_len=8)


def test_csv_byte_order_mark_keeps_the_first_row(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf1,2\n3,4\n5,6\n")
    np.testing.assert_array_equal(load_array(str(path)), [[1, 2], [3, 4], [5, 6]])


def test_csv_single_row_is_one_row(tmp_path):
    path = tmp_path / "row.csv"
    path.write_text("x,y,z\n1,2,3\n")
    assert load_array(str(path)).shape == (1, 3)


def test_folder_given_as_file(tmp_path):
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(ValueError, match=r"d\.npy is a folder"):
        load_array(str(tmp_path / "d.npy"))


def test_stored_path_is_absolute_and_works_from_another_directory(tmp_path, monkeypatch):
    x = np.random.default_rng(1).random((30, 2)).astype(np.float32)
    (tmp_path / "data").mkdir()
    _save(tmp_path / "data" / "pts.npy", x)
    monkeypatch.chdir(tmp_path)
    cfg = resolve_data_paths(apply_overrides(RunConfig(), ["data.name=array", "data.path=data/pts.npy"]))
    validate_config(cfg)
    stored = cfg.to_json()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = RunConfig.from_json(stored)
    assert os.path.isabs(again.data["path"])
    opts = dict(again.data)
    d = build_dataset(opts.pop("name"), **opts)
    assert len(d.train) + len(d.test) == 30
