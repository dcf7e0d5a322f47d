"""Checkpoints, resume, signals: a run killed anywhere, or stopped by a signal, resumes to the
same snapshots, metrics and policy as the run never interrupted (``sso_lightning.faults``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY

from sso_lightning.data.resumable import RecordedShuffle, ResumableLoader
from sso_lightning.faults import check_points, differences, reference_run, resume

EVERY = "checkpoint.every_n_steps=2"
RUN = [*TINY, EVERY]


def loader(epoch: int, trained=lambda: 0) -> ResumableLoader:
    data = list(range(40))
    return ResumableLoader(data, batch_size=4, sampler=RecordedShuffle(data), epoch=epoch, trained=trained)


def test_a_loader_resumed_mid_epoch_gives_the_rest_of_the_same_order():
    """The order is drawn at the first fetch, after other draws from torch's generator (the run's
    first evaluation comes between making the iterator and fetching): the resumed loader draws it
    from the generator as it was then, and leaves the generator as the checkpoint restored it."""
    torch.manual_seed(3)
    first = loader(epoch=1, trained=lambda: 3)
    batches = iter(first)
    torch.rand(5)  # an evaluation between the iterator and its first batch
    done = [next(batches).tolist() for _ in range(3)]
    state, rng_then = first.state_dict(), torch.get_rng_state()
    rest = [b.tolist() for b in batches]
    assert len(done + rest) == 10 and sorted(sum(done + rest, [])) == list(range(40))

    torch.manual_seed(99)  # another process: the checkpoint restores the generator, then the loader resumes
    torch.set_rng_state(rng_then)
    expected_next_draw = torch.rand(3)
    torch.set_rng_state(rng_then)
    resumed = loader(epoch=1)
    resumed.load_state_dict(state)
    assert [b.tolist() for b in resumed] == rest
    assert torch.equal(torch.rand(3), expected_next_draw)


def test_a_loader_state_from_another_epoch_or_a_finished_one_starts_afresh():
    torch.manual_seed(0)
    state = {"epoch": 1, "rng": torch.get_rng_state(), "sampler_epoch": None, "trained": 3}
    other = loader(epoch=2)
    other.load_state_dict(state)
    assert other.resume_at is None
    finished = loader(epoch=1)
    finished.load_state_dict({**state, "trained": 10})
    assert finished.resume_at is None


def test_a_ddp_loader_resumed_mid_epoch_gives_the_rest_of_that_epochs_order():
    """Under DDP the order comes from the seed and the epoch; Lightning sets the epoch only after
    the resumed loader has skipped, so the state carries it."""
    from torch.utils.data import DistributedSampler

    data = list(range(40))

    def ddp_loader(trained=lambda: 0) -> ResumableLoader:
        sampler = DistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=0)
        return ResumableLoader(data, batch_size=4, sampler=sampler, epoch=3, trained=trained)

    first = ddp_loader(trained=lambda: 2)
    first.sampler.set_epoch(3)
    batches = iter(first)
    [next(batches) for _ in range(2)]
    state, rest = first.state_dict(), [b.tolist() for b in batches]
    resumed = ddp_loader()  # a new process: its sampler is at epoch 0 until Lightning sets it
    resumed.load_state_dict(state)
    assert [b.tolist() for b in resumed] == rest and len(rest) == 3


def test_the_recorded_shuffle_draws_what_dataloaders_own_shuffle_draws():
    """Resumable or not, a run trains on the same batches as before (the README's table)."""
    data = list(range(40))
    torch.manual_seed(5)
    plain = [b.tolist() for b in torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)]
    torch.manual_seed(5)
    assert [b.tolist() for b in loader(epoch=0)] == plain


def cli_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "SSO_LIGHTNING_CACHE": str(cache_dir), "WANDB_MODE": "offline", **extra}


