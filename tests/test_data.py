"""Prompt sets and loaders: bundled data, every input format, and the error messages."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from constitutional_ai.data import (
    BUILTIN_SETS,
    DataError,
    PromptItem,
    builtin_path,
    hh_prompts,
    load_prompts,
    parse_hh_transcript,
    read_jsonl,
)
from constitutional_ai.store import write_jsonl_atomic

FIX = Path(__file__).parent / "fixtures" / "prompts"


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def asst(text: str) -> dict:
    return {"role": "assistant", "content": text}


# --- bundled sets ---------------------------------------------------------------------------


def _raw_rows(name: str) -> list[dict]:
    return [row for _, row in read_jsonl(builtin_path(name))]


def test_builtin_sets_are_bundled_files():
    assert set(BUILTIN_SETS) == {"red_team", "helpful"}
    for name in BUILTIN_SETS:
        assert builtin_path(name).is_file()
        assert builtin_path(name).suffix == ".jsonl"
    with pytest.raises(DataError, match="unknown built-in prompt set 'nope'"):
        builtin_path("nope")


def test_red_team_set_shape():
    items = load_prompts()  # default is red_team
    assert items == load_prompts("builtin:red_team")
    assert len(items) >= 220
    cats = Counter(it.category for it in items)
    assert len(cats) >= 12 and None not in cats
    assert "minors-safety" in cats and "self-harm" in cats and "cybercrime" in cats
    multi = [it for it in items if len(it.messages) > 1]
    assert len(multi) >= 25
    for it in multi:  # user, assistant, escalating user
        assert [m["role"] for m in it.messages] == ["user", "assistant", "user"]
    assert all(it.id.startswith("rt-") for it in items)


def test_helpful_set_shape():
    items = load_prompts(default="helpful")
    assert items == load_prompts("builtin:helpful")
    assert len(items) >= 120
    cats = Counter(it.category for it in items)
    assert cats["benign-lookalike"] >= 30
    assert {"coding", "cooking", "writing", "science", "advice", "math"} <= set(cats)
    assert all(it.id.startswith("hp-") for it in items)
    lookalikes = " ".join(it.prompt.lower() for it in items if it.category == "benign-lookalike")
    for word in ("kill", "shoot", "execute", "chemicals"):
        assert word in lookalikes


@pytest.mark.parametrize("name", sorted(BUILTIN_SETS))
def test_builtin_rows_are_clean(name):
    rows = _raw_rows(name)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    for r in rows:
        assert set(r) in ({"id", "category", "prompt", "split"}, {"id", "category", "messages", "split"})
        msgs = r.get("messages") or [user(r["prompt"])]
        assert msgs[-1]["role"] == "user"
        # The default model is small: keep requests short.
        assert len(msgs[-1]["content"].split()) <= 40
    texts = [(r.get("prompt") or r["messages"][-1]["content"]).lower() for r in rows]
    assert len(texts) == len(set(texts)), "duplicate prompt text"
    # Every line of the shipped file is standalone JSON.
    for line in builtin_path(name).read_text(encoding="utf-8").splitlines():
        assert isinstance(json.loads(line), dict)


def test_builtin_sets_do_not_overlap():
    red = {it.prompt for it in load_prompts("builtin:red_team")}
    helpful = {it.prompt for it in load_prompts("builtin:helpful")}
    assert not red & helpful


# --- good files in every format -------------------------------------------------------------


def test_jsonl_prompt_and_messages_rows():
    items = load_prompts(FIX / "good.jsonl")
    assert [it.id for it in items] == ["g1", "good-2", "g3", "4"]
    assert items[0].messages == (user("How do I make pancakes?"),)
    assert items[0].category == "cooking"
    assert items[1].category is None
    assert items[1].source == f"{FIX / 'good.jsonl'}:2"
    # the blank line 3 is skipped but still counted
    assert items[2].source.endswith("good.jsonl:4")
    assert [m["role"] for m in items[2].messages] == ["system", "user", "assistant", "user"]
    assert items[2].prompt == "Tell me a joke."
    # TRL's conversational format: "prompt" holding a message list; integer ids become strings
    assert items[3].messages == (user("Solve 3x = 9."),)


def test_prompt_item_to_dict_roundtrips_through_json():
    it = load_prompts(FIX / "good.jsonl")[2]
    d = it.to_dict()
    assert set(d) == {"id", "messages", "category", "source", "split"} and d["split"] is None
    assert isinstance(d["messages"], list)
    assert json.loads(json.dumps(d)) == d
    assert PromptItem(d["id"], tuple(d["messages"]), d["category"], d["source"]) == it


def test_csv_prompt_and_messages_columns():
    items = load_prompts(FIX / "good.csv")
    assert [it.id for it in items] == ["c1", "c2", "c3", "good-7"]
    assert items[0].prompt == "How do I reverse a list in Python?"
    assert items[0].category == "coding"
    assert items[1].prompt == "A prompt with a comma, and\na line break"
    assert items[1].category is None  # empty cell = absent
    assert items[2].messages == (user("Hi"), asst("Hello"), user("Thanks"))
    # line numbers are where the record starts, counting the multi-line quoted cell
    assert [it.source.rsplit(":", 1)[1] for it in items] == ["2", "3", "5", "7"]


def test_hh_transcripts_give_one_prompt_per_human_turn():
    items = load_prompts(FIX / "hh.jsonl")
    assert [it.id for it in items] == ["hh-1-t1", "hh-1-t2", "red-7-t1"]
    assert items[0].messages == (user("How do I bake bread?"),)
    assert items[1].messages == (
        user("How do I bake bread?"),
        asst("Mix flour, water, yeast and salt."),
        user("How long should it rise?"),
    )
    # the "transcript" field (red-team attempts) works the same; id and category are kept
    assert items[2].messages == (user("What's a good name for a cat?"),)
    assert items[2].category == "pets"
    assert all(it.source.endswith(f"hh.jsonl:{n}") for it, n in zip(items, [1, 1, 2]))


def test_txt_one_prompt_per_nonempty_line():
    items = load_prompts(FIX / "prompts.txt")
    assert [it.prompt for it in items] == [
        "How do I tie a tie?",
        "What is the boiling point of water?",
        "Name three primary colors.",
    ]
    assert [it.id for it in items] == ["prompts-1", "prompts-3", "prompts-4"]


def test_limit():
    assert [it.id for it in load_prompts(FIX / "good.jsonl", limit=2)] == ["g1", "good-2"]
    assert load_prompts(FIX / "good.jsonl", limit=0) == []
    assert len(load_prompts(limit=5)) == 5
    assert len(load_prompts(FIX / "good.jsonl", limit=100)) == 4
    with pytest.raises(ValueError, match="limit"):
        load_prompts(FIX / "good.jsonl", limit=-1)


def test_limit_still_validates_the_whole_file():
    with pytest.raises(DataError, match=r"bad_missing_field.jsonl:3"):
        load_prompts(FIX / "bad_missing_field.jsonl", limit=1)


# --- bad files: file, line and field in every message ---------------------------------------


@pytest.mark.parametrize(
    "name, line, parts",
    [
        ("bad_json.jsonl", 3, ["invalid JSON", "Expecting"]),
        ("bad_empty_prompt.jsonl", 2, ["field 'prompt'", "empty prompt"]),
        ("bad_ends_assistant.jsonl", 2, ["field 'messages'", "must end with a user turn", "'assistant'"]),
        ("bad_duplicate_id.jsonl", 3, ["field 'id'", "duplicate id 'a'", "bad_duplicate_id.jsonl:1"]),
        ("bad_missing_field.jsonl", 3, ["field 'prompt'", "'messages'", "missing"]),
    ],
)
def test_bad_fixture_errors_name_file_line_and_field(name, line, parts):
    with pytest.raises(DataError) as exc:
        load_prompts(FIX / name)
    msg = str(exc.value)
    assert f"{name}:{line}:" in msg
    for part in parts:
        assert part in msg
    assert isinstance(exc.value, ValueError)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    "row, field, part",
    [
        ({"messages": "hi"}, "messages", "expected a list of messages, got str"),
        ({"messages": []}, "messages", "empty conversation"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "bad role 'bot'"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "must be a string, got int"),
        ({"messages": [{"role": "user", "content": " "}]}, "messages[0].content", "empty content"),
        ({"messages": ["hi"]}, "messages[0]", "expected an object"),
        (
            {"messages": [user("a"), {"role": "system", "content": "s"}, user("b")]},
            "messages[1].role",
            "only come first",
        ),
        ({"prompt": 3}, "prompt", "must be a string, got int"),
        ({"prompt": "a", "messages": [user("b")]}, "prompt", "both"),
        ({"id": "", "prompt": "a"}, "id", "non-empty"),
        ({"id": True, "prompt": "a"}, "id", "non-empty"),
        ({"category": 1, "prompt": "a"}, "category", "must be a string"),
        ({"chosen": "\n\nAssistant: hi"}, "chosen", "no 'Human:' turn"),
        ({"chosen": "preamble\n\nHuman: hi"}, "chosen", "text before the first 'Human:'"),
        ({"chosen": "no markers at all"}, "chosen", "no 'Human:' turn"),
        ({"chosen": "\n\nHuman: \n\nAssistant: hi"}, "chosen[0].content", "empty content"),
        ({"chosen": 7}, "chosen", "transcript string"),
    ],
)
def test_row_validation_messages(tmp_path, row, field, part):
    p = _write(tmp_path, "rows.jsonl", json.dumps({"prompt": "ok"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as exc:
        load_prompts(p)
    msg = str(exc.value)
    assert "rows.jsonl:2:" in msg and f"field '{field}'" in msg and part in msg, msg


def test_non_object_line(tmp_path):
    p = _write(tmp_path, "x.jsonl", '{"prompt": "a"}\n["not", "an", "object"]\n')
    with pytest.raises(DataError, match=r"x\.jsonl:2: expected a JSON object, got list"):
        load_prompts(p)


def test_json_array_file_gets_a_hint(tmp_path):
    p = _write(tmp_path, "x.json", '[\n{"prompt": "a"}\n]\n')
    with pytest.raises(DataError, match=r"x\.json:1: invalid JSON.*one object per line"):
        load_prompts(p)


def test_json_extension_reads_json_lines(tmp_path):
    # datasets' Dataset.to_json writes JSON Lines even to a .json file.
    p = _write(tmp_path, "x.json", '{"prompt": "a"}\n{"prompt": "b"}\n')
    assert [it.prompt for it in load_prompts(p)] == ["a", "b"]


def test_hh_rows_may_end_with_an_empty_reply(tmp_path):
    p = _write(tmp_path, "hh.jsonl", json.dumps({"transcript": "\n\nHuman: hi\n\nAssistant:"}) + "\n")
    assert [it.messages for it in load_prompts(p)] == [(user("hi"),)]


def test_hh_rows_as_message_lists(tmp_path):
    row = {"chosen": [user("a"), asst("b"), user("c"), asst("d")]}
    items = load_prompts(_write(tmp_path, "pref.jsonl", json.dumps(row) + "\n"))
    assert [it.messages for it in items] == [(user("a"),), (user("a"), asst("b"), user("c"))]


def test_duplicate_generated_id_is_caught(tmp_path):
    p = _write(tmp_path, "d.jsonl", '{"prompt": "a"}\n{"id": "d-1", "prompt": "b"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'id': duplicate id 'd-1'"):
        load_prompts(p)


def test_csv_errors(tmp_path):
    p = _write(tmp_path, "a.csv", "question\nhi\n")
    with pytest.raises(DataError, match=r"a\.csv:1: no 'prompt' or 'messages' column"):
        load_prompts(p)
    p = _write(tmp_path, "b.csv", "id,prompt\n1,fine\n2,\n")
    with pytest.raises(DataError, match=r"b\.csv:3: field 'prompt': empty prompt"):
        load_prompts(p)
    p = _write(tmp_path, "c.csv", 'messages\n"[{""role"": ""user"""\n')
    with pytest.raises(DataError, match=r"c\.csv:2: field 'messages': invalid JSON"):
        load_prompts(p)
    p = _write(tmp_path, "d.csv", "prompt\na,b\n")
    with pytest.raises(DataError, match=r"d\.csv:2: 2 cells but the header has 1"):
        load_prompts(p)


