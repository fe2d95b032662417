"""Record store: crash repair, duplicates, settings lock, manifests."""

import json

import pytest

from constitutional_ai.store import RecordFile, StageDir, StoreError, read_manifest


def test_partial_last_line_is_cut_and_redone(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text('{"key": "a", "v": 1}\n{"key": "b", "v"')  # crash mid-write
    rf = RecordFile(f)
    assert list(rf.records) == ["a"]
    rf.append({"key": "b", "v": 2})
    rf.close()
    lines = f.read_text().splitlines()
    assert [json.loads(x)["key"] for x in lines] == ["a", "b"]


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text('{"key": "a"}\nnot json\n{"key": "c"}\n')
    with pytest.raises(StoreError, match=r"r\.jsonl:2: corrupt record"):
        RecordFile(f)


def test_duplicate_append_refused(tmp_path):
    rf = RecordFile(tmp_path / "r.jsonl")
    rf.append({"key": "a"})
    with pytest.raises(StoreError, match="written twice"):
        rf.append({"key": "a"})


def test_changed_settings_refused_with_diff(tmp_path):
    with StageDir(tmp_path / "out", "revise", {"rounds": 4, "seed": 0}):
        pass
    with pytest.raises(StoreError) as e:
        StageDir(tmp_path / "out", "revise", {"rounds": 2, "seed": 0})
    assert "rounds: 4 -> 2" in str(e.value)
    assert "seed" not in str(e.value)


def test_folder_lock_refuses_second_writer(tmp_path):
    with StageDir(tmp_path / "out", "x", {}):
        with pytest.raises(StoreError, match="in use"):
            StageDir(tmp_path / "out", "x", {})


def test_manifest_written_last_and_required(tmp_path):
    d = StageDir(tmp_path / "out", "revise", {"a": 1})
    with pytest.raises(StoreError, match="has no manifest.json"):
        read_manifest(tmp_path / "out")
    d.finish({"counts": {"records": 0}})
    d.close()
    m = read_manifest(tmp_path / "out", stage="revise")
    assert m["settings"] == {"a": 1} and m["counts"] == {"records": 0}
    with pytest.raises(StoreError, match="expected label"):
        read_manifest(tmp_path / "out", stage="label")
    with pytest.raises(StoreError, match="no such stage output folder"):
        read_manifest(tmp_path / "missing")
