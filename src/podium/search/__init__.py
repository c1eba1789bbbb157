"""`podium search`: hyper-parameter search with Optuna, used directly (the Hydra Optuna sweeper
pins optuna<3 and can neither prune nor run trials in parallel: facebookresearch/hydra#3091,
#1954).

The study lives in its folder, `<paths.runs_dir>/<competition>/search/<search.name>/`: Optuna's
JournalStorage file (`study.journal`, appended under a file lock, so any number of processes on
this machine run trials of one study) and one run directory
per trial (`trial_007/`), a normal `podium train` run recorded in the ledger with its study and
trial number. `search.workers` processes run trials at once; with GPUs each worker first leases
one (podium.distributed's GPU leases, shared with `podium train trainer.gpus_per_job`): a trial
trains in its worker's process, where its Optuna trial is. Each validated epoch's score is
reported to the trial; when the pruner says so, the run stops after that epoch's checkpoint
and is recorded as pruned.

Resuming: the same command again continues the study up to `search.n_trials` trials (complete,
pruned or failed), never running a finished one again. A trial whose worker was killed (its
worker lock is free) is marked failed, and its parameters are queued again: the next trial
resumes its run directory from the last checkpoint, so its finished epochs are not trained again.
"""

from podium.search.command import search_command

__all__ = ["search_command"]
