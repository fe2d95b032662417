"""Prompt sets and JSONL I/O.

A *prompt* is a chat conversation that ends with a user turn; the model under study writes
the next assistant turn. Prompts come from the bundled sets (``builtin:red_team``,
``builtin:helpful``) or from a user's file:

* ``.jsonl`` (also ``.json``, ``.json-lines``, ``.ndjson``): one object per line with a
  ``prompt`` string or a ``messages`` list of ``{"role", "content"}``; optional ``id`` and
  ``category``. Anthropic HH rows (a ``chosen`` or ``transcript`` field holding a
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` transcript) give one prompt per human turn, as
  in the paper.
* ``.csv``: a ``prompt`` column (or a ``messages`` column holding JSON).
* ``.txt``: one prompt per non-empty line.

Every mistake in a file is reported as a :class:`DataError` that names the file, the line
and the field, e.g. ``prompts.jsonl:7: field 'prompt': empty prompt``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BUILTIN_SETS",
    "SPLITS",
    "DataError",
    "PromptItem",
    "builtin_path",
    "prompt_file",
    "hh_prompts",
    "load_prompts",
    "parse_hh_transcript",
    "prompt_items",
    "read_jsonl",
    "training_prompt_ids",
]

_DATA_DIR = Path(__file__).resolve().parent / "data"

#: Bundled prompt sets, by name. Written for this project (see the files for categories).
BUILTIN_SETS: dict[str, Path] = {
    "red_team": _DATA_DIR / "red_team.jsonl",
    "helpful": _DATA_DIR / "helpful.jsonl",
}
#: Bundled helpfulness comparisons (prompt/chosen/rejected) for the hybrid PM; not a prompt set.
HELPFUL_COMPARISONS: Path = _DATA_DIR / "helpful_comparisons.jsonl"

_JSONL_SUFFIXES = {".jsonl", ".json-lines", ".ndjson", ".json"}
_ROLES = ("system", "user", "assistant")
# HH transcripts mark turns with a blank line then the speaker's name.
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


#: The fixed splits of the bundled prompt sets: training stages draw from "train", evaluations from "eval".
SPLITS = ("train", "eval")


class DataError(ValueError):
    """A prompt file is malformed; the message names the file, line and field."""


def _err(where: str, msg: str, field: str | None = None) -> DataError:
    return DataError(f"{where}: field '{field}': {msg}" if field else f"{where}: {msg}")


@dataclass(frozen=True)
class PromptItem:
    """One prompt: a conversation ending with a user turn, plus where it came from."""

    id: str
    messages: tuple[dict, ...]
    category: str | None
    source: str  # "path:line"
    split: str | None = None  # "train" or "eval" in files that carry a split; None otherwise

    @property
    def prompt(self) -> str:
        """The final user turn's text (the request the model answers)."""
        return self.messages[-1]["content"]

    def to_dict(self) -> dict:
        """A JSON-ready dict: ``{"id", "messages", "category", "source"}``."""
        return {
            "id": self.id,
            "messages": [dict(m) for m in self.messages],
            "category": self.category,
            "source": self.source,
            "split": self.split,
        }


def builtin_path(name: str) -> Path:
    """Path of a bundled prompt set (``"red_team"`` or ``"helpful"``)."""
    try:
        return BUILTIN_SETS[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_SETS))
        raise DataError(f"unknown built-in prompt set {name!r} (known: {known})") from None


def prompt_file(spec: str | Path) -> Path:
    """The file behind a prompt-set spec: ``builtin:NAME`` or a path."""
    spec = str(spec)
    return builtin_path(spec.split(":", 1)[1]) if spec.startswith("builtin:") else Path(spec)


def read_text(path: str | Path) -> str:
    """A text file's content as UTF-8 (a leading BOM dropped); a file in another encoding is a
    :class:`DataError` naming the file and the line of the first bad byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")  # files saved by some editors start with a BOM
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x}); save the file as UTF-8") from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line, numbering lines from 1.

    Raises :class:`DataError` on a line that is not valid JSON or not a JSON object.
    """
    for n, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            hint = (
                " (JSON arrays are not supported; write one object per line)"
                if (n == 1 and line.lstrip().startswith("["))
                else ""
            )
            raise _err(where, f"invalid JSON: {e.msg} at column {e.colno}{hint}") from None
        if not isinstance(obj, dict):
            raise _err(where, f"expected a JSON object, got {type(obj).__name__}")
        yield n, obj


