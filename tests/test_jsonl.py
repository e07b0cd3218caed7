"""JSON Lines reading: one-line errors naming the line; a cut last line only where allowed."""

import pytest

from earthsynth.data.jsonl import read_jsonl
from earthsynth.errors import InputError
from tests_support import assert_input_error


def test_reads_objects_with_their_line_numbers(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(path) == [(1, {"a": 1}), (3, {"a": 2})]


def test_bad_lines_name_the_file_and_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(InputError) as err:
        read_jsonl(path)
    assert_input_error(err, path, "line 2", "JSON object")
    with pytest.raises(InputError) as err:
        read_jsonl(tmp_path / "missing.jsonl")
    assert_input_error(err, tmp_path / "missing.jsonl", "not found")


def test_a_cut_last_line_is_dropped_only_when_allowed(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "b"')
    assert read_jsonl(path, allow_cut_last_line=True) == [(1, {"a": 1})]
    with pytest.raises(InputError) as err:
        read_jsonl(path)
    assert_input_error(err, path, "line 2", "not valid JSON")
    path.write_text('{"a": 1\n{"a": 2}\n')  # a broken line in the middle is never a crash artefact
    with pytest.raises(InputError):
        read_jsonl(path, allow_cut_last_line=True)
