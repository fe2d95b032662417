"""New red-team prompts by few-shot generation from seed prompts (Bai et al. 2022, section 3.1).

    cai redteam --num-prompts 200 --out runs/redteam
    cai revise --prompts runs/redteam/prompts.jsonl --out runs/revise

The paper grew about 42k red-team prompts written by people to about 182k by showing a
pretrained model examples of red-team prompts and letting it write new ones. Here each
*request* shows the model ``--shots`` seed prompts, all drawn from **one** harm category (the
category is drawn first, in proportion to the seeds it has, then its seeds without
replacement), and asks for ``--per-request`` new ones. Every new prompt inherits that
category; its record names the seeds shown, the request, the model and the seed.

Two prompt formats (``--prompt-format``):

* ``text`` (default): the few-shot mechanics of the paper — the seed prompts as a plain
  numbered list, left open at the next number for the model to continue. The backends generate
  from chat turns, so the list is the start of the model's own turn (under a one-line user turn
  asking for such a list) and is continued, the prefill every backend supports; a model
  without a chat template cannot be used yet.
* ``chat``: an instruction turn for instruct models — the examples, then "write N new
  requests of the same kind", answered as a numbered list.

The new prompts are read from the numbered (or bulleted) lines of the output; without any, each
non-empty line counts. They are then filtered, in request order, and every drop is counted by
reason in the manifest (``counts.dropped``): ``truncated`` (the last item of an output cut at
``--max-new-tokens``), ``too_short``/``too_long`` (``--min-chars``/``--max-chars``),
``duplicate_seed`` and ``duplicate_generated`` (same text after case folding and collapsing
punctuation and white space, against every seed of the file, *all* splits, so no evaluation
prompt comes back as training data, and against the prompts already kept), ``near_duplicate``
(token-set Jaccard similarity at least ``--near-duplicate`` to a seed or a kept prompt; 0 turns
it off) and ``unparsable`` (a request whose output held no prompt at all; counted per request).

Only single-turn seeds (one user message, an optional system message) are shown as examples;
multi-turn seeds are skipped and counted (``seeds.skipped_multiturn``). An HH transcript file
still gives its first human turns, which are single-turn prompts.

Requests are made until ``--num-prompts`` prompts are kept or ``--max-requests`` requests are
used (the stop reason is in the manifest and on the console). Output folder:

  requests.jsonl  one record per request (raw output, parsed items), appended as batches finish
  failures.jsonl  requests that could not be generated (retried on rerun)
  prompts.jsonl   the kept prompts in the project's prompt-file format (``id``, ``messages``,
                  ``category``, ``split``: train), rebuilt from the records on every run
  manifest.json   written last: seeds file and hash, model, settings, counts, stop reason

Each request's seeds and sampling come from ``(--seed, request index)``, and the records are
filtered in request order, so a killed and rerun stage writes the same ``prompts.jsonl`` as an
uninterrupted one. The filters, ``--num-prompts`` and ``--max-requests`` only shape
``prompts.jsonl``: rerunning with a larger ``--num-prompts`` makes only the requests it adds.
"""

from __future__ import annotations

import math
import random
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from ..config import opt, output_settings
from ..data import DataError, PromptItem, load_prompts, prompt_file
from ..generation import Failed, generate_each
from ..models import Backend, Sampling, derive_seed, load_backend
from ..models.base import finish_reason
from ..prompts import STOP_STRINGS
from ..store import StageDir, file_sha256

FORMATS = ("text", "chat")
DROP_REASONS = (
    "truncated",
    "too_short",
    "too_long",
    "duplicate_seed",
    "duplicate_generated",
    "near_duplicate",
    "unparsable",
)


