"""Preference pairs: the rows ``cai label`` writes, helpfulness comparisons, and mixing them.

A pair is ``{id, source, where, prompt, chosen, rejected, p_chosen}`` with conversational
``prompt``/``chosen``/``rejected`` messages; ``p_chosen`` is the soft AI label (1.0 for human
helpfulness comparisons). Used by the preference model (``cai train pm``) and the offline
route (``cai train dpo``).
"""

from __future__ import annotations

from pathlib import Path

from .data import DataError, check_messages, parse_hh_transcript, read_jsonl
from .store import file_sha256, read_manifest


def parse_pair(row: dict, where: str, source: str, default_p: float | None) -> dict:
    """One comparison → ``{id, source, where, prompt, chosen, rejected, p_chosen}``.

    Accepts the preference format (``prompt`` as messages or a string; ``chosen``/``rejected``
    as assistant messages or strings) or, without ``prompt``, HH transcripts.
    """
    if "prompt" in row:
        prompt = row["prompt"]
        prompt = (
            [{"role": "user", "content": prompt}]
            if isinstance(prompt, str)
            else check_messages(prompt, where, "prompt", "user")
        )
        sides = {}
        for k in ("chosen", "rejected"):
            v = row.get(k)
            if v is None:
                raise DataError(f"{where}: field '{k}': missing")
            sides[k] = (
                [{"role": "assistant", "content": v}]
                if isinstance(v, str)
                else check_messages(v, where, k, "assistant")
            )
    else:
        convs = {}
        for k in ("chosen", "rejected"):
            v = row.get(k)
            if not isinstance(v, str):
                raise DataError(
                    f"{where}: field '{k}': expected an HH transcript string "
                    "(or give `prompt` for the preference format)"
                )
            convs[k] = parse_hh_transcript(v, f"{where}: field '{k}'")
            if convs[k][-1]["role"] != "assistant":
                raise DataError(f"{where}: field '{k}': the transcript must end with an Assistant turn")
        if convs["chosen"][:-1] != convs["rejected"][:-1]:
            raise DataError(f"{where}: field 'rejected': chosen and rejected differ before their last Assistant turn")
        prompt = convs["chosen"][:-1]
        sides = {k: convs[k][-1:] for k in convs}
    p = row.get("p_chosen", default_p)
    if p is None:
        raise DataError(f"{where}: field 'p_chosen': missing (AI feedback labels must carry their soft probability)")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise DataError(f"{where}: field 'p_chosen': expected a probability in [0, 1], got {p!r}")
    rid = row.get("pair_id", row.get("id"))
    return {
        "id": str(rid) if rid is not None else where,
        "source": source,
        "where": where,
        "prompt": prompt,
        "chosen": sides["chosen"],
        "rejected": sides["rejected"],
        "p_chosen": float(p),
    }


def load_pairs(path: str | Path, source: str, default_p: float | None) -> list[dict]:
    return [parse_pair(row, f"{path}:{n}", source, default_p) for n, row in read_jsonl(path)]


def load_label_folder(folder: str | Path) -> tuple[list[dict], dict]:
    """AI-feedback pairs of a finished `cai label` folder, and its provenance for the manifest."""
    read_manifest(folder, stage="label")
    f = Path(folder) / "preferences.jsonl"
    if not f.exists():
        raise DataError(f"{folder}: no preferences.jsonl in this label folder")
    return load_pairs(f, "ai", None), {"path": str(Path(folder).resolve()), "sha256": file_sha256(f)}


def mix_weights(n_other: int, n_helpful: int, ratio: float | None) -> tuple[float, float]:
    """Per-pair weights (other, helpful) so helpfulness holds ``ratio`` of the total weight and the mean weight is 1."""
    if ratio is None:
        return 1.0, 1.0
    if not n_other or not n_helpful:
        raise DataError(
            f"--helpful-ratio {ratio} needs both helpfulness and harmlessness pairs "
            f"(have {n_helpful} and {n_other} after screening)"
        )
    total = n_other + n_helpful
    return (1 - ratio) * total / n_other, ratio * total / n_helpful
