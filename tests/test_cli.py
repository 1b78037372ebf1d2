import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import tomllib

import pytest

from conftest import HANG_GUARD
from conftest import run_without_tensorflow
import kdtrain
from kdtrain import cli
from kdtrain import options
from kdtrain import quick

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
TINY = ["--train-size", "96", "--test-size", "64", "--epochs", "1",
        "--generations", "2", "--batch-size", "32", "--no-progress"]


def run_main(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def kdtrain_process(args, cwd, **kwargs):
    """Runs the installed console script's module in a fresh process."""
    return subprocess.Popen(
        [sys.executable, "-m", "kdtrain", *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, **kwargs,
    )


# Parsing and configuration ---------------------------------------------------


def test_flags_override_the_config_file(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('command = "ban"\nepochs = 7\nloss = "kl"\n'
                      "temperature = 2.5\nground_truth_weight = 0.2\n")
    command, settings = options.parse(
        ["ban", "--config", str(config), "--epochs", "3"]
    )
    assert command == "ban"
    assert settings.epochs == 3            # the flag wins
    assert settings.loss == "kl"           # from the file
    assert settings.temperature == 2.5
    assert settings.ground_truth_weight == 0.2
    assert settings.generations == 3       # the default
    assert settings.directory == os.path.join("runs", "ban-digits-wrn-16-1")


def test_unknown_config_key_lists_valid_keys_and_closest(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("epoch = 3\n")
    code, _, err = run_main(["ban", "--config", str(config)], capsys)
    assert code == cli.EXIT_USAGE
    assert "Unknown key 'epoch'" in err
    assert "Did you mean 'epochs'?" in err
    assert "ground_truth_weight" in err   # the valid keys are listed


def test_unknown_flag_names_the_closest(capsys):
    code, _, err = run_main(["ban", "--temprature", "3"], capsys)
    assert code == cli.EXIT_USAGE
    assert "--temprature" in err and "Did you mean '--temperature'?" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ban", "--epochs", "-1"], "--epochs must be >= 1"),
        (["ban", "--temperature", "0"], "--temperature must be > 0"),
        (["ban", "--temperature", "nan"], "--temperature must be finite"),
        (["ban", "--ground-truth-weight", "1.5"],
         "--ground-truth-weight must be <= 1"),
        (["ban", "--ground-truth-weight", "-0.1"],
         "--ground-truth-weight must be >= 0"),
        (["ban", "--generations", "0"], "--generations must be >= 1"),
        (["ban", "--epochs", "two"], "--epochs must be int"),
        (["ban", "--loss", "kld"], "Did you mean 'kl'?"),
        (["ban", "--dataset", "image_folder"], "needs --data-dir"),
        (["ban", "--loss", "logits_mse", "--temperature", "2"],
         "has no temperature"),
    ],
)
def test_bad_values_exit_2_with_a_message(argv, message, capsys):
    code, _, err = run_main(argv, capsys)
    assert code == cli.EXIT_USAGE
    assert message in err


def test_bad_values_in_a_config_file(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("temperature = -2.0\n")
    code, _, err = run_main(["ban", "--config", str(config)], capsys)
    assert code == cli.EXIT_USAGE
    assert "'temperature'" in err and "must be > 0" in err


def test_config_written_for_another_command(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('command = "distill"\n')
    code, _, err = run_main(["ban", "--config", str(config)], capsys)
    assert code == cli.EXIT_USAGE
    assert "`kdtrain distill`" in err


def test_help_documents_every_option_with_its_default():
    parser = options.build_parser()
    subparsers = next(
        a for a in parser._actions if a.dest == "command"
    ).choices
    for command in ("ban", "distill"):
        text = " ".join(subparsers[command].format_help().split())
        for option in options.options_for(command):
            assert option.flag in text, option.flag
        assert "(default: 3)" in text or command == "distill"
        assert "(default: soft_targets)" in text


def test_no_command_is_a_usage_error(capsys):
    code, _, err = run_main([], capsys)
    assert code == cli.EXIT_USAGE
    assert "Name a command" in err


# Experiments ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted(EXPERIMENTS.glob("*.toml")), ids=lambda p: p.name
)
def test_every_experiment_parses_and_validates(path, capsys):
    with open(path, "rb") as file:
        command = tomllib.load(file)["command"]
    code, out, err = run_main(
        [command, "--config", str(path), "--dry-run"], capsys
    )
    assert code == cli.EXIT_OK, err
    assert "configuration valid" in out
    assert "parameters" in out


# Running ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """`kdtrain ban` on digits with tiny settings, run as a subprocess."""
    cwd = tmp_path_factory.mktemp("cli")
    process = kdtrain_process(["ban", *TINY, "--seed", "3"], cwd)
    out, err = process.communicate(timeout=HANG_GUARD)
    return cwd / "runs" / "ban-digits-wrn-16-1", process.returncode, out, err


def test_ban_prints_the_table_and_fills_its_directory(finished_run):
    directory, code, out, err = finished_run
    assert code == cli.EXIT_OK, err[-3000:]
    header = next(line for line in out.splitlines() if line.startswith("| Metrics"))
    assert header.split("|")[2:-1] == [
        " Teacher ", " BAN-1 ", " BAN-2 ", " Ensemble ", " Ensemble + teacher "
    ]
    accuracy = next(line for line in out.splitlines() if line.startswith("| Accuracy"))
    values = [float(cell) for cell in accuracy.split("|")[2:-1]]
    assert len(values) == 5 and all(0.0 <= v <= 1.0 for v in values)
    for generation in range(3):
        assert (directory / f"gen-{generation}" / "model.keras").is_file()
    results = json.loads((directory / "results.json").read_text())
    assert results["complete"]
    test_rows = [r for r in results["table"] if r["split"] == "test"]
    assert [r["accuracy"] for r in test_rows] == pytest.approx(values, abs=1e-4)
    assert (directory / "logs" / "gen-1" / "train").is_dir()
    with open(directory / "config.toml", "rb") as file:
        config = tomllib.load(file)
    assert config["command"] == "ban" and config["train_size"] == 96


def test_report_writes_markdown_and_png(finished_run, capsys):
    directory, code, _, _ = finished_run
    assert code == 0
    assert cli.main(["report", str(directory)]) == cli.EXIT_OK
    markdown = (directory / "report.md").read_text()
    assert "| Metrics | Teacher | BAN-1 | BAN-2 | Ensemble |" in markdown
    png = (directory / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_evaluate_prints_the_same_table(finished_run, capsys):
    directory, code, out, _ = finished_run
    assert code == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(directory)]) == cli.EXIT_OK
    printed, costs = capsys.readouterr().out.split("What each model costs")
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert [line for line in printed.splitlines() if line.startswith("| ")] == table
    assert "| Model | Parameters | Size on disk |" in costs  # the trade-off
    assert (directory / "tradeoff.json").is_file()


def test_rerun_resumes_without_training(finished_run, capsys):
    directory, code, _, _ = finished_run
    assert code == 0
    stamps = {p: p.stat().st_mtime_ns for p in directory.glob("gen-*/model.keras")}
    argv = ["ban", *TINY, "--seed", "3", "--directory", str(directory),
            "--no-tensorboard"]
    assert cli.main(argv) == cli.EXIT_OK
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_tensorboard_hparams_describe_the_run(finished_run):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    directory, code, _, _ = finished_run
    assert code == 0
    summary = directory / "logs" / "summary"
    assert len([p for p in summary.iterdir() if "tfevents" in p.name]) == 1
    accumulator = event_accumulator.EventAccumulator(str(summary))
    accumulator.Reload()
    data = plugin_data_pb2.HParamsPluginData.FromString(
        accumulator.PluginTagToContent("hparams")[
            "_hparams_/session_start_info"]
    )
    hparams = {name: getattr(value, value.WhichOneof("kind"))
               for name, value in data.session_start_info.hparams.items()}
    assert data.session_start_info.group_name == directory.name
    # The command line's tf.data pipeline's batch size, and its names.
    assert {key: hparams[key] for key in (
        "dataset", "batch_size", "model", "teacher_model", "distillation_loss",
        "temperature", "ground_truth_weight", "seed", "epochs", "optimizer",
    )} == {
        "dataset": "digits", "batch_size": 32, "model": "wrn-16-1",
        "teacher_model": "wrn-16-1", "distillation_loss": "SoftTargets",
        "temperature": 1.0, "ground_truth_weight": 0.0, "seed": 3,
        "epochs": 1, "optimizer": "Adam",
    }


def test_rerun_leaves_the_tensorboard_logs_as_they_are(finished_run, capsys):
    directory, code, _, _ = finished_run
    assert code == 0

    def logs():
        return {p: p.read_bytes() for p in (directory / "logs").rglob("*")
                if p.is_file()}

    before = logs()
    argv = ["ban", *TINY, "--seed", "3", "--directory", str(directory)]
    assert cli.main(argv) == cli.EXIT_OK
    assert logs() == before


def test_a_directory_of_other_settings_is_refused(finished_run, capsys):
    directory, code, _, _ = finished_run
    assert code == 0
    before = {p: p.read_bytes() for p in directory.rglob("*.json")}
    config = (directory / "config.toml").read_text()
    argv = ["ban", *TINY, "--seed", "3", "--epochs", "2",
            "--directory", str(directory)]
    code, _, err = run_main(argv, capsys)
    assert code == cli.EXIT_USAGE
    assert "epochs: 1 in the directory, 2 now" in err
    assert (directory / "config.toml").read_text() == config
    assert {p: p.read_bytes() for p in before} == before


def test_evaluate_and_report_need_a_run(tmp_path, capsys):
    for command in ("evaluate", "report"):
        code, _, err = run_main([command, str(tmp_path)], capsys)
        assert code == cli.EXIT_USAGE
        assert "no" in err.lower()


def test_missing_dataset_files_exit_2_with_how_to_get_them(tmp_path, capsys):
    argv = ["ban", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path),
            "--directory", str(tmp_path / "run")]
    code, _, err = run_main(argv, capsys)
    assert code == cli.EXIT_USAGE
    assert "dataset-fashion-mnist" in err
    assert not (tmp_path / "run").exists()


def test_distill_trains_a_teacher_of_another_architecture(tmp_path, capsys):
    argv = ["distill", *[a for a in TINY if a not in ("--generations", "2")],
            "--teacher-model", "wrn-10-2", "--model", "wrn-10-1",
            "--directory", str(tmp_path / "run"), "--no-tensorboard"]
    code, out, err = run_main(argv, capsys)
    assert code == cli.EXIT_OK, err
    assert "| Metrics | Teacher (wrn-10-2) | Student (wrn-10-1) |" in out
    teacher = tmp_path / "run" / "gen-0" / "model.keras"
    assert teacher.is_file()
    # The student learns from that teacher file on the next run.
    argv = ["distill", *[a for a in TINY if a not in ("--generations", "2")],
            "--teacher", str(teacher), "--model", "wrn-10-1",
            "--directory", str(tmp_path / "from-file"), "--no-tensorboard"]
    code, out, err = run_main(argv, capsys)
    assert code == cli.EXIT_OK, err
    assert "| Metrics | Teacher (teacher) | Student (wrn-10-1) |" in out


def test_ctrl_c_keeps_finished_generations_and_prints_the_resume_command(
    tmp_path,
):
    args = ["ban", "--train-size", "96", "--test-size", "64", "--epochs", "40",
            "--generations", "2", "--no-progress", "--no-tensorboard"]
    process = kdtrain_process(args, tmp_path)
    run = tmp_path / "runs" / "ban-digits-wrn-16-1"
    teacher = run / "gen-0" / "model.keras"
    # Any epoch's backup: only the last two are kept, so a given one may
    # come and go between two looks on a fast machine.
    backups = run / "gen-1" / "backup"

    def epoch_of_gen_1_ended():
        return backups.is_dir() and any(backups.glob("epoch-*"))

    try:
        deadline = time.monotonic() + HANG_GUARD
        while not epoch_of_gen_1_ended() and time.monotonic() < deadline:
            if process.poll() is not None:
                break
            time.sleep(0.2)
        # Generation 1 is training: an epoch of it has ended.
        assert epoch_of_gen_1_ended(), process.communicate(
            timeout=HANG_GUARD)[1][-2000:]
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=HANG_GUARD)
    finally:
        process.kill()
    assert process.returncode == cli.EXIT_INTERRUPTED, err[-2000:]
    assert "resume with: kdtrain ban --train-size 96" in err
    assert teacher.exists()


