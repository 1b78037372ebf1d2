"""A run directory's promises, through the command line: one writer, only
kdtrain's files touched, nothing written before the checks, finished runs
never downgraded, model files verified, stale generations refused."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import HANG_GUARD
from kdtrain import cli
from kdtrain import data as data_module
from kdtrain import models
from kdtrain.chain import ChainDirectory

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fault_script import tiny_mlp  # noqa: E402

models.register("tiny-mlp", tiny_mlp, overwrite=True)
TINY = ["--model", "tiny-mlp", "--generations", "2", "--epochs", "1",
        "--train-size", "200", "--test-size", "100", "--no-progress",
        "--no-tensorboard"]


def kdtrain(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def table(out):
    return [line for line in out.splitlines() if line.startswith("| ")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    directory = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(["ban", *TINY, "--directory", str(directory)]) == 0
    return directory


@pytest.fixture
def run(finished, tmp_path):
    """A private copy of the finished run."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def snapshot(directory):
    return {
        path.relative_to(directory): path.read_bytes()
        for path in sorted(directory.rglob("*")) if path.is_file()
    }


# One writer ---------------------------------------------------------------------


def test_a_second_process_is_refused_at_once_naming_the_holder(run, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from kdtrain.chain.lock import DirectoryLock; "
         "DirectoryLock(sys.argv[1]).acquire(); print('held', flush=True); "
         "sys.stdin.read()", str(run)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(run)
        for argv in (["ban", *TINY, "--directory", str(run)],
                     ["evaluate", str(run)], ["report", str(run)]):
            code, _, err = kdtrain(capsys, *argv)
            assert code == cli.EXIT_USAGE, err
            assert f"in use by another kdtrain process (PID {holder.pid})" in err
        assert snapshot(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=HANG_GUARD)
    # The killed holder's lock went with it.
    code, _, err = kdtrain(capsys, "report", str(run))
    assert code == cli.EXIT_OK, err


# Only kdtrain's files ---------------------------------------------------------------


def test_overwrite_never_touches_files_kdtrain_did_not_write(tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "logs").mkdir(parents=True)
    (mine / "logs" / "notes.txt").write_text("my own logs")
    (mine / "config.toml").write_text("my = 'settings'\n")
    before = snapshot(mine)
    code, _, err = kdtrain(capsys, "ban", *TINY, "--directory", str(mine),
                           "--overwrite")
    assert code == cli.EXIT_USAGE
    assert "holds files kdtrain did not write: config.toml, logs" in err
    assert snapshot(mine) == before and not (mine / ".kdtrain.lock").exists()


def test_overwrite_removes_kdtrain_files_only_when_nothing_else(run, capsys):
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    code, _, err = kdtrain(capsys, "ban", *TINY, "--epochs", "2",
                           "--directory", str(run), "--overwrite")
    assert code == cli.EXIT_USAGE
    assert "it also holds notes.txt" in err
    assert snapshot(run) == before
    (run / "notes.txt").unlink()
    old = (run / "gen-1" / "model.keras").read_bytes()
    code, out, err = kdtrain(capsys, "ban", *TINY, "--epochs", "2",
                             "--directory", str(run), "--overwrite")
    assert code == cli.EXIT_OK, err
    assert (run / "gen-1" / "model.keras").read_bytes() != old
    assert "epochs = 2" in (run / "config.toml").read_text()


# Nothing written before the checks ------------------------------------------------


def test_a_command_that_fails_its_checks_writes_nothing(tmp_path, capsys):
    directory = tmp_path / "run"
    code, _, err = kdtrain(capsys, "ban", *TINY, "--directory", str(directory),
                           "--attention-transfer", "group_9")
    assert code == cli.EXIT_USAGE
    assert "has no layer 'group_9'" in err  # before the teacher trained
    assert not directory.exists()
    code, _, err = kdtrain(capsys, "ban", *TINY, "--directory", str(directory))
    assert code == cli.EXIT_OK, err


def test_bad_training_data_is_refused_before_anything(tmp_path):
    import kdtrain

    def build():
        return tiny_mlp(num_classes=10, input_shape=(64,))

    x = np.random.default_rng(0).random((64, 64), dtype="float32")
    y = np.arange(64) % 10
    directory = tmp_path / "run"
    runner = kdtrain.GenerationRunner(build, generations=1, directory=directory,
                                      progress=False, verbose=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        runner.run((x, y), batch_size=0)
    with pytest.raises(ValueError, match="`train_data` is empty"):
        runner.run((x[:0], y[:0]))
    with pytest.raises(ValueError, match=r"12 at sample 5 .*\[0, 10\)"):
        runner.run((x, np.where(np.arange(64) == 5, 12, y)))
    dataset = kdtrain.data.load("digits", batch_size=16).train.map(
        lambda a, b: (a, b - 1)
    )
    digits_runner = kdtrain.GenerationRunner(
        lambda: tiny_mlp(num_classes=10, input_shape=(8, 8, 1)),
        generations=1, directory=directory, progress=False, verbose=0,
    )
    with pytest.raises(ValueError, match="Batch 0 of `train_data`.*-1"):
        digits_runner.run(dataset)
    assert not directory.exists()


# Finished stays finished ------------------------------------------------------------


def test_a_finished_run_is_never_downgraded(run, capsys):
    results = (run / "results.json").read_bytes()
    assert json.loads(results)["complete"] is True
    code, out, err = kdtrain(capsys, "ban", *TINY, "--directory", str(run))
    assert code == cli.EXIT_OK, err
    # A rerun of the finished chain killed while it loads the generations
    # (without its config.toml, which lets the command print the recorded
    # table without loading anything), and an evaluate killed while it
    # evaluates them.
    config = (run / "config.toml").read_text()
    (run / "config.toml").unlink()
    for argv, fault in (
        ([os.path.join(HERE, "fault_script.py"), "ban", *TINY,
          "--directory", str(run)], "gen-1/model.load"),
        (["-m", "kdtrain", "evaluate", str(run)], "evaluate.model"),
    ):
        killed = subprocess.run([sys.executable, *argv], capture_output=True,
                                env={**os.environ, "KDTRAIN_FAULT": fault})
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert (run / "results.json").read_bytes() == results
        if not (run / "config.toml").exists():
            (run / "config.toml").write_text(config)
    assert kdtrain(capsys, "report", str(run))[0] == cli.EXIT_OK
    assert (run / "results.json").read_bytes() == results
    code, out, err = kdtrain(capsys, "evaluate", str(run))
    assert code == cli.EXIT_OK, err
    with pytest.raises(ValueError, match="only once complete"):
        ChainDirectory(run).write_results({"complete": False})


# Verified models and lineage -------------------------------------------------------


def _test_split(run):
    from kdtrain import commands
    from kdtrain import options

    settings = options.parse(["ban", *TINY, "--directory", str(run)])[1]
    loaded = data_module.load("digits", **commands.data_options(settings))
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in loaded.test])
    return np.concatenate(xs), np.concatenate(ys)


