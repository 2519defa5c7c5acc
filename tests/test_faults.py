"""Fault suite: bad input, kills, corruption, a non-finite loss, Ctrl-C, no disk.

Every case runs train.py or eval.py with a command line, as a user does, and checks what the
user would see: bad input ends in one line naming the file/row/option, exit status 2, no
traceback and no partial output; a killed, interrupted or starved run loses nothing and, re-run
with the same command, ends with parameters bit-identical to an uninterrupted run.

Speed: a fresh `python train.py` spends most of its ~10 s (2 shared cores) importing JAX, orbax
and pandas. `Cli` therefore keeps one warm interpreter with those libraries imported (no JAX
backend started) and forks it per command; the child runs the script exactly as `python
SCRIPT ARGS` does (runpy as __main__, its own stdout/stderr, exit status, a traceback and
status 1 on an uncaught exception). `test_cli_runner_matches_a_real_subprocess` checks that
against real subprocesses. JAX's persistent compilation cache is shared by all runs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from test_train_eval_cli import ROOT, TINY, latest_params, metrics

EPOCHS = 3
RUN = [*TINY, f"--config.train.epochs={EPOCHS}"]

_SERVER = r"""
import atexit, json, os, runpy, sys, traceback
sys.path.insert(0, os.getcwd())
import jax, flax.nnx, optax, orbax.checkpoint, pandas, PIL.Image, matplotlib  # warm, no backend
import fkd_jax.data.augment, fkd_jax.training.checkpoints, fkd_jax.cli, fkd_jax.data, fkd_jax.training.run_dir
import fkd_jax.pictures.images, fkd_jax.training.parallel, fkd_jax.evaluation.plots, fkd_jax.training.steps
import absl.flags, ml_collections.config_flags

def child(req):
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    code = 0
    try:
        exec(req.get("inject", ""), {})  # a simulated fault, set up before the script runs
        sys.argv = [req["script"], *req["args"]]
        runpy.run_path(req["script"], run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush(); sys.stderr.flush()
    finally:
        os._exit(code)

for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        child(req)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Proc:
    """A running or finished script: returncode, stdout, stderr (text)."""

    def __init__(self, cli: "Cli", pid: int, out: Path, err: Path):
        self.cli, self.pid, self._out, self._err = cli, pid, out, err
        self.returncode: int | None = None

    @property
    def stdout(self) -> str:
        return self._out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self._err.read_text(errors="replace")

    def wait_for_line(self, prefix: str, timeout: float = 120) -> None:
        """Block until stdout has a line starting with `prefix`."""
        deadline = time.monotonic() + timeout
        while not any(line.startswith(prefix) for line in self.stdout.splitlines()):
            assert time.monotonic() < deadline, f"no {prefix!r} line:\n{self.stdout}\n{self.stderr}"
            time.sleep(0.02)

    def wait(self) -> "Proc":
        if self.returncode is None:
            self.returncode = json.loads(self.cli.server.stdout.readline())["rc"]
        return self


class Cli:
    """`python SCRIPT ARGS` in forked children of one warm interpreter (see module doc)."""

    def __init__(self, tmp: Path):
        self.tmp, self.n, self.pending = tmp, 0, None
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp / "jax_cache"),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
        self.server = subprocess.Popen([sys.executable, "-c", _SERVER], cwd=ROOT, env=env,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def start(self, script: str, *args: str, inject: str = "") -> Proc:
        if self.pending is not None and self.pending.returncode is None:  # a failed test's
            os.kill(self.pending.pid, signal.SIGKILL)  # child: end it, keep the protocol in step
            self.pending.wait()
        self.n += 1
        out, err = self.tmp / f"{self.n}.out", self.tmp / f"{self.n}.err"
        out.touch(), err.touch()
        req = {"script": script, "args": [str(a) for a in args], "stdout": str(out),
               "stderr": str(err), "inject": inject}
        self.server.stdin.write(json.dumps(req) + "\n")
        self.server.stdin.flush()
        self.pending = Proc(self, json.loads(self.server.stdout.readline())["pid"], out, err)
        return self.pending

    def run(self, script: str, *args: str, check: bool = True, inject: str = "") -> Proc:
        proc = self.start(script, *args, inject=inject).wait()
        if check and proc.returncode != 0:
            raise AssertionError(f"{script} {args} -> {proc.returncode}\n{proc.stdout}\n"
                                 f"{proc.stderr}")
        return proc

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    runner = Cli(tmp_path_factory.mktemp("cli"))
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def reference(cli, tmp_path_factory) -> Path:
    """An uninterrupted EPOCHS-epoch tiny run: what every faulted run must reproduce."""
    workdir = tmp_path_factory.mktemp("reference")
    cli.run("train.py", *RUN, "--workdir", workdir)
    return workdir


def assert_same_params(a: Path, b: Path) -> None:
    (sa, ma), (sb, mb) = latest_params(a), latest_params(b)
    assert ma["epoch"] == mb["epoch"] == EPOCHS
    for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb), strict=True):
        np.testing.assert_array_equal(x, y)


