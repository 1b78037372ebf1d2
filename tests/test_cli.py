import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import tomllib

import pytest

from kdtrain import cli
from kdtrain import options

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
    out, err = process.communicate(timeout=300)
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
    printed = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert [line for line in printed.splitlines() if line.startswith("| ")] == table


def test_rerun_resumes_without_training(finished_run, capsys):
    directory, code, _, _ = finished_run
    assert code == 0
    stamps = {p: p.stat().st_mtime_ns for p in directory.glob("gen-*/model.keras")}
    argv = ["ban", *TINY, "--seed", "3", "--directory", str(directory),
            "--no-tensorboard"]
    assert cli.main(argv) == cli.EXIT_OK
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


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
    epoch_of_gen_1 = run / "gen-1" / "backup" / "epoch-0001"
    try:
        deadline = time.monotonic() + 240
        while not epoch_of_gen_1.exists() and time.monotonic() < deadline:
            if process.poll() is not None:
                break
            time.sleep(0.2)
        # Generation 1 is training: an epoch of it has ended.
        assert epoch_of_gen_1.exists(), process.communicate(timeout=10)[1][-2000:]
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
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