def _overstate(path):
    """Rewrites every stored accuracy in a JSON file as 0.987654."""
    def walk(value):
        if isinstance(value, dict):
            return {k: 0.987654 if k == "accuracy" else walk(v)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    path.write_text(json.dumps(walk(json.loads(path.read_text()))))


def test_evaluate_measures_the_model_files(run, capsys):
    # Numbers stored in the run are not what evaluate reports.
    for path in [run / "results.json", *run.glob("gen-*/record.json")]:
        _overstate(path)
    code, out, err = kdtrain(capsys, "evaluate", str(run))
    assert code == cli.EXIT_OK, err
    x, y = _test_split(run)
    accuracies = []
    for k in range(3):
        model = keras.saving.load_model(run / f"gen-{k}" / "model.keras")
        logits = model.predict(x, verbose=0)
        accuracies.append(np.mean(np.argmax(logits, axis=1) == y))
    printed = next(line for line in table(out) if line.startswith("| Accuracy"))
    values = [float(v) for v in printed.split("|")[2:5]]
    np.testing.assert_allclose(values, accuracies, atol=6e-5)
    assert "0.9877" not in out


def test_a_replaced_model_file_is_refused_naming_it(run, capsys):
    shutil.copy(run / "gen-1" / "model.keras", run / "gen-2" / "model.keras")
    for argv in (["evaluate", str(run)],
                 ["ban", *TINY, "--directory", str(run)]):
        code, _, err = kdtrain(capsys, *argv)
        assert code == cli.EXIT_USAGE
        assert "gen-2/model.keras has changed since generation 2 finished" in err
        assert "--retrain-from 2" in err


def test_safe_mode_is_never_bypassed(run, capsys):
    unsafe = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                               keras.layers.Lambda(lambda t: t * 2.0),
                               keras.layers.Dense(10)])
    path = run / "gen-2" / "model.keras"
    unsafe.save(path)
    record_path = run / "gen-2" / "record.json"
    record = json.loads(record_path.read_text())
    record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    record_path.write_text(json.dumps(record))
    code, _, err = kdtrain(capsys, "evaluate", str(run))
    assert code == cli.EXIT_USAGE
    assert "gen-2/model.keras cannot be loaded with Keras' safe mode on" in err
    assert "Lambda" in err