def test_a_failure_during_training_exits_1_with_the_resume_command(
    tmp_path, monkeypatch, capsys
):
    from kdtrain import chain

    def fail(self, *args, **kwargs):
        raise chain.TrainingDiverged(
            "Generation 2 (BAN-2) diverged: `loss` became nan", generation=2,
            directory=self.directory,
        )

    monkeypatch.setattr(chain.GenerationRunner, "run", fail)
    directory = tmp_path / "run"
    code, _, err = run_main(
        ["ban", *TINY, "--directory", str(directory)], capsys
    )
    assert code == cli.EXIT_FAILURE
    assert "BAN-2" in err and "diverged" in err
    assert f"kept in {directory}" in err
    assert "resume with: kdtrain ban --train-size 96" in err


@pytest.mark.parametrize("after_a_step", [True, False])
def test_value_errors_are_bad_input_only_before_training(
    tmp_path, monkeypatch, capsys, after_a_step
):
    from kdtrain import chain

    def fail(self, *args, callbacks=None, **kwargs):
        if after_a_step:
            for callback in callbacks:
                callback.on_train_batch_end(0)
        raise ValueError("something broke")

    monkeypatch.setattr(chain.GenerationRunner, "run", fail)
    code, _, err = run_main(
        ["ban", *TINY, "--directory", str(tmp_path / "run")], capsys
    )
    assert "something broke" in err
    if after_a_step:
        assert code == cli.EXIT_FAILURE and "resume with" in err
    else:
        assert code == cli.EXIT_USAGE and "resume with" not in err


