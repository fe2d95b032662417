"""The constitution: principles and few-shot exemplars, as data.

A constitution is the only human input Constitutional AI needs (Bai et al. 2022): critique /
revision request pairs for the supervised stage, multiple-choice feedback principles for the
RL stage, and a few worked examples of each. This module loads, validates, converts and
shows them; prompt rendering lives in ``prompts.py``.

Native format (YAML or JSON)::

    name: my-constitution
    description: ...
    critique_revision: [{id, critique, revision}, ...]     # at least one
    feedback: [{id, text}, ...]                             # needed by the RL stage
    examples:
      revision: [{id, messages, response, principle, critique, revision}, ...]
      feedback: [{id, messages, response_a, response_b, preferred, reasoning?}, ...]

``load_constitution`` also reads the two public shapes unchanged (Anthropic's
``CritiqueRevisionInstructions.json`` / ``RLMadisonInstructions.json`` and Hugging Face
llm-swarm's ``{"constitutions", "system_chat"}``), so ``--constitution their_file.json`` works.

    cai constitution validate FILE
    cai constitution show [FILE]
    cai constitution convert IN OUT [--feedback FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path(__file__).parent / "data" / "constitution.yaml"
_ROLES = ("system", "user", "assistant")
# Ids end up in every record's provenance and in file names, so keep them shell- and URL-safe.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ConstitutionError(ValueError):
    """A constitution file is unreadable or invalid; the message names the file and entry."""


@dataclass(frozen=True)
class CritiqueRevisionPrinciple:
    """One SL-stage principle: a critique request and the matching revision request."""

    id: str
    critique: str
    revision: str


@dataclass(frozen=True)
class FeedbackPrinciple:
    """One RL-stage principle: the question asked about options (A) and (B)."""

    id: str
    text: str


@dataclass(frozen=True)
class RevisionExample:
    """A worked critique/revision exemplar; ``principle`` names the request pair it shows."""

    id: str
    messages: tuple[dict, ...]
    response: str
    principle: str
    critique: str
    revision: str


@dataclass(frozen=True)
class FeedbackExample:
    """A worked multiple-choice exemplar; ``preferred`` is "A" or "B"."""

    id: str
    messages: tuple[dict, ...]
    response_a: str
    response_b: str
    preferred: str
    reasoning: str | None = None
    #: shown only before chain-of-thought questions (the paper's sixth CoT exemplar)
    cot_only: bool = False


@dataclass(frozen=True)
class Constitution:
    """A validated constitution. Build one with :func:`load_constitution` or a converter."""

    name: str
    description: str
    critique_revision: tuple[CritiqueRevisionPrinciple, ...]
    feedback: tuple[FeedbackPrinciple, ...]
    revision_examples: tuple[RevisionExample, ...]
    feedback_examples: tuple[FeedbackExample, ...]
    source: str

    def critique_principle(self, id: str) -> CritiqueRevisionPrinciple:
        """The critique/revision pair with this id (KeyError listing valid ids if absent)."""
        return _lookup(self.critique_revision, id, "critique/revision principle", self.source)

    def feedback_principle(self, id: str) -> FeedbackPrinciple:
        """The feedback principle with this id (KeyError listing valid ids if absent)."""
        return _lookup(self.feedback, id, "feedback principle", self.source)

    def to_dict(self) -> dict:
        """The native YAML-shaped dict (what :func:`dump_constitution` writes)."""
        return {
            "name": self.name,
            "description": self.description,
            "critique_revision": [_plain(p) for p in self.critique_revision],
            "feedback": [_plain(p) for p in self.feedback],
            "examples": {
                "revision": [_plain(e) for e in self.revision_examples],
                "feedback": [_plain(e) for e in self.feedback_examples],
            },
        }

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of everything that shapes prompts.

        ``name`` and ``description`` are labels, and ``source`` is a location, so none of
        them is included: renaming or moving a file must not make a resumed run believe
        its settings changed. Order of principles is included (draws are by position).
        """
        d = self.to_dict()
        del d["name"], d["description"]
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _lookup(items: tuple, id: str, kind: str, source: str) -> Any:
    for p in items:
        if p.id == id:
            return p
    raise KeyError(f"no {kind} {id!r} in {source}; known: {', '.join(p.id for p in items)}")