def test_a_deleted_generation_is_refused_until_retrained(run, capsys):
    teacher = run / "gen-0" / "model.keras"
    teacher_before = (teacher.read_bytes(), teacher.stat().st_mtime_ns)
    results = (run / "results.json").read_bytes()
    shutil.rmtree(run / "gen-1")
    code, _, err = kdtrain(capsys, "ban", *TINY, "--directory", str(run))
    assert code == cli.EXIT_USAGE
    assert "gen-1/model.keras is missing" in err
    assert "gen-2 was taught by gen-1 as it was then" in err
    assert "pass --retrain-from 1" in err
    assert (run / "results.json").read_bytes() == results
    code, out, err = kdtrain(capsys, "ban", *TINY, "--directory", str(run),
                             "--retrain-from", "1")
    assert code == cli.EXIT_OK, err
    assert (teacher.read_bytes(), teacher.stat().st_mtime_ns) == teacher_before
    lineage = json.loads((run / "gen-2" / "record.json").read_text())
    assert lineage["taught_by"]["sha256"] == hashlib.sha256(
        (run / "gen-1" / "model.keras").read_bytes()
    ).hexdigest()
    assert json.loads((run / "results.json").read_text())["complete"]


# Clear errors ---------------------------------------------------------------------


def test_a_damaged_results_file_is_named(run, capsys):
    (run / "results.json").write_text('{"complete": tru')
    code, _, err = kdtrain(capsys, "evaluate", str(run))
    assert code == cli.EXIT_USAGE
    assert f"{run / 'results.json'} is damaged: it is not valid JSON" in err


def test_a_teacher_that_is_not_a_keras_archive_says_so(tmp_path, capsys):
    fake = tmp_path / "teacher.keras"
    fake.write_text("not a model")
    code, _, err = kdtrain(capsys, "distill", "--teacher", str(fake),
                           "--model", "tiny-mlp", "--directory",
                           str(tmp_path / "run"))
    assert code == cli.EXIT_USAGE
    assert f"--teacher {fake} is not a .keras archive" in err
    assert not (tmp_path / "run").exists()