@pytest.fixture(scope="module")
def uninterrupted(cache_dir, tmp_path_factory) -> Iterator[tuple[Path, dict[str, int]]]:
    """The reference: the run never interrupted (every checkpoint kept), and how often it
    reached each stage a fault can hit."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSO_LIGHTNING_CACHE", str(cache_dir))  # this module's runs share the bootstrapped toy model
        yield run_dir, reference_run(run_dir, [*RUN, "checkpoint.keep=100"])


@pytest.fixture
def reference(uninterrupted) -> Path:
    return uninterrupted[0]


@pytest.mark.slow
def test_a_run_killed_at_seeded_points_resumes_identical(uninterrupted, tmp_path, monkeypatch, capsys):
    """The shipped fault test, reduced: one SIGKILL in each stage (generation, scoring,
    training, snapshot writing, checkpoint writing), each resumed and compared."""
    monkeypatch.chdir(ROOT)
    reference, counts = uninterrupted
    assert check_points(reference, counts, tmp_path, RUN, points=5, seed=1), capsys.readouterr().out
    out = capsys.readouterr().out
    assert "5/5 identical" in out
    for stage in ("generation", "scoring", "training", "snapshot writing", "checkpoint writing"):
        assert f": {stage} #" in out


@pytest.mark.slow
def test_a_run_resumed_from_inside_an_epoch_ends_identical(reference, tmp_path):
    """A checkpoint inside each epoch as the last one: resumed, the run ends with the same
    snapshots, metrics and policy (the order of epoch 0's batches is drawn after its first
    evaluation; Lightning counts the logging step of a mid-epoch checkpoint once more)."""
    saved = sorted((reference / "checkpoints").glob("step-*.ckpt"))
    assert [p.name for p in saved] == [f"step-{n:08d}.ckpt" for n in (2, 3, 4, 6)]  # 3 steps per epoch
    for checkpoint in saved[0], saved[2]:  # inside epochs 0 and 1 (the fault test resumes from their ends)
        run_dir = tmp_path / checkpoint.stem
        shutil.copytree(reference, run_dir, ignore=shutil.ignore_patterns("policy"))
        for later in (run_dir / "checkpoints").glob("step-*.ckpt"):
            if later.name > checkpoint.name:
                later.unlink()
        resumed = resume(run_dir)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert differences(reference, run_dir) == [], checkpoint.name


def start(run_dir: Path, env: dict[str, str], args: list[str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sso_lightning", *(args or [f"hydra.run.dir={run_dir}", *RUN])],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_while_training(run_dir: Path, process: subprocess.Popen, stop: signal.Signals) -> str:
    """Send ``stop`` once training is under way; the run exits with 128 + its number and one error line."""
    once_training(run_dir, process)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + stop, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
    return line


def once_training(run_dir: Path, process: subprocess.Popen) -> None:
    """Wait until the first step checkpoint exists: generation is over and training under way."""
    deadline = time.monotonic() + 300
    while not list((run_dir / "checkpoints").glob("step-*.ckpt")):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.slow
def test_one_job_of_a_sweep_resumes_on_its_own_with_its_wandb_run(cache_dir, tmp_path, reference):
    """A sweep stopped by SIGTERM: its job is marked FAILED with the line; ``resume=<job dir>`` ends
    it as the uninterrupted run ended, drops the marker, and W&B (offline here) goes on with the
    same run id."""
    sweep_dir = tmp_path / "sweep"
    with_wandb = [o for o in RUN if o != "logger=csv"]  # the default logger: CSV and W&B
    job = sweep_dir / "0"
    process = start(job, cli_env(cache_dir), ["-m", f"hydra.sweep.dir={sweep_dir}", *with_wandb, "seed=0"])
    line = stop_while_training(job, process, signal.SIGTERM)
    assert line.startswith("error: stopped by SIGTERM after optimizer step ")
    step = int(line.split("after optimizer step ")[1].split(":")[0])
    assert f": checkpoint checkpoints/step-{step:08d}.ckpt; continue with: python -m sso_lightning resume={job}" in line
    assert (job / "checkpoints" / f"step-{step:08d}.ckpt").exists()  # saved where it stopped
    assert not (job / "policy").exists()
    assert (job / "FAILED").read_text() == line.removeprefix("error: ") + "\n"

    resumed = resume(job)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"note: resuming {job} from checkpoints/step-{step:08d}.ckpt" in resumed.stderr
    assert not (job / "FAILED").exists()
    assert differences(reference, job) == []
    kept = sorted(p.name for p in (job / "checkpoints").iterdir())  # checkpoint.keep=2, no temp files
    assert len(kept) == 2 and kept[-1] == "step-00000006.ckpt" and kept[0].startswith("step-0000000"), kept
    wandb_runs = sorted((job / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in wandb_runs}) == 1, wandb_runs


@pytest.mark.slow
def test_slurms_warning_signal_requeues_the_job_which_resumes_by_itself(cache_dir, tmp_path, reference):
    """SIGUSR1 under SLURM: checkpoint, ``scontrol requeue <job>``, exit 138; the requeued job
    (same command, SLURM_RESTART_COUNT=1) goes on from the checkpoint. scontrol is a stand-in
    that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    run_dir = tmp_path / "run"
    process = start(run_dir, cli_env(cache_dir, **slurm))
    line = stop_while_training(run_dir, process, signal.SIGUSR1)
    assert line.endswith("; SLURM job 4242 is requeued and resumes from it")
    assert calls.read_text() == "requeue 4242\n"

    requeued = start(run_dir, cli_env(cache_dir, **slurm, SLURM_RESTART_COUNT="1"))
    _, stderr = requeued.communicate(timeout=600)
    assert requeued.returncode == 0, stderr[-3000:]
    assert f"note: resuming {run_dir} from checkpoints/step-" in stderr
    assert differences(reference, run_dir) == []


