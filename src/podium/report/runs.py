"""`podium runs`: the experiments table, the runs of chosen experiments, or a config diff."""

from __future__ import annotations

from omegaconf import DictConfig

from podium.report.ablations import diff_text
from podium.report.levers import full_data_lines, pseudo_lines
from podium.report.results import load_results, select_experiments
from podium.report.tables import (
    SPREAD_NOTE,
    plural,
    runs_table,
    submissions_table,
    summary_table,
)


def runs_command(cfg: DictConfig) -> int:
    """Print the experiments table (and the runs of the chosen experiments, or a diff)."""
    results = load_results(cfg)
    if cfg.get("diff"):
        print(diff_text(results, cfg.diff))
        return 0
    chosen = select_experiments(results, cfg.get("experiments"))
    n_runs = sum(len(e.runs) for e in chosen)
    print(
        f"{results.competition}: {plural(n_runs, 'run')} in {plural(len(chosen), 'experiment')}"
        f", {plural(len(results.submissions), 'submission')} (ledger {results.path})"
    )
    print(f"CV = each run's best validation {results.metric}.\n")
    print(summary_table(chosen))
    print(f"\n{SPREAD_NOTE}")
    for e in chosen:
        if len(e.config_hashes) > 1:
            print(
                f"Note: the runs of {e.name} use {len(e.config_hashes)} different configs "
                f"({', '.join(e.config_hashes)}); `diff=[RUN,RUN]` shows what differs."
            )
    levers = [*full_data_lines(chosen), *pseudo_lines(chosen)]
    if levers:
        print("\n" + "\n".join(levers).rstrip())
    if cfg.get("experiments"):
        for experiment in chosen:
            print(f"\n{experiment.name}:\n{runs_table(experiment)}")
    if results.submissions:
        print(f"\nSubmissions:\n{submissions_table(results.submissions)}")
    return 0