def test_a_read_only_directory_is_named(tmp_path):
    locked = tmp_path / "read-only"
    locked.mkdir()
    os.chmod(locked, 0o555)
    prefix = []
    if os.geteuid() == 0:
        # Root writes anywhere; in a user namespace it keeps its files but
        # loses that override.
        prefix = ["unshare", "--user", "--map-user=65534"]
        if shutil.which("unshare") is None or subprocess.run(
            [*prefix, "true"], capture_output=True
        ).returncode != 0:
            pytest.skip("running as root, and no user namespace to drop it")
    result = subprocess.run(
        [*prefix, sys.executable, os.path.join(HERE, "fault_script.py"), "ban",
         *TINY, "--directory", str(locked)],
        capture_output=True, text=True, timeout=HANG_GUARD,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == cli.EXIT_USAGE, result.stderr[-2000:]
    assert f"Cannot write to the run directory {locked}" in " ".join(
        result.stderr.split()
    )
    assert os.listdir(locked) == []


def test_nan_teacher_outputs_name_the_teacher_and_the_batch(tmp_path):
    import kdtrain

    rng = np.random.default_rng(0)
    x = rng.random((600, 8), dtype="float32") + 1.0
    x[300, 0] = 0.0  # The teacher's output is NaN for this sample only.
    y = np.arange(600) % 3
    inputs = keras.Input((8,))
    logits = keras.layers.Dense(3)(inputs)
    poison = keras.ops.sqrt(inputs[:, :1] - 0.5)  # NaN where x0 < 0.5
    teacher = keras.Model(inputs, logits + 0.0 * poison, name="poisoned")

    def build():
        return tiny_mlp(num_classes=3, input_shape=(8,))

    for cache in (True, False):
        runner = kdtrain.GenerationRunner(
            build, generations=1, teacher=teacher, cache_teacher=cache,
            progress=False, verbose=0, directory=tmp_path / f"run-{cache}",
        )
        with pytest.raises(ValueError) as error:
            runner.run((x, y), epochs=1, batch_size=100 if not cache else 256)
        message = str(error.value)
        assert "The teacher teacher (Teacher) emits NaN" in message
        batch = "batch 1 " if cache else "batch 3 "
        assert batch in message and "first at sample 300" in message


# The lock itself ------------------------------------------------------------


def _acquire_elsewhere(directory, shared=False):
    """Takes the lock from another process; returns its CompletedProcess."""
    script = ("import sys; from kdtrain.chain.lock import DirectoryLock; "
              "DirectoryLock(sys.argv[1]).acquire(shared=sys.argv[2] == 'r')")
    return subprocess.run(
        [sys.executable, "-c", script, str(directory), "r" if shared else "w"],
        capture_output=True, text=True,
    )


def test_the_lock_is_reentrant_and_released_on_errors(tmp_path):
    from kdtrain.chain.lock import DirectoryLock

    outer, inner = DirectoryLock(tmp_path), DirectoryLock(tmp_path)
    with pytest.raises(RuntimeError, match="crash"):
        with outer:
            with inner:  # the command line, then the runner
                assert outer.held
            assert outer.held  # the inner release kept it
            refused = _acquire_elsewhere(tmp_path)
            assert refused.returncode != 0
            assert f"(PID {os.getpid()})" in refused.stderr
            raise RuntimeError("crash")
    assert not outer.held
    assert _acquire_elsewhere(tmp_path).returncode == 0


def test_a_deleted_lock_file_stops_the_writer(tmp_path):
    from kdtrain.chain.errors import RunDirectoryError
    from kdtrain.chain.lock import DirectoryLock

    lock = DirectoryLock(tmp_path)
    with lock:
        lock.verify()
        (tmp_path / ".kdtrain.lock").unlink()  # someone "unsticks" it
        with pytest.raises(RunDirectoryError, match="removed or replaced"):
            lock.verify()
        with pytest.raises(RunDirectoryError, match="removed or replaced"):
            ChainDirectory(tmp_path).write_results({"complete": True})


def test_readers_share_the_lock_but_not_with_a_writer(tmp_path):
    from kdtrain.chain.lock import DirectoryLock

    DirectoryLock(tmp_path).acquire().release()  # the lock file exists
    reader = DirectoryLock(tmp_path).acquire(shared=True)
    try:
        assert _acquire_elsewhere(tmp_path, shared=True).returncode == 0
        writer = _acquire_elsewhere(tmp_path)
        assert writer.returncode != 0 and "DirectoryLocked" in writer.stderr
    finally:
        reader.release()
    assert _acquire_elsewhere(tmp_path).returncode == 0


# Retraining and tampered manifests --------------------------------------------


def test_an_interrupted_retrain_resumes_without_discarding_again(run):
    argv = [sys.executable, os.path.join(HERE, "fault_script.py"), "ban",
            *TINY, "--directory", str(run), "--retrain-from", "1"]
    old = (run / "gen-1" / "model.keras").read_bytes()
    killed = subprocess.run(argv, capture_output=True, text=True,
                            env={**os.environ, "KDTRAIN_FAULT":
                                 "gen-2/train.step@2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    retrained = run / "gen-1" / "model.keras"
    assert retrained.read_bytes() != old
    stamp = (retrained.read_bytes(), retrained.stat().st_mtime_ns)
    assert json.loads((run / "run.json").read_text())["retrain_from"] == 1
    again = subprocess.run(argv, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    # The same request resumed the retraining: gen-1 was kept.
    assert (retrained.read_bytes(), retrained.stat().st_mtime_ns) == stamp
    assert "retrain_from" not in json.loads((run / "run.json").read_text())


def test_a_finished_retrain_whose_request_was_not_cleared_runs_again(run):
    # A crash between writing results.json and clearing the request.
    run_file = run / "run.json"
    run_file.write_text(json.dumps(
        {**json.loads(run_file.read_text()), "retrain_from": 1}
    ))
    ChainDirectory(run).finished_records(0, 2, retrain_from=1)
    assert not (run / "gen-1").exists() and not (run / "gen-2").exists()
    assert (run / "gen-0" / "model.keras").exists()


def test_the_resume_command_never_discards_work():
    from kdtrain import commands

    assert commands._resume_arguments(
        ["ban", "--retrain-from", "2", "--epochs", "3", "--overwrite",
         "--retrain-from=1", "--seed", "4"]
    ) == ["ban", "--epochs", "3", "--seed", "4"]


def test_overwrite_refuses_a_manifest_edited_by_hand(run, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    run_file = run / "run.json"
    manifest = json.loads(run_file.read_text())
    manifest["manifest"].append("../outside")
    run_file.write_text(json.dumps(manifest))
    code, _, err = kdtrain(capsys, "ban", *TINY, "--epochs", "2",
                           "--directory", str(run), "--overwrite")
    assert code == cli.EXIT_USAGE
    assert "names kdtrain never writes (../outside)" in err
    assert (outside / "precious.txt").read_text() == "keep"


# Python-API reruns -------------------------------------------------------------


def _python_runner(directory, **kwargs):
    import kdtrain

    return kdtrain.GenerationRunner(
        lambda: tiny_mlp(num_classes=10, input_shape=(64,)), generations=1,
        directory=directory, seed=0, progress=False, tensorboard=False,
        verbose=0, **kwargs,
    )


def test_other_data_of_the_same_shape_is_another_chain(digits, tmp_path):
    from kdtrain.chain import ConfigurationMismatch

    x, y = digits
    _python_runner(tmp_path).run((x[:200], y[:200]), epochs=1, batch_size=50)
    with pytest.raises(ConfigurationMismatch, match="samples_sha256"):
        _python_runner(tmp_path).run((x[200:400], y[200:400]), epochs=1,
                                     batch_size=50)


def test_a_rerun_without_evaluation_keeps_the_table(digits, tmp_path):
    x, y = digits
    data = dict(test_data=(x[300:400], y[300:400]), epochs=1, batch_size=50)
    first = _python_runner(tmp_path).run((x[:300], y[:300]), **data)
    results = (tmp_path / "results.json").read_bytes()
    again = _python_runner(tmp_path).run((x[:300], y[:300]), evaluate=False,
                                         **data)
    assert again.table == first.table
    assert (tmp_path / "results.json").read_bytes() == results


def test_a_damaged_results_file_is_rebuilt_by_a_rerun(digits, tmp_path):
    x, y = digits
    data = dict(test_data=(x[300:400], y[300:400]), epochs=1, batch_size=50)
    first = _python_runner(tmp_path).run((x[:300], y[:300]), **data)
    (tmp_path / "results.json").write_text("{torn")
    with pytest.warns(UserWarning, match="results.json is damaged"):
        again = _python_runner(tmp_path).run((x[:300], y[:300]), **data)
    assert [r["accuracy"] for r in again.table] == [
        r["accuracy"] for r in first.table
    ]
    assert json.loads((tmp_path / "results.json").read_text())["complete"]



def test_a_run_made_before_a_setting_existed_resumes_as_it_was(run, capsys):
    # A directory written before `distill_ensemble` existed lacks the key;
    # its chain is the one `distill_ensemble=False` makes.
    path = run / "run.json"
    recorded = json.loads(path.read_text())
    recorded["config"].pop("distill_ensemble")
    recorded["config"]["settings"].pop("distill_ensemble")
    path.write_text(json.dumps(recorded))
    before = snapshot(run)
    code, out, err = kdtrain(capsys, "ban", *TINY, "--directory", str(run))
    assert code == 0, err
    assert "Training" not in out and table(out)
    changed = {str(p) for p, content in snapshot(run).items()
               if before.get(p) != content}
    # Nothing trained again; the settings file now names the new setting.
    assert changed <= {"results.json", "config.toml"}
    # With the new setting on, the same directory is another chain.
    code, out, err = kdtrain(capsys, "ban", *TINY, "--distill-ensemble",
                             "--directory", str(run))
    assert code == cli.EXIT_USAGE
    assert 'distill_ensemble: "<absent>" in the directory, true now' in err
