"""``python -m sso_lightning.faults [--points N] [--seed S] [--out DIR] [overrides]``: kill a run
with SIGKILL at seeded points, resume each, and compare it with the same run never interrupted.

A point is a stage and the n-th time the run gets there, n drawn (seeded) from the times the
uninterrupted run got there. The run is a child process that kills itself with SIGKILL exactly
there; ``python -m sso_lightning resume=<its dir>`` then finishes it. Stages:

* generation: an engine call (training data or evaluation) has returned, nothing kept yet;
* scoring: reference/on-policy scoring of an iteration's data begins;
* training: an optimizer step's batch begins;
* snapshot writing, checkpoint writing: half of the file is written (to its temp file).

Identical means the same snapshots (bytes), the same metrics rows (timings aside: ``perf/*``
and ``*_per_s`` measure the machine) and the same exported policy (bytes). Prints one line per
point and ``<k>/<n> identical``; exit code 0 only when all are.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

STAGES = ("generation", "scoring", "training", "snapshot writing", "checkpoint writing")
TIMING = ("perf/", "_per_s")  # metric names that measure the machine, not the run
DEFAULTS = ("checkpoint.every_n_steps=8",)  # so that kills also land between step checkpoints


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sso_lightning.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=10, help="kill points (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="draws the points (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default: a new temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run here, counting or killing
    args, overrides = parser.parse_known_args()
    if args.child:
        return child(json.loads(args.child), overrides)
    if args.points < 1:
        parser.error(f"--points={args.points}: give at least 1")
    out = args.out or Path(tempfile.mkdtemp(prefix="sso_faults_"))
    overrides = [*(d for d in DEFAULTS if d.split("=")[0] not in " ".join(overrides)), *overrides]
    sys.exit(0 if run_points(out, overrides, args.points, args.seed) else 1)


def run_points(out: Path, overrides: list[str], points: int, seed: int) -> bool:
    reference = out / "reference"
    counts = reference_run(reference, overrides)
    print(f"uninterrupted run: {reference} ({', '.join(f'{s}: {counts.get(s, 0)}' for s in STAGES)})")
    return check_points(reference, counts, out, overrides, points, seed)


def reference_run(run_dir: Path, overrides: list[str]) -> dict[str, int]:
    """The run never interrupted; how often it reached each stage."""
    counts_file = run_dir.with_name(f"{run_dir.name}_counts.json")
    finished = launch(run_dir, overrides, {"count": str(counts_file)})
    if finished.returncode != 0:
        raise SystemExit(f"error: the uninterrupted run failed:\n{finished.stderr[-2000:]}")
    return json.loads(counts_file.read_text())


def check_points(
    reference: Path, counts: dict[str, int], out: Path, overrides: list[str], points: int, seed: int
) -> bool:
    """Kill, resume and compare at each drawn point; prints a line per point and the tally."""
    identical = 0
    for i, (stage, at) in enumerate(draw(counts, points, seed)):
        run_dir = out / f"point_{i}"
        killed = launch(run_dir, overrides, {"stage": stage, "at": at})
        if killed.returncode != -signal.SIGKILL:
            print(f"point {i}: {stage} #{at}: the run was not killed (exit {killed.returncode})")
            continue
        resumed = resume(run_dir)
        if resumed.returncode != 0:
            print(f"point {i}: {stage} #{at}: resume failed (exit {resumed.returncode}): {tail(resumed.stderr)}")
            continue
        diff = differences(reference, run_dir)
        identical += not diff
        print(f"point {i}: {stage} #{at}: {'identical' if not diff else 'DIFFERENT: ' + '; '.join(diff)}")
    print(f"{identical}/{points} identical")
    return identical == points


def draw(counts: dict[str, int], points: int, seed: int) -> list[tuple[str, int]]:
    """Stages in turn, each at a seeded n among the times the uninterrupted run reached it."""
    rng = random.Random(seed)
    stages = [s for s in STAGES if counts.get(s)]
    return [(stage, rng.randint(1, counts[stage])) for stage in (stages[i % len(stages)] for i in range(points))]


def launch(run_dir: Path, overrides: list[str], child_spec: dict) -> subprocess.CompletedProcess:
    args = ["-m", "sso_lightning.faults", "--child", json.dumps(child_spec), f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=child_env())


def resume(run_dir: Path) -> subprocess.CompletedProcess:
    args = ["-m", "sso_lightning", f"resume={run_dir}"]
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=child_env())


def child_env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONHASHSEED": "0"}


def tail(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --- inside the child ---------------------------------------------------------------------------


def child(spec: dict, overrides: list[str]) -> None:
    """Run ``python -m sso_lightning`` here, counting every stage (``count``: write the counts
    there at exit) or killing this process at the ``at``-th time it reaches ``stage``."""
    import atexit

    from sso_lightning import __main__ as cli

    counts: dict[str, int] = {}

    def reached(stage: str) -> bool:
        counts[stage] = counts.get(stage, 0) + 1
        return spec.get("stage") == stage and counts[stage] == spec["at"]

    if "count" in spec:
        atexit.register(lambda: Path(spec["count"]).write_text(json.dumps(counts)))
    install(reached)
    sys.argv = ["sso_lightning", *overrides]
    cli.main()


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(reached) -> None:
    """Wrap the functions each stage runs through."""
    from sso_lightning import atomic, checkpoints, pipeline
    from sso_lightning.engines import hf
    from sso_lightning.module import SSOModule

    generate = hf.Engine.generate

    def generate_then_die(self, *args, **kwargs):
        result = generate(self, *args, **kwargs)
        if reached("generation"):
            die()
        return result

    score = pipeline.score_sequences

    def die_then_score(*args, **kwargs):
        if reached("scoring"):
            die()
        return score(*args, **kwargs)

    training_step = SSOModule.training_step

    def die_then_train(self, *args, **kwargs):
        if reached("training"):
            die()
        return training_step(self, *args, **kwargs)

    stream = atomic.stream_atomic

    def half_then_die(path: Path, write) -> None:
        stage = {".jsonl": "snapshot writing", ".ckpt": "checkpoint writing"}.get(Path(path).suffix)
        if stage is None or not reached(stage):
            return stream(path, write)
        buffer = io.BytesIO()
        write(buffer)
        data, path = buffer.getvalue(), Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.temp_beside(path).open("wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        die()

    hf.Engine.generate = generate_then_die
    pipeline.score_sequences = die_then_score
    SSOModule.training_step = die_then_train
    atomic.stream_atomic = checkpoints.stream_atomic = half_then_die


# --- comparing ------------------------------------------------------------------------------------


def differences(reference: Path, run: Path) -> list[str]:
    """What the resumed run ended with that the uninterrupted one did not."""
    found = []
    for sub in ("data", "policy"):
        names = sorted(p.name for p in (reference / sub).iterdir() if not p.name.startswith("."))
        theirs = (
            sorted(p.name for p in (run / sub).iterdir() if not p.name.startswith(".")) if (run / sub).exists() else []
        )
        if names != theirs:
            found.append(f"{sub}/ holds {theirs}, not {names}")
            continue
        found += [
            f"{sub}/{n} differs" for n in names if (reference / sub / n).read_bytes() != (run / sub / n).read_bytes()
        ]
    mine, theirs = metric_rows(reference / "metrics.csv"), metric_rows(run / "metrics.csv")
    if mine != theirs:
        first = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
        found.append(f"metrics.csv: {len(theirs)} rows, not {len(mine)}; first difference at row {first}")
    return found


def metric_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if not any(t in k for t in TIMING)} for row in csv.DictReader(f)]


if __name__ == "__main__":
    main()