def _plain(obj: Any) -> dict:
    """A principle/exemplar as plain YAML/JSON data (lists, not tuples; no null reasoning)."""
    d = asdict(obj)
    if "messages" in d:
        d["messages"] = [dict(m) for m in d["messages"]]
    if d.get("reasoning", "") is None:
        del d["reasoning"]
    if d.get("cot_only") is False:
        del d["cot_only"]  # the default: not written, so older constitutions keep their fingerprint
    return d


# ----------------------------------------------------------------------------- reading


def _read(path: Path) -> Any:
    """Parse a JSON or YAML file, reporting syntax errors with file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConstitutionError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConstitutionError(f"{path}: cannot read: {e}") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConstitutionError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:

        def at(mark: Any) -> str:
            return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""

        msg = f"{path}: invalid YAML{at(e.problem_mark)}: {e.problem or e}"
        # For an unclosed quote or bracket the problem is at end of file; the context mark
        # points at where the culprit started, which is the line the user must fix.
        if e.context and e.context_mark:
            msg += f" ({e.context}{at(e.context_mark)})"
        raise ConstitutionError(msg) from None
    except yaml.YAMLError as e:
        raise ConstitutionError(f"{path}: invalid YAML: {e}") from None


def _entry(section: str, i: int, raw: Any) -> str:
    """How an error message names an entry: ``section[i] (id 'x')``."""
    rid = raw.get("id") if isinstance(raw, dict) else None
    return f"{section}[{i}]" + (f" (id {rid!r})" if isinstance(rid, str) and rid else "")


def _fields(
    file: str,
    where: str,
    raw: Any,
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
    other: tuple[str, ...] = (),
) -> dict:
    """Check an entry is a mapping with non-empty string fields and no unknown keys.

    ``other`` names non-string fields the caller checks itself (``messages``).
    """
    if not isinstance(raw, dict):
        raise ConstitutionError(f"{file}: {where}: expected a mapping, got {type(raw).__name__}")
    # Unknown keys are errors, not ignored: a typo like 'revison' would otherwise vanish.
    unknown = sorted(set(raw) - set(required) - set(optional) - set(other))
    if unknown:
        raise ConstitutionError(
            f"{file}: {where}: unknown field {unknown[0]!r} (allowed: {', '.join(required + optional + other)})"
        )
    for key in required:
        if key not in raw or raw[key] is None:
            raise ConstitutionError(f"{file}: {where}: missing field {key!r}")
    for key in required + optional:
        if key in raw and raw[key] is not None:
            v = raw[key]
            if not isinstance(v, str) or not v.strip():
                raise ConstitutionError(f"{file}: {where}: field {key!r} must be a non-empty string")
    if "id" in required and not _ID_RE.match(raw["id"]):
        raise ConstitutionError(f"{file}: {where}: id {raw['id']!r} must be a slug (letters, digits, '-', '_', '.')")
    return raw


def _messages(file: str, where: str, raw: Any) -> tuple[dict, ...]:
    """A conversation must be role/content turns ending with the user's turn to answer."""
    if raw is None:
        raise ConstitutionError(f"{file}: {where}: missing field 'messages'")
    if not isinstance(raw, list) or not raw:
        raise ConstitutionError(f"{file}: {where}: field 'messages' must be a non-empty list")
    out = []
    for j, m in enumerate(raw):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise ConstitutionError(f"{file}: {where}: messages[{j}] must have exactly 'role' and 'content'")
        if m["role"] not in _ROLES:
            raise ConstitutionError(
                f"{file}: {where}: messages[{j}] has role {m['role']!r}; expected one of {', '.join(_ROLES)}"
            )
        if not isinstance(m["content"], str):
            raise ConstitutionError(f"{file}: {where}: messages[{j}] content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise ConstitutionError(
            f"{file}: {where}: messages must end with a user turn (the last is {out[-1]['role']!r})"
        )
    return tuple(out)


def _unique(file: str, entries: list[tuple[str, str]]) -> None:
    """Reject a repeated id; ``entries`` are (where, id) in file order."""
    seen: dict[str, str] = {}
    for where, x in entries:
        if x in seen:
            raise ConstitutionError(f"{file}: {where}: duplicate id {x!r} (first used at {seen[x]})")
        seen[x] = where