@pytest.mark.parametrize(
    "name, text", [("e.jsonl", ""), ("e.jsonl", "\n \n"), ("e.txt", "\n"), ("e.csv", ""), ("e.csv", "prompt\n")]
)
def test_empty_files(tmp_path, name, text):
    with pytest.raises(DataError, match=r"e\.\w+: no prompts"):
        load_prompts(_write(tmp_path, name, text))


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match="no such prompt file"):
        load_prompts(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="unsupported prompt file type '.parquet'"):
        load_prompts(_write(tmp_path, "x.parquet", "x"))
    with pytest.raises(DataError, match="unknown built-in prompt set 'nope'"):
        load_prompts("builtin:nope")


# --- transcript helpers ---------------------------------------------------------------------


def test_parse_hh_transcript():
    text = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c"
    assert parse_hh_transcript(text) == [user("a"), asst("b"), user("c")]
    # leading blank line optional; multi-line turns kept; surrounding whitespace stripped
    assert parse_hh_transcript("Human: line 1\nline 2 \n\nAssistant: ok") == [user("line 1\nline 2"), asst("ok")]
    with pytest.raises(DataError, match=r"^f\.jsonl:4: no 'Human:' turn"):
        parse_hh_transcript("just text", "f.jsonl:4")
    with pytest.raises(DataError, match="no 'Human:' turn"):
        parse_hh_transcript("\n\nAssistant: only me")


