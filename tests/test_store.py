"""Record store: crash repair, duplicates, settings lock, manifests."""

import json

import pytest

from constitutional_ai.store import RecordFile, StageDir, StoreError, read_manifest, write_jsonl_atomic


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
    with StageDir(tmp_path / "out", "revise", {"rounds": 4, "seed": 0}) as d:
        d.records("r.jsonl").append({"key": "a"})
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


def test_a_run_that_writes_nothing_pins_no_settings(tmp_path):
    """A typo found before any work (e.g. a bad --model) must not pin the folder to it."""
    with StageDir(tmp_path / "out", "revise", {"model": "typo"}):
        pass
    assert not (tmp_path / "out" / "settings.json").exists()
    with StageDir(tmp_path / "out", "revise", {"model": "right"}) as d:
        d.write_json("x.json", {})
    assert json.loads((tmp_path / "out" / "settings.json").read_text()) == {"stage": "revise", "model": "right"}


def test_first_write_of_a_run_unfinishes_the_folder(tmp_path):
    with StageDir(tmp_path / "out", "s", {}) as d:
        d.records("r.jsonl").append({"key": "a"})
        d.finish({})
    with StageDir(tmp_path / "out", "s", {}) as d:
        rf = d.records("r.jsonl")
        assert d.finished  # opening and reading changes nothing
        rf.append({"key": "b"})
        assert not d.finished  # a folder being changed is no longer finished
        d.finish({})
    assert read_manifest(tmp_path / "out")["stage"] == "s"


def test_failure_log_keys_are_record_keys_with_attempts(tmp_path):
    with StageDir(tmp_path / "out", "s", {}) as d:
        fl = d.failures()
        assert not fl.path.exists()  # no empty failures.jsonl (not a loadable dataset)
        fl.append("p1", ValueError("too long"), step="initial", scores=[float("nan"), 0.5])
    with StageDir(tmp_path / "out", "s", {}) as d:
        d.failures().append("p1", "again")
    rows = [json.loads(x) for x in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert [(r["key"], r["attempt"], r["error"]) for r in rows] == [("p1", 1, "too long"), ("p1", 2, "again")]
    assert rows[0]["scores"] == [None, 0.5] and rows[0]["step"] == "initial"


def test_nan_is_never_written(tmp_path):
    rf = RecordFile(tmp_path / "r.jsonl")
    with pytest.raises(ValueError):
        rf.append({"key": "a", "p": float("nan")})
    rf.close()
    assert not (tmp_path / "r.jsonl").exists()  # nothing half-written
    with pytest.raises(ValueError):
        write_jsonl_atomic(tmp_path / "x.jsonl", [{"p": float("inf")}])
    assert not (tmp_path / "x.jsonl").exists() and not list(tmp_path.glob(".x.jsonl*"))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p.write_text("a file"), "is a file"),
        (lambda p: (p.parent / "ro").mkdir(mode=0o500), None),
    ],
)
def test_unusable_out_folder_is_a_clear_error(tmp_path, make, match):
    target = tmp_path / "out"
    make(target)
    if match is None:  # a read-only parent (root ignores permissions, so only check when it applies)
        import os

        target = tmp_path / "ro" / "out"
        if os.access(tmp_path / "ro", os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        match = "cannot write"
    with pytest.raises(StoreError, match=match):
        StageDir(target, "s", {})


def test_truncated_manifest_names_the_file(tmp_path):
    with StageDir(tmp_path / "out", "s", {}) as d:
        d.finish({})
    m = tmp_path / "out" / "manifest.json"
    m.write_text(m.read_text()[:20])
    with pytest.raises(StoreError, match=r"out/manifest\.json: corrupt manifest"):
        read_manifest(tmp_path / "out")


def test_resume_passes_over_a_checkpoint_cut_short_while_being_saved(tmp_path, capsys):
    from constitutional_ai.store import last_checkpoint

    assert last_checkpoint(tmp_path / "missing") is None
    assert last_checkpoint(tmp_path) is None
    for step in (3, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-11").mkdir()  # killed before its state was written
    (tmp_path / "checkpoint-12").mkdir()
    (tmp_path / "checkpoint-12" / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # numeric order, not text order
    err = capsys.readouterr().err
    assert "skipping" in err and "checkpoint-12" in err and "checkpoint-11" in err
    assert f"resuming training from {tmp_path / 'checkpoint-10'}" in err
