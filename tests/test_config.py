"""One configuration, validated once: bad values, options that do not apply, and tampered run folders
get the same message (naming the flag and the field) on every path: new runs, the API, resumed runs."""

import json

import pytest
from typer.testing import CliRunner

import graft
from graft.cli import app
from graft.core.config import FIELDS, RunConfig, validate
from graft.errors import ConfigError
from tests.conftest import TINY_BACKBONE

runner = CliRunner()


def _cli(*args):
    return runner.invoke(app, ["train", *args])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--seed", "-1"], "--seed (runtime.seed) must be in [0, 4,294,967,295]"),
        (["--views", "100000000", "--mode", "finetune"], "--views (inputs.views) must be in [0, 64]"),
        (["--head-epochs", "-2", "--mode", "finetune"], "--head-epochs (transfer.head_epochs) must be in [0, 10,000]"),
        (["--epochs", "0"], "--epochs (budget.epochs) must be in [1, 10,000]"),
        (["--lr", "inf"], "--lr (transfer.lr) must be a finite number"),
        (
            ["--backbone-lr-mult", "nan", "--mode", "finetune"],
            "--backbone-lr-mult (transfer.backbone_lr_mult) must be a finite number",
        ),
        (["--image-size", "100000"], "--image-size (inputs.image_size) must be in [32, 1024]"),
        (["--tie", "1", "--labels", "utkface"], "--tie (transfer.tie) only applies to --sharing soft"),
        (["--sharing", "soft"], "--sharing (transfer.sharing) only applies to multi-task or multi-domain runs"),
        (["--tasks", "gender"], "--tasks (data.tasks) only applies to multi-task"),
        (["--head-epochs", "2"], "--head-epochs (transfer.head_epochs) only applies to --mode finetune"),
        (["--unfreeze", "2"], "--unfreeze (transfer.unfreeze) only applies to --mode finetune"),
        (["--views", "2"], "--views (inputs.views) only applies to cached, augmented training"),
        (
            ["--views", "2", "--mode", "finetune", "--no-augment"],
            "--views (inputs.views) only applies to cached, augmented training",
        ),
        (["--cache-dir", "/tmp/x", "--no-cache"], "--cache-dir (inputs.cache_dir) does not apply with --no-cache"),
        (["--limit", "5"], "--limit (data.limit) only applies to multi-task"),
    ],
)
def test_a_bad_or_inapplicable_option_is_refused_before_any_work(class_folder, tmp_path, args, message):
    result = _cli(str(class_folder), "--out", str(tmp_path / "run"), "--backbone", TINY_BACKBONE, *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_the_api_gives_the_same_messages_as_the_command(class_folder, tmp_path):
    with pytest.raises(ConfigError, match=r"--head-epochs \(transfer.head_epochs\) only applies to --mode finetune"):
        graft.train(class_folder, tmp_path / "run", head_epochs=2)
    with pytest.raises(ConfigError, match=r"--batch-size \(inputs.batch_size\) must be a int; got 'eight'"):
        graft.train(class_folder, tmp_path / "run", batch_size="eight")


def test_every_field_has_a_flag_that_the_command_accepts():
    """graft train's, or graft adapt's for domain adaptation's own (DATA and TARGET are arguments)."""
    help_text = " ".join(
        " ".join(runner.invoke(app, [command, "--help"], terminal_width=300).output.split())
        for command in ("train", "adapt")
    )
    for name, field in FIELDS.items():
        if field.flag not in ("DATA", "TARGET"):
            assert field.flag.split("/")[0] in help_text, (name, field.flag)


def test_a_resolved_config_round_trips_through_config_json_and_is_checked_again():
    config = RunConfig(data="d", mode="finetune").resolved()
    assert config.views == 4 and config.bn == "train" and config.head_epochs == 0 and config.valid_fraction == 0.2
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    extract = RunConfig(data="d").resolved()
    assert extract.views is None and extract.bn is None and extract.augment is False  # what does not apply stays unset
    validate(extract)
    sections = config.to_dict()
    sections["budget"]["epochs"] = -3
    with pytest.raises(ConfigError, match=r"config.json: --epochs \(budget.epochs\) must be in \[1, 10,000\]; got -3"):
        RunConfig.from_dict(sections)
    sections["budget"]["epochs"], sections["budget"]["surprise"] = 3, 1
    with pytest.raises(ConfigError, match="unknown option 'budget.surprise'"):
        RunConfig.from_dict(sections)


def test_resume_checks_the_runs_config_again_and_refuses_new_options(class_folder, tmp_path):
    run = tmp_path / "run"
    graft.train(
        class_folder,
        run,
        backbone=TINY_BACKBONE,
        pretrained=False,
        epochs=2,
        num_workers=0,
        quiet=True,
        batch_size=8,
        cache=False,
    )
    (run / "metrics.json").unlink()  # as if killed before it finished (no checkpoint: resume starts over)
    config = json.loads((run / "config.json").read_text())
    config["options"]["inputs"]["batch_size"] = 0
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ConfigError, match=r"config.json: --batch-size \(inputs.batch_size\) must be in \[1, 4096\]; got 0"
    ):
        graft.resume(run)
    result = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "5"])
    assert result.exit_code == 2 and "--epochs cannot be changed" in " ".join(result.output.split())