def assert_same_metrics(a: Path, b: Path) -> None:
    keep = ("epoch", "step", "train_loss", "train_rmse_px", "val_rmse_px", "learning_rate")
    assert [{k: r[k] for k in keep} for r in metrics(a)] == [
        {k: r[k] for k in keep} for r in metrics(b)]


def one_line_error(proc: Proc) -> str:
    """The user-error contract: status 2, no traceback, the last stderr line is `error: ...`."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), proc.stderr
    return lines[-1]


def tree(path: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `path` (to prove nothing changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


# --- 1. Bad input -----------------------------------------------------------------------------


def _csv_with(training_csv: Path, name: str, row: int, edit) -> Path:
    """Copy of the fixture CSV with spreadsheet `row` replaced by edit(cells)."""
    lines = training_csv.read_text().split("\n")
    cells = lines[row - 1].split(",")
    lines[row - 1] = ",".join(edit(cells))
    out = training_csv.with_name(name)
    out.write_text("\n".join(lines))
    return out


def _zip(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return path


def _bad_files(d: Path, training_csv: Path, test_csv: Path, lookup_csv: Path) -> dict:
    """name -> a malformed file (or path), each made here from the valid fixtures."""
    text = training_csv.read_text()
    header, body = text.split("\n", 1)
    f = {"missing": d / "nope.csv", "directory": d / "a_dir"}
    f["directory"].mkdir()
    f["empty"] = d / "empty.csv"
    f["empty"].write_bytes(b"")
    f["header_only"] = d / "header_only.csv"
    f["header_only"].write_text(header + "\n")
    f["dup_column"] = d / "dup.csv"
    f["dup_column"].write_text(header.replace("nose_tip_y", "nose_tip_x") + "\n" + body)
    f["pixel_256"] = _csv_with(training_csv, "p256.csv", 3,
                               lambda c: c[:-1] + [c[-1].rsplit(" ", 1)[0] + " 256"])
    f["pixels_9215"] = _csv_with(training_csv, "p9215.csv", 4,
                                 lambda c: c[:-1] + [c[-1].rsplit(" ", 1)[0]])
    f["keypoint_text"] = _csv_with(training_csv, "kp.csv", 5, lambda c: ["abc", *c[1:]])
    raw = training_csv.read_bytes().split(b"\n")
    raw[2] = raw[2].replace(b" 7 ", b" \xff ", 1)
    f["not_utf8"] = d / "latin.csv"
    f["not_utf8"].write_bytes(b"\n".join(raw))
    good_zip = _zip(d / "training.zip", {"training.csv": text}).read_bytes()
    f["truncated_zip"] = d / "truncated.zip"
    f["truncated_zip"].write_bytes(good_zip[: len(good_zip) // 2])
    f["zip_no_csv"] = _zip(d / "no_training.zip", {"readme.txt": "hello"})
    f["test_pixel_256"] = d / "test256.csv"
    f["test_pixel_256"].write_text(test_csv.read_text().replace(" 0 ", " 256 ", 1))
    f["lookup_unknown_id"] = d / "lookup_unknown.csv"
    f["lookup_unknown_id"].write_bytes(lookup_csv.read_bytes().replace(b"\r\n4,3,", b"\r\n4,7,"))
    f["lookup_feature"] = d / "lookup_feature.csv"
    f["lookup_feature"].write_bytes(lookup_csv.read_bytes().replace(b"nose_tip_y", b"nose_y"))
    f["not_image"] = d / "face.png"
    f["not_image"].write_text("this is not a PNG\n")
    f["empty_image"] = d / "empty.jpg"
    f["empty_image"].write_bytes(b"")
    f["a_file"] = d / "a_file"
    f["a_file"].write_text("x")
    n_kp = header.count(",")
    f["no_labels"] = d / "no_labels.csv"
    f["no_labels"].write_text(header + "\n" + "".join(
        "," * n_kp + line.rsplit(",", 1)[1] + "\n" for line in body.splitlines() if line))
    return f


def _train_cases(f: dict) -> list:
    """(id, extra train.py args, substrings of the error line, files allowed in the workdir)."""
    data = "--config.data.train_path="
    return [
        ("unknown config key", ["--config.train.epochz=3"],
         ["unknown config key --config.train.epochz", 'did you mean "epochs"'], ()),
        ("wrong type", ["--config.train.epochs=three"], ["--config.train.epochs", "three"], ()),
        ("negative epochs", ["--config.train.epochs=-1"],
         ["--config.train.epochs=-1 must be >= 1"], ()),
        ("negative batch size", ["--config.train.batch_size=-16"],
         ["--config.train.batch_size=-16 must be >= 1"], ()),
        ("unknown flag", ["--epochs=3"], ["unknown option --epochs"], ()),
        ("unknown compute dtype", ["--config.model.compute_dtype=float16"],
         ["--config.model.compute_dtype='float16' must be one of float32, bfloat16"], ()),
        ("unknown model", ["--config.model.name=vgg"],
         ["--config.model.name='vgg' is not a model; choose one of"], ()),
        ("augment value out of range", ["--config.augment.scale=1.5"],
         ["--config.augment.scale=1.5 must be in [0, 1)"], ()),
        ("schedule typo, before any write", ["--config.train.schedule=cosin"],
         ["--config.train.schedule='cosin' must be one of constant, cosine, onecycle"], ()),
        ("negative early-stop patience", ["--config.train.early_stop_patience=-2"],
         ["--config.train.early_stop_patience=-2 must be >= 0"], ()),
        ("a size the model lacks", ["--config.model.heatmap_size=24"],
         ["--config.model.heatmap_size is not used by model simple_cnn"], ()),
        ("dropout on a heatmap model", ["--config.model.name=heatmap", "--config.model.dropout=0.5"],
         ["--config.model.dropout=0.5 is not used by model heatmap"], ()),
        ("68 landmarks without their file", ["--config.data.keypoints=ibug68"],
         ["--config.data.keypoints='ibug68' needs --config.data.keypoints_path"], ()),
        ("no labelled keypoint in the file", [data + str(f["no_labels"])],
         [f"{f['no_labels']}: no training row has a labelled keypoint"], ()),
        ("bad label policy", ["--config.data.label_policy=guess"],
         ["--config.data.label_policy='guess' must be one of mask, drop"], ()),
        ("data path missing", [data + str(f["missing"])], [f"{f['missing']}: file not found"], ()),
        ("data path is a directory", [data + str(f["directory"])],
         [f"{f['directory']}: is a directory"], ()),
        ("empty file", [data + str(f["empty"])], [f"{f['empty']}: file is empty (0 bytes)"], ()),
        ("header only", [data + str(f["header_only"])],
         [f"{f['header_only']}: has no data rows"], ()),
        ("duplicated column", [data + str(f["dup_column"])],
         [f"{f['dup_column']}, row 1: duplicated column(s) 'nose_tip_x'"], ()),
        ("pixel 256", [data + str(f["pixel_256"])],
         [f"{f['pixel_256']}, row 3, column Image: Image value 9216 is 256, outside 0..255"], ()),
        ("9215 pixels", [data + str(f["pixels_9215"])],
         [f"{f['pixels_9215']}, row 4, column Image: Image has 9215 values, expected 9216"], ()),
        ("keypoint not a number", [data + str(f["keypoint_text"])],
         [f"{f['keypoint_text']}, row 5, column left_eye_center_x: keypoint 'abc'"], ()),
        ("non-UTF-8 bytes", [data + str(f["not_utf8"])],
         [f"{f['not_utf8']}, row 3: not valid UTF-8 text: byte 0xff"], ()),
        ("truncated zip", [data + str(f["truncated_zip"])],
         [f"{f['truncated_zip']}: not a readable zip archive (truncated or corrupt?)"], ()),
        ("zip without training.csv", [data + str(f["zip_no_csv"])],
         [f"{f['zip_no_csv']}: zip holds no CSV file (expected training.csv)"], ()),
        ("missing config file", ["--config=configs/nope.py"],
         ["cannot load config", "configs/nope.py"], ()),
        ("workdir is a file", ["--workdir", f["a_file"]],
         [f"--workdir {f['a_file']} exists and is not a directory"], ()),
        ("batch larger than the data", [data + str(f["training_csv"])],
         ["--config.train.batch_size=16 is larger than the 5 training rows"], ()),
    ]


def _eval_cases(f: dict) -> list:
    """(id, eval.py args after --workdir RUN --out OUT, substrings of the error line)."""
    return [
        ("workdir is not a run", ["--workdir", f["directory"]],
         [f"--workdir {f['directory']} is not a run directory (no config.json)"]),
        ("unknown checkpoint", ["--checkpoint=worst"], ["--checkpoint", "worst"]),
        ("data missing", ["--data", f["missing"]], [f"{f['missing']}: file not found"]),
        ("data truncated zip", ["--data", f["truncated_zip"]],
         [f"{f['truncated_zip']}: not a readable zip archive"]),
        ("test pixel 256", ["--test", f["test_pixel_256"], "--lookup", f["lookup_csv"]],
         [f"{f['test_pixel_256']}, row 2, column Image: Image value", "is 256, outside 0..255"]),
        ("test without lookup", ["--test", f["test_csv"]],
         ["a submission needs both --test and --lookup"]),
        ("lookup names an unknown image", ["--test", f["test_csv"], "--lookup",
                                           f["lookup_unknown_id"]],
         [f"{f['lookup_unknown_id']}, row 5, column ImageId: ImageId 7 is not in the test "
          "images"]),
        ("lookup unknown feature", ["--test", f["test_csv"], "--lookup", f["lookup_feature"]],
         [f"{f['lookup_feature']}, row 3, column FeatureName: unknown FeatureName 'nose_y'"]),
        ("image not an image", ["--images", f["not_image"]],
         [f"{f['not_image']}: not a readable image"]),
        ("empty image", ["--images", f["empty_image"]],
         [f"{f['empty_image']}: empty file, not an image"]),
        ("image missing", ["--images", f"{f['good_image']},{f['missing']}"],
         [f"{f['missing']}: no such image file"]),
        ("image is a directory", ["--images", f["directory"]],
         [f"{f['directory']}: is a directory, not an image file"]),
        ("out under a file", ["--out", f["a_file"] / "out"],
         [f"--out {f['a_file'] / 'out'} is not writable (Not a directory)"]),
    ]


@pytest.fixture(scope="module")
def bad(tmp_path_factory, reference) -> dict:
    d = tmp_path_factory.mktemp("bad")
    from conftest import _image_text, _kaggle_like_rows  # the fixtures' own file writers

    from fkd_jax.geometry.keypoints import COLUMNS, KEYPOINT_NAMES

    rows = _kaggle_like_rows()
    lines = [",".join((*COLUMNS, "Image"))] + [
        ",".join([f"{v:.4f}" if ok else "" for v, ok in zip(kp, m)] + [_image_text(px)])
        for px, kp, m in zip(rows.pixels, rows.keypoints, rows.mask)]
    (d / "training.csv").write_text("\n".join(lines) + "\n")
    (d / "test.csv").write_text("\n".join(["ImageId,Image"] + [
        f"{k + 1},{_image_text(px)}" for k, px in enumerate(rows.pixels[:3])]) + "\n")
    lookup = [(1, "left_eye_center_x"), (1, "nose_tip_y"), (2, KEYPOINT_NAMES[14] + "_y"),
              (3, "mouth_left_corner_x")]
    (d / "lookup.csv").write_bytes(("\r\n".join(["RowId,ImageId,FeatureName,Location"] + [
        f"{k + 1},{i},{name}," for k, (i, name) in enumerate(lookup)]) + "\r\n").encode())
    f = _bad_files(d, d / "training.csv", d / "test.csv", d / "lookup.csv")
    f.update(training_csv=d / "training.csv", test_csv=d / "test.csv", lookup_csv=d / "lookup.csv",
             good_image=d / "good.png")
    Image.new("RGB", (40, 30), (200, 100, 50)).save(f["good_image"])
    return f


class _Placeholders(dict):
    """Stands in for the `bad` files at collection time, so cases can be parametrised by name."""

    def __missing__(self, key):
        return Path("/placeholder") / key


TRAIN_CASES = [c[0] for c in _train_cases(_Placeholders())]
EVAL_CASES = [c[0] for c in _eval_cases(_Placeholders())]


def test_at_least_twenty_distinct_bad_inputs():
    ids = TRAIN_CASES + EVAL_CASES
    assert len(set(ids)) == len(ids) >= 20


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_bad_input_is_one_line_exit_2_and_leaves_nothing(cli, bad, tmp_path, case):
    name, args, expected, allowed = next(c for c in _train_cases(bad) if c[0] == case)
    workdir = tmp_path / "run"
    proc = cli.run("train.py", *TINY, "--workdir", workdir, *args, check=False)
    line = one_line_error(proc)
    for part in expected:
        assert part in line, f"{name}: {part!r} not in {line!r}"
    left = {p.name for p in workdir.iterdir()} if workdir.is_dir() else set()
    assert left <= set(allowed), f"{name}: left {left} in the workdir"
    assert "epoch" not in proc.stdout


@pytest.mark.parametrize("case", EVAL_CASES)
def test_eval_bad_input_is_one_line_exit_2_and_writes_nothing(cli, bad, reference, tmp_path,
                                                               case):
    name, args, expected = next(c for c in _eval_cases(bad) if c[0] == case)
    before = tree(reference)
    out = tmp_path / "out"
    proc = cli.run("eval.py", "--workdir", reference, "--out", out, *args, check=False)
    line = one_line_error(proc)
    for part in expected:
        assert part in line, f"{name}: {part!r} not in {line!r}"
    assert not out.exists(), f"{name}: eval left {list(out.rglob('*'))}"
    assert tree(reference) == before, f"{name}: the run directory changed"
    assert "wrote" not in proc.stdout


def test_cli_runner_matches_a_real_subprocess(cli, bad, tmp_path):
    """The forked runner reports exactly what `python train.py ...` reports."""
    for args in ([f"--config.data.train_path={bad['pixel_256']}"],):
        argv = [*TINY, "--workdir", str(tmp_path / "w"), *args]
        real = subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        forked = cli.run("train.py", *argv, check=False)
        assert (real.returncode, real.stderr, real.stdout) == (
            forked.returncode, forked.stderr, forked.stdout)
    crash = cli.run("eval.py", check=False, inject="import fkd_jax.cli as c\n"
                    "c.parse_flags = lambda *a: 1 / 0")  # a programming error keeps its traceback
    assert crash.returncode == 1 and "Traceback" in crash.stderr
    assert "ZeroDivisionError" in crash.stderr


# --- 2-4. Kills, Ctrl-C, corruption, a non-finite loss -----------------------------------------


_SLOW_METRICS = """
import time, fkd_jax.training.run_dir as e
def slow(workdir, record):
    time.sleep(1.0)
    return original(workdir, record)
