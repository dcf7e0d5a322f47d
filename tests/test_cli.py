"""The command line: configs compose, bad input stops with one clear line and leaves nothing behind."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY, TINY_RUN

from sso_lightning.errors import ConfigError


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_paper_model_config_composes(cli):
    result = cli("model=llama3_8b", "loss.gamma=0.1", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    assert cfg["model"]["name_or_path"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert cfg["loss"]["gamma"] == 0.1 and cfg["loss"]["alpha"] == 0.66 and cfg["loss"]["base"]["beta"] == 0.1
    assert cfg["loss"]["g"] == 0.1 and cfg["optimizer"]["lr"] == 5e-7
    assert (cfg["generation"]["temperature"], cfg["generation"]["top_p"], cfg["generation"]["max_new_tokens"]) == (
        0.7,
        0.8,
        2048,
    )
    assert "accuracy" in cfg["principles"]["features"] and "safety" in cfg["principles"]["features"]


@pytest.mark.parametrize(
    "model, name", [("qwen2_7b", "Qwen/Qwen2-7B-Instruct"), ("llama3_8b_sft", "princeton-nlp/Llama-3-Base-8B-SFT")]
)
def test_other_paper_models_compose_with_the_paper_settings(cli, model, name):
    result = cli(
        f"model={model}", "model.name_or_path=/my/weights" if model.endswith("sft") else "seed=0", "--cfg", "job"
    )
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    assert cfg["model"]["name_or_path"] == ("/my/weights" if model.endswith("sft") else name)
    assert cfg["optimizer"]["lr"] == 5e-7 and cfg["generation"]["top_p"] == 0.8


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["loss=nope"], ["loss=nope", "valid: pbaa, sso"]),
        (["loss/base=nope"], ["loss/base=nope", "dpo, ipo, simpo"]),
        (["scheme=nope"], ["scheme=nope", "valid: combined"]),
        (["loss.minus=sideways"], ["loss.minus", "paper, naive, off"]),
        (["loss.g=0"], ["loss.g=0", "loss.plus=false loss.minus=off"]),
        (["data.reference=nope"], ["data.reference=nope", "iteration, initial"]),
        (["data.max_length=1"], ["data.max_length must be >= 2 tokens"]),
        (["scheduler=cosine", "scheduler.warmup_ratio=1.5"], ["scheduler.warmup_ratio must be in [0, 1)"]),
        (["generation.backend=nope"], ["generation.backend=nope", "valid: hf, vllm"]),
        (["loss.gamma=abc"], ["loss.gamma=abc is not valid: it must be a number"]),
        (["model.lora.r=two"], ["model.lora.r=two is not valid: it must be an integer"]),
        (["trainer.max_epochs=-1"], ["trainer.max_epochs=-1 is not valid", "integer >= 1"]),
        (["trainer.max_epochs=0"], ["trainer.max_epochs=0 is not valid", "integer >= 1"]),
        (["data.batch_size=0"], ["data.batch_size=0 is not valid", "integer >= 1"]),
        (["optimizer.lr=-1"], ["optimizer.lr=-1 must be a finite number > 0"]),
        (["optimizer.lr=abc"], ["optimizer.lr=abc must be a finite number > 0"]),
        (["seed=abc"], ["seed=abc is not valid: it must be an integer"]),
        (["generation.temperature=nan"], ["temperature and top_p must be finite numbers"]),
        (["data.prompts.num_train=0"], ["data.prompts.num_train=0", "at least 1 training prompt"]),
        (["data.max_prompt_length=0"], ["data.max_prompt_length=0 is not valid", "integer >= 1", "null (no limit)"]),
        (["data.long_prompts=trim"], ["data.long_prompts=trim is not valid (valid: refuse, cut, skip)"]),
        (["judge=reward_model"], ["judge.name_or_path must be set", "judge.name_or_path=<value>"]),
        (["+ckpt_path=/some/run/last.ckpt"], ["ckpt_path is not an option of this program", "resume"]),
        (["+resume=/some/run"], ["resume=/some/run: /some/run/.hydra/config.yaml does not exist"]),
        (["loss.gama=0.1"], ["loss.gama is not an option of loss (did you mean loss.gamma?)"]),
        (["loss.base.bta=0.1"], ["loss.base.bta is not an option of loss.base (did you mean loss.base.beta?)"]),
        (["loss.bse.beta=0.1"], ["loss.bse is not an option of loss (did you mean loss.base?)"]),
        (["sedd=1"], ["sedd is not an option of this program (did you mean seed?)"]),
        (["loss.zzz=1"], ["loss.zzz is not an option of loss (options: alpha, base,", "+loss.zzz=<value> adds it"]),
        (
            ["generation.backend=vllm", "generation.engines.vllm.sync=nope"],
            ["generation.engines.vllm.sync=nope", "valid: direct, disk"],
        ),
        (
            ["generation.backend=vllm", "generation.engines.vllm.kv_cache_gib=0"],
            ["generation.engines.vllm.kv_cache_gib must be > 0 or null"],
        ),
        (
            ["model=hf", "model.name_or_path=/no/such/model"],
            ["model.name_or_path=/no/such/model: no such directory"],
        ),
        (
            ["model=hf", "model.name_or_path=/no/such/model", "model.attn_implementation=flash_attention_2"],
            ["model.attn_implementation=flash_attention_2", "flash-attn", "sdpa"],
        ),
    ],
)
def test_bad_options_stop_with_one_line(cli, tmp_path, overrides, fragments):
    run_dir = tmp_path / "run"
    other_model = any(o.startswith("model=") for o in overrides)
    base = [o for o in TINY if not (other_model and o.startswith("model."))]
    result = cli(*base, *overrides, f"hydra.run.dir={run_dir}")
    assert_one_line_error(result, *fragments)
    assert not (run_dir / "data").exists() and not (run_dir / "policy").exists()


def test_a_mistyped_key_in_a_sweep_stops_before_the_sweep_writes_anything(cli, tmp_path):
    sweep_dir = tmp_path / "sweep"
    for sweep in (["loss.gama=0.1,0.2"], ["seed=0,1", "loss.gama=0.1"], ["+sweep=gamma", "loss.base.bta=0.2"]):
        result = cli("-m", *TINY, *sweep, f"hydra.sweep.dir={sweep_dir}")
        assert_one_line_error(result, "is not an option of loss", "(did you mean loss.")
        assert not sweep_dir.exists()
    # a key that only one group choice lacks: scheduler=none has no warmup_ratio
    result = cli("-m", *TINY, "scheduler=cosine,none", "scheduler.warmup_ratio=0.2", f"hydra.sweep.dir={sweep_dir}")
    assert_one_line_error(result, "scheduler.warmup_ratio is not an option of scheduler (scheduler has no options")
    assert not sweep_dir.exists()


def test_hydras_own_options_still_work_beside_the_key_check(cli):
    appended = cli("+loss.gama=0.1", "--cfg", "job")  # + adds a key on purpose
    assert appended.returncode == 0, appended.stderr[-2000:]
    assert yaml.safe_load(appended.stdout)["loss"]["gama"] == 0.1
    shown = cli("--cfg", "job", "loss.gama=0.1")
    assert_one_line_error(shown, "loss.gama is not an option of loss")
    assert_one_line_error(cli("--help", "loss.gama=0.1"), "loss.gama is not an option of loss")
    unswept = cli("loss.gamma=0.1,0.2")  # a sweep without -m: Hydra's own advice to add --multirun
    assert unswept.returncode != 0 and "--multirun" in unswept.stderr


def test_a_sweep_configs_own_mistyped_parameter_is_found(tmp_path):
    """hydra.sweeper.params of a sweep file are checked as its jobs will compose them."""
    import shutil

    from sso_lightning.__main__ import CONFIG_DIR
    from sso_lightning.overrides import check_key_overrides

    conf = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, conf)
    (conf / "sweep" / "typo.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      loss.gamma: 0,0.1\n      loss.alfa: 0.5\n"
    )
    check_key_overrides(["-m", "+sweep=gamma"], str(conf))  # the shipped sweep is fine
    with pytest.raises(ConfigError, match=r"^loss.alfa is not an option of loss \(did you mean loss.alpha\?\)$"):
        check_key_overrides(["-m", "+sweep=typo"], str(conf))
    check_key_overrides(["+sweep=typo"], str(conf))  # without -m the params are not swept


def test_bad_prompt_files_stop_with_one_line(cli, tmp_path):
    missing = cli(
        *TINY_RUN, "data=jsonl", f"data.prompts.path={tmp_path / 'none.jsonl'}", f"hydra.run.dir={tmp_path / 'a'}"
    )
    assert_one_line_error(missing, "none.jsonl", "not found")

    malformed = tmp_path / "bad.jsonl"
    malformed.write_text('{"prompt": "sort 1 2"}\n{"prompt": \n')
    result = cli(*TINY_RUN, "data=jsonl", f"data.prompts.path={malformed}", f"hydra.run.dir={tmp_path / 'b'}")
    assert_one_line_error(result, f"{malformed}:2", "not valid JSON")

    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text("".join(json.dumps({"question": f"sort {i} 1"}) + "\n" for i in range(10)))
    result = cli(*TINY_RUN, "data=jsonl", f"data.prompts.path={no_field}", f"hydra.run.dir={tmp_path / 'c'}")
    assert_one_line_error(result, f"{no_field}:1", "'prompt'", "question", "data.prompts.field")
    for name in "abc":
        assert not (tmp_path / name / "data").exists()


def test_prompt_file_with_configured_field_trains(cli, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"sort {i % 10} 3 1 {9 - i % 10}"}) + "\n" for i in range(40)))
    result = cli(
        *TINY_RUN,
        "trainer.max_epochs=1",
        "data=jsonl",
        f"data.prompts.path={prompts}",
        "data.prompts.field=question",
        "data.prompts.num_eval=8",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = (tmp_path / "run" / "data" / "epoch_0.jsonl").read_text().splitlines()
    assert {json.loads(r)["instruction"] for r in records} <= {
        json.loads(p)["question"] for p in prompts.read_text().splitlines()[:32]
    }


def test_a_long_prompt_is_refused_in_one_line_or_cut_and_counted(cli, tmp_path):
    """Line 5 (training) and line 40 (held out) are longer than data.max_prompt_length=40."""
    queries = [f"sort {i % 10} 3 1 {9 - i % 10}" for i in range(40)]
    queries[4] = "sort " + " ".join(str(i % 10) for i in range(5000))
    queries[39] = "sort " + " ".join(str(i % 10) for i in range(60))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in queries))
    args = [*TINY_RUN, "trainer.max_epochs=1", "data=jsonl", f"data.prompts.path={prompts}", "data.prompts.num_eval=8"]
    refused = cli(*args, "data.max_prompt_length=40", f"hydra.run.dir={tmp_path / 'refused'}")
    assert_one_line_error(
        refused,
        f"{prompts}:5: a prompt of 5004 tokens, longer than data.max_prompt_length=40 (2 of 40 prompts are); "
        "set data.long_prompts=cut or skip, or raise data.max_prompt_length",
    )
    assert not (tmp_path / "refused" / "data").exists()

    run_dir = tmp_path / "cut"
    result = cli(*args, "data.max_prompt_length=40", "data.long_prompts=cut", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    notes = [line for line in result.stderr.splitlines() if "data.max_prompt_length" in line]
    assert len(notes) == 1 and notes[0].startswith("note: 2 of 40 prompts (1 training, 1 held-out) are longer than")
    with (run_dir / "metrics.csv").open() as f:
        cut = [row["data/prompts_cut"] for row in csv.DictReader(f) if row["data/prompts_cut"]]
    assert cut == ["2.0"]  # logged with the iteration's data metrics
    trained = {json.loads(r)["instruction"] for r in (run_dir / "data" / "epoch_0.jsonl").read_text().splitlines()}
    assert queries[4] not in trained and all(len(q.split()) <= 40 - 3 for q in trained)  # 3: the template's tokens
    cut_query = [q for q in trained if q.startswith("sort 0 1 2 3 4 5 6 7 8 9")]  # unless its example was degenerate
    assert all(queries[4].startswith(q) and len(q.split()) == 40 - 3 for q in cut_query)


def test_offline_file_missing_what_the_loss_needs(cli, tmp_path):
    authors = tmp_path / "authors.jsonl"
    authors.write_text(
        json.dumps(
            {
                "instruction": "sort 2 1",
                "p_system": "give only the digits",
                "n_system": "talk a lot before the digits",
                "chosen": "1 2",
                "rejected": "2 1",
            }
        )
        + "\n"
    )
    result = cli(*TINY, f"data.offline={authors}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, f"{authors}:1", "raw", "loss.minus")
    assert not (tmp_path / "run" / "data").exists()


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_existing_run_directory_is_never_overwritten(cli, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "data" / "epoch_0.jsonl").write_text("precious\n")
    result = cli(*TINY, f"hydra.run.dir={run_dir}")
    assert_one_line_error(result, "epoch_0.jsonl", "already exists")
    assert files(run_dir) == {"data/epoch_0.jsonl": b"precious\n"}


def test_a_rerun_into_a_finished_run_touches_nothing_in_it(cli, tmp_path):
    """Hydra writes .hydra/ and the log before the run starts; the refusal comes before that."""
    finished = tmp_path / "finished"
    for name in (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "__main__.log", "metrics.csv"):
        (finished / name).parent.mkdir(parents=True, exist_ok=True)
        (finished / name).write_text(f"the earlier run's {name}\n")
    (finished / "policy").mkdir()
    (finished / "policy" / "config.json").write_text("{}\n")
    early = tmp_path / "early"  # a run stopped before it wrote anything of its own
    (early / ".hydra").mkdir(parents=True)
    (early / ".hydra" / "config.yaml").write_text("seed: 0\n")
    for run_dir in (finished, early):
        before = files(run_dir)
        result = cli(*TINY, "seed=1", f"hydra.run.dir={run_dir}")
        assert_one_line_error(
            result, f"{run_dir / '.hydra' / 'config.yaml'} already exists", "choose a new hydra.run.dir"
        )
        assert files(run_dir) == before
    # a sweep into a directory that holds an earlier sweep's jobs, or its multirun.yaml
    sweep = tmp_path / "sweep"
    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "0" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    result = cli("-m", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}")
    assert_one_line_error(result, f"{sweep / '0' / '.hydra' / 'config.yaml'} already exists", "hydra.sweep.dir")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    before = files(sweep)
    result = cli("-m", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}")
    assert_one_line_error(result, f"{sweep / 'multirun.yaml'} already exists", "choose a new hydra.sweep.dir")
    assert files(sweep) == before


def test_a_new_empty_run_directory_is_fine(cli, tmp_path):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    result = cli(*TINY, "trainer.max_epochs=0", f"hydra.run.dir={run_dir}")  # stops at its own check, later
    assert_one_line_error(result, "trainer.max_epochs=0 is not valid")
    assert (run_dir / ".hydra" / "config.yaml").exists()


def test_configs_ship_inside_a_non_editable_install(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)], check=True
    )
    wheel = next(tmp_path.glob("sso_lightning-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for config in ("config.yaml", "loss/sso.yaml", "loss/base/dpo.yaml", "model/toy.yaml", "principles/paper.yaml"):
        assert f"sso_lightning/conf/{config}" in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True
    )
    result = subprocess.run(
        [sys.executable, "-m", "sso_lightning", "loss=pbaa", "--cfg", "job"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load(result.stdout)["loss"]["g"] == 0.0


def test_slurm_launcher_config_composes(cli):
    result = cli("hydra/launcher=slurm", "hydra.launcher.nodes=2", "trainer.num_nodes=2", "--cfg", "hydra")
    assert result.returncode == 0, result.stderr[-2000:]
    launcher = yaml.safe_load(result.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["nodes"] == 2
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"]
    plugin_own = cli("hydra/launcher=submitit_local", "--cfg", "hydra")  # the plugin's own options stay valid
    assert plugin_own.returncode == 0, plugin_own.stderr[-2000:]


def help_groups(text: str) -> list[str]:
    """The ``group: options`` lines of a ``--help`` text's configuration groups section."""
    section = text.split("== Configuration groups ==")[1].split("==")[0]
    return [line for line in section.splitlines() if re.match(r"[\w/]+: ", line)]