@dataclass
class RedteamConfig:
    out: str = opt("runs/redteam", "Output folder (created; rerun the same command to resume)", output=False)
    seeds: str = opt(
        "builtin:red_team",
        "Seed prompts shown as examples: a prompt file (.jsonl/.csv/.txt, HH transcripts) or builtin:red_team",
        output=False,
    )  # its content hash is pinned instead
    split: str = opt(
        "train",
        "Seed split shown as examples: train (default), eval or all; a file without split fields is used whole. "
        "New prompts are checked for duplicates against every split",
    )
    model: str = opt(
        "default",
        "Model spec that writes the prompts: default (embedded SmolLM2-135M), a checkpoint folder, a hub id, "
        "or openai:MODEL@URL",
    )
    num_prompts: int = opt(
        100, "New prompts to keep; rerun with more to grow the set (only new requests are made)", output=False, min=1
    )
    shots: int = opt(5, "Seed prompts shown per request, all from one harm category", min=1)
    per_request: int = opt(3, "New prompts asked for per request (a numbered list)", min=1)
    max_requests: int | None = opt(
        None,
        "Stop after this many requests even if fewer prompts were kept "
        "(default: 4 x num-prompts / per-request, at least 20)",
        output=False,
        min=1,
    )
    prompt_format: str = opt(
        "text",
        "text: a plain numbered list of the seeds that the model continues (the paper's few-shot mechanics); "
        "chat: an instruction turn asking for new requests (instruct models)",
    )
    temperature: float = opt(1.0, "Sampling temperature", min=0)
    top_p: float = opt(1.0, "Nucleus sampling threshold (1 = off)")
    max_new_tokens: int = opt(128, "Token budget per request", min=1)
    min_chars: int = opt(12, "Drop new prompts shorter than this many characters", output=False, min=1)
    max_chars: int = opt(400, "Drop new prompts longer than this many characters", output=False, min=1)
    near_duplicate: float = opt(
        0.8,
        "Drop new prompts whose word set has Jaccard similarity >= this with a seed or a kept prompt (0 = off)",
        output=False,
        min=0,
    )
    with_seeds: bool = opt(
        False,
        "Also write the seed prompts of --split into prompts.jsonl, before the new ones (the paper trained on both)",
        output=False,
    )
    seed: int = opt(0, "Seed for the category and example draws and for sampling")
    batch_size: int = opt(16, "Requests per model batch", output=False, min=1)


# ----------------------------------------------------------------------------- prompts
def _numbered(texts: Iterable[str], start: int = 1) -> str:
    return "\n".join(f"{i}. {t}" for i, t in enumerate(texts, start))


def _topic(category: str | None) -> str:
    return f" (topic: {category.replace('-', ' ')})" if category else ""


def request_messages(examples: list[str], category: str | None, n: int, fmt: str) -> list[dict]:
    """The conversation of one request. ``text``: a one-line request for a list, and the list
    of examples as the model's own turn, left open at the next number for it to continue;
    ``chat``: an instruction turn showing the examples and asking for ``n`` new ones."""
    if fmt == "text":
        return [
            {
                "role": "user",
                "content": f"List requests that people sent to an AI assistant to test whether it "
                f"would help them do harm{_topic(category)}.",
            },
            {"role": "assistant", "content": f"{_numbered(examples)}\n{len(examples) + 1}."},
        ]
    what = "1 new request" if n == 1 else f"{n} new requests"
    return [
        {
            "role": "user",
            "content": f"Here are examples of requests that people sent to an AI assistant to test whether it would "
            f"help them do harm{_topic(category)}:\n\n{_numbered(examples)}\n\nWrite {what} of the same kind, each "
            "different from the examples and from each other. Reply with a numbered list only, one request per line.",
        }
    ]


def stop_strings(k: int, n: int, fmt: str) -> tuple[str, ...]:
    """Generation stops at the number after the last item asked for (``k`` examples shown, ``n``
    asked for) and at a new turn; the ``text`` list also ends at a blank line."""
    last = k + n if fmt == "text" else n
    return (f"\n{last + 1}.",) + (("\n\n",) if fmt == "text" else ()) + STOP_STRINGS


# ----------------------------------------------------------------------------- parsing
_ITEM = re.compile(r"^\s*(?:\d{1,4}\s*[.):]|[-*\u2022])\s*(.*)$")
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"


def _clean_item(text: str) -> str:
    text = text.strip().strip("*").strip()
    text = re.sub(r"^(?:request|prompt)\s*:\s*", "", text, flags=re.IGNORECASE)
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def parse_items(raw: str, fmt: str) -> list[str]:
    """The new prompts in a model's output: its numbered or bulleted lines (in ``text`` format
    the first line continues the open item), else every non-empty line that does not end with
    a colon (a preamble). Empty items are left out."""
    lines = raw.replace("\r\n", "\n").split("\n")
    items: list[str] = []
    if fmt == "text" and lines:
        items.append(lines[0])
        lines = lines[1:]
    marked = [m.group(1) for m in map(_ITEM.match, lines) if m]
    if marked or items:
        items += marked
    else:
        items = [x for x in lines if x.strip() and not x.rstrip().endswith(":")]
    return [t for t in map(_clean_item, items) if t]