original, e.append_metrics = e.append_metrics, slow
"""


def _tmp_save_dirs(workdir: Path) -> list[Path]:
    return list((workdir / "checkpoints").rglob("*.orbax-checkpoint-tmp*"))


def test_ctrl_c_then_sigkill_mid_save_and_at_random_then_rerun_is_bit_identical(
        cli, reference, tmp_path):
    workdir = tmp_path / "run"
    args = ["train.py", *RUN, "--workdir", workdir]
    # Ctrl-C: the current epoch is finished, saved, and the run exits 130 within seconds.
    proc = cli.start(*args)
    proc.wait_for_line("epoch")
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    proc.wait()
    assert proc.returncode == 130, proc.stderr
    assert time.monotonic() - t0 < 20
    saved = latest_params(workdir)[1]["epoch"]
    assert f"interrupted: saved epoch {saved}" in proc.stderr and saved < EPOCHS
    assert [r["epoch"] for r in metrics(workdir)] == list(range(1, saved + 1))
    # SIGKILL while a checkpoint is being written: the previous one stays restorable.
    proc = cli.start(*args)
    while proc.returncode is None and not _tmp_save_dirs(workdir):
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait().returncode == -signal.SIGKILL
    assert "resuming" in proc.stdout
    assert latest_params(workdir)[1]["epoch"] >= saved
    # SIGKILL at a random (seeded) moment after an epoch line. Each epoch's record is slowed
    # by 1 s so the run is still going at any moment in [0, 2) s: on a fast idle machine with
    # a warm compilation cache the remaining epochs take well under a second.
    proc = cli.start(*args, inject=_SLOW_METRICS)
    proc.wait_for_line("resuming")
    time.sleep(random.Random(7).uniform(0.0, 2.0))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The same command finishes the run: the result is the uninterrupted one, bit for bit.
    final = cli.run(*args)
    assert "resuming" in final.stdout
    assert not _tmp_save_dirs(workdir)  # the killed save's leftovers are gone
    assert_same_params(reference, workdir)
    assert_same_metrics(reference, workdir)


def test_corrupted_latest_checkpoint_falls_back_to_the_previous_with_a_warning(
        cli, reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    newest = workdir / "checkpoints" / str(EPOCHS)
    data_file = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    garbled = bytearray(data_file.read_bytes())  # same length: only a checksum can tell
    mid = len(garbled) // 2
    garbled[mid:mid + 64] = bytes(b ^ 0x5A for b in garbled[mid:mid + 64])
    data_file.write_bytes(bytes(garbled))
    proc = cli.run("train.py", *RUN, "--workdir", workdir)
    assert f"warning: checkpoint {newest} is unreadable" in proc.stderr
    assert "using the previous one" in proc.stderr and "Traceback" not in proc.stderr
    assert f"from epoch {EPOCHS - 1}" in proc.stdout
    assert_same_params(reference, workdir)
    assert_same_metrics(reference, workdir)


def test_non_finite_loss_stops_with_a_clear_message_keeping_the_last_good_checkpoint(
        cli, reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    proc = cli.run("train.py", *TINY, "--workdir", workdir, f"--config.train.epochs={EPOCHS + 3}",
                   "--config.train.learning_rate=1e6", check=False)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: training loss became") and "learning_rate" in line
    good = int(line.split("last good checkpoint (epoch ")[1].split(")")[0])
    assert good >= EPOCHS
    state, meta = latest_params(workdir)
    assert meta["epoch"] == good
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))
    records = metrics(workdir)
    assert [r["epoch"] for r in records] == list(range(1, good + 1))
    assert all(np.isfinite(r["train_loss"]) for r in records)


def test_a_second_run_on_the_same_workdir_stops_at_once_and_changes_nothing(cli, tmp_path):
    workdir = tmp_path / "busy"
    first = cli.start("train.py", *TINY, "--workdir", workdir, "--config.train.epochs=200")
    first.wait_for_line("epoch")
    second = subprocess.run([sys.executable, "train.py", *TINY, "--workdir", str(workdir),
                             "--config.train.epochs=200"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    line = one_line_error(second)
    assert f"--workdir {workdir} is in use by another train.py (pid {first.pid}" in line
    assert second.stdout == ""
    os.kill(first.pid, signal.SIGINT)  # the first saves its epoch and stops
    assert first.wait().returncode == 130
    epochs = [r["epoch"] for r in metrics(workdir)]
    assert epochs == list(range(1, len(epochs) + 1))  # every epoch once: nobody else wrote
    # The lock died with its holder: the same command now resumes.
    again = cli.run("train.py", *TINY, "--workdir", workdir, f"--config.train.epochs={epochs[-1] + 1}")
    assert "resuming" in again.stdout


# --- 5. An unwritable work directory, a full disk ----------------------------------------------


def _can_mount(tmp_path: Path) -> bool:
    probe = tmp_path / "mount_probe"
    probe.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], check=True)
    return ok


def _mounted_copy(reference: Path, where: Path, spare_mb: int):
    """`reference` copied onto a fresh tmpfs with `spare_mb` MiB free; returns (dir, umount)."""
    used_mb = sum(p.stat().st_size for p in reference.rglob("*") if p.is_file()) / 2**20
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(used_mb + spare_mb) + 1}m", "tmpfs",
                    str(where)], check=True)
    shutil.copytree(reference, where, dirs_exist_ok=True)
    return where, lambda: subprocess.run(["umount", "-l", str(where)], check=True)


_READ_ONLY = """
import errno, pathlib
def _guard(orig):
    def guarded(self, *a, **k):
        if str(self).startswith({root!r}):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return orig(self, *a, **k)
    return guarded
