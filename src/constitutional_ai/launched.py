"""``python -m constitutional_ai.launched JOB.json``: one training step of ``cai run`` on several processes.

``cai run`` with a ``launch:`` recipe key starts each training step as
``accelerate launch --config_file CONFIG [ARGS] -m constitutional_ai.launched JOB.json``; the job
file holds the stage's name and the settings the recipe resolved for it, so every process builds
exactly the config that ``cai run`` validated before launching.
"""

from __future__ import annotations

import json
import sys

from .cli import guarded, quiet_libraries


def run(job_path: str) -> int:
    """Build the step's config from the job file and run its stage (on this process)."""
    from .config import from_mapping
    from .stages import BY_NAME

    job = json.loads(open(job_path, encoding="utf-8").read())
    stage = BY_NAME[job["stage"]]
    mod = stage.load()
    mod.main(from_mapping(getattr(mod, stage.config), job["values"], job["where"]))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m constitutional_ai.launched JOB.json")
    quiet_libraries()
    sys.exit(guarded("cai run (launched step)", lambda: run(sys.argv[1])))
