"""Typed settings (podium.schema): a wrong value is one line naming the key, the value and what
is allowed, exit code 2, before any data is read or model built; every built-in config key has a
type and a range, and every shipped value passes."""

from __future__ import annotations

import functools
import re
import time

import pytest
from conftest import ROOT, run_podium
from omegaconf import OmegaConf

from podium import schema
from podium.config import (
    COMPETITION_DEFAULTS,
    ConfigError,
    check_overrides,
    competition_folders,
    compose_config,
    load_competition_yaml,
)
from podium.rules import AnyOf, Float, Int, ListOf, MapOf, OneOf, Open, Text

# Only a bound against a hang: "before anything runs" is proven by the missing run directory
# (training makes it first). On a quiet 2-core machine these exits take 2-4 s, mostly Python
# and Hydra starting; on a loaded one, over 20 s was seen.
FAST_S = 120

# (command, overrides, the error line's text after "podium: error: ")
BAD_VALUES = {
    "non-numeric integer": ("train", ["trainer.max_epochs=abc"],
                            "trainer.max_epochs=abc: expected an integer >= 1"),
    "non-numeric number": ("train", ["optimizer.lr=fast"],
                           "optimizer.lr=fast: expected a number > 0"),
    "negative learning rate": ("train", ["optimizer.lr=-0.001"],
                               "optimizer.lr=-0.001: expected a number > 0"),
    "zero batch": ("train", ["trainer.batch_size=0"],
                   "trainer.batch_size=0: expected an integer >= 1"),
    "zero val_every": ("train", ["trainer.val_every=0"],
                       "trainer.val_every=0: expected an integer >= 1"),
    "negative epochs": ("train", ["trainer.max_epochs=-1"],
                        "trainer.max_epochs=-1: expected an integer >= 1"),
    "a float for an integer": ("train", ["trainer.accumulate=2.5"],
                               "trainer.accumulate=2.5: expected an integer >= 1"),
    "null not allowed": ("train", ["trainer.max_epochs=null"],
                         "trainer.max_epochs=null: expected an integer >= 1"),
    "wrong choice": ("train", ["trainer.precision=fp8"],
                     "trainer.precision=fp8: expected one of auto, fp32, bf16, fp16"),
    "integer or auto": ("train", ["trainer.num_workers=many"],
                        "trainer.num_workers=many: expected an integer >= 0 or auto"),
    "fold: a number or all": ("train", ["fold=last"], "fold=last: expected an integer >= 0 or all"),
    "pseudo ratio of a whole batch": ("train", ["pseudo_ratio=1"],
                                      "pseudo_ratio=1: expected a number > 0 and < 1"),
    "pseudo rule band": ("pseudo", ["rule.low=0.95"], "rule.low=0.95: expected less than "
                         "rule.high=0.9 (a pixel is confident below low or above high)"),
    "not a boolean": ("train", ["trainer.progress=yes"],
                      "trainer.progress=yes: expected true or false"),
    "wrong list shape": ("train", ["optimizer.betas=[0.9]"],
                         "optimizer.betas=[0.9]: expected a list of 2 numbers >= 0 and < 1"),
    "list item out of range": ("train", ["augment.crop=[0,64]"],
                               "augment.crop=[0, 64]: expected [H, W], two integers >= 1 or null"),
    "a plain value for a mapping": ("train", ["competition.submission=abc"],
                                    "competition.submission=abc: expected a mapping"),
    "OmegaConf: a mapping for a list": ("train", ["optimizer.betas={a:1}"],
                                        "optimizer.betas={a:1}: expected a list, not a mapping"),
    "OmegaConf: Hydra's typed setting": ("train", ["hydra.job.chdir=maybe"],
                                         "hydra.job.chdir=maybe: expected true or false"),
    "unknown loss term": ("train", ["+loss.weights.hinge=1"],
                          "loss.weights.hinge=1: unknown key; known: bce, dice, lovasz, focal"),
    "all loss weights zero": ("train", ["loss.weights.bce=0", "loss.weights.dice=0"],
                              "loss.weights: all weights are 0; at least one must be > 0"),
    "warm-up longer than the run": (
        "train", ["trainer.max_epochs=2", "scheduler.warmup_epochs=3"],
        "scheduler.warmup_epochs=3: expected at most trainer.max_epochs=2"),
    "fold beyond the folds": ("train", ["fold=5"],
                              "fold=5: expected less than competition.n_folds=5 (folds count"),
    "fewer batches than one accumulation": (
        "train", ["trainer.accumulate=4", "trainer.limit_train_batches=2"],
        "trainer.limit_train_batches=2: expected at least trainer.accumulate=4"),
    "a later sweep value": ("train", ["-m", "fold=0,7"],
                            "fold=7: expected less than competition.n_folds=5"),
    "predict: tile overlap of 1": ("predict", ["tile_overlap=1"],
                                   "tile_overlap=1: expected a number >= 0 and < 1"),
    "tune: zero rounds": ("tune", ["search.rounds=0"],
                          "search.rounds=0: expected an integer >= 1"),
    "tool: zero poll interval": ("validate", ["poll_interval=0"],
                                 "poll_interval=0: expected a number > 0"),
    "tool: one name for a list": ("download", ["files=train.csv"],
                                  "files=train.csv: expected a non-empty list of paths or null"),
    "competition value on the command line": (
        "validate", ["competition.submission.order=X"],
        "competition.submission.order=X: expected F or C"),
}  # fmt: skip


