"""Shared helpers of the evaluation tests: reading outputs, a content-aware fake labeller, a tiny PM."""

import json
import math
from pathlib import Path

from fakes import FakeBackend

TESTS = Path(__file__).resolve().parent
FIXTURE = TESTS / "fixtures" / "hhh" / "task.json"
L = math.log


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def metrics_of(out: Path) -> dict:
    assert (out / "manifest.json").exists()
    return json.loads((out / "metrics.json").read_text())


def correct_responses(task: Path) -> set[str]:
    return {r for e in json.loads(task.read_text())["examples"] for r, s in e["target_scores"].items() if s == 1}


class ContentFake(FakeBackend):
    """A labeller that reads the options of the last question: P(A) = ``good`` when (A) is a
    known-correct response, ``bad`` when (A) is a known-wrong one, 0.5 for unknown texts."""

    def __init__(self, correct: set[str], wrong: set[str], good: float, bad: float, **kw):
        super().__init__(**kw)
        self.correct, self.wrong, self.good, self.bad = correct, wrong, good, bad

    def score_choices(self, prompts, options):
        if not self.logprobs:
            return super().score_choices(prompts, options)
        self.score_calls.append(list(prompts))
        out = []
        for p in prompts:
            i = p.rfind("Options:\n(A) ") + len("Options:\n(A) ")
            a = p[i : p.index("\n(B) ", i)]
            pa = self.good if a in self.correct else self.bad if a in self.wrong else 0.5
            out.append([L(pa), L(1 - pa)])
        return out


def fixture_fake(good=0.8, bad=0.6, **kw):
    ex = json.loads(FIXTURE.read_text())["examples"]
    wrong = {r for e in ex for r, s in e["target_scores"].items() if s == 0}
    return ContentFake(correct_responses(FIXTURE), wrong, good, bad, **kw)
