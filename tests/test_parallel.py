"""Data parallel (4 forced CPU devices), two processes on loopback, and the bfloat16 option.

Device counts must be fixed before jax starts, so the parallel runs are subprocesses with
XLA_FLAGS=--xla_force_host_platform_device_count=N; they must match a one-device run to
float tolerance (the gradient all-reduce sums in another order, so not bit for bit).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from fkd_jax import models
from fkd_jax.training import restore
from fkd_jax.data import synthetic
from fkd_jax.training import steps
from test_train_eval_cli import ROOT, TINY, latest_params, metrics

EPOCHS = 2
COMPARED = ("step", "train_loss", "train_rmse_px", "val_rmse_px")


def env_with_devices(n: int) -> dict:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    return {**os.environ, "XLA_FLAGS": " ".join(flags + [
        f"--xla_force_host_platform_device_count={n}"])}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_args(tmp_path_factory):
    """The tiny synthetic training file, made once, shared by every run here."""
    out = tmp_path_factory.mktemp("faces")
    synthetic.write_kaggle_files(out, 96, 0, kaggle_missing=True)
    return [*TINY, f"--config.data.train_path={out / 'training.csv'}"]


SHARDING_CHECK = textwrap.dedent("""
    from configs import default
    from fkd_jax.training import parallel, steps
    import numpy as np
    c = default.get_config()
    tx = steps.make_optimizer(c.train, 2)
    graphdef, state = steps.init_state(c.model, tx, 0)
    data = {"images": np.zeros((32, 96, 96, 1), np.float32),
            "keypoints": np.zeros((32, 30), np.float32), "mask": np.ones((32, 30), bool)}
    layout = parallel.make_layout(16)
    epoch = steps.make_train_epoch(graphdef, tx, 16, None, 0, layout.batch)
    hlo = epoch.lower(layout.put_replicated(state), layout.put_replicated(data),
                      steps.epoch_shuffle_key(0, 1)).compile().as_text()
    print(layout.batch.mesh.devices.size, "all-reduce" in hlo,
          "f32[4,96,96,1]" in hlo, "f32[16,96,96,1]" in hlo)