def test_help_says_what_this_is_and_how_to_use_it(cli):
    result = cli("--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "powered by Hydra" not in result.stdout and "Self-Steering Optimization" in result.stdout.splitlines()[0]
    for command in (
        "python -m sso_lightning ",
        "python -m sso_lightning model=llama3_8b loss.gamma=0.1",
        "python -m sso_lightning -m +sweep=ablation",
        "python -m sso_lightning.report",
        "README.md",
    ):
        assert command in result.stdout, command
    # the groups Hydra lists itself, less sweep/wandb: W&B sweep files, not configs
    hydras_own = cli("--help", "hydra/help=default")
    assert hydras_own.returncode == 0, hydras_own.stderr[-2000:]
    assert "sweep/wandb" not in result.stdout
    assert help_groups(result.stdout) == [g for g in help_groups(hydras_own.stdout) if not g.startswith("sweep/wandb:")]


def test_runs_started_in_the_same_second_get_their_own_directories(cache_dir, tmp_path):
    """The default run directory is timed to the microsecond; both runs finish, each in its own."""
    env = {**os.environ, "SSO_LIGHTNING_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
    args = [sys.executable, "-m", "sso_lightning", *TINY_RUN, "trainer.max_epochs=1"]
    args += ["data.prompts.num_train=8", "data.prompts.num_eval=0"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    runs = [subprocess.Popen(args, cwd=tmp_path, env=env, **pipes) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    results = [(run.returncode, *output) for run, output in zip(runs, outputs)]
    assert all(code == 0 for code, _, _ in results), results[0][2][-2000:]
    directories = sorted(tmp_path.glob("outputs/*/*"))
    assert len(directories) == 2 and all((d / "policy" / "config.json").exists() for d in directories)
    # no held-out prompts: the run says that eval/quality is not measured
    assert all("eval/quality is not measured" in stderr for _, _, stderr in results)


def test_a_run_directory_it_cannot_write_in_stops_before_any_work(monkeypatch, tmp_path):
    """(As root every directory is writable, so the permission is faked.)"""
    from sso_lightning import train

    (tmp_path / "data").mkdir()
    monkeypatch.setattr(train.os, "access", lambda path, mode: Path(path) != tmp_path / "data")
    with pytest.raises(ConfigError, match=r"/data is not writable; choose another hydra.run.dir"):
        train.check_writable(tmp_path)