# ----------------------------------------------------------------------------- de-duplication
def normalise(text: str) -> str:
    """Case-folded words, punctuation and white space collapsed: equal means duplicate."""
    return " ".join(re.sub(r"[\W_]+", " ", text.casefold()).split())


class NearIndex:
    """Token sets with a Jaccard-similarity query, by prefix filtering: with the tokens of each
    set in one fixed order, two sets with Jaccard >= t share a token among the first
    ``|x| - ceil(t |x|) + 1`` of each, so only sets sharing such a token are compared."""

    def __init__(self, threshold: float):
        self.t = threshold
        self.sets: list[frozenset[str]] = []
        self.by_token: dict[str, list[int]] = defaultdict(list)

    def _prefix(self, toks: frozenset[str]) -> list[str]:
        n = len(toks)
        return sorted(toks)[: n - math.ceil(self.t * n - 1e-9) + 1]

    def similar(self, toks: frozenset[str]) -> bool:
        if self.t <= 0 or not toks:
            return False
        seen: set[int] = set()
        for tok in self._prefix(toks):
            for i in self.by_token.get(tok, ()):
                if i not in seen:
                    seen.add(i)
                    other = self.sets[i]
                    if len(toks & other) >= self.t * len(toks | other) - 1e-9:
                        return True
        return False

    def add(self, toks: frozenset[str]) -> None:
        if self.t <= 0 or not toks:
            return
        self.sets.append(toks)
        for tok in self._prefix(toks):
            self.by_token[tok].append(len(self.sets) - 1)


class Selection:
    """Walks the request records in request order and keeps the new prompts that pass every
    filter, until ``target`` are kept. The result depends only on the records, never on how
    they were batched or interrupted."""

    def __init__(self, cfg: RedteamConfig, seed_texts: Iterable[str], target: int):
        self.cfg, self.target = cfg, target
        self.seen: dict[str, str] = {}  # normalised text -> "seed" or "generated"
        self.near = NearIndex(cfg.near_duplicate)
        for t in seed_texts:
            norm = normalise(t)
            self.seen.setdefault(norm, "seed")
            self.near.add(frozenset(norm.split()))
        self.kept: list[dict] = []
        self.dropped: Counter[str] = Counter({r: 0 for r in DROP_REASONS})
        self.generated = 0
        self.requests = 0  # request records used
        self.failed = 0  # requests that failed in this run, skipped
        self.next = 0  # index of the next request to walk

    @property
    def done(self) -> bool:
        return len(self.kept) >= self.target

    def feed(self, rec: dict) -> None:
        self.requests += 1
        items = rec["items"]
        if not items:
            self.dropped["unparsable"] += 1
        for j, text in enumerate(items):
            if self.done:
                break
            self.generated += 1
            norm = normalise(text)
            toks = frozenset(norm.split())
            if rec.get("truncated") and j == len(items) - 1:
                why = "truncated"
            elif len(text) < self.cfg.min_chars:
                why = "too_short"
            elif len(text) > self.cfg.max_chars:
                why = "too_long"
            elif norm in self.seen:
                why = f"duplicate_{self.seen[norm]}"
            elif self.near.similar(toks):
                why = "near_duplicate"
            else:
                self.seen[norm] = "generated"
                self.near.add(toks)
                self.kept.append(
                    {
                        "id": f"rtg-{len(self.kept) + 1:06d}",
                        "messages": [{"role": "user", "content": text}],
                        "category": rec["category"],
                        "split": "train",
                        "origin": "generated",
                        "request": rec["request"],
                        "seed_ids": rec["seed_ids"],
                        "model": rec["model"],
                    }
                )
                continue
            self.dropped[why] += 1

    def advance(self, records: dict[int, dict], failed: set[int], limit: int) -> None:
        """Walk on through the records that follow, stopping at the first request not made yet."""
        while self.next < limit and not self.done:
            if self.next in records:
                self.feed(records[self.next])
            elif self.next in failed:
                self.failed += 1
            else:
                return
            self.next += 1


