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
    command, settings, given = cli.parse(
        ["ban", "--config", str(config), "--epochs", "3"]
    )
    assert command == "ban"
    assert settings["epochs"] == 3            # the flag wins
    assert settings["loss"] == "kl"           # from the file
    assert settings["temperature"] == 2.5
    assert settings["ground_truth_weight"] == 0.2
    assert settings["generations"] == 3       # the default
    assert given == {"epochs": 3}
    assert settings["directory"] == os.path.join("runs", "ban-digits-wrn-16-1")


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
    parser = cli.build_parser()
    subparsers = next(
        a for a in parser._actions if a.dest == "command"
    ).choices
    for command in ("ban", "distill"):
        text = " ".join(subparsers[command].format_help().split())
        for option in cli.options_for(command):
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
