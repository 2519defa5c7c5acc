"""Ensembles: N runs of one recipe, trained side by side, whose predictions are averaged.

`config.train.members` = N > 1 makes train.py train one, in one of two ways
(`config.train.members_mode`; "auto" picks by the default JAX backend):
- "processes" (auto on CPU): one train.py process per member, each pinned to its share of the
  CPU cores. Why: on a 2-core CPU one unet_pair training keeps about one core busy, so two
  members, one per core, train in ~1.4x the wall time of one, and their mean prediction is
  ~0.02 px better than either (docs/experiments/2026-12-02-two-members.md).
- "one_process" (auto on GPU/TPU): every member in this process, in one jitted epoch vmapped
  over the members (fkd_jax.training.steps.make_members_epoch): one program on the device,
  each step's kernels taking every member's batch, rather than N processes competing for one
  device's memory.
Both write the same layout, so either can resume the other's ensemble.

Layout of an ensemble's run directory:
  run.json, config.json   the run format and the ensemble's config (train.members = N)
  member0 ... member<N-1>/   ordinary run directories (config.json, checkpoints, metrics)
  member<i>.log        each member's console output (processes)
  ensemble_metrics.json   the averaged prediction scored on the validation split
Member i is the single run of seed `seed * N + i` on the ensemble's split (`data.split_seed`,
or `seed` when that is None): all members share one validation split, so it stays unseen by
every member, and ensemble seed s is made of seeds N*s ... N*s + N-1.

`inference.load_run` restores an ensemble directory as one `Run` (the members' parameters as a
tuple) and every consumer (eval.py, predict.py, export.py) predicts with the mean.
"""

from __future__ import annotations

import copy
from pathlib import Path

MEMBER_PREFIX = "member"


MODES = ("auto", "processes", "one_process")


def members(config) -> int:
    """How many members a config trains."""
    return int(config.train.members)


def in_one_process(config) -> bool:
    """Whether an ensemble's members train in this process (`config.train.members_mode`):
    "auto" is one process on a GPU or TPU, pinned processes on CPU."""
    mode = config.train.members_mode
    if mode == "auto":
        import jax

        return jax.default_backend() != "cpu"
    return mode == "one_process"


def member_config(config, i: int):
    """The config member `i` of the ensemble `config` trains with: a single run."""
    n = members(config)
    if not 0 <= i < n:
        raise ValueError(f"member {i} of an ensemble of {n}")
    c = copy.deepcopy(config)
    c.seed = config.seed * n + i
    if config.data.get("split_seed") is None:
        c.data.split_seed = config.seed
    c.train.members = 1
    return c


def member_dir(workdir: str | Path, i: int) -> Path:
    return Path(workdir) / f"{MEMBER_PREFIX}{i}"


def member_overrides(config, i: int) -> list[str]:
    """Command-line overrides that turn the ensemble's command into member `i`'s."""
    c = member_config(config, i)
    return [f"--config.seed={c.seed}", f"--config.data.split_seed={c.data.split_seed}",
            "--config.train.members=1"]


def member_command(command: list[str], config, workdir: str | Path, i: int) -> list[str]:
    """`command` (a train.py command line for the ensemble's config) turned into member `i`'s:
    the member's seed and split, and its run directory, given last so they take effect."""
    return [*command, *member_overrides(config, i), f"--workdir={member_dir(workdir, i)}"]