# ----------------------------------------------------------------------------- the stage
def seed_pools(items: list[PromptItem]) -> tuple[dict[str | None, list[PromptItem]], int]:
    """The single-turn seeds by category (the examples a request may show), and how many
    multi-turn seeds were skipped."""
    pools: dict[str | None, list[PromptItem]] = defaultdict(list)
    skipped = 0
    for it in items:
        if [m["role"] for m in it.messages if m["role"] != "system"] == ["user"]:
            pools[it.category].append(it)
        else:
            skipped += 1
    return dict(pools), skipped


def draw_request(cfg: RedteamConfig, pools: dict[str | None, list[PromptItem]], r: int) -> dict[str, Any]:
    """Request ``r``'s category (drawn in proportion to its seeds) and its seeds, from ``(seed, r)``."""
    rng = random.Random(derive_seed(cfg.seed, "redteam", r))
    cats = sorted(pools, key=lambda c: (c is None, c or ""))
    category = rng.choices(cats, weights=[len(pools[c]) for c in cats])[0]
    shown = rng.sample(pools[category], min(cfg.shots, len(pools[category])))
    return {
        "key": f"r{r:06d}",
        "request": r,
        "category": category,
        "seed_ids": [it.id for it in shown],
        "messages": request_messages([it.prompt for it in shown], category, cfg.per_request, cfg.prompt_format),
        "gen_seed": derive_seed(cfg.seed, "redteam", r, "sample"),
        "stop": stop_strings(len(shown), cfg.per_request, cfg.prompt_format),
    }


def _missing(start: int, limit: int, records: dict[int, dict], failed: set[int]) -> Iterator[int]:
    return (r for r in range(start, limit) if r not in records and r not in failed)


