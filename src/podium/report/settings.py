"""A run's config as settings: dotted keys with comparable values, and which keys count.

The key sets below say which config keys do not change a result; they stay together here so that
one project-wide definition can replace them in one place.
"""

from __future__ import annotations

import json

# Keys that say where or under which name a run was made, not how: never a config difference.
UNCOMPARED_PREFIXES = ("paths.", "hydra.")
UNCOMPARED_KEYS = {"experiment_name", "resume", "competition.dir", "competition.data_dir"}
# Keys that vary across the runs of one experiment by design.
REPLICATE_KEYS = {"fold", "seed"}
# Keys that change how a run is displayed or scheduled, not its result: ignored by ablations.
COSMETIC_KEYS = {"trainer.progress", "trainer.num_workers", "trainer.log_every"}


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> {dotted.key: JSON value}; lists and empty dicts stay whole values."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value, sort_keys=True, default=str)
    return flat


def compared(key: str) -> bool:
    """Whether a difference in `key` is a difference in how a run was made."""
    return key not in UNCOMPARED_KEYS and not key.startswith(UNCOMPARED_PREFIXES)