""")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_args):
    """A one-device and a four-device train.py run and the sharding check, side by side (they
    are independent and mostly single-threaded, so the 2 cores run them together)."""
    single, four = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("four")
    commands = {
        "single": ([sys.executable, "train.py", *data_args, "--workdir", str(single),
                    f"--config.train.epochs={EPOCHS}"], env_with_devices(1)),
        "four": ([sys.executable, "train.py", *data_args, "--workdir", str(four),
                  f"--config.train.epochs={EPOCHS}"], env_with_devices(4)),
        "sharding": ([sys.executable, "-c", SHARDING_CHECK], env_with_devices(4)),
    }
    done = communicate_all({name: subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (cmd, env) in commands.items()})
    return {"single_dir": single, "four_dir": four, **done}


def communicate_all(procs: dict[str, subprocess.Popen]) -> dict[str, str]:
    """Every process's stdout once all have exited 0 (all are killed if one fails)."""
    out = {}
    try:
        for name, p in procs.items():
            stdout, stderr = p.communicate(timeout=240)
            assert p.returncode == 0, f"{name} failed ({p.returncode}):\n{stdout}\n{stderr[-3000:]}"
            out[name] = stdout
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def assert_same_run(workdir, reference) -> None:
    got, want = metrics(workdir), metrics(reference)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want] == list(range(1, EPOCHS + 1))
    for g, w in zip(got, want):
        for key in COMPARED:
            np.testing.assert_allclose(g[key], w[key], rtol=1e-4, err_msg=key)
    (a, meta_a), (b, meta_b) = latest_params(workdir), latest_params(reference)
    assert meta_a["epoch"] == meta_b["epoch"] == EPOCHS
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_four_devices_match_one(runs):
    assert "1 cpu device(s) in 1 process(es)" in runs["single"]
    assert "4 cpu device(s) in 1 process(es)" in runs["four"]
    assert_same_run(runs["four_dir"], runs["single_dir"])
    # what eval.py/predict.py restore in this 1-device process from the 4-device run's files
    four, single = (restore.load_run(runs[k], "latest") for k in ("four_dir", "single_dir"))
    for x, y in zip(jax.tree.leaves(four.params), jax.tree.leaves(single.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_batch_is_sharded_and_gradients_all_reduced(runs):
    """In the compiled 4-device epoch each device's forward sees 16 / 4 = 4 images and the
    gradients are all-reduced."""
    assert runs["sharding"].split() == ["4", "True", "True", "False"]


def test_two_processes_match_one_and_checkpoint_together(runs, data_args, tmp_path):
    """Processes 0 and 1 (2 CPU devices each) on loopback train like one device; both write
    their part of each orbax checkpoint, only process 0 reports and writes the run's files."""
    port = free_port()
    out = communicate_all({f"process {i}": subprocess.Popen(
        [sys.executable, "train.py", *data_args, "--workdir", str(tmp_path),
         f"--config.train.epochs={EPOCHS}", f"--coordinator=127.0.0.1:{port}",
         "--num_processes=2", f"--process_id={i}"], cwd=ROOT, env=env_with_devices(2),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)})
    assert "4 cpu device(s) in 2 process(es)" in out["process 0"]
    assert "epoch" not in out["process 1"]  # and metrics.jsonl has one line per epoch (below)
    state_dir = tmp_path / "checkpoints" / str(EPOCHS) / "state"
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= {p.name for p in state_dir.iterdir()}
    assert_same_run(tmp_path, runs["single_dir"])


def _abstract_step(name: str, compute_dtype: str):
    """(jaxpr, output state shapes) of one train step of `name`, traced without any compute."""
    c = default.get_config()
    c.model.name, c.model.compute_dtype = name, compute_dtype
    tx = steps.make_optimizer(c.train, 1)
    graphdefs = []

    def init():
        graphdef, state = steps.init_state(c.model, tx, 0)
        graphdefs.append(graphdef)
        return state

    state = jax.eval_shape(init)
    batch = {"images": jax.ShapeDtypeStruct((2, 96, 96, 1), jnp.float32),
             "keypoints": jax.ShapeDtypeStruct((2, 30), jnp.float32),
             "mask": jax.ShapeDtypeStruct((2, 30), jnp.bool_)}
    step = steps.make_train_step(graphdefs[0], tx)
    key = jax.random.key(0)
    return jax.make_jaxpr(step)(state, batch, key), jax.eval_shape(step, state, batch, key)


def _matmul_dtypes(jaxpr) -> set:
    """Input dtypes of every dot_general in the jaxpr, sub-jaxprs (custom VJPs) included."""
    found = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found |= {v.aval.dtype for v in eqn.invars}
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found |= _matmul_dtypes(sub)
    return found


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_model_computes_in_bfloat16_with_float32_params(name):
    jaxpr, (state, m) = _abstract_step(name, "bfloat16")
    assert {x.dtype for x in jax.tree.leaves(state["params"])} == {jnp.dtype(jnp.float32)}
    assert m["loss"].dtype == jnp.float32
    assert jnp.dtype(jnp.bfloat16) in _matmul_dtypes(jaxpr.jaxpr)
    f32_jaxpr, _ = _abstract_step(name, "float32")
    assert _matmul_dtypes(f32_jaxpr.jaxpr) == {jnp.dtype(jnp.float32)}  # off by default


def test_bfloat16_training_is_finite_and_close_to_float32():
    c = default.get_config()
    c.train.learning_rate = 1e-4  # small steps: the two runs must not drift apart chaotically
    rng = np.random.default_rng(0)
    batch = {"images": jnp.asarray(rng.random((4, 96, 96, 1), np.float32)),
             "keypoints": jnp.asarray(rng.uniform(20, 76, (4, 30)).astype(np.float32)),
             "mask": jnp.asarray(rng.random((4, 30)) < 0.9)}
    losses = {}
    for dtype in ("float32", "bfloat16"):
        c.model.compute_dtype = dtype
        tx = steps.make_optimizer(c.train, 1)
        graphdef, state = steps.init_state(c.model, tx, 0)
        step = jax.jit(steps.make_train_step(graphdef, tx))
        losses[dtype] = []
        for i in range(3):
            state, m = step(state, batch, jax.random.key(i))
            losses[dtype].append(float(m["loss"]))
        assert {x.dtype for x in jax.tree.leaves(state["params"])} == {jnp.dtype(jnp.float32)}
    assert np.isfinite(losses["bfloat16"]).all()
    assert losses["float32"][-1] < losses["float32"][0]
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.03)
    assert losses["bfloat16"] != losses["float32"]  # the option really changes the arithmetic
