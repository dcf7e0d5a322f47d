"""W&B and the terminal: the run's config and a readable name reach W&B and the CSV logger, the API
key is wandb's own answer, a server out of reach leaves the run offline instead of dead, and a
default run prints its table alone on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import wandb
import yaml
from conftest import ROOT, TINY_RUN

from sso_lightning.loggers import flat_config, run_name, wandb_has_key
from sso_lightning.summary import epoch_table, format_table

ONE_ITERATION = ["trainer.max_epochs=1", "data.prompts.num_train=16", "data.prompts.num_eval=8"]
# ... on the bootstrap the other end-to-end tests share
QUICK = [*(o for o in TINY_RUN if o.startswith("model.sft.")), *ONE_ITERATION]


def wandb_run(run_dir: Path) -> dict:
    """The run's offline W&B log as wandb itself reads it back (`wandb leet inspect --summary`)."""
    [log] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    inspect = [sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json", str(log)]
    return json.loads(subprocess.run(inspect, capture_output=True, text=True, check=True).stdout)


def test_run_config_and_name_reach_wandb_and_the_csv_logger(cli, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [*QUICK, "logger=wandb", "variant=sso", "loss.gamma=0.25", "seed=3"]
    result = cli(*overrides, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]

    logged = wandb_run(run_dir)
    assert logged["name"] == "SSO " + " ".join(o for o in overrides if o != "variant=sso")
    expected = {
        "loss.gamma": 0.25,
        "variant": "SSO",
        "seed": 3,
        "model.name_or_path": None,
        "scheme._target_": "sso_lightning.schemes.combined.Combined",
        "trainer.default_root_dir": str(run_dir),  # ${hydra:runtime.output_dir}, resolved
        "overrides": overrides,
    }
    assert {key: logged["config"].get(key) for key in expected} == expected
    hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())
    assert {key: hparams.get(key) for key in expected} == expected


def test_config_keeps_what_only_hydras_runtime_resolves():
    """Composed without a Hydra job (the compose API, as tests do), ${hydra:...} stays as written."""
    from hydra import compose, initialize_config_dir

    from sso_lightning.__main__ import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        flat = flat_config(compose(config_name="config", overrides=["variant=pbaa"]))
    assert flat["trainer.default_root_dir"] == "${hydra:runtime.output_dir}"
    assert flat["logger.wandb.variant"] == flat["variant"] == "PBAA"


def test_run_name_is_the_variant_then_the_overrides():
    assert run_name(None, []) == "default"
    assert run_name("SSO", ["variant=sso", "seed=1", "loss.gamma=0.2"]) == "SSO seed=1 loss.gamma=0.2"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A HOME without W&B credentials, and wandb's process-wide setup read afresh from it."""
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_CONFIG_DIR", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    wandb.teardown()
    yield tmp_path
    wandb.teardown()


def write_netrc(home: Path, host: str, monkeypatch) -> None:
    netrc = home / "netrc"
    netrc.write_text(f"machine {host}\n  login user\n  password {'k' * 40}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))


def test_no_credentials_means_no_key(home):
    assert not wandb_has_key()


def test_key_in_the_environment(home, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_has_key()


def test_key_in_netrc_for_the_server_wandb_uses(home, monkeypatch):
    """wandb's default server (no longer api.wandb.ai), whatever it is."""
    write_netrc(home, urlsplit(wandb.Settings().base_url).hostname, monkeypatch)
    assert wandb_has_key()


def test_key_in_netrc_for_another_server_is_no_key(home, monkeypatch):
    write_netrc(home, "wandb.example.com", monkeypatch)
    assert not wandb_has_key()


@pytest.mark.slow
def test_server_out_of_reach_leaves_the_run_offline_with_one_warning(tmp_path, cache_dir):
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(
        SSO_LIGHTNING_CACHE=str(cache_dir),
        WANDB_API_KEY="0123456789abcdef" * 2 + "01234567",  # 40 characters, as wandb's keys
        WANDB_BASE_URL="http://127.0.0.1:9",  # the discard port: nothing listens there
    )
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "sso_lightning", *QUICK, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    warnings = [line for line in result.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and "offline" in warnings[0], result.stderr[-3000:]


# Lightning's accelerator banner and litlogger tip, W&B's own lines, torch's LeafSpec deprecation
NOISE = ("GPU available", "TPU available", "litlogger", "wandb:", "LeafSpec", "deprecated", "Warning", "WARNING")


def test_default_run_prints_its_table_alone_on_stdout(cli, tmp_path):
    run_dir = tmp_path / "run"
    # a bootstrap of its own, so that its trainer's output is checked too
    bootstrap = ["model.sft.num_examples=200", "model.sft.epochs=1"]
    result = cli(*bootstrap, *ONE_ITERATION, f"hydra.run.dir={run_dir}")  # the default logger: W&B, offline
    assert result.returncode == 0, result.stderr[-3000:]

    table = format_table(epoch_table(run_dir / "metrics.csv"))
    assert result.stdout == f"\n{table}\n\nrun directory: {run_dir}\n"
    assert "Epoch 0:" in result.stderr and "━" not in result.stderr  # Lightning's tqdm bars, none of Rich's
    for noise in NOISE:
        assert noise not in result.stderr, noise
