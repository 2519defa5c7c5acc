"""Data parallelism over every device of every process, with `jax.sharding` (no pmap).

One 1-D mesh axis "data" spans all devices. Parameters, optimiser state and the (small)
training set are replicated; each step's batch is sharded along its first axis, so every device
computes the gradient of its slice and XLA inserts the all-reduce. On one device nothing is
sharded and the code path is the same.

Multi-host: start one process per host with the same command plus
`--coordinator=HOST:PORT --num_processes=N --process_id=I` (README, Hardware); this calls
`jax.distributed.initialize`, after which `jax.devices()` lists every host's devices. On CPU
the processes talk through gloo collectives. Every process loads the whole (small) training set
and computes the same shuffle, so no data is exchanged besides the gradient all-reduce. The
work directory should be shared (orbax checkpoints need every process to write into the same
directory); process 0 writes the run's files (`main_first`, `is_main_process`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from fkd_jax.errors import UserError

T = TypeVar("T")


def initialize(coordinator: str | None, num_processes: int, process_id: int) -> None:
    """Join a multi-process run (no-op for a single process)."""
    if num_processes <= 1:
        return
    if not coordinator:
        raise UserError("--num_processes > 1 needs --coordinator=HOST:PORT")
    if not 0 <= process_id < num_processes:
        raise UserError(f"--process_id={process_id} must be in [0, {num_processes})")
    if jax.config.jax_platforms in (None, "", "cpu") or jax.default_backend() == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


@dataclass(frozen=True)
class Layout:
    """Where arrays live: `batch` shards the leading axis, `replicated` copies everywhere."""

    batch: NamedSharding | None
    replicated: NamedSharding | None

    def put_replicated(self, tree):
        """Host arrays -> device arrays replicated on every device (of every process)."""
        if self.replicated is None:
            return jax.device_put(tree)
        return jax.tree.map(
            lambda x: jax.make_array_from_callback(np.shape(x), self.replicated,
                                                   lambda idx, x=x: np.asarray(x)[idx]), tree)


def make_layout(batch_size: int) -> Layout:
    """Shard batches over all devices when there is more than one."""
    n = jax.device_count()
    if n == 1:
        return Layout(None, None)
    if batch_size % n:
        raise UserError(f"--config.train.batch_size={batch_size} must be a multiple of the "
                        f"{n} devices for data parallel training")
    mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,))
    return Layout(NamedSharding(mesh, P("data")), NamedSharding(mesh, P()))


def is_main_process() -> bool:
    """Only process 0 writes logs, metrics and other files (orbax coordinates checkpoints)."""
    return jax.process_index() == 0


def main_first(name: str, fn: Callable[[], T]) -> T:
    """Run `fn` on process 0 first, then on the others (after a barrier).

    For steps that create files when missing (the synthetic data, split.json): process 0
    writes them, the others then read them rather than racing to write the same file. On an
    unshared work directory the others make their own, identical copies (all deterministic).
    """
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils

    result = fn() if is_main_process() else None
    multihost_utils.sync_global_devices(name)
    return result if is_main_process() else fn()