@pytest.mark.slow
def test_resume_refuses_what_it_cannot_honour(cli, tmp_path, reference):
    cases = [
        ([f"resume={tmp_path / 'nowhere'}"], "/.hydra/config.yaml does not exist; name the directory of a run"),
        ([f"resume={reference}"], "has finished (its policy/ is exported); there is nothing to resume"),
        (
            [f"resume={reference / 'checkpoints' / 'step-00000006.ckpt'}"],
            f"step-00000006.ckpt is a file; name the run's directory (resume={reference})",
        ),
        ([f"resume={reference}", "loss.gamma=0.5"], "where loss.gamma=0.1; loss.gamma=0.5 would change it"),
        (["-m", f"resume={reference}"], "resume=<run dir> continues one run"),
    ]
    for args, fragment in cases:
        done = cli(*args)
        assert done.returncode == 2, (args, done.stderr[-2000:])
        assert fragment in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_checkpoint_holds_lightnings_state_and_ours(reference):
    last = reference / "checkpoints" / "step-00000006.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 6
    assert {"optimizer_states", "state_dict", "loops", "callbacks"} <= set(checkpoint)
    assert {"Iterations", "RunState", "PolicyQuality"} <= set(checkpoint["callbacks"])
    state = checkpoint["callbacks"]["RunState"]
    assert state["snapshots"] == ["epoch_0.jsonl", "epoch_1.jsonl"]
    assert state["metrics_csv"] == (reference / "metrics.csv").read_text()  # the whole file: nothing after it


def test_the_first_ctrl_c_stops_like_sigterm_and_the_second_at_once(monkeypatch, capsys):
    """Ctrl-C and SIGUSR1 go through Lightning's SIGTERM handling (SIGTERM itself: the sweep test)."""
    from sso_lightning.preemption import Preemption

    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, signum: sent.append((pid, signum)))
    stops = Preemption()
    stops.handle(signal.SIGINT, None)
    assert stops.received == signal.SIGINT and sent == [(os.getpid(), signal.SIGTERM)]
    assert (
        "SIGINT: stopping at the next optimizer step with a checkpoint (Ctrl-C again: at once)"
        in capsys.readouterr().err
    )
    with pytest.raises(KeyboardInterrupt):
        stops.handle(signal.SIGINT, None)
    stops.handle(signal.SIGTERM, None)  # a later signal does not change what stopped the run
    assert stops.received == signal.SIGINT and len(sent) == 1


def test_the_slurm_launcher_asks_for_the_warning_signal_the_run_handles():
    """submitit's sbatch file asks for SIGUSR1 (its own default is SIGUSR2, which stops nothing here)."""
    from hydra import compose, initialize_config_dir
    from submitit.slurm.slurm import _make_sbatch_string

    from sso_lightning.__main__ import CONFIG_DIR
    from sso_lightning.preemption import STOP_SIGNALS

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    parameters = dict(cfg.hydra.launcher.additional_parameters)
    sbatch = _make_sbatch_string(command="python -m sso_lightning", folder="/tmp/x", additional_parameters=parameters)
    signal_line = [line for line in sbatch.splitlines() if line.startswith("#SBATCH --signal=")]
    assert signal_line == ["#SBATCH --signal=USR1@300"]
    assert signal.SIGUSR1 in STOP_SIGNALS


def test_a_signal_saves_a_checkpoint_between_steps_but_not_inside_an_accumulation():
    """(End to end a signal mostly lands while an epoch's end is saving anyway: this pins the rule.)"""
    from types import SimpleNamespace

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from sso_lightning.checkpoints import PhaseCheckpoints

    saved = []
    callback = PhaseCheckpoints(SimpleNamespace(save=saved.append))

    def trainer(completed: int, accumulate: int):
        progress = SimpleNamespace(current=SimpleNamespace(completed=completed))
        loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))
        return SimpleNamespace(fit_loop=loop, accumulate_grad_batches=accumulate)

    between_steps, inside_accumulation = trainer(4, 2), trainer(3, 2)
    callback.on_exception(between_steps, None, SIGTERMException())
    callback.on_exception(inside_accumulation, None, SIGTERMException())
    callback.on_exception(between_steps, None, RuntimeError("a crash: its state is not to be trusted"))
    assert saved == [between_steps]
