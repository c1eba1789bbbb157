"""Image classification competitions (`task: classification` in competition.yaml): one label
set per image, multi-label (Planet Amazon: space-separated tags, mean F2 over images) or
multi-class (one class per image: accuracy, log-loss).

The training loop, folds, EMA, checkpoints, resume, DDP and the ledger are podium's own
(`podium.train`); what differs by task plugs in there: the dataset's target (`training`), the
model and loss (`model`), validation and out-of-fold probabilities (`training`). The rest is
here: metrics and per-class thresholds (`scoring`), the adapter base class and the submission
formats (`labels`), and `podium tune / predict / validate / score` for these tasks
(`commands`, reached through `podium.tasks`).
"""
