"""Prompt builders for every stage, and the clean-up of what small models write back.

SL stage (critique → revision), as chat turns. For each few-shot exemplar the conversation
is replayed as turns — the exemplar's request, its initial response, the critique request,
the critique, the revision request, the revision — and then the real conversation follows
in the same shape, ending with the turn the model must write. Each round starts from the
original conversation with the *current* response (the previous round's revision), so the
context does not grow with the number of rounds.

No system prompt is added: the model's chat template applies its own default (SmolLM2's
inserts one) identically at data generation and at finetuning time.
"""

from __future__ import annotations

import re
from typing import Sequence

from .constitution import Constitution, CritiqueRevisionPrinciple, RevisionExample

Messages = list[dict]

#: Strings that mean the model has stopped answering and started writing another turn.
STOP_STRINGS: tuple[str, ...] = (
    "\nHuman:",
    "\nUser:",
    "\nUSER:",
    "<|im_start|>",
    "<|im_end|>",
    "CritiqueRequest:",
    "RevisionRequest:",
    "\nCritique Request:",
    "\nRevision Request:",
)


def _turn(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def exemplar_turns(
    ex: RevisionExample, constitution: Constitution, with_critique: bool = True
) -> Messages:
    """One revision exemplar as the chat turns the model should imitate."""
    p = constitution.critique_principle(ex.principle)
    turns: Messages = [dict(m) for m in ex.messages]
    turns.append(_turn("assistant", ex.response))
    if with_critique:
        turns += [_turn("user", p.critique), _turn("assistant", ex.critique)]
    turns += [_turn("user", p.revision), _turn("assistant", ex.revision)]
    return turns


def critique_messages(
    conversation: Sequence[dict],
    response: str,
    principle: CritiqueRevisionPrinciple,
    exemplars: Sequence[RevisionExample],
    constitution: Constitution,
) -> Messages:
    """Messages whose next assistant turn is the critique of ``response``."""
    msgs: Messages = []
    for ex in exemplars:
        msgs += exemplar_turns(ex, constitution)
    msgs += [dict(m) for m in conversation]
    msgs += [_turn("assistant", response), _turn("user", principle.critique)]
    return msgs


def revision_messages(
    conversation: Sequence[dict],
    response: str,
    principle: CritiqueRevisionPrinciple,
    exemplars: Sequence[RevisionExample],
    constitution: Constitution,
    critique: str | None,
) -> Messages:
    """Messages whose next assistant turn is the revision.

    With ``critique=None`` this is the paper's no-critique ablation: the revision request
    follows the response directly (and the exemplars skip their critiques too).
    """
    if critique is None:
        msgs: Messages = []
        for ex in exemplars:
            msgs += exemplar_turns(ex, constitution, with_critique=False)
        msgs += [dict(m) for m in conversation]
        return msgs + [_turn("assistant", response), _turn("user", principle.revision)]
    msgs = critique_messages(conversation, response, principle, exemplars, constitution)
    return msgs + [_turn("assistant", critique), _turn("user", principle.revision)]


# ----------------------------------------------------------------------------- clean-up
_ROLE_CUT = re.compile(
    r"\n\s*(?:Human|User|USER|Assistant|ASSISTANT|Critique ?Request|Revision ?Request|Critique|Revision)\s*:"
    r"|<\|im_start\|>|<\|im_end\|>",
)
_PREAMBLE = re.compile(
    r"^\s*(?:(?:Sure|Okay|OK|Certainly|Of course)[,!.]?\s*)?"
    r"(?:(?:here(?:'s| is)|below is|this is)\s+(?:a|an|the|my)?\s*"
    r"(?:revised|rewritten|updated|improved|new|edited)\b[^\n:]*:\s*"
    r"|(?:revised response|revised answer|revision|rewritten response|rewrite|response)\s*:\s*)",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^\s*(?:Assistant|AI|Critique)\s*:\s*", re.IGNORECASE)


def clean_text(text: str) -> str:
    """Remove the artifacts small models add around an answer.

    Cuts at the first sign of a new turn (role confusion: "Human:", "User:", a new
    "CritiqueRequest:" ...), strips "Here is the revised response:" style preambles and
    leading role labels, and unwraps a reply that is entirely quoted.
    """
    text = text.replace("\r\n", "\n")
    for _ in range(3):  # preambles and labels can stack ("Revision: Here is ...:")
        new = _LABEL.sub("", _PREAMBLE.sub("", text, count=1), count=1)
        if new == text:
            break
        text = new
    m = _ROLE_CUT.search("\n" + text)
    if m:
        text = ("\n" + text)[: m.start()]
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"' and text.count('"') == 2:
        text = text[1:-1].strip()
    return text