def assert_one_line_error(proc, expected: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("podium: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_a_wrong_value_is_one_line_before_anything_runs(case, tmp_path):
    command, overrides, expected = BAD_VALUES[case]
    runs = tmp_path / "runs"
    started = time.monotonic()
    proc = run_podium(command, *overrides, f"paths.runs_dir={runs}", check=False, timeout=120)
    seconds = time.monotonic() - started
    assert_one_line_error(proc, expected)
    assert not runs.exists(), list(runs.rglob("*"))  # no run directory, no checkpoints/
    assert seconds < FAST_S, f"{seconds:.1f} s"


def test_a_bad_competition_yaml_names_the_file_and_key(tmp_path, monkeypatch):
    from podium.workspace import init_workspace

    init_workspace(tmp_path / "ws")
    folder = tmp_path / "ws" / "competitions" / "bad-comp"
    folder.mkdir(parents=True)
    (folder / "competition.yaml").write_text("task: binary\nclasses: [x]\nn_folds: 1\n")
    monkeypatch.setenv("PODIUM_ROOT", str(tmp_path / "ws"))
    line = assert_one_line_error(
        run_podium("validate", check=False, timeout=120), "n_folds=1: expected an integer >= 2"
    )
    assert f"{folder / 'competition.yaml'}: n_folds=1" in line


def test_a_resumed_run_s_config_is_checked_and_the_run_kept(tmp_path):
    run_dir = tmp_path / "runs" / "demo_shapes" / "r0"
    run_dir.mkdir(parents=True)
    saved = OmegaConf.to_container(compose_config("train"), resolve=True)
    saved["trainer"]["max_epochs"] = "abc"  # edited by hand
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    proc = run_podium("train", f"resume={run_dir}", check=False, timeout=300)
    assert_one_line_error(proc, "trainer.max_epochs=abc: expected an integer >= 1")
    assert (run_dir / "config.yaml").is_file() and not (run_dir / "checkpoints").exists()
    # The command line's own values are checked before the run's config is read.
    proc = run_podium("train", f"resume={run_dir}", "trainer.batch_size=0", check=False)
    assert_one_line_error(proc, "trainer.batch_size=0: expected an integer >= 1")


# -- every key of the built-in configs has a rule, and every shipped value passes ---------------
def group_options() -> dict[str, list[str]]:
    """configs/<group>/<option>.yaml of the groups a command composes (hydra's aside)."""
    return {
        group.name: sorted(p.stem for p in group.glob("*.yaml"))
        for group in sorted((ROOT / "configs").iterdir())
        if group.is_dir() and group.name != "hydra"
    }


def shipped_configs() -> list[tuple[str, list[str]]]:
    """(command config, overrides): each command's default, and each option of every group
    and every competition composed into the command that uses it."""
    configs = [
        (name, []) for name in ("train", "tune", "predict", "pseudo", "tools", "export", "search")
    ]
    for group, options in group_options().items():
        command = {"infer": "tune", "search": "search"}.get(group, "train")
        for option in options:
            # A classification-only option is composed with a classification competition.
            with_task = CLASSIFICATION if option in CLASSIFICATION_ONLY.get(group, ()) else []
            configs.append((command, [f"{group}={option}", *with_task]))
    for name in competition_folders():
        task = OmegaConf.load(ROOT / "competitions" / name / "competition.yaml").get("task")
        with_task = ["model=timm_classifier", "loss=bce"] if task == "classification" else []
        configs.append(("train", [f"competition={name}", *with_task]))
    return configs


# Options that belong to classification tasks only, and a classification setup to compose them in.
CLASSIFICATION_ONLY = {"model": ("timm_classifier",), "loss": ("ce",)}
CLASSIFICATION = [
    "competition=planet-understanding-the-amazon-from-space",
    "model=timm_classifier",
    "loss=bce",
    "competition.classification.multi_label=false",
]


@functools.cache
def composed(config_name: str, overrides: tuple[str, ...]):
    return compose_config(config_name, list(overrides))  # checks every value, or ConfigError


@pytest.mark.parametrize(("config_name", "overrides"), shipped_configs())
def test_every_shipped_config_is_typed_and_passes(config_name, overrides):
    cfg = composed(config_name, tuple(overrides))
    assert schema.unchecked_keys(cfg) == []
    assert schema.first_problem(cfg) is None


def test_every_schema_entry_is_a_shipped_key():
    """No stale entries: each key of the tables appears in some built-in config."""
    seen: set[str] = set()
    for config_name, overrides in shipped_configs():
        cfg = composed(config_name, tuple(overrides))
        seen |= {name for name, rule, _ in schema._settings(cfg, "") if rule is not None}
    assert set(schema.SCHEMA) - seen == {"hydra"}  # Hydra's own settings: Hydra checks them


def test_every_key_in_the_config_files_has_a_rule():
    """Read as files, not composed: each key of configs/ (group files under their group's
    name, `@package _global_` files at the top) is in the tables or under an open mapping."""

    def keys(node: dict, prefix: str):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if name in schema.SCHEMA:
                yield name
            elif isinstance(value, dict) and value:
                yield from keys(value, f"{name}.")
            else:
                yield name

    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        if path.parent.name == "hydra":
            continue
        text = path.read_text()
        glob = "@package _global_" in text or path.parent == ROOT / "configs"
        prefix = "" if glob else f"{path.parent.name}."
        data = OmegaConf.to_container(OmegaConf.load(path))
        data.pop("defaults", None)
        data.pop("hydra", None)  # a command's own run directory: Hydra's setting
        missing = [k for k in keys(data, prefix) if k not in schema.SCHEMA]
        assert not missing, f"{path.relative_to(ROOT)}: no rule for {missing}"
    defaults = keys(COMPETITION_DEFAULTS, "competition.")
    assert [k for k in defaults if k not in schema.SCHEMA] == []


def test_the_tables_name_what_the_code_knows():
    import torch

    from podium import data, infer, losses, models, run_state
    from podium.classify.model import ARCH, build_classification_loss

    assert schema.CLASSIFIER_ARCH == ARCH

    assert set(schema.TTA_SETS) == set(infer.TTA_SETS)
    assert set(schema.AUX_HEADS) == set(models.AUX_HEADS)
    assert set(schema.AUGMENT_PRESETS) == set(data._PRESETS)
    loss = OmegaConf.to_container(compose_config("train").loss)
    for term in schema.LOSS_TERMS:  # each builds alone, for the tasks it is allowed on
        alone = OmegaConf.create({**loss, "weights": {term: 1.0}})
        if term not in schema.CLASSIFICATION_ONLY_TERMS:
            losses.build_loss(alone, "binary")
        if term not in schema.SEGMENTATION_ONLY_TERMS:
            build_classification_loss(alone, multi_label=term != "ce")
    for precision in schema.PRECISIONS:
        models.resolve_precision(precision, torch.device("cpu"))
    model = torch.nn.Linear(2, 1)
    for name in schema.SCHEMA["optimizer.name"].choices:
        options = compose_config("train", [f"optimizer={name}"]).optimizer
        run_state.build_optimizer(options, model)
    for name in schema.SCHEMA["scheduler.name"].choices:
        run_state.lr_schedule(compose_config("train", [f"scheduler={name}"]).scheduler, 10, 2)


# -- rules and checks in process ----------------------------------------------------------------
def test_rules_say_what_they_allow():
    assert Int(min=1).problem("k", True) == "k=true: expected an integer >= 1"  # not a 1
    assert Int(min=0, max=4).problem("k", 3.0) == "k=3.0: expected an integer from 0 to 4"
    assert Float(ge=0, lt=1).problem("k", float("nan")) == "k=nan: expected a number >= 0 and < 1"
    assert Float(gt=0).problem("k", 5) is None and Float().problem("k", "1e-3") is not None
    assert (Float(gt=0) | None).problem("k", "x") == "k=x: expected a number > 0 or null"
    assert isinstance(Int(min=0) | "auto", AnyOf) and (Int(min=0) | "auto").accepts("auto")
    assert OneOf(0, 1).problem("base", True) == "base=true: expected 0 or 1"
    assert ListOf(Int(min=1), min_len=1).problem("k", []) == (
        "k=[]: expected a non-empty list of integers >= 1"
    )
    weights = MapOf(Float(ge=0), keys=("bce", "dice"))
    assert weights.problem("w", {"bce": -1}) == "w.bce=-1: expected a number >= 0"
    assert weights.problem("w", None) == "w=null: expected a mapping of bce, dice to numbers >= 0"
    assert Open().accepts({"any": {"thing": 1}}) and Text().accepts(2) and not Text().accepts(None)


def test_sweeps_are_checked_value_by_value_in_process():
    check_overrides("train", ["fold=0,1,2,3,4", "seed=range(0,3)", "model=unet,unet_mobilenet"])
    with pytest.raises(ConfigError, match=r"^seed=-1: expected an integer from 0 to 4294967295$"):
        check_overrides("train", ["fold=0,1", "seed=0,-1"])
    with pytest.raises(ConfigError, match=r"^trainer.max_epochs=0: expected an integer >= 1$"):
        check_overrides("train", ["model=unet,unet_mobilenet", "trainer.max_epochs=3,0"])
    # A group swept: composed again with each option, then checked.
    with pytest.raises(ConfigError, match=r"^loss.weights: all weights are 0"):
        check_overrides("train", ["loss=bce_dice,dice", "loss.weights.dice=0"])
    # Onto another config (a resumed run's): each value alone, no cross-key rule.
    check_overrides("train", ["scheduler.warmup_epochs=9", "trainer.max_epochs=2"], False)


@pytest.mark.parametrize(
    ("yaml", "expected"),
    [
        ("n_folds: 1", "n_folds=1: expected an integer >= 2"),
        ("submission: {order: X}", "submission.order=X: expected F or C"),
        ("submission: {base: 2}", "submission.base=2: expected 0 or 1"),
        ("image_size: [0, 64]", "image_size=[0, 64]: expected [H, W], two integers >= 1 or null"),
        ("metric: f1", "metric=f1: expected one of dice, iou"),
        ("task: segmentation", "task=segmentation: expected one of binary, multiclass"),
        ("task: multiclass\nclasses: [x]", "classes=[x]: expected 2 or more classes"),
        ("classes: [a, b]", "classes=[a, b]: expected 1 class for a binary task"),
        ("download: {keep_archives: maybe}", "download.keep_archives=maybe: expected true"),
    ],
)
def test_competition_yaml_values_are_checked(tmp_path, yaml, expected):
    folder = tmp_path / "my-comp"
    folder.mkdir()
    (folder / "competition.yaml").write_text(yaml + "\n")
    with pytest.raises(
        ConfigError, match="^" + re.escape(f"{folder}/competition.yaml: {expected}")
    ):
        load_competition_yaml(folder / "competition.yaml")


def test_interpolations_are_checked_once_resolved():
    with pytest.raises(ConfigError, match=r"^trainer.max_epochs=\$\{oops\}: cannot be resolved"):
        compose_config("train", ["trainer.max_epochs=${oops}"])
    cfg = compose_config("train", ["trainer.max_epochs=${trainer.batch_size}"])
    assert cfg.trainer.max_epochs == cfg.trainer.batch_size
