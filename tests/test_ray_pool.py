"""ray: specs — stages sharded over Ray workers write exactly the single-process records."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from constitutional_ai.models import BackendError
from constitutional_ai.models.ray_pool import parse_specs
from constitutional_ai.stages import sample_pairs

ray = pytest.importorskip("ray")
TESTS = Path(__file__).resolve().parent


def test_spec_grammar():
    assert parse_specs("ray:2*default") == ["default", "default"]
    assert parse_specs("ray:openai:m@http://a:1/v1,openai:m@http://b:1/v1") == [
        "openai:m@http://a:1/v1",
        "openai:m@http://b:1/v1",
    ]
    for bad in ("ray:", "ray:0*default", "ray:2*ray:default"):
        with pytest.raises(BackendError):
            parse_specs(bad)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question number {i}?"}) + "\n" for i in range(n)))
    return path


def rows(folder: Path) -> list[tuple]:
    recs = [json.loads(x) for x in (folder / "pairs.jsonl").read_text().splitlines()]
    return sorted((r["key"], tuple(r["responses"]), tuple(r["seeds"])) for r in recs)


def test_sharded_run_writes_the_single_process_records(tmp_path, tiny_model, cluster):
    p = prompts(tmp_path / "p.jsonl", 6)
    kw = {"prompts": str(p), "max_new_tokens": 8, "batch_size": 6}
    one = sample_pairs.main(sample_pairs.SamplePairsConfig(model=tiny_model, out=str(tmp_path / "one"), **kw))
    two = sample_pairs.main(
        sample_pairs.SamplePairsConfig(model=f"ray:2*{tiny_model}", out=str(tmp_path / "two"), **kw)
    )
    assert rows(one) == rows(two) and len(rows(two)) == 6
    assert json.loads((two / "pairs.jsonl").read_text().splitlines()[0])["model"].startswith("ray:2x")


SCRIPT = """
from constitutional_ai.stages import sample_pairs
sample_pairs.main(sample_pairs.SamplePairsConfig(model={model!r}, prompts={prompts!r}, out={out!r},
                                                 max_new_tokens=8, batch_size=4))
"""


def test_killed_sharded_run_resumes_with_nothing_duplicated(tmp_path, tiny_model):
    p = prompts(tmp_path / "p.jsonl", 24)
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent / "src"), "RAY_ADDRESS": ""}
    out = tmp_path / "victim"

    def cmd(model, folder):
        return [sys.executable, "-c", SCRIPT.format(model=model, prompts=str(p), out=str(folder))]

    subprocess.run(cmd(tiny_model, tmp_path / "ref"), check=True, env=env, capture_output=True, timeout=600)
    # the run and its local Ray cluster are one process group: kill all of it at once
    proc = subprocess.Popen(
        cmd(f"ray:2*{tiny_model}", out),
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = out / "pairs.jsonl"
    deadline = time.time() + 900
    while (
        time.time() < deadline
        and proc.poll() is None
        and not (target.exists() and len(target.read_text().splitlines()) >= 2)
    ):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists(), "the sharded run wrote no record before the deadline"
    done_before = len(target.read_text().splitlines())
    assert 2 <= done_before < 24 and not (out / "manifest.json").exists()
    r = subprocess.run(cmd(f"ray:2*{tiny_model}", out), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert rows(out) == rows(tmp_path / "ref")  # nothing lost, nothing duplicated, same texts
