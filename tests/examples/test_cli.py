"""The example scripts' command line (nemo_imagen/models/cli.py): a mistyped key or config name fails with one
line naming the closest key or config, before NeMo, Lightning or torch are imported; a user mistake while
running is one line too; the import-time Transformer Engine / Apex warnings are hidden and no other."""
import os
import subprocess
import sys
import warnings

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf

from nemo_imagen.models import cli
from nemo_imagen.models.cli import check_command_line, exit_on_config_error, resume_command
from tests.tiny import REPO

CONF = REPO / "examples" / "conf"
CONFIGS = sorted(path.stem for path in CONF.glob("*.yaml"))


def check_error(capsys, argv, default="base64-500m"):
    """The `error: ...` line of check_command_line (which must exit with status 2)."""
    with pytest.raises(SystemExit) as stop:
        check_command_line(CONF, default, argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def test_a_mistyped_key_gets_the_closest_key_of_the_config(capsys):
    line = check_error(capsys, ["--config-name", "quickstart", "model.unet.chanel_mult=[1,2]"])
    assert line == (
        "error: model.unet.chanel_mult: no such key in quickstart; did you mean model.unet.channel_mult? "
        "(a key that the code knows but quickstart.yaml does not set is added with +model.unet.chanel_mult=[1,2])"
    )


@pytest.mark.parametrize("override, meant", [
    ("trainer.max_step=3", "trainer.max_steps"),
    ("model.channel_mult=[1]", "model.unet.channel_mult"),  # the right key in the wrong block
    ("model.lr=1e-3", "model.optim.lr"),
    ("modle.unet.chanel_mult=[1]", "model.unet.channel_mult"),  # two typos
    ("model.reliability.checkpoint_on_signal=[SIGTERM]", "model.reliability.checkpoint_on_signals"),
])
def test_suggestions(capsys, override, meant):
    key = override.partition("=")[0]
    line = check_error(capsys, ["--config-name", "quickstart", override])
    assert line.startswith(f"error: {key}: no such key in quickstart; did you mean {meant}?")
    # `+key=value` adds a key to a block that exists; for a mistyped block it is no advice
    assert (f"+{override})" in line) == (key.rpartition(".")[0] in ("trainer", "model", "model.reliability"))


def test_a_key_like_no_other_lists_the_keys_of_its_block(capsys):
    line = check_error(capsys, ["--config-name", "quickstart", "model.ema.zzz=1"])
    keys = ", ".join(OmegaConf.load(CONF / "quickstart.yaml").model.ema)
    assert "enable, decay" in keys
    assert line == (f"error: model.ema.zzz: no such key in quickstart; the keys of model.ema are {keys} "
                    "(a key that the code knows but quickstart.yaml does not set is added with +model.ema.zzz=1)")


def test_an_unknown_config_name_lists_the_configs(capsys):
    line = check_error(capsys, ["--config-name", "quickstrt"])
    assert line == (f"error: --config-name quickstrt: no such config in {os.path.relpath(CONF)}; did you mean "
                    f"quickstart? Configs: {', '.join(CONFIGS)}")
    assert "base64-2b, base64-2b-edm, base64-500m" in line
    assert check_error(capsys, [], default="nothing-like-it") == (
        f"error: --config-name nothing-like-it: no such config in {os.path.relpath(CONF)}. "
        f"Configs: {', '.join(CONFIGS)}"
    )


def test_what_hydra_accepts_passes(capsys):
    check_command_line(CONF, "base64-500m", [
        "--config-name=quickstart.yaml", "model.unet.channel_mult=[1,2]", "+model.unet.res_blocks_per_level=1",
        "++model.brand_new=1", "~model.seed", "hydra.run.dir=.", "model.data.train.dataset_path.0=x.tar",
        "model.sample_log.prompts=[a, b]", "trainer.max_steps=2", "demo_data.num_samples=3",
    ])
    check_command_line(CONF, "sample", ["base_ckpt=x.nemo", "samplings.0.steps=3", "prompts=[a red circle]"])
    check_command_line(CONF, "base64-500m", ["--help"])  # Hydra's own options pass through
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", CONFIGS)
def test_every_key_of_every_config_passes(name):
    def paths(node, prefix=""):
        for key, child in node.items():
            yield f"{prefix}{key}"
            if isinstance(child, dict):
                yield from paths(child, f"{prefix}{key}.")

    tree = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"), resolve=False)
    overrides = [f"{path}=null" for path in paths(tree)]
    assert overrides
    assert cli.override_errors(CONF, name, overrides) == []


@pytest.mark.parametrize("override", [
    "model.unet.channel_mult=[1]", "model.unet.chanel_mult=[1]", "model.optim.sched.min_lr=0", "model.optim.sched.x=0",
    "trainer.devices=1", "trainer.device=1", "exp_manager.version=x", "model.reliability.checkpoint_every_hours=1",
])
def test_the_verdict_is_hydras(override):
    """The early check rejects exactly what Hydra rejects (a key absent from the YAML, without `+`)."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        try:
            compose("quickstart", [override])
            hydra_rejects = False
        except HydraException:
            hydra_rejects = True
    assert bool(cli.override_errors(CONF, "quickstart", [override])) == hydra_rejects


def test_a_config_with_a_defaults_list_is_left_to_hydra(tmp_path):
    (tmp_path / "parent.yaml").write_text("a: 1\n")
    (tmp_path / "child.yaml").write_text("defaults:\n  - parent\n  - _self_\nb: 2\n")
    assert cli.override_errors(tmp_path, "child", ["a=3", "c=4"]) == []
    assert cli.override_errors(tmp_path, "parent", ["c=4"]) != []


def run_script(script, *args, env=None):
    return subprocess.run([sys.executable, "-X", "importtime", str(REPO / "examples" / script), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def imported(stderr):
    """Top-level packages in a `python -X importtime` report."""
    lines = [line for line in stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in lines}


def error_lines(stderr):
    return [line for line in stderr.splitlines() if not line.startswith("import time:")]


@pytest.mark.parametrize("script, args, message", [
    ("train.py", ["--config-name", "quickstart", "model.unet.chanel_mult=[1]"],
     "error: model.unet.chanel_mult: no such key in quickstart; did you mean model.unet.channel_mult?"),
    ("train.py", ["--config-name", "quickstrt"],
     "error: --config-name quickstrt: no such config in examples/conf; did you mean quickstart? Configs: base64-2b,"),
    ("sample.py", ["base_ckpt=x.nemo", "prompt=[a]"], "error: prompt: no such key in sample; did you mean prompts?"),
    ("model_summary.py", ["--config-name", "base64-2", "model.unet.channel_mult=[1]"],
     "error: --config-name base64-2: no such config in examples/conf; did you mean base64-2b?"),
    ("eval_fid_clip.py", ["--shard", "0", "--num-shards", "2", "fid.refrence_images=[x]"],
     "error: fid.refrence_images: no such key in fid_clip; did you mean fid.reference_images?"),
    ("benchmark.py", ["--config-name", "base64-500m-edm", "mode=flops", "model.unet.chanel_mult=[1]"],
     "error: model.unet.chanel_mult: no such key in base64-500m-edm; did you mean model.unet.channel_mult?"),
    ("benchmark.py", ["mode=sample", "cascade=sr256-600m-edm", "cascade.model.unet.chanel_mult=[1]"],
     "error: cascade.model.unet.chanel_mult: no such key in sr256-600m-edm; "
     "did you mean cascade.model.unet.channel_mult?"),
])
def test_every_hydra_script_checks_its_command_line_before_importing_torch(script, args, message):
    result = run_script(script, *args)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert not imported(result.stderr) & {"torch", "nemo", "lightning", "megatron", "numpy"}


def test_cli_module_imports_only_the_standard_library_and_omegaconf():
    probe = ("import sys, omegaconf; before = set(sys.modules); import nemo_imagen.models.cli; "
             "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert "nemo_imagen" in result.stdout.split()
    assert set(result.stdout.split()) - set(sys.stdlib_module_names) == {"nemo_imagen"}, result.stdout


# ---------------------------------------------------------------- while running
def test_exit_on_config_error(capsys):
    from nemo_imagen.data.webdataset_pipeline import DataFaultError
    from nemo_imagen.models.config import ConfigError
    from nemo_imagen.diffusion.numerics import NonFiniteStepError

    def raising(error):
        @exit_on_config_error
        def main():
            raise error
        return main

    for error, status, line in [
        (ConfigError("model.unet.attention_type: 'sparse' is not one of self, cross"), 2,
         "error: model.unet.attention_type: 'sparse' is not one of self, cross\n"),
        (FileNotFoundError("prompts_file: nope.txt does not exist"), 2,
         "error: prompts_file: nope.txt does not exist\n"),
        (DataFaultError("12% of the samples were broken"), 3,
         "error: the run stopped: 12% of the samples were broken\n"),
        (NonFiniteStepError("20 non-finite steps in a row"), 3,
         "error: the run stopped: 20 non-finite steps in a row\n"),
    ]:
        with pytest.raises(SystemExit) as stop:
            raising(error)()
        assert stop.value.code == status
        assert capsys.readouterr().err == line
    with pytest.raises(KeyError):  # a bug is not a user mistake: its traceback stays
        raising(KeyError("x"))()


def test_no_script_imports_exit_on_config_error_from_the_trainer_builder():
    for path in [*REPO.glob("examples/*.py"), *REPO.glob("tests/**/*.py"), *REPO.glob("nemo_imagen/**/*.py")]:
        assert "trainer_builder import " + "exit_on_config_error" not in path.read_text(), path


def test_resume_command_replaces_the_resume_keys():
    argv = ["examples/train.py", "--config-name", "quickstart", "exp_manager.resume_if_exists=False",
            "model.sample_log.prompts=[a red circle]"]
    assert resume_command(["exp_manager.resume_if_exists=True", "++exp_manager.version=2026-01-01_00-00-00"], argv) == (
        "python examples/train.py --config-name quickstart 'model.sample_log.prompts=[a red circle]' "
        "exp_manager.resume_if_exists=True ++exp_manager.version=2026-01-01_00-00-00"
    )
    assert resume_command([], ["/x/pytest/__main__.py", "-q"]) is None


# ---------------------------------------------------------------- import-time warnings
def test_only_the_transformer_engine_apex_and_hydra_chdir_warnings_are_ignored():
    with warnings.catch_warnings(record=True) as shown:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        cli.quiet_dependency_warnings()
        for message in ("Transformer Engine and Apex are not installed. Falling back to Torch optimizers.",
                        "Apex is not installed. Falling back to Torch Norm", "something else"):
            warnings.warn_explicit(message, UserWarning, "optimizer.py", 1, module="megatron.core.optimizer")
        warnings.warn_explicit("Future Hydra versions will no longer change working directory at job runtime by "
                               "default.\nSee https://hydra.cc/...", UserWarning, "hydra.py", 119,
                               module="hydra._internal.hydra")
        warnings.warn_explicit("Transformer Engine and Apex are not installed. Falling back", UserWarning, "x.py", 1,
                               module="someone.else")
        # NeMo's handler drops every warning of a category that has any "ignore" filter: none for UserWarning
        assert not [f for f in warnings.filters if f[0] == "ignore" and f[2] is UserWarning]
    assert [str(w.message) for w in shown] == [
        "something else", "Transformer Engine and Apex are not installed. Falling back"  # from another module
    ]


def test_importing_the_model_shows_no_transformer_engine_warning_but_others():  # the NeMo handler included
    probe = "import warnings, nemo_imagen.models.imagen; warnings.warn('a probe warning')"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    output = result.stdout + result.stderr
    assert "a probe warning" in output  # shown (through NeMo's warning logger)
    assert "Transformer Engine" not in output and "Apex" not in output, output[-3000:]


def test_the_openmp_spin_is_shortened_before_torch_loads_unless_the_user_set_it():
    """GOMP_SPINCOUNT is read once, when torch loads libgomp: importing nemo_imagen.models (as every example script
    does first) sets it before that, and leaves a value the user gave alone."""
    probe = "import os, sys, nemo_imagen.models; print(os.environ['GOMP_SPINCOUNT'], 'torch' in sys.modules)"
    env = {key: value for key, value in os.environ.items() if key != "GOMP_SPINCOUNT"}
    ours = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True, cwd=REPO)
    assert ours.stdout.split() == [cli.OPENMP_SPIN_COUNT, "False"]
    theirs = subprocess.run([sys.executable, "-c", probe], env={**env, "GOMP_SPINCOUNT": "123"}, capture_output=True,
                            text=True, check=True, cwd=REPO)
    assert theirs.stdout.split() == ["123", "False"]