pathlib.Path.write_text = _guard(pathlib.Path.write_text)
pathlib.Path.mkdir = _guard(pathlib.Path.mkdir)
"""


def test_unwritable_workdir_is_a_clear_error_and_changes_nothing(cli, reference, tmp_path):
    """A read-only mount if we may mount (root); else chmod 0o500 (stops non-root writers)."""
    if _can_mount(tmp_path):
        workdir, umount = _mounted_copy(reference, tmp_path / "ro", spare_mb=16)
        subprocess.run(["mount", "-o", "remount,ro", str(workdir)], check=True)
        why = "Read-only file system"
        inject = ""
    elif os.geteuid() != 0:
        workdir = tmp_path / "ro"
        shutil.copytree(reference, workdir)
        workdir.chmod(0o500)
        umount, why = (lambda: workdir.chmod(0o700)), "Permission denied"
        inject = ""
    else:  # root without mount permission: nothing denies a write, so simulate a read-only fs
        workdir = tmp_path / "ro"
        shutil.copytree(reference, workdir)
        umount, why = (lambda: None), "Read-only file system"
        inject = _READ_ONLY.format(root=str(workdir))
    try:
        before = tree(workdir)
        proc = cli.run("train.py", *TINY, "--workdir", workdir,
                       f"--config.train.epochs={EPOCHS + 2}", check=False, inject=inject)
        assert one_line_error(proc) == f"error: --workdir {workdir} is not writable ({why})"
        out = workdir / "eval"
        proc = cli.run("eval.py", "--workdir", workdir, check=False, inject=inject)
        assert one_line_error(proc) == f"error: --out {out} is not writable ({why})"
        assert tree(workdir) == before
        assert_same_params(reference, workdir)
    finally:
        umount()


_FAIL_METRICS = f"""
import errno, fkd_jax.training.run_dir as e
def full(workdir, record):
    if record["epoch"] > {EPOCHS}:
        raise OSError(errno.ENOSPC, "No space left on device", str(workdir / "metrics.jsonl"))
    return original(workdir, record)