def test_logit_loss_options_make_the_losses(tmp_path):
    from kdtrain import commands
    from kdtrain import losses

    for name, cls in (("dkd", losses.DecoupledKD),
                      ("dist", losses.CorrelationKD),
                      ("nkd", losses.NormalizedKD)):
        _, settings = options.parse(["distill", "--loss", name,
                                     "--temperature", "2"])
        loss = commands.distillation_loss(settings)
        assert type(loss) is cls and loss.temperature == 2.0
    config = tmp_path / "run.toml"
    config.write_text('loss = "kl"\nstandardize_logits = true\n')
    _, settings = options.parse(["ban", "--config", str(config)])
    loss = commands.distillation_loss(settings)
    assert type(loss) is losses.KLDivergence and loss.standardize
    _, settings = options.parse(["ban", "--loss", "soft_targets"])
    assert not commands.distillation_loss(settings).standardize
    with pytest.raises(cli.UsageError, match="--loss kl or soft_targets"):
        options.parse(["ban", "--loss", "dkd", "--standardize-logits"])


def test_attention_transfer_options_make_the_feature_loss():
    from kdtrain import commands

    _, settings = options.parse(
        ["ban", "--attention-transfer", "group_1, group_2,a:b",
         "--attention-weight", "500", "--loss", "none"]
    )
    (loss,) = commands.feature_losses(settings)
    assert loss.layers == (("group_1", "group_1"), ("group_2", "group_2"),
                           ("a", "b"))
    assert loss.weight == 500.0
    assert commands.distillation_loss(settings) is None
    with pytest.raises(cli.UsageError, match="needs a feature loss"):
        options.parse(["ban", "--loss", "none"])