def parse_hh_transcript(text: str, where: str = "") -> list[dict]:
    """Split an Anthropic HH transcript into chat messages.

    ``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c"`` becomes user ``a``, assistant ``b``,
    user ``c``. Turn texts are stripped. Raises :class:`DataError` (prefixed with ``where``)
    if there is no Human turn or text precedes the first turn marker.
    """
    prefix = f"{where}: " if where else ""
    # Tolerate transcripts stored without the leading blank line.
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n"))
    messages = [
        {"role": "user" if speaker == "Human" else "assistant", "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2])
    ]
    if not any(m["role"] == "user" for m in messages):
        raise DataError(f"{prefix}no 'Human:' turn in transcript")
    if parts[0].strip():
        raise DataError(f"{prefix}text before the first 'Human:' turn: {parts[0].strip()[:40]!r}")
    return messages


def hh_prompts(messages: list[dict]) -> list[list[dict]]:
    """The prefixes of a conversation that end at each user turn (one prompt per turn)."""
    return [[dict(m) for m in messages[: i + 1]] for i, m in enumerate(messages) if m.get("role") == "user"]


def check_messages(value: Any, where: str, field: str, last: str | None = "user") -> list[dict]:
    """Validate a conversation (ending with a ``last`` turn unless None); return normalised
    copies. Errors name the place, the field and the offending message."""
    if not isinstance(value, list):
        raise _err(where, f"expected a list of messages, got {type(value).__name__}", field)
    if not value:
        raise _err(where, "empty conversation", field)
    out = []
    for i, m in enumerate(value):
        f = f"{field}[{i}]"
        if not isinstance(m, dict):
            got = type(m).__name__
            raise _err(where, f"expected an object with 'role' and 'content', got {got}", f)
        role, content = m.get("role"), m.get("content")
        if role not in _ROLES:
            known = ", ".join(_ROLES)
            raise _err(where, f"bad role {role!r} (expected one of {known})", f"{f}.role")
        if role == "system" and i != 0:
            raise _err(where, "a system message may only come first", f"{f}.role")
        if not isinstance(content, str):
            got = type(content).__name__
            raise _err(where, f"content must be a string, got {got}", f"{f}.content")
        if not content.strip() and role != "assistant":  # an empty *answer* is data, not an error
            raise _err(where, "empty content", f"{f}.content")
        out.append({"role": role, "content": content})
    if last is not None and out[-1]["role"] != last:
        article = "an" if last == "assistant" else "a"
        raise _err(where, f"conversation must end with {article} {last} turn (last role is {out[-1]['role']!r})", field)
    return out


def _row_items(row: dict, where: str, default_id: str) -> list[PromptItem]:
    """Turn one row (from JSONL or CSV) into one or more prompts."""
    rid = row.get("id")
    if rid is not None:
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or not str(rid).strip():
            raise _err(where, f"id must be a non-empty string or integer, got {rid!r}", "id")
        rid = str(rid)
    category = row.get("category")
    if category is not None and not isinstance(category, str):
        raise _err(where, f"category must be a string, got {type(category).__name__}", "category")
    split = row.get("split")
    if split is not None and split not in SPLITS:
        raise _err(where, f"split must be one of {', '.join(SPLITS)}, got {split!r}", "split")

    def item(pid: str, msgs: list[dict]) -> PromptItem:
        return PromptItem(id=pid, messages=tuple(msgs), category=category, source=where, split=split)

    if "messages" in row and "prompt" in row:
        raise _err(where, "row has both 'prompt' and 'messages'; give one", "prompt")
    if "messages" in row:
        return [item(rid or default_id, check_messages(row["messages"], where, "messages"))]
    if "prompt" in row:
        p = row["prompt"]
        if isinstance(p, list):  # TRL's conversational format: prompt is a message list.
            return [item(rid or default_id, check_messages(p, where, "prompt"))]
        if not isinstance(p, str):
            raise _err(where, f"prompt must be a string, got {type(p).__name__}", "prompt")
        if not p.strip():
            raise _err(where, "empty prompt", "prompt")
        return [item(rid or default_id, [{"role": "user", "content": p}])]
    for field in ("chosen", "transcript"):
        if field not in row:
            continue
        value = row[field]
        if isinstance(value, str):
            msgs = parse_hh_transcript(value, f"{where}: field '{field}'")
        elif isinstance(value, list) and all(isinstance(m, dict) for m in value):
            msgs = value  # TRL's conversational preference format: already a message list
        else:
            got = type(value).__name__
            raise _err(where, f"expected an HH transcript string, got {got}", field)
        prompts = hh_prompts(msgs)
        if not prompts:
            raise _err(where, "no user turn in the conversation", field)
        # Only what the prompts contain is checked: HH rows may end with an empty reply.
        longest = check_messages(prompts[-1], where, field)
        base = rid or default_id
        # The paper's red-team prompts: every human turn, with the conversation before it.
        return [item(f"{base}-t{t}", [dict(m) for m in longest[: len(p)]]) for t, p in enumerate(prompts, 1)]
    need = "missing: each row needs 'prompt' (a string) or 'messages' (a list)"
    raise _err(where, need, "prompt")


def _jsonl_items(path: Path) -> Iterator[PromptItem]:
    for n, row in read_jsonl(path):
        yield from _row_items(row, f"{path}:{n}", f"{path.stem}-{n}")


def _csv_items(path: Path) -> Iterator[PromptItem]:
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        if not {"prompt", "messages", "chosen", "transcript"} & set(header):
            cols = ", ".join(header)
            raise _err(f"{path}:1", f"no 'prompt' or 'messages' column (columns: {cols})")
        while True:
            # Remember where the record starts: a quoted cell may span several lines.
            start = reader.line_num + 1
            cells = next(reader, None)
            if cells is None:
                break
            if not any(c.strip() for c in cells):
                continue
            where = f"{path}:{start}"
            if len(cells) > len(header):
                raise _err(where, f"{len(cells)} cells but the header has {len(header)} columns")
            row: dict[str, Any] = dict(zip(header, cells))
            # Empty cells mean "absent", except the prompt itself (so we can say "empty prompt").
            row = {k: v for k, v in row.items() if v != "" or k == "prompt"}
            if row.get("messages"):
                try:
                    row["messages"] = json.loads(row["messages"])
                except json.JSONDecodeError as e:
                    msg = f"invalid JSON: {e.msg} at column {e.colno}"
                    raise _err(where, msg, "messages") from None
                if row.get("prompt") == "":
                    del row["prompt"]
            yield from _row_items(row, where, f"{path.stem}-{start}")


def _txt_items(path: Path) -> Iterator[PromptItem]:
    for n, line in enumerate(read_text(path).split("\n"), 1):
        text = line.strip()
        if text:
            yield PromptItem(
                id=f"{path.stem}-{n}",
                messages=({"role": "user", "content": text},),
                category=None,
                source=f"{path}:{n}",
            )


def load_prompts(
    path: str | Path | None = None, *, default: str = "red_team", limit: int | None = None, split: str = "all"
) -> list[PromptItem]:
    """Load prompts from a file or a bundled set.

    ``path`` is ``None`` (the bundled set named by ``default``), ``"builtin:NAME"``, or a
    ``.jsonl``/``.json``/``.csv``/``.txt`` file (see the module docstring). The whole file is
    validated even when ``limit`` keeps only the first ``limit`` prompts, so a bad line is
    found now rather than by a later run.

    ``split`` (``"train"``, ``"eval"`` or ``"all"``) keeps the prompts of one split in a file
    whose rows carry a ``split`` field (the bundled sets do); a file without any ``split``
    field is not split and gives all its prompts. A file that splits only some rows is an error.
    """
    if split not in SPLITS + ("all",):
        raise ValueError(f"split must be 'train', 'eval' or 'all', got {split!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if path is None:
        path = builtin_path(default)
    elif isinstance(path, str) and path.startswith("builtin:"):
        path = builtin_path(path[len("builtin:") :])
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such prompt file")
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        items = _jsonl_items(path)
    elif suffix == ".csv":
        items = _csv_items(path)
    elif suffix == ".txt":
        items = _txt_items(path)
    else:
        raise DataError(f"{path}: unsupported prompt file type {suffix!r} (use .jsonl, .csv or .txt)")

    out: list[PromptItem] = []
    seen: dict[str, str] = {}
    for it in items:
        if it.id in seen:
            raise _err(it.source, f"duplicate id {it.id!r} (first used at {seen[it.id]})", "id")
        seen[it.id] = it.source
        out.append(it)
    if not out:
        raise DataError(f"{path}: no prompts")
    unsplit = [it for it in out if it.split is None]
    if unsplit and len(unsplit) < len(out):
        raise _err(
            unsplit[0].source, "this row has no split, but other rows of the file do; give every row one", "split"
        )
    if split != "all" and not unsplit:
        out = [it for it in out if it.split == split]
        if not out:
            raise DataError(f"{path}: no prompts in split {split!r}")
    return out if limit is None else out[:limit]


def prompt_items(
    spec: str, limit: int | None = None, take: str = "first", category: str | None = None, split: str = "all"
) -> tuple[list[PromptItem], Path]:
    """A prompt set's ``split`` (see :func:`load_prompts`), optionally one category, then
    ``limit`` prompts from its start or end."""
    if take not in ("first", "last"):
        raise ValueError(f"--take must be 'first' or 'last', got {take!r}")
    pfile = prompt_file(spec)
    items = load_prompts(pfile, split=split)
    if category not in (None, "", "all"):
        items = [it for it in items if it.category == category]
        if not items:
            raise DataError(f"{pfile}: no prompts in category {category!r}")
    if limit:
        items = items[-limit:] if take == "last" else items[:limit]
    return items, pfile


def training_prompt_ids(folder: str | Path) -> dict[str, str]:
    """Every prompt id a stage folder's training used: ``{prompt id: folder that used it}``.

    Reads the ``prompt_ids`` list in the folder's ``manifest.json`` and, recursively, in every
    input folder its manifest names (an RL policy's SFT folder, its PM's label and pair
    folders, ...). A folder without a manifest (a hub id, the embedded model) used none that
    this project recorded.
    """
    found: dict[str, str] = {}
    seen: set[Path] = set()

    def strings(x: Any) -> Iterator[str]:
        if isinstance(x, str):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)

    def visit(d: Path) -> None:
        d = d.resolve()
        if d in seen or not (d / "manifest.json").is_file():
            return
        seen.add(d)
        try:
            man = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{d / 'manifest.json'}: unreadable manifest ({e})") from None
        for pid in man.get("prompt_ids") or []:
            found.setdefault(str(pid), str(d))
        for s in strings(man.get("inputs")):
            if s and len(s) < 4096 and Path(s).is_dir():
                visit(Path(s))

    visit(Path(folder))
    return found
