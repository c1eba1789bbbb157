"""Config composition, overrides, and one-line errors for misspelt keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, run_podium

from podium.config import ConfigError, check_overrides, compose_config


def test_train_config_composes_every_group():
    cfg = compose_config("train")
    for group in ("competition", "model", "loss", "optimizer", "scheduler", "augment", "trainer"):
        assert group in cfg, group
    for key in ("fold", "seed", "experiment_name", "resume"):
        assert key in cfg
    assert cfg.competition.name == "demo_shapes"
    assert cfg.trainer.batch_size > 0


def test_paths_resolve_from_project_root_not_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("train")
    assert Path(cfg.paths.data_dir) == ROOT / "data"
    assert Path(cfg.competition.data_dir) == ROOT / "data" / "demo_shapes"


def test_overrides_reach_nested_keys_and_groups():
    cfg = compose_config(
        "train", ["model.encoder=resnet18", "loss=dice", "trainer.max_epochs=3", "fold=2"]
    )
    assert cfg.model.encoder == "resnet18"
    assert cfg.loss.name == "dice" and dict(cfg.loss.weights) == {"dice": 1.0}
    assert cfg.trainer.max_epochs == 3 and cfg.fold == 2


def test_experiment_preset_overrides_groups():
    cfg = compose_config("train", ["experiment=demo"])
    assert cfg.experiment_name == "demo"
    assert cfg.model.encoder == "mobilenet_v2" and cfg.model.encoder_weights is None


def test_encoder_weights_default_comes_from_the_competition():
    """ImageNet on real competitions; the synthetic demo trains from scratch, so the plain
    `podium train competition=demo_shapes` needs no download. The command line still wins."""
    tgs = "competition=tgs-salt-identification-challenge"
    assert compose_config("train", [tgs]).model.encoder_weights == "imagenet"
    assert compose_config("train", ["competition=demo_shapes"]).model.encoder_weights is None
    tgs_scratch = [tgs, "model.encoder_weights=null"]
    assert compose_config("train", tgs_scratch).model.encoder_weights is None
    demo_imagenet = ["competition=demo_shapes", "model.encoder_weights=imagenet"]
    assert compose_config("train", demo_imagenet).model.encoder_weights == "imagenet"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.encodr=resnet34", "model.encodr"),
        ("trainer.max_epoch=3", "trainer.max_epoch"),
        ("model=unet_tiny", "unet_tiny"),
        ("competition=no-such-comp", "no-such-comp"),
    ],
)
def test_bad_override_is_a_config_error_naming_it(override, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        check_overrides("train", [override])


def test_sweep_overrides_are_checked_with_their_first_value():
    check_overrides("train", ["fold=0,1,2", "seed=range(0,3)"])
    with pytest.raises(ConfigError, match="trainer.max_epoch"):
        check_overrides("train", ["trainer.max_epoch=1,2"])


def test_misspelt_key_exits_2_with_one_line():
    proc = run_podium("train", "model.encodr=resnet34", check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "model.encodr" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_unknown_command_exits_2():
    proc = run_podium("trian", check=False)
    assert proc.returncode == 2 and "unknown command 'trian'" in proc.stderr


def test_competition_yaml_with_unknown_key_is_rejected(tmp_path):
    from podium.config import load_competition_yaml

    folder = tmp_path / "my-comp"
    folder.mkdir()
    (folder / "competition.yaml").write_text("task: binary\ntaks: binary\n")
    with pytest.raises(ConfigError, match="unknown key 'taks'"):
        load_competition_yaml(folder / "competition.yaml")


# -- what a run computes: one list of the keys that do not change it ----------------------------
def where_and_how(base: Path, workers: int) -> list[str]:
    """Overrides placing a run in another clone and data folder, loading with `workers`."""
    return [
        f"paths.root_dir={base / 'clone'}",
        f"paths.data_dir={base / 'data'}",
        f"paths.runs_dir={base / 'runs'}",
        f"competition.dir={base / 'clone' / 'competitions' / 'demo_shapes'}",
        f"trainer.num_workers={workers}",
    ]


def test_config_hash_is_the_experiment_s_wherever_and_however_fast_it_runs(tmp_path):
    from omegaconf import OmegaConf

    from podium.config import config_hash, result_config

    here = compose_config("train", ["experiment=demo", *where_and_how(tmp_path / "a", 0)])
    there = compose_config("train", ["experiment=demo", *where_and_how(tmp_path / "b", 4)])
    resolved = [OmegaConf.to_container(c, resolve=True) for c in (here, there)]
    for key in ("root_dir", "data_dir", "runs_dir"):
        assert resolved[0]["paths"][key] != resolved[1]["paths"][key]
    assert resolved[0]["competition"]["data_dir"] != resolved[1]["competition"]["data_dir"]
    assert resolved[0]["competition"]["dir"] != resolved[1]["competition"]["dir"]
    assert result_config(here) == result_config(there)
    assert "paths" not in result_config(here) and result_config(here)["seed"] == 0
    assert config_hash(here) == config_hash(there)

    other_lr = compose_config(
        "train", ["experiment=demo", "optimizer.lr=0.01", *where_and_how(tmp_path / "a", 0)]
    )
    other_seed = compose_config("train", ["experiment=demo", "seed=1"])
    assert config_hash(other_lr) != config_hash(here)
    assert config_hash(other_seed) != config_hash(here)  # a replicate: another result
    # Without the replicate keys: what every run of one experiment shares (summary.json's).
    assert config_hash(other_seed, replicates=False) == config_hash(here, replicates=False)
    assert config_hash(other_lr, replicates=False) != config_hash(here, replicates=False)


def test_experiment_names_leave_out_the_replicate_and_non_result_keys():
    """Hydra's exclude_keys (exact keys) spells out podium.config's one list."""
    from omegaconf import OmegaConf

    from podium.config import NON_RESULT_KEYS, REPLICATE_KEYS, changes_result

    hydra_file = ROOT / "configs" / "hydra" / "default.yaml"
    excluded = set(OmegaConf.load(hydra_file).job.config.override_dirname.exclude_keys)

    def leaves(node: dict, prefix: str = "") -> list[str]:
        keys = []
        for key, value in node.items():
            name = f"{prefix}{key}"
            keys += leaves(value, f"{name}.") if isinstance(value, dict) and value else [name]
        return keys

    config = OmegaConf.to_container(compose_config("train"), resolve=True)
    non_result = {key for key in leaves(config) if not changes_result(key)}
    assert non_result >= NON_RESULT_KEYS and "paths.data_dir" in non_result
    assert non_result | REPLICATE_KEYS | {"paths"} <= excluded
    assert all(key in REPLICATE_KEYS or not changes_result(key) for key in excluded)
    assert changes_result("optimizer.lr") and changes_result("seed")


# -- workspaces: found from the current folder upward; their files shadow the built-in ones ----
def make_workspace(folder: Path) -> Path:
    from podium.workspace import init_workspace

    init_workspace(folder)
    return folder


def test_workspace_is_found_from_a_subfolder(tmp_path, monkeypatch):
    monkeypatch.delenv("PODIUM_ROOT", raising=False)
    workspace = make_workspace(tmp_path / "ws")
    (workspace / "runs" / "deep").mkdir(parents=True)
    monkeypatch.chdir(workspace / "runs" / "deep")
    cfg = compose_config("train")
    assert Path(cfg.paths.data_dir) == workspace / "data"
    assert Path(cfg.competition.data_dir) == workspace / "data" / "demo_shapes"


def test_workspace_configs_and_competitions_shadow_the_built_in_ones(tmp_path, monkeypatch):
    monkeypatch.delenv("PODIUM_ROOT", raising=False)
    workspace = make_workspace(tmp_path / "ws")
    model = (ROOT / "configs" / "model" / "unet.yaml").read_text()
    (workspace / "configs" / "model").mkdir()
    (workspace / "configs" / "model" / "unet.yaml").write_text(model.replace("Unet", "FPN", 1))
    (workspace / "configs" / "model" / "mine.yaml").write_text(model.replace("Unet", "MAnet", 1))
    demo = workspace / "competitions" / "demo_shapes"
    demo.mkdir()
    builtin = ROOT / "competitions" / "demo_shapes"
    (demo / "adapter.py").write_text((builtin / "adapter.py").read_text())
    (demo / "competition.yaml").write_text(
        (builtin / "competition.yaml").read_text().replace("n_folds: 5", "n_folds: 3")
    )
    monkeypatch.chdir(workspace)
    cfg = compose_config("train")
    assert cfg.model.arch == "FPN"  # the workspace's model/unet.yaml replaces the built-in
    assert cfg.competition.n_folds == 3 and Path(cfg.competition.dir) == demo
    assert compose_config("train", ["model=mine"]).model.arch == "MAnet"  # and adds new ones
    other = compose_config("train", ["competition=tgs-salt-identification-challenge"])
    assert (
        Path(other.competition.dir) == ROOT / "competitions" / "tgs-salt-identification-challenge"
    )