def test_forcing_the_cache_on_augmented_data_is_refused(tmp_path, capsys):
    argv = ["ban", *TINY, "--augment", "mnist", "--cache-teacher", "on",
            "--directory", str(tmp_path / "run")]
    code, _, err = run_main(argv, capsys)
    assert code == cli.EXIT_USAGE
    assert "augmented" in err and "same augmented batch" in err


def test_distribute_mirrored_trains_a_chain(tmp_path, capsys):
    argv = ["ban", *TINY, "--generations", "1", "--distribute", "mirrored",
            "--directory", str(tmp_path / "run"), "--no-tensorboard"]
    code, out, err = run_main(argv, capsys)
    assert code == cli.EXIT_OK, err
    assert "| Metrics | Teacher | BAN-1 |" in out


# Answers without TensorFlow -------------------------------------------------

_probe = run_without_tensorflow


def test_a_finished_run_prints_its_table_without_tensorflow(finished_run):
    directory, code, out, _ = finished_run
    assert code == 0
    argv = ["ban", *TINY, "--seed", "3", "--directory", str(directory)]
    code, loaded, stdout, stderr = _probe(argv, directory.parent)
    assert code == cli.EXIT_OK, stderr
    assert not loaded
    results = json.loads((directory / "results.json").read_text())
    table = out[out.index("| Metrics"):].split("\n\n")[0]
    assert table in stdout  # the table the training run printed
    test_rows = [r for r in results["table"] if r["split"] == "test"]
    assert f"{test_rows[0]['accuracy']:.4f}" in stdout