def _build(data: Any, file: str, source: str) -> Constitution:
    """Validate a native-shaped dict and turn it into a :class:`Constitution`.

    Converters produce native dicts and come through here too, so there is one validator.
    """
    if not isinstance(data, dict):
        raise ConstitutionError(f"{file}: expected a mapping at the top level, got {type(data).__name__}")
    allowed = {"name", "description", "critique_revision", "feedback", "examples"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConstitutionError(
            f"{file}: unknown top-level field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )

    def section(key: str, container: dict, label: str) -> list:
        v = container.get(key)
        if v is None:
            return []
        if not isinstance(v, list):
            raise ConstitutionError(f"{file}: {label} must be a list")
        return v

    cr = []
    for i, raw in enumerate(section("critique_revision", data, "critique_revision")):
        r = _fields(file, _entry("critique_revision", i, raw), raw, ("id", "critique", "revision"))
        cr.append(CritiqueRevisionPrinciple(r["id"], r["critique"], r["revision"]))
    if not cr:
        raise ConstitutionError(f"{file}: critique_revision: at least one critique/revision pair is required")
    fb = []
    for i, raw in enumerate(section("feedback", data, "feedback")):
        r = _fields(file, _entry("feedback", i, raw), raw, ("id", "text"))
        fb.append(FeedbackPrinciple(r["id"], r["text"]))
    # Ids are unique per list: the SL and RL stages look them up in their own list.
    _unique(file, [(f"critique_revision[{i}]", p.id) for i, p in enumerate(cr)])
    _unique(file, [(f"feedback[{i}]", p.id) for i, p in enumerate(fb)])

    examples = data.get("examples") or {}
    if not isinstance(examples, dict) or set(examples) - {"revision", "feedback"}:
        raise ConstitutionError(f"{file}: examples must be a mapping with keys 'revision' and/or 'feedback'")
    rex = []
    cr_ids = [p.id for p in cr]
    for i, raw in enumerate(section("revision", examples, "examples.revision")):
        where = _entry("examples.revision", i, raw)
        r = _fields(file, where, raw, ("id", "response", "principle", "critique", "revision"), other=("messages",))
        if r["principle"] not in cr_ids:
            raise ConstitutionError(
                f"{file}: {where}: principle {r['principle']!r} is not a "
                f"critique_revision id (known: {', '.join(cr_ids)})"
            )
        rex.append(
            RevisionExample(
                r["id"],
                _messages(file, where, r.get("messages")),
                r["response"],
                r["principle"],
                r["critique"],
                r["revision"],
            )
        )
    fex = []
    for i, raw in enumerate(section("feedback", examples, "examples.feedback")):
        where = _entry("examples.feedback", i, raw)
        r = _fields(
            file, where, raw, ("id", "response_a", "response_b", "preferred"), ("reasoning",), ("messages", "cot_only")
        )
        cot_only = raw.get("cot_only", False)
        if not isinstance(cot_only, bool):
            raise ConstitutionError(f"{file}: {where}: field 'cot_only' must be true or false, got {cot_only!r}")
        if cot_only and not r.get("reasoning"):
            raise ConstitutionError(f"{file}: {where}: a cot_only exemplar needs a 'reasoning'")
        if r["preferred"] not in ("A", "B"):
            raise ConstitutionError(f"{file}: {where}: field 'preferred' must be 'A' or 'B', got {r['preferred']!r}")
        fex.append(
            FeedbackExample(
                r["id"],
                _messages(file, where, r.get("messages")),
                r["response_a"],
                r["response_b"],
                r["preferred"],
                r.get("reasoning"),
                cot_only,
            )
        )
    _unique(
        file,
        [(f"examples.revision[{i}]", e.id) for i, e in enumerate(rex)]
        + [(f"examples.feedback[{i}]", e.id) for i, e in enumerate(fex)],
    )

    name = data.get("name")
    if name is None:  # a quick hand-written file may skip the label; its stem is a fine one
        name = Path(file).stem
    desc = data.get("description") or ""
    if not isinstance(name, str) or not name.strip() or not isinstance(desc, str):
        raise ConstitutionError(f"{file}: 'name' must be a non-empty string and 'description' a string")
    return Constitution(name, desc, tuple(cr), tuple(fb), tuple(rex), tuple(fex), source)


# ----------------------------------------------------------------------------- public shapes


def _is_anthropic(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and bool(data)
        and "critique_revision" not in data
        and all(isinstance(v, dict) and ("prompt" in v or "edit_request" in v) for v in data.values())
    )


def _strip_markers(text: str, request: str, answer: str) -> str:
    """Drop Anthropic's "\\n\\nCritiqueRequest: ... \\n\\nCritique:" scaffolding.

    Our prompt builder adds its own turn structure, so leaving the markers in would double it.
    """
    text = text.strip()
    text = re.sub(rf"^{request}:\s*", "", text)
    text = re.sub(rf"(?:^|\n)\s*{answer}:\s*$", "", text)
    return text.strip()


def _anthropic_dict(file: str, data: Any) -> dict:
    if not _is_anthropic(data):
        raise ConstitutionError(
            f"{file}: not in the Anthropic CritiqueRevisionInstructions "
            'shape {"id": {"prompt": [...], "edit_request": "..."}}'
        )
    pairs = []
    for key, v in data.items():
        where = f"{file}: entry {key!r}"
        prompt = v.get("prompt")
        # The published file wraps each critique request in a one-element list.
        if isinstance(prompt, list):
            prompt = prompt[0] if prompt else None
        edit = v.get("edit_request")
        if not isinstance(prompt, str) or not isinstance(edit, str):
            raise ConstitutionError(
                f"{where}: needs a string (or list of strings) 'prompt' and a string 'edit_request'"
            )
        pairs.append(
            {
                "id": key,
                "critique": _strip_markers(prompt, "CritiqueRequest", "Critique"),
                "revision": _strip_markers(edit, "RevisionRequest", "Revision"),
            }
        )
    return {"critique_revision": pairs}


def _anthropic_feedback(file: str, data: Any) -> list[dict]:
    if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
        raise ConstitutionError(
            f"{file}: not in the Anthropic RLMadisonInstructions shape (a JSON list of principle strings)"
        )
    # Each principle ends in " Options:" because the paper's prompt appended the options.
    return [{"id": f"feedback-{i}", "text": re.sub(r"\s*Options:\s*$", "", s.strip())} for i, s in enumerate(data)]


def from_anthropic(critique_revision_path: str | Path, feedback_path: str | Path | None = None) -> Constitution:
    """Convert Anthropic's CritiqueRevisionInstructions.json (+ RLMadisonInstructions.json).

    Ids are the JSON keys (``harmful0`` ...) and ``feedback-0``, ``feedback-1`` ... for the
    feedback list. ``prompt`` may be a list (its first element is used) or a string. The
    ``CritiqueRequest:``/``Critique:``/``RevisionRequest:``/``Revision:`` markers, the
    trailing ``Options:`` and surrounding newlines are removed. There are no exemplars.
    """
    path = Path(critique_revision_path)
    native = _anthropic_dict(str(path), _read(path))
    files = [path.name]
    if feedback_path is not None:
        fpath = Path(feedback_path)
        native["feedback"] = _anthropic_feedback(str(fpath), _read(fpath))
        files.append(fpath.name)
    native["name"] = path.stem
    native["description"] = "Converted from the Anthropic format (" + ", ".join(files) + ")."
    return _build(native, str(path), str(path))


def _swarm_dict(file: str, data: Any) -> dict:
    if not isinstance(data, dict) or not isinstance(data.get("constitutions"), list):
        raise ConstitutionError(f'{file}: not in the llm-swarm shape {{"constitutions": [...], "system_chat": [...]}}')
    pairs = []
    for i, c in enumerate(data["constitutions"]):
        if not isinstance(c, dict) or not all(isinstance(c.get(k), str) for k in ("critic", "revision")):
            raise ConstitutionError(f"{file}: constitutions[{i}]: needs string fields 'critic' and 'revision'")
        pairs.append({"id": f"swarm-{i}", "critique": c["critic"].strip(), "revision": c["revision"].strip()})
    examples = []
    for i, chat in enumerate(data.get("system_chat") or []):
        roles = [m.get("role") if isinstance(m, dict) else None for m in chat] if isinstance(chat, list) else []
        # Layout: conversation..., assistant response, user critique request, assistant
        # critique, user revision request, assistant revision.
        if len(roles) < 6 or roles[-5:] != ["assistant", "user", "assistant", "user", "assistant"]:
            raise ConstitutionError(
                f"{file}: system_chat[{i}]: expected a conversation ending with the turns "
                f"assistant, user (critique request), assistant (critique), user (revision "
                f"request), assistant (revision); got roles {roles}"
            )
        texts = [m.get("content") for m in chat[-5:]]
        if not all(isinstance(t, str) for t in texts):
            raise ConstitutionError(f"{file}: system_chat[{i}]: content must be strings")
        response, crit_req, critique, rev_req, revision = (t.strip() for t in texts)
        match = next((p["id"] for p in pairs if (p["critique"], p["revision"]) == (crit_req, rev_req)), None)
        if match is None:
            match = f"swarm-example-{i}"
            pairs.append({"id": match, "critique": crit_req, "revision": rev_req})
        examples.append(
            {
                "id": f"swarm-chat-{i}",
                "messages": chat[:-5],
                "response": response,
                "principle": match,
                "critique": critique,
                "revision": revision,
            }
        )
    return {"critique_revision": pairs, "examples": {"revision": examples}}


def from_llm_swarm(path: str | Path) -> Constitution:
    """Convert a Hugging Face llm-swarm constitution (``{"constitutions", "system_chat"}``).

    ``constitutions[i]`` becomes principle ``swarm-i``. Each ``system_chat`` entry becomes
    exemplar ``swarm-chat-i``: its last five turns are the response, critique request,
    critique, revision request and revision; the turns before are the conversation (so
    multi-turn exemplars work). The exemplar points at the principle whose critique *and*
    revision requests equal its own; when none does, its request pair is appended as
    principle ``swarm-example-i``, since our prompts render an exemplar from its principle's
    texts. Such a pair then also takes part in random draws, like any principle. llm-swarm
    has no feedback principles, so ``feedback`` is empty (the RL stage needs some).
    """
    path = Path(path)
    native = _swarm_dict(str(path), _read(path))
    native["name"] = path.stem
    native["description"] = f"Converted from the llm-swarm format ({path.name})."
    return _build(native, str(path), str(path))


# ----------------------------------------------------------------------------- entry points


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Load a constitution, detecting its shape from the content.

    ``None`` or ``"default"`` is the bundled default. Native YAML/JSON, the Anthropic
    critique/revision file and the llm-swarm file are read as is. For an Anthropic file
    whose name contains ``CritiqueRevisionInstructions``, a sibling file with
    ``RLMadisonInstructions`` in its place is picked up as the feedback list if present.
    """
    if path is None or str(path) == "default":
        return _build(_read(DEFAULT_PATH), str(DEFAULT_PATH), "builtin:default")
    p = Path(path)
    data = _read(p)
    if isinstance(data, dict) and "critique_revision" in data:
        return _build(data, str(p), str(p))
    if isinstance(data, dict) and "constitutions" in data:
        return from_llm_swarm(p)
    if _is_anthropic(data):
        sibling = p.with_name(p.name.replace("CritiqueRevisionInstructions", "RLMadisonInstructions"))
        return from_anthropic(p, sibling if sibling != p and sibling.exists() else None)
    if isinstance(data, list) and data and all(isinstance(s, str) for s in data):
        raise ConstitutionError(
            f"{p}: this is a list of feedback principles only (Anthropic RLMadisonInstructions "
            f"shape); convert it with its critique file: "
            f"cai constitution convert CRITIQUES.json OUT.yaml --feedback {p}"
        )
    return _build(data, str(p), str(p))  # reports what is missing from a native file


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings as literal blocks, so dumped exemplars stay readable."""


_Dumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)
)