def _drops(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


def main(cfg: RedteamConfig) -> Path:
    """Run the stage; returns the output folder."""
    if cfg.prompt_format not in FORMATS:
        raise ValueError(f"--prompt-format must be one of {', '.join(FORMATS)}, got {cfg.prompt_format!r}")
    if cfg.near_duplicate > 1:
        raise ValueError(f"--near-duplicate must be between 0 and 1, got {cfg.near_duplicate}")
    if cfg.min_chars > cfg.max_chars:
        raise ValueError(f"--min-chars ({cfg.min_chars}) is larger than --max-chars ({cfg.max_chars})")
    sfile = prompt_file(cfg.seeds)
    every = load_prompts(sfile)  # all splits: new prompts must not repeat any of them
    shown = load_prompts(sfile, split=cfg.split)
    pools, skipped = seed_pools(shown)
    if not pools:
        raise DataError(f"{sfile}: no single-turn seed prompts in split {cfg.split!r} to show as examples")
    max_requests = cfg.max_requests or max(20, math.ceil(4 * cfg.num_prompts / cfg.per_request))
    settings = output_settings(cfg, seeds_sha256=file_sha256(sfile))
    sel = Selection(cfg, (it.prompt for it in every), cfg.num_prompts)
    with StageDir(cfg.out, "redteam", settings) as out:
        store = out.records("requests.jsonl")
        failures = out.failures()
        records = {rec["request"]: rec for rec in store}
        failed: set[int] = set()  # requests that failed in this run (a rerun retries them)
        t0 = time.time()
        sel.advance(records, failed, max_requests)
        backend: Backend | None = None
        while not sel.done and sel.next < max_requests:
            # As many requests as the target still needs at the yield so far (at most a batch); each
            # request's output depends on its own seed only, so this shapes the batches, never the prompts.
            rate = len(sel.kept) / sel.requests if sel.requests else cfg.per_request
            need = math.ceil((cfg.num_prompts - len(sel.kept)) / max(rate, 0.25))
            todo = [
                draw_request(cfg, pools, r)
                for r in islice(_missing(sel.next, max_requests, records, failed), min(cfg.batch_size, need))
            ]
            if backend is None:
                backend = load_backend(cfg.model, batch_size=cfg.batch_size)
                print(
                    f"[redteam] {cfg.num_prompts} new prompts wanted ({len(sel.kept)} kept so far, "
                    f"{len(records)} requests done) from {sum(map(len, pools.values()))} seeds with {backend.name}",
                    file=sys.stderr,
                )
            texts: dict[int, str | Failed] = {}
            for stop in dict.fromkeys(q["stop"] for q in todo):  # one call per stop list (a category with few seeds)
                group = [q for q in todo if q["stop"] == stop]
                sampling = Sampling(
                    temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, stop=stop
                )
                made = generate_each(backend, [q["messages"] for q in group], sampling, [q["gen_seed"] for q in group])
                texts.update((q["request"], t) for q, t in zip(group, made))
            for q in todo:
                text = texts[q["request"]]
                if isinstance(text, Failed):
                    failures.append(q["key"], text.error, request=q["request"], kind=text.kind)
                    failed.add(q["request"])
                    continue
                why = finish_reason(text)
                rec = {
                    "key": q["key"],
                    "request": q["request"],
                    "category": q["category"],
                    "seed_ids": q["seed_ids"],
                    "seed": q["gen_seed"],
                    "model": backend.name,
                    "prompt_format": cfg.prompt_format,
                    "raw": str(text),
                    "truncated": None if why is None else why == "length",
                    "items": parse_items(str(text), cfg.prompt_format),
                }
                store.append(rec)
                records[rec["request"]] = rec
            sel.advance(records, failed, max_requests)
            print(
                f"[redteam] {sel.requests} requests: {len(sel.kept)}/{cfg.num_prompts} kept; "
                f"dropped {_drops(sel.dropped)}" + (f"; {sel.failed} failed" if sel.failed else ""),
                file=sys.stderr,
            )
        stop = "target" if sel.done else "max_requests"
        rows = list(sel.kept)
        if cfg.with_seeds:
            rows = seed_rows(shown, {r["id"] for r in rows}) + rows
        out.write_jsonl("prompts.jsonl", rows)
        kept_by_cat = Counter(str(r["category"]) for r in sel.kept)
        manifest = out.finish(
            {
                "config": asdict(cfg),
                "inputs": {"seeds": str(sfile)},
                "seeds": {
                    "file": str(sfile),
                    "sha256": file_sha256(sfile),
                    "split": cfg.split,
                    "in_file": len(every),
                    "in_split": len(shown),
                    "examples": sum(map(len, pools.values())),
                    "skipped_multiturn": skipped,
                    "categories": {str(c): len(v) for c, v in sorted(pools.items(), key=lambda x: str(x[0]))},
                },
                "model": cfg.model,
                "stop_reason": stop,
                "max_requests": max_requests,
                "counts": {
                    "requests": sel.requests,
                    "requests_made": len(records),
                    "failed_requests": sel.failed,
                    "generated": sel.generated,
                    "kept": len(sel.kept),
                    "seeds_included": len(rows) - len(sel.kept),
                    "dropped": dict(sel.dropped),
                    "kept_by_category": dict(sorted(kept_by_cat.items())),
                },
                "files": {
                    "requests": "requests.jsonl",
                    "prompts": "prompts.jsonl",
                    "failures": "failures.jsonl",
                    "samples": "prompts.jsonl",
                },
                "seconds": round(time.time() - t0, 1),
            }
        )
    print(
        f"[redteam] {len(sel.kept)} new prompts kept from {sel.requests} requests ({sel.generated} written; "
        f"dropped {_drops(sel.dropped)}) -> {manifest.parent / 'prompts.jsonl'}",
        file=sys.stderr,
    )
    if stop == "max_requests":
        print(
            f"[redteam] stopped at --max-requests {max_requests} with {len(sel.kept)} of {cfg.num_prompts} prompts; "
            "raise --max-requests (or loosen the filters) and rerun to go on",
            file=sys.stderr,
        )
    if sel.failed:
        print(
            f"[redteam] {sel.failed} requests failed: see {Path(cfg.out) / 'failures.jsonl'}; rerun to retry them",
            file=sys.stderr,
        )
    return Path(cfg.out)


def seed_rows(items: list[PromptItem], taken: set[str]) -> list[dict]:
    """The seed prompts as rows of ``prompts.jsonl`` (``--with-seeds``)."""
    rows = []
    for it in items:
        if it.id in taken:
            raise DataError(f"{it.source}: field 'id': seed id {it.id!r} is also a new prompt's id; rename the seed")
        rows.append(
            {
                "id": it.id,
                "messages": [dict(m) for m in it.messages],
                "category": it.category,
                "split": it.split or "train",
                "origin": "seed",
                "request": None,
                "seed_ids": None,
                "model": None,
            }
        )
    return rows
