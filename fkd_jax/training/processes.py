"""Worker processes pinned to CPU cores: several trainings side by side on one machine.

Why: on CPU one process training small batches (unet_pair: batches of 8) keeps about one core
busy, so on 2 cores two trainings pinned one per core get ~1.4x the images/s of running them
one after the other (docs/experiments/2026-12-01-ema-seeds.md). `scripts/seeds.py --jobs N` trains
seeds this way, and train.py the members of an ensemble (`config.train.members`).
"""

from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from fkd_jax.errors import UserError


@dataclass(frozen=True)
class Job:
    """One command to run: `name` for messages, its output (stdout and stderr) to `log`."""

    name: str
    command: list[str]
    log: Path


def available_cores() -> list[int]:
    """The CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def core_groups(cores: list[int], jobs: int, option: str = "--jobs") -> list[list[int]]:
    """Split `cores` into `jobs` disjoint groups, as even as possible."""
    if not 1 <= jobs <= len(cores):
        raise UserError(f"{option}={jobs} must be between 1 and the {len(cores)} CPU core(s) "
                        "this process may use")
    cores = sorted(cores)
    return [cores[i::jobs] for i in range(jobs)]


def run_pinned(jobs: list[Job], groups: list[list[int]]) -> dict[str, int]:
    """Run `jobs`, job k on core group k % len(groups); a group runs its jobs one after the
    other. Returns each job's exit status by name, once all have ended.

    A worker pinned to a single core gets one XLA thread (`--xla_cpu_multi_thread_eigen=false`):
    XLA's CPU thread pool would otherwise size itself to the whole machine.
    """
    status: dict[str, int] = {}
    procs: list[subprocess.Popen] = []
    lock = threading.Lock()

    def run_group(k: int, cores: list[int]) -> None:
        env = dict(os.environ)
        if len(cores) == 1:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                                + " --xla_cpu_multi_thread_eigen=false").strip()
        pin = getattr(os, "sched_setaffinity", None)
        for job in jobs[k::len(groups)]:
            job.log.parent.mkdir(parents=True, exist_ok=True)
            with open(job.log, "w") as out:
                proc = subprocess.Popen(job.command, env=env, stdout=out,
                                        stderr=subprocess.STDOUT,
                                        preexec_fn=(lambda: pin(0, cores)) if pin else None)
                with lock:
                    procs.append(proc)
                code = proc.wait()
            with lock:
                status[job.name] = code
            if code != 0:  # the group's later jobs would meet the same problem
                break

    threads = [threading.Thread(target=run_group, args=(k, cores), daemon=True)
               for k, cores in enumerate(groups[:len(jobs)])]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:
        # Ctrl-C reached the workers too (one process group): let them save and stop.
        with lock:
            running = list(procs)
        for p in running:
            p.wait()
        raise
    return status


def last_line(log: Path) -> str:
    """The last non-empty line of a worker's log (its error message, when it failed)."""
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"
