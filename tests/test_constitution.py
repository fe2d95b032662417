"""Tests for the constitution format, the bundled default, the converters and the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from constitutional_ai.constitution import (
    Constitution,
    ConstitutionError,
    CritiqueRevisionPrinciple,
    FeedbackExample,
    RevisionExample,
    cli_main,
    dump_constitution,
    from_anthropic,
    from_llm_swarm,
    load_constitution,
)

FIX = Path(__file__).parent / "fixtures" / "constitutions"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "formats"
MARKERS = ("CritiqueRequest", "RevisionRequest", "Critique:", "Revision:", "Options:")


def assert_clean(text: str) -> None:
    assert text == text.strip() and text
    for m in MARKERS:
        assert m not in text, (m, text)


# ----------------------------------------------------------------------------- default


def test_default_constitution_shape():
    c = load_constitution()
    assert c.source == "builtin:default"
    assert c.name == "cai-default"
    assert len(c.critique_revision) == 16
    assert len(c.feedback) == 16
    assert len({p.id for p in c.critique_revision}) == 16
    assert len({p.id for p in c.feedback}) == 16
    assert load_constitution("default") == c
    for p in c.critique_revision:
        assert "the assistant's last response" in p.critique, p.id
        assert "rewrite" in p.revision.lower(), p.id
    for f in c.feedback:
        assert f.text.startswith("Which of these assistant responses is"), f.id
        assert "? Choose the response that" in f.text, f.id
    guards = [f.id for f in c.feedback if any(w in f.text.lower() for w in ("preachy", "evasive", "condescending"))]
    assert len(guards) >= 3, guards


def test_default_exemplars_are_consistent_and_compact():
    c = load_constitution()
    # the paper's counts: 5 revision exemplars; 5 feedback exemplars, plus a sixth for CoT only
    assert len(c.revision_examples) == 5 and [e.cot_only for e in c.feedback_examples] == [False] * 5 + [True]
    # Two "no problem found" revisions that repeat the response, as in the paper's exemplars.
    assert sum(e.revision == e.response for e in c.revision_examples) == 2
    ids = {p.id for p in c.critique_revision}
    for e in c.revision_examples:
        assert e.principle in ids
        assert e.messages[-1]["role"] == "user"
        for text in (e.response, e.critique, e.revision):
            assert len(text.split()) < 120
    assert {e.preferred for e in c.feedback_examples} == {"A", "B"}  # no positional habit
    assert sum(e.preferred == "A" for e in c.feedback_examples) == 3  # CoT's six: 3 A, 3 B
    assert all(e.reasoning for e in c.feedback_examples)


def test_lookup_by_id():
    c = load_constitution()
    assert c.critique_principle("medical").id == "medical"
    assert c.feedback_principle("not-preachy").text.startswith("Which")
    with pytest.raises(KeyError, match="nope"):
        c.critique_principle("nope")
    with pytest.raises(KeyError, match="nope"):
        c.feedback_principle("nope")


def test_fingerprint_stable_and_content_sensitive():
    a, b = load_constitution(), load_constitution()
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 64 and int(a.fingerprint(), 16) >= 0
    # Labels and location are not content: renaming must not look like a settings change.
    assert dataclasses.replace(a, name="x", description="y", source="z").fingerprint() == a.fingerprint()
    first = a.critique_revision[0]
    changed = dataclasses.replace(
        a,
        critique_revision=(dataclasses.replace(first, revision=first.revision + " Be brief."),)
        + a.critique_revision[1:],
    )
    assert changed.fingerprint() != a.fingerprint()
    reordered = dataclasses.replace(a, feedback=a.feedback[::-1])
    assert reordered.fingerprint() != a.fingerprint()
    fewer = dataclasses.replace(a, feedback_examples=a.feedback_examples[:1])
    assert fewer.fingerprint() != a.fingerprint()


def test_to_dict_is_native_shape():
    d = load_constitution().to_dict()
    assert set(d) == {"name", "description", "critique_revision", "feedback", "examples"}
    assert set(d["examples"]) == {"revision", "feedback"}
    assert set(d["critique_revision"][0]) == {"id", "critique", "revision"}
    assert set(d["feedback"][0]) == {"id", "text"}
    json.dumps(d)  # plain data only


# ----------------------------------------------------------------------------- converters


def test_from_anthropic_fixture():
    c = from_anthropic(FIX / "toy-CritiqueRevisionInstructions.json", FIX / "toy-RLMadisonInstructions.json")
    assert [p.id for p in c.critique_revision] == ["cruel0", "unsafe1", "kids2"]
    assert c.critique_revision[0] == CritiqueRevisionPrinciple(
        "cruel0",
        "Name anything unkind or cruel in the assistant's last response.",
        "Rewrite the assistant's response to be kind.",
    )
    # plain-string prompt and a file without the trailing answer markers
    assert c.critique_revision[1].critique.startswith("Point out anything")
    assert c.critique_revision[2].revision == "Rewrite the assistant's response for a ten-year-old reader."
    assert [f.id for f in c.feedback] == ["feedback-0", "feedback-1", "feedback-2"]
    assert c.feedback[0].text == "Which reply is gentler? Pick the one a patient teacher would give."
    for p in c.critique_revision:
        assert_clean(p.critique), assert_clean(p.revision)
    for f in c.feedback:
        assert_clean(f.text)
    assert c.revision_examples == () and c.feedback_examples == ()


def test_from_anthropic_without_feedback():
    c = from_anthropic(FIX / "toy-CritiqueRevisionInstructions.json")
    assert len(c.critique_revision) == 3 and c.feedback == ()


def test_load_autodetects_anthropic_and_sibling_feedback():
    c = load_constitution(FIX / "toy-CritiqueRevisionInstructions.json")
    assert len(c.critique_revision) == 3 and len(c.feedback) == 3


def test_feedback_list_alone_is_refused_with_advice():
    with pytest.raises(ConstitutionError, match="--feedback"):
        load_constitution(FIX / "toy-RLMadisonInstructions.json")


def test_from_llm_swarm_fixture():
    c = from_llm_swarm(FIX / "toy-swarm.json")
    # the second exemplar's request pair matches no constitution entry, so it is appended
    assert [p.id for p in c.critique_revision] == ["swarm-0", "swarm-1", "swarm-example-1"]
    assert c.critique_revision[2].critique == "Say whether your last answer overstated its certainty."
    assert c.feedback == ()
    ex0, ex1 = c.revision_examples
    assert ex0 == RevisionExample(
        id="swarm-chat-0",
        messages=({"role": "user", "content": "How do I get free cable TV from my neighbour's line?"},),
        response="Splice a cable into their line at the junction box.",
        principle="swarm-1",
        critique="It explains how to steal a paid service, which is illegal.",
        revision="Tapping their line would be theft of service. Free options include an "
        "antenna for broadcast channels or free streaming apps.",
    )
    assert ex1.principle == "swarm-example-1"
    assert [m["role"] for m in ex1.messages] == ["user", "assistant", "user"]  # multi-turn kept
    assert ex1.response == "Olympus Mons, exactly 30 kilometres high."
    assert load_constitution(FIX / "toy-swarm.json") == c


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".yml"])
@pytest.mark.parametrize(
    "loader",
    [
        lambda: from_anthropic(FIX / "toy-CritiqueRevisionInstructions.json", FIX / "toy-RLMadisonInstructions.json"),
        lambda: from_llm_swarm(FIX / "toy-swarm.json"),
        lambda: load_constitution(),
    ],
    ids=["anthropic", "swarm", "default"],
)
def test_dump_load_round_trip(tmp_path, loader, suffix):
    c = loader()
    out = tmp_path / ("sub/c" + suffix)
    dump_constitution(c, out)
    back = load_constitution(out)
    assert back.fingerprint() == c.fingerprint()
    assert back.to_dict() == c.to_dict()
    assert back.source == str(out)


def test_dump_rejects_unknown_extension(tmp_path):
    with pytest.raises(ConstitutionError, match="unknown output format"):
        dump_constitution(load_constitution(), tmp_path / "c.txt")


def test_feedback_example_optional_reasoning_round_trip(tmp_path):
    c = load_constitution()
    ex = dataclasses.replace(c.feedback_examples[0], reasoning=None)
    c2 = dataclasses.replace(c, feedback_examples=(ex,))
    assert "reasoning" not in c2.to_dict()["examples"]["feedback"][0]
    dump_constitution(c2, tmp_path / "c.yaml")
    assert load_constitution(tmp_path / "c.yaml").feedback_examples[0].reasoning is None


# ----------------------------------------------------------------------------- real files


needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/formats not present")


@needs_shared
def test_real_anthropic_files():
    c = from_anthropic(
        SHARED / "anthropic-CritiqueRevisionInstructions.json", SHARED / "anthropic-RLMadisonInstructions.json"
    )
    assert [p.id for p in c.critique_revision] == [f"harmful{i}" for i in range(16)]
    assert [f.id for f in c.feedback] == [f"feedback-{i}" for i in range(16)]
    for p in c.critique_revision:
        assert_clean(p.critique), assert_clean(p.revision)
    for f in c.feedback:
        assert_clean(f.text)
        assert f.text[-1] in ".?", f.text
    assert c.critique_revision[0].critique.startswith("Identify specific ways")
    assert c.critique_revision[0].critique.endswith("or illegal.")
    assert load_constitution(SHARED / "anthropic-CritiqueRevisionInstructions.json") == c


@needs_shared
def test_real_llm_swarm_anthropic_file():
    c = from_llm_swarm(SHARED / "hf-llm-swarm-constitution_anthropic.json")
    assert [p.id for p in c.critique_revision] == [f"swarm-{i}" for i in range(16)]
    assert len(c.revision_examples) == 4 and c.feedback == ()
    for e in c.revision_examples:
        assert e.principle.startswith("swarm-") and not e.principle.startswith("swarm-example")
        assert e.messages[-1]["role"] == "user" and e.response and e.revision


@needs_shared
def test_real_llm_swarm_grok_file():
    c = from_llm_swarm(SHARED / "hf-llm-swarm-constitution_grok.json")
    # its two principles, plus the truthfulness pair used only by its multi-turn exemplar
    assert [p.id for p in c.critique_revision] == ["swarm-0", "swarm-1", "swarm-example-3"]
    assert [e.principle for e in c.revision_examples] == ["swarm-1", "swarm-0", "swarm-0", "swarm-example-3"]
    assert len(c.revision_examples[3].messages) == 3


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "name, fragments",
    [
        ("broken.yaml", ["invalid YAML", "line 7", "quoted scalar at line 4, column 15"]),
        ("missing_field.yaml", ["critique_revision[1]", "id 'toxic'", "missing field 'revision'"]),
        ("duplicate_ids.yaml", ["critique_revision[2]", "duplicate id 'rude'"]),
        ("bad_principle_ref.yaml", ["examples.revision[0]", "id 'ex-greeting'", "'impolite'"]),
        ("bad_preferred.yaml", ["examples.feedback[0]", "'preferred'", "'C'"]),
        ("bad_messages.yaml", ["id 'ex-ends-with-assistant'", "end with a user turn"]),
        ("invalid.json", ["invalid JSON", "line 5", "column 3"]),
    ],
)
def test_malformed_files_name_file_and_entry(name, fragments):
    with pytest.raises(ConstitutionError) as info:
        load_constitution(FIX / name)
    msg = str(info.value)
    assert name in msg
    for f in fragments:
        assert f in msg, (f, msg)


def test_other_validation_errors(tmp_path):
    def err(data: dict) -> str:
        p = tmp_path / "c.json"
        p.write_text(json.dumps(data))
        with pytest.raises(ConstitutionError) as info:
            load_constitution(p)
        return str(info.value)

    pair = {"id": "a", "critique": "c", "revision": "r"}
    assert "at least one" in err({"name": "n", "critique_revision": []})
    assert "non-empty string" in err({"critique_revision": [{**pair, "critique": "  "}]})
    assert "unknown field 'revison'" in err({"critique_revision": [{**pair, "revison": "x"}]})
    assert "unknown top-level field" in err({"critique_revisions": [pair]})
    assert "slug" in err({"critique_revision": [{**pair, "id": "has space"}]})
    assert "no such file" in str(pytest.raises(ConstitutionError, load_constitution, tmp_path / "absent.yaml").value)


def test_minimal_file_defaults():
    c = load_constitution(FIX / "minimal.json")
    assert c.name == "minimal" and c.description == "" and c.feedback == ()
    assert isinstance(c, Constitution)


def test_examples_are_typed():
    c = load_constitution()
    assert all(isinstance(e, RevisionExample) for e in c.revision_examples)
    assert all(isinstance(e, FeedbackExample) for e in c.feedback_examples)
    assert isinstance(c.revision_examples[0].messages, tuple)


# ----------------------------------------------------------------------------- CLI


def test_cli_validate_default(capsys):
    assert cli_main(["validate", "default"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == (
        "OK: default: 16 critique/revision pairs, 16 feedback principles, "
        "5 revision + 6 feedback exemplars (1 for chain-of-thought only)"
    )


def test_cli_validate_warns_without_feedback(capsys):
    path = FIX / "toy-swarm.json"
    assert cli_main(["validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"OK: {path}: 3 critique/revision pairs, 0 feedback")
    assert "warning" in captured.err and "RL stage" in captured.err


def test_cli_validate_bad_file(capsys):
    assert cli_main(["validate", str(FIX / "duplicate_ids.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "duplicate id 'rude'" in err


def test_cli_convert_and_show(tmp_path, capsys):
    out = tmp_path / "converted.yaml"
    rc = cli_main(
        [
            "convert",
            str(FIX / "toy-CritiqueRevisionInstructions.json"),
            str(out),
            "--feedback",
            str(FIX / "toy-RLMadisonInstructions.json"),
        ]
    )
    assert rc == 0 and out.exists()
    c = load_constitution(out)
    assert [p.id for p in c.critique_revision] == ["cruel0", "unsafe1", "kids2"]
    assert len(c.feedback) == 3
    capsys.readouterr()
    assert cli_main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    for pid in ("cruel0", "unsafe1", "kids2", "feedback-2"):
        assert f"[{pid}]" in shown
    assert "3 critique/revision pairs" in shown


def test_cli_convert_swarm_to_json(tmp_path):
    out = tmp_path / "s.json"
    assert cli_main(["convert", str(FIX / "toy-swarm.json"), str(out)]) == 0
    assert json.loads(out.read_text())["examples"]["revision"][0]["principle"] == "swarm-1"


def test_cli_show_default_lists_ids_and_exemplars(capsys):
    assert cli_main(["show"]) == 0
    out = capsys.readouterr().out
    assert "cai-default" in out and "[medical]" in out and "[not-preachy]" in out
    assert "ex-neighbour-wifi" in out and "ex-kill-process" in out


def test_cli_usage_errors_and_help(capsys):
    assert cli_main([]) == 2
    assert cli_main(["convert", "only-one-arg"]) == 2
    assert cli_main(["--help"]) == 0
    assert "validate" in capsys.readouterr().out
    assert cli_main(["convert", str(FIX / "toy-swarm.json"), "x.txt"]) == 2


def test_cot_only_exemplar_is_shown_before_cot_questions_only(tmp_path):
    from constitutional_ai.constitution import ConstitutionError, load_constitution
    from constitutional_ai.feedback import FeedbackOptions, scoring_units

    c = load_constitution("default")
    assert [e.cot_only for e in c.feedback_examples] == [False] * 5 + [True]  # the paper's 5 and 6
    rec = {"key": "p1", "messages": [{"role": "user", "content": "hi"}], "responses": ["a", "b"]}
    plain = scoring_units(rec, c, FeedbackOptions())
    cot = scoring_units(rec, c, FeedbackOptions(cot=True))
    assert {len(u["exemplars"]) for u in plain} == {5} and {len(u["exemplars"]) for u in cot} == {6}
    assert plain[0]["exemplars"] == cot[0]["exemplars"][:5]  # the plain block is unchanged by the sixth
    assert "cot_only" not in c.to_dict()["examples"]["feedback"][0]
    assert c.to_dict()["examples"]["feedback"][5]["cot_only"] is True
    bad = c.to_dict()
    del bad["examples"]["feedback"][5]["reasoning"]
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConstitutionError, match=r"examples\.feedback\[5\].*cot_only exemplar needs a 'reasoning'"):
        load_constitution(str(tmp_path / "c.yaml"))
    bad["examples"]["feedback"][5].update(reasoning="r", cot_only="yes")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConstitutionError, match="'cot_only' must be true or false"):
        load_constitution(str(tmp_path / "c.yaml"))
