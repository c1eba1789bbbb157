"""Reports from the ledger: `podium runs` (CV by experiment, config diffs) and `podium writeup`.

Everything shown comes from the ledger (`ledger.jsonl`) and the run directories it names
(config.yaml, metrics.csv, oof.npz, .hydra/overrides.yaml): no number is made up. The CV of a run
is its best validation score (summary.json's `best_score`); an experiment's CV is reported as
the mean over all its runs with two spreads, because one lucky seed is not a result:

    std (runs)          sample standard deviation (n-1) over all runs, folds and seeds together
    std of seed means   sample standard deviation of the per-seed CV (each seed's mean over its
                        folds): how much a single-seed CV moves when only the seed changes

    podium runs competition=X [experiments=[A,...]]    the table (and the runs of A, ...)
    podium runs competition=X diff=[A,B]               config differences of two runs/experiments
    podium writeup competition=X [experiments=[...]]   <paths.root_dir>/writeup/X.md + PNG figures
                                                       (+writeup_dir=DIR to write elsewhere)

The modules, each importing only those above it:

    results     the ledger joined with the run directories (Run, Submission, Experiment);
                a run's config as dotted settings (which keys count: podium.config)
    tables      numbers as shown, and the tables of experiments, runs and submissions
    ablations   config differences (`diff=[A,B]`) and one-setting ablations
    method      the write-up's Method section, from resolved configs and inference folders
    figures     the write-up's PNG figures
    runs        `podium runs`
    writeup     `podium writeup`
"""

from __future__ import annotations

from podium.report.ablations import config_diff
from podium.report.figures import oof_cases
from podium.report.results import Experiment, Results, Run, Submission, load_results
from podium.report.runs import runs_command
from podium.report.writeup import writeup_command

__all__ = [
    "runs_command",
    "writeup_command",
    "load_results",
    "Results",
    "Experiment",
    "Run",
    "Submission",
    "config_diff",
    "oof_cases",
]
