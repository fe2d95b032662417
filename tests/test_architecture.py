"""The shape the code keeps: stages never import each other, and one table names every stage."""

import ast
import dataclasses
from pathlib import Path

import pytest

from constitutional_ai import cli, pipeline, report
from constitutional_ai.stages import BY_NAME, STAGES

STAGES_DIR = Path(__file__).resolve().parents[1] / "src" / "constitutional_ai" / "stages"
STAGE_MODULES = {p.stem for p in STAGES_DIR.glob("*.py") if p.stem != "__init__"}


def imported_stage_modules(path: Path) -> set[str]:
    """Stage modules that ``path`` imports, however it spells the import."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                found |= {node.module} if node.module else {a.name for a in node.names}
            elif node.level == 0 and (node.module or "").startswith("constitutional_ai.stages"):
                rest = node.module.split(".")[2:]
                found |= {rest[0]} if rest else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("constitutional_ai.stages.")}
    return found & STAGE_MODULES


@pytest.mark.parametrize("module", sorted(STAGE_MODULES))
def test_no_stage_imports_another_stage(module):
    assert imported_stage_modules(STAGES_DIR / f"{module}.py") == set()


def test_the_check_sees_every_spelling(tmp_path):
    f = tmp_path / "x.py"
    f.write_text(
        "from .label import a\nfrom . import revise\nfrom constitutional_ai.stages.train_pm import b\n"
        "import constitutional_ai.stages.eval_hhh\nfrom ..feedback import c\n"
    )
    assert imported_stage_modules(f) == {"label", "revise", "train_pm", "eval_hhh"}


def test_one_table_names_every_stage_for_cli_pipeline_and_report():
    names = [s.name for s in STAGES]
    assert list(pipeline.ORDER) == names and report.ORDER == names
    for s in STAGES:
        mod = s.load()
        assert callable(mod.main) and dataclasses.is_dataclass(getattr(mod, s.config))
        assert f'"{s.name}"' in (STAGES_DIR / f"{s.module}.py").read_text()  # the manifest's stage name
        assert cli.COMMANDS[s.command][1] == s.name
    assert BY_NAME["train-sft"].command == "train sft" and BY_NAME["eval-hhh"].command == "eval hhh"
    assert BY_NAME["sample-pairs"].command == "sample-pairs"