def test_a_changed_model_file_is_not_trusted_without_tensorflow(
    finished_run, tmp_path
):
    import shutil

    directory, code, _, _ = finished_run
    assert code == 0
    copy = tmp_path / "run"
    shutil.copytree(directory, copy)
    model = copy / "gen-1" / "model.keras"
    model.write_bytes(model.read_bytes() + b"\0")
    config = (copy / "config.toml").read_text().replace(
        str(directory), str(copy))
    (copy / "config.toml").write_text(config)
    settings = options.parse(
        ["ban", *TINY, "--seed", "3", "--directory", str(copy)])[1]
    assert quick.finished_table("ban", settings) is None  # the full path
    settings = options.parse(
        ["ban", *TINY, "--seed", "4", "--directory", str(directory)])[1]
    assert quick.finished_table("ban", settings) is None  # other settings
    settings = options.parse(
        ["ban", *TINY, "--seed", "3", "--directory", str(directory)])[1]
    assert quick.finished_table("ban", settings) is not None
    # Files the table cannot vouch for: the full command checks them.
    for flag, value in (("teacher", "t.keras"), ("data_dir", "data")):
        assert quick.finished_table(
            "ban", dataclasses.replace(settings, **{flag: value})) is None
    # A run written by another version of kdtrain.
    results = copy / "results.json"
    model.write_bytes(model.read_bytes()[:-1])  # the file as recorded
    settings = options.parse(
        ["ban", *TINY, "--seed", "3", "--directory", str(copy)])[1]
    assert quick.finished_table("ban", settings) is not None
    recorded = json.loads(results.read_text())
    recorded["kdtrain_version"] = "0.0.1"
    results.write_text(json.dumps(recorded))
    assert quick.finished_table("ban", settings) is None


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "no-such-run"], "no-such-run: no such directory"),
    (["report", "no-such-run"], "no-such-run: no such directory"),
    (["ban", "--model", "wrn-16-x", "--directory", "r"],
     "--model wrn-16-x: no such model. Known: wrn-<depth>-<width>"),
    (["distill", "--teacher-model", "vgg99", "--directory", "r"],
     "--teacher-model vgg99: no such model"),
])
def test_errors_that_need_no_model_come_without_tensorflow(
    argv, message, tmp_path
):
    code, loaded, _, stderr = _probe(argv, tmp_path)
    assert code == cli.EXIT_USAGE
    assert not loaded
    assert message in stderr
    assert not (tmp_path / "r").exists()


def test_report_without_matplotlib_names_the_install(finished_run, capsys,
                                                     monkeypatch):
    import importlib.util

    directory = finished_run[0]
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        None if name == "matplotlib" else find_spec(name, *a)))
    code, _, err = run_main(["report", str(directory)], capsys)
    assert code == cli.EXIT_USAGE
    assert "matplotlib, which is not installed" in err
    assert 'pip install -e ".[plot]"' in err


# Details of the command line ------------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"kdtrain {kdtrain.__version__}"


def test_help_shows_one_default_per_option():
    parser = options.build_parser()
    subparsers = next(
        a for a in parser._actions if a.dest == "command").choices
    text = " ".join(subparsers["ban"].format_help().split())
    assert "(default: None)" not in text
    assert "epochs of the teacher (default: --epochs) --" in text
    assert text.count("(default:") == text.count("(default: ") > 10


def test_python_spellings_become_flags():
    assert options.in_flags(
        "Pass data_dir= a folder of the files, or `overwrite=True`; "
        "`retrain_from=2`; train with cache_teacher=False."
    ) == ("Pass --data-dir a folder of the files, or --overwrite; "
          "--retrain-from 2; train with --cache-teacher off.")


def test_threads_default_to_half_the_cores(monkeypatch):
    import os as os_module

    monkeypatch.setattr(os_module, "sched_getaffinity",
                        lambda pid: set(range(8)), raising=False)
    assert options.default_threads() == 4
    monkeypatch.setattr(os_module, "sched_getaffinity", lambda pid: {0},
                        raising=False)
    assert options.default_threads() == 1
    settings = options.parse(["ban", "--threads", "3"])[1]
    assert settings.threads == 3
    code = cli.main(["ban", "--threads", "0"])
    assert code == cli.EXIT_USAGE


def test_a_users_own_callbacks_module_does_not_shadow_kdtrains(tmp_path):
    (tmp_path / "callbacks.py").write_text("MINE = True\n")
    script = tmp_path / "train.py"
    script.write_text(
        "import callbacks\n"
        "import kdtrain\n"
        "from kdtrain.callbacks import GenerationTensorBoard, TqdmProgress\n"
        "assert callbacks.MINE\n"
        "print(kdtrain.GenerationRunner.__name__, "
        "GenerationTensorBoard.__module__)\n"
    )
    process = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, text=True,
        capture_output=True, timeout=HANG_GUARD,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert process.returncode == 0, process.stderr[-2000:]
    assert process.stdout.split() == ["GenerationRunner",
                                      "kdtrain.callbacks.tensorboard"]
