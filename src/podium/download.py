"""`podium download`: a competition's data, ready to train.

Kaggle competitions come through `podium.kaggle` (the competition archive and the archives inside
it unpacked as competition.yaml's `download:` section says); local and generated ones run their
adapter's `prepare()`. Either way the command ends by checking the layout the adapter expects
(`podium.data.check_layout`) and reading every sample strictly (`podium.datacheck`), and says
in one line what it found.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from podium import io
from podium.archives import UnpackRules
from podium.competition import Competition, load_competition
from podium.data import DUPLICATE_GROUPS, check_layout
from podium.datacheck import check_samples, require_clean

log = logging.getLogger(__name__)

__all__ = ["download_command", "unpack_rules"]


def download_command(cfg: DictConfig) -> int:
    """Download (or prepare) the data of `cfg.competition`, then check its layout. Work that is
    already complete is skipped; `force=true` redoes it; `files=[...]` fetches only those."""
    competition = load_competition(cfg)
    if cfg.competition.kaggle:
        from podium import kaggle

        kaggle.preflight()
        files = list(cfg.files) if cfg.files else None
        paths = kaggle.download(
            cfg.competition.kaggle,
            competition.data_dir,
            files,
            bool(cfg.force),
            unpack=unpack_rules(cfg.competition),
        )
        if files:  # a few files on purpose: the layout is not expected to be complete
            print(f"{competition.name}: {len(paths)} files in {competition.data_dir}")
            return 0
    else:
        _prepare(competition, cfg)
    # Files are there; then each is read once, strictly (decoding a few here first would let
    # OpenCV print libpng's messages about a broken file before the check names it).
    layout = check_layout(competition, decode=0)
    train, test = competition.train_samples(), competition.test_samples()
    require_clean(
        check_samples(competition, train, "train"),
        check_samples(competition, test, "test", with_masks=False),
    )
    print(layout)
    return 0


def unpack_rules(competition_cfg: DictConfig) -> UnpackRules:
    """competition.yaml's `download:` section as the rules podium.kaggle unpacks by."""
    section = competition_cfg.download
    into = OmegaConf.to_container(section.unpack, resolve=True) or {}
    return UnpackRules({str(k): v for k, v in into.items()}, bool(section.keep_archives))


def _prepare(competition: Competition, cfg: DictConfig) -> None:
    """Run the adapter's prepare() unless the data was made with the same options."""
    # The marker records the options the data was made with: other options make it again.
    marker = competition.data_dir / ".podium-prepared"
    options = OmegaConf.to_container(cfg.competition.options, resolve=True)
    made_with = {"competition": competition.name, "options": options}
    if marker.is_file() and io.read_json(marker) == made_with and not cfg.force:
        where = competition.data_dir
        log.info("%s: already prepared in %s (force=true to redo)", competition.name, where)
        return
    for stale in ("folds.csv", DUPLICATE_GROUPS):  # folds and duplicate clusters of the old data
        (competition.data_dir / stale).unlink(missing_ok=True)
    competition.prepare()
    io.write_json(marker, made_with)
    log.info("%s: prepared in %s", competition.name, competition.data_dir)
