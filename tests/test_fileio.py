"""methods/fileio.py: a file written through atomic_path appears whole or not at all."""

import pytest

from curation_assets.methods.fileio import atomic_path, temporary_name


def test_a_successful_block_replaces_the_file_in_one_rename(tmp_path):
    path = tmp_path / "new" / "folder" / "table.parquet"  # missing folders are created
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and not path.exists()
        tmp.write_text("v1")
    assert path.read_text() == "v1" and list(path.parent.iterdir()) == [path]
    with atomic_path(str(path)) as tmp:
        tmp.write_text("v2")
    assert path.read_text() == "v2" and list(path.parent.iterdir()) == [path]


def test_a_failure_inside_the_block_leaves_no_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "table.parquet"
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]  # the old file is untouched


def test_temporary_names_are_hidden_beside_the_file_and_unique(tmp_path):
    path = tmp_path / "part-0.parquet"
    a, b = temporary_name(path), temporary_name(path)
    assert a != b and a.parent == tmp_path and a.name.startswith(".part-0.parquet.") and a.suffix == ".tmp"
    a.write_text("x")
    assert list(tmp_path.glob("*.parquet")) == []