original, e.append_metrics = e.append_metrics, full
"""


def test_disk_full_is_a_clear_error_and_the_saved_run_resumes_intact(cli, reference, tmp_path):
    """A real full tmpfs where we may mount; and always a simulated ENOSPC (metrics write)."""
    ref_metrics = metrics(reference)
    args = [*TINY, f"--config.train.epochs={EPOCHS + 2}"]
    if _can_mount(tmp_path):
        workdir, umount = _mounted_copy(reference, tmp_path / "full", spare_mb=1)
        try:
            proc = cli.run("train.py", *args, "--workdir", workdir, check=False)
            line = one_line_error(proc)
            assert f"error: could not save a checkpoint in {workdir}/checkpoints/" in line
            assert "(No space left on device); the checkpoints saved before it are intact" in line
            state, meta = latest_params(workdir)
            assert meta["epoch"] >= EPOCHS
            if meta["epoch"] == EPOCHS:
                assert_same_params(reference, workdir)
            assert metrics(workdir)[:EPOCHS] == ref_metrics
        finally:
            umount()
    workdir = tmp_path / "simulated"
    shutil.copytree(reference, workdir)
    proc = cli.run("train.py", *args, "--workdir", workdir, check=False, inject=_FAIL_METRICS)
    assert one_line_error(proc) == (f"error: {workdir / 'metrics.jsonl'}: No space left on "
                                    "device")
    assert_same_params(reference, workdir)
    assert metrics(workdir) == ref_metrics
    cli.run("train.py", *args, "--workdir", workdir)  # space again: the run resumes and finishes
    assert [r["epoch"] for r in metrics(workdir)] == list(range(1, EPOCHS + 3))