def test_hh_prompts_prefixes():
    msgs = [user("a"), asst("b"), user("c"), asst("d")]
    assert hh_prompts(msgs) == [[user("a")], [user("a"), asst("b"), user("c")]]
    assert hh_prompts([asst("x")]) == []
    out = hh_prompts(msgs)
    out[0][0]["content"] = "changed"  # copies: the input is never aliased
    assert msgs[0]["content"] == "a"


# --- JSONL I/O ------------------------------------------------------------------------------


def test_read_jsonl_numbers_lines_and_skips_blanks(tmp_path):
    p = _write(tmp_path, "r.jsonl", '\ufeff{"a": 1}\n\n  \n{"a": 2}\n')
    assert list(read_jsonl(p)) == [(1, {"a": 1}), (4, {"a": 2})]


def test_write_jsonl_atomic_replaces_and_leaves_no_temp_files(tmp_path):
    p = tmp_path / "sub" / "out.jsonl"
    write_jsonl_atomic(p, [{"a": 1}, {"b": "é"}])
    assert [r for _, r in read_jsonl(p)] == [{"a": 1}, {"b": "é"}]
    assert "é" in p.read_text(encoding="utf-8")  # written as UTF-8, not \u escapes
    write_jsonl_atomic(p, ({"c": i} for i in range(3)))
    assert p.read_text(encoding="utf-8") == '{"c": 0}\n{"c": 1}\n{"c": 2}\n'
    assert sorted(x.name for x in p.parent.iterdir()) == ["out.jsonl"]
    assert p.stat().st_mode & 0o777 == 0o644


def test_write_jsonl_atomic_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "out.jsonl"
    write_jsonl_atomic(p, [{"old": True}])

    def rows():
        yield {"new": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_jsonl_atomic(p, rows())
    assert p.read_text(encoding="utf-8") == '{"old": true}\n'
    assert [x.name for x in tmp_path.iterdir()] == ["out.jsonl"]
    with pytest.raises(TypeError):
        write_jsonl_atomic(p, [{"x": object()}])
    assert [x.name for x in tmp_path.iterdir()] == ["out.jsonl"]


@pytest.mark.parametrize(
    "suffix, body",
    [
        (".jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n'),
        (".txt", b"first\nsecond \xff\n"),
        (".csv", b"prompt\nhello\n\xe9t\xe9\n"),
    ],
)
def test_non_utf8_prompt_file_names_file_and_line(tmp_path, suffix, body):
    p = tmp_path / f"prompts{suffix}"
    p.write_bytes(body)
    with pytest.raises(DataError, match=rf"prompts\{suffix}:\d: not UTF-8 text"):
        load_prompts(p)