def dump_constitution(c: Constitution, path: str | Path) -> None:
    """Write ``c`` in the native format: YAML for .yaml/.yml, JSON for .json."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        text = yaml.dump(c.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    elif suffix == ".json":
        text = json.dumps(c.to_dict(), indent=2, ensure_ascii=False) + "\n"
    else:
        raise ConstitutionError(f"{p}: unknown output format; use .yaml, .yml or .json")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")


def _counts(c: Constitution) -> str:
    cot = sum(e.cot_only for e in c.feedback_examples)
    return (
        f"{len(c.critique_revision)} critique/revision pairs, {len(c.feedback)} feedback principles, "
        f"{len(c.revision_examples)} revision + {len(c.feedback_examples)} feedback exemplars"
        + (f" ({cot} for chain-of-thought only)" if cot else "")
    )


def _warnings(c: Constitution, file: str) -> list[str]:
    out = []
    if not c.feedback:
        out.append(f"warning: {file}: no feedback principles; the RL stage (AI feedback labels) needs them")
    if not c.revision_examples:
        out.append(f"warning: {file}: no revision exemplars; critique/revision prompts will be zero-shot")
    return out


def _show(c: Constitution) -> str:
    def wrap(text: str, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), 96, initial_indent=indent, subsequent_indent=indent)

    lines = [
        f"name:        {c.name}",
        f"source:      {c.source}",
        f"fingerprint: {c.fingerprint()[:16]}",
        f"contents:    {_counts(c)}",
    ]
    if c.description:
        lines += [wrap(c.description, "  ")]
    lines += ["", f"Critique/revision pairs ({len(c.critique_revision)}):"]
    for p in c.critique_revision:
        lines += [f"  [{p.id}]", wrap("critique: " + p.critique, "    "), wrap("revision: " + p.revision, "    ")]
    lines += ["", f"Feedback principles ({len(c.feedback)}):"]
    for f in c.feedback:
        lines += [f"  [{f.id}]", wrap(f.text, "    ")]
    lines += [
        "",
        "Few-shot exemplars:",
        "  revision: " + (", ".join(f"{e.id} ({e.principle})" for e in c.revision_examples) or "none"),
        "  feedback: " + (", ".join(f"{e.id} (prefers {e.preferred})" for e in c.feedback_examples) or "none"),
    ]
    return "\n".join(lines)


def cli_main(argv: list[str]) -> int:
    """``cai constitution validate|show|convert``; returns the exit status (2 on error)."""
    parser = argparse.ArgumentParser(
        prog="cai constitution",
        description="Check, inspect and convert constitutions (principles + few-shot "
        "exemplars). Files may be native YAML/JSON, Anthropic "
        "CritiqueRevisionInstructions.json or llm-swarm JSON.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    v = sub.add_parser(
        "validate",
        help="check a constitution file and print its counts",
        description="Check a constitution file; prints OK and its counts, or the first problem with file and entry.",
    )
    v.add_argument("file", metavar="FILE", help="constitution file, or 'default'")
    s = sub.add_parser(
        "show",
        help="print a readable summary of a constitution",
        description="Print the name, counts, every principle and the exemplar ids.",
    )
    s.add_argument(
        "file", metavar="FILE", nargs="?", default="default", help="constitution file (default: the bundled one)"
    )
    c = sub.add_parser(
        "convert",
        help="convert a constitution to native YAML or JSON",
        description="Read any supported shape and write the native format; the "
        "output format follows OUT's extension (.yaml/.yml/.json).",
    )
    c.add_argument("input", metavar="IN", help="input file (native, Anthropic or llm-swarm)")
    c.add_argument("output", metavar="OUT", help="output file (.yaml, .yml or .json)")
    c.add_argument(
        "--feedback",
        metavar="FILE",
        help="Anthropic RLMadisonInstructions.json to add as feedback principles "
        "(IN must then be an Anthropic CritiqueRevisionInstructions file)",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help (0) and on usage errors (2)
        return int(e.code or 0)
    try:
        if args.command == "validate":
            const = load_constitution(args.file)
            print(f"OK: {args.file}: {_counts(const)}")
            for w in _warnings(const, args.file):
                print(w, file=sys.stderr)
        elif args.command == "show":
            print(_show(load_constitution(args.file)))
        else:
            const = from_anthropic(args.input, args.feedback) if args.feedback else load_constitution(args.input)
            dump_constitution(const, args.output)
            print(f"wrote {args.output}: {_counts(const)}")
            for w in _warnings(const, args.output):
                print(w, file=sys.stderr)
    except (ConstitutionError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
