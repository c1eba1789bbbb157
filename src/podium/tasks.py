"""The commands whose work depends on the competition's task: segmentation (binary, multiclass,
multilabel masks) goes to podium.tune / infer / submission, image classification to
podium.classify.commands. The one place the CLI's tune, predict, validate and score choose."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

__all__ = ["tune_command", "predict_command", "validate_command", "score_command"]


def _classification(cfg: DictConfig) -> bool:
    return cfg.competition.task == "classification"


def tune_command(cfg: DictConfig, run_dir: Path) -> float:
    if _classification(cfg):
        from podium.classify import commands
    else:
        from podium import tune as commands
    return commands.tune_command(cfg, run_dir)


def predict_command(cfg: DictConfig, run_dir: Path) -> float | None:
    if _classification(cfg):
        from podium.classify import commands
    else:
        from podium import infer as commands
    return commands.predict_command(cfg, run_dir)


def validate_command(cfg: DictConfig) -> int:
    if _classification(cfg):
        from podium.classify import commands
    else:
        from podium import submission as commands
    return commands.validate_command(cfg)


def score_command(cfg: DictConfig) -> int:
    if _classification(cfg):
        from podium.classify import commands
    else:
        from podium import submission as commands
    return commands.score_command(cfg)
