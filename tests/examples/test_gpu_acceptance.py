"""examples/gpu_acceptance.py on CPU: the dry run end to end (probe, `pytest -m cuda` skipping cleanly, stages
planned, a stage over budget cut while a later, shorter one still runs, report and log written), plus the pieces
a GPU run relies on checked on real inputs: the budget scheduler, the planned configs' validation, the benchmark's
printed figures turned into docs/performance.md rows, the cascade worker, and the wheel install."""
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.tiny import REPO, TINY_CONDITIONING, TINY_UNET, TINY_UNETS

spec = importlib.util.spec_from_file_location("gpu_acceptance", REPO / "examples" / "gpu_acceptance.py")
ga = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ga)

HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
DRY_STAGES = ["cuda-tests", "base64-500m-mb128-compiled", "sr256-600m-mb32-eager"]


def run_script(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, str(REPO / "examples" / "gpu_acceptance.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


# ---------------------------------------------------------------- the dry run, end to end
@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """DRY_RUN=1 and $OUT as the device tool sets them. Budget 300 s: the probe (real) and the CUDA tests
    (charged their 120 s estimate) leave under 180 s, so base64-500m-mb128-compiled (180 s) is cut, and
    sr256-600m-mb32-eager (50 s) still fits unless the probe takes over 130 s."""
    out = tmp_path_factory.mktemp("gpu_acceptance")
    result = run_script("--budget-s", "300", "--only", ",".join(DRY_STAGES), env={"DRY_RUN": "1", "OUT": str(out)})
    return out, result


def stage_rows(report):
    """{stage name: (estimate, took, result)} from the report's stage table."""
    rows = re.findall(r"^\| \d+ \| ([\w-]+) \| (\d+) \| (\d*) \| (.*) \|$", report, re.M)
    return {name: (int(estimate), took, status) for name, estimate, took, status in rows}


def test_dry_run_plans_runs_and_cuts_by_budget(dry_run):
    out, result = dry_run
    log = (out / "log.txt").read_text() if (out / "log.txt").is_file() else "(no log.txt)"
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\nlog.txt:\n{log[-3000:]}"
    report = (out / "report.md").read_text()
    rows = stage_rows(report)
    assert list(rows) == DRY_STAGES  # planned in order of value, as selected
    assert rows["cuda-tests"][2] == "passed"
    cut = rows["base64-500m-mb128-compiled"]
    assert cut[0] == 180 and cut[1] == ""
    left = int(re.fullmatch(r"cut by budget: estimate 180 s > (\d+) s left", cut[2]).group(1))
    assert 50 <= left < 180
    assert rows["sr256-600m-mb32-eager"][2].startswith("dry run")
    # the simulated clock charged each stage its estimate: 120 + 50 s on top of the probe's real time
    used = float(re.search(r"- budget: 300 s, used (\d+) s \(simulated\)", report).group(1))
    assert 170 <= used <= 300 - 50


def test_dry_run_report_has_every_section_and_the_environment(dry_run):
    out, _ = dry_run
    report = (out / "report.md").read_text()
    for heading in ("# GPU acceptance run", "## Stages", "## CUDA correctness tests (pytest -m cuda tests/cuda)",
                    "## Training throughput (docs/performance.md layout)", "## Cascade sampling"):
        assert heading in report
    assert f"torch {torch.__version__}" in report and "- device: cpu (no CUDA device)" in report
    assert "nemo_toolkit 2.4.1" in report and "mode: dry run on CPU" in report
    assert "wheels: not needed" in report  # every import worked here, so nothing was installed
    log = (out / "log.txt").read_text()
    assert "-m pytest -m cuda tests/cuda" in log and "--probe" in log
    probe = json.loads((out / "probe.json").read_text())
    assert probe["modules"]["nemo.core"].startswith("ok") and probe["cuda_available"] is False
    # every planned config was composed and validated with its overrides by the probe
    assert probe["plans"] == {"base64-500m-mb128-compiled": "ok", "sr256-600m-mb32-eager": "ok"}


def test_cuda_tests_are_collected_and_skip_cleanly_on_cpu(dry_run):
    out, _ = dry_run
    report = (out / "report.md").read_text()
    tests = re.findall(r"^\| (tests/cuda/\S+) \| (\w+) \| (.*) \|$", report, re.M)
    names = {test.split("::")[-1].split("[")[0] for test, _, _ in tests}
    assert {"test_bf16_mixed_training_step_is_finite_and_close_to_float32", "test_compiled_training_step_equals_eager",
            "test_fused_adamw_equals_foreach_adamw", "test_channels_last_equals_nchw",
            "test_sdpa_kernel_with_padded_text_mask_matches_math",
            "test_lightning_bf16_run_skips_nonfinite_steps_updates_ema_and_round_trips_nemo",
            "test_train_script_runs_bf16_on_the_gpu_and_writes_a_nemo"} <= names
    assert len(tests) >= 13 and {outcome for _, outcome, _ in tests} == {"skipped"}
    assert all("needs a CUDA device" in detail for _, _, detail in tests)
    assert f"{len(tests)} skipped" in report


def test_every_cuda_test_carries_the_cuda_marker():
    """Deselecting the marker leaves nothing in tests/cuda; selecting it collects them all."""
    def collect(marker):
        result = subprocess.run([sys.executable, "-m", "pytest", "-m", marker, "tests/cuda", "--collect-only", "-q",
                                 "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=300)
        return result.stdout

    assert re.search(r"no tests collected \(\d+ deselected\)", collect("not cuda"))
    selected = collect("cuda")
    assert len(re.findall(r"^tests/cuda/\S+::\S+$", selected, re.M)) >= 13


# ---------------------------------------------------------------- the plan and the budget
def test_full_plan_in_order_of_value():
    stages = ga.plan(ga.Options())
    names = [stage.name for stage in stages]
    assert names[:3] == ["cuda-tests", "train-step-mb8", "base64-500m-mb128-eager"]
    assert {"cascade-1024", "sr256-600m-mb32-eager", "sr256-600m-mb32-compiled", "base64-2b-mb32-eager",
            "base64-2b-mb32-compiled", "base64-500m-mb64-eager", "base64-500m-mb64-compiled",
            "base64-500m-mb128-compiled"} <= set(names)
    for stage in stages:
        assert stage.estimate_s > 0
        if stage.kind != "bench":
            continue
        argv = " ".join(stage.argv)
        assert argv.startswith("python examples/benchmark.py --config-name ") and "trainer.precision=bf16-mixed" in argv
        assert ("model.inductor=True" in argv) == stage.name.endswith("compiled")
        base = stage.configs[0][0].startswith("base64")
        assert stage.bench["compare"] == ("diffusers" if base and stage.name != "train-step-mb8" else "none")
    step = next(s for s in stages if s.name == "train-step-mb8")
    assert step.bench == {"mode": "train", "compare": "none", "warmup": "1", "steps": "1", "rounds": "1"}
    assert "model.micro_batch_size=8" in step.argv and "model.inductor=False" in step.argv
    small = {s.name: s for s in ga.plan(ga.Options(big_peer=False))}
    assert small["base64-2b-mb32-eager"].bench["compare"] == "none"
    assert small["base64-500m-mb128-eager"].bench["compare"] == "diffusers"
    with pytest.raises(SystemExit, match="unknown stage"):
        ga.select(stages, "cuda-tests,not-a-stage", None)
    assert [s.name for s in ga.select(stages, None, "cuda-tests")] == names[1:]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_scheduler_cuts_what_does_not_fit_and_runs_what_still_does(tmp_path):
    clock = FakeClock()
    budget = ga.Budget(200, clock)
    report = ga.Report(tmp_path, budget, False, "test")
    stages = [ga.Stage("a", "bench", 100, "a"), ga.Stage("b", "bench", 150, "b"), ga.Stage("c", "bench", 60, "c"),
              ga.Stage("d", "bench", 25, "d"), ga.Stage("e", "bench", 5, "e")]
    durations = {"a": 110, "c": 70}  # both overrun their estimates: 20 s are left for d

    def execute(stage):
        clock.now += durations.get(stage.name, 1)
        result = ga.Result(stage, "passed", seconds=durations.get(stage.name, 1))
        report.results.append(result)
        return result

    ga.run_plan(stages, budget, {"e": "ConfigError: model.unet.typo"}, report, execute)
    outcome = {r.stage.name: (r.status, r.detail) for r in report.results}
    assert outcome["a"][0] == "passed" and outcome["c"][0] == "passed"
    assert outcome["b"] == ("cut by budget", "estimate 150 s > 90 s left")
    assert outcome["d"] == ("cut by budget", "estimate 25 s > 20 s left")
    assert outcome["e"] == ("not run", "invalid plan: ConfigError: model.unet.typo")
    assert "cut by budget: estimate 150 s > 90 s left" in (tmp_path / "report.md").read_text()


def test_simulated_clock_charges_each_stage_its_estimate(tmp_path):
    clock = FakeClock()
    budget = ga.Budget(100, clock)
    report = ga.Report(tmp_path, budget, True, "test")
    stages = [ga.Stage(name, "bench", estimate, name) for name, estimate in (("a", 40), ("b", 70), ("c", 60))]

    def execute(stage):
        clock.now += 1  # a stand-in takes a second of real time
        result = ga.Result(stage, "dry run", seconds=1.0)
        report.results.append(result)
        return result

    ga.run_plan(stages, budget, {}, report, execute, simulated=True)
    assert [(r.stage.name, r.status) for r in report.results] == [("a", "dry run"), ("b", "cut by budget"),
                                                                  ("c", "dry run")]
    assert budget.elapsed() == pytest.approx(100)


def test_planned_configs_are_validated_before_running():
    assert ga.check_planned_configs([("base64-500m", ["trainer.precision=bf16-mixed", "model.micro_batch_size=8"])],
                                    {"mode": "train", "steps": "1"}) == "ok"
    typo = ga.check_planned_configs([("base64-500m", ["model.micro_batch_sise=8"])], {})
    assert "micro_batch_sise" in typo
    assert "rounds" in ga.check_planned_configs([("base64-500m", [])], {"rounds": "0"})
    assert "base stage" in ga.check_planned_configs([("sr256-600m", [])], {"compare": "diffusers"})


# ---------------------------------------------------------------- figures as printed -> report rows
@pytest.mark.skipif(not HAS_DIFFUSERS, reason="diffusers (the bench extra) is not installed")
def test_benchmark_figures_become_a_performance_table_row(tmp_path):
    from benchmarks.throughput import BenchConfig, run_benchmark

    unet = {**TINY_UNET, "image_size": 32, "attention_resolutions": [16]}
    overrides = [f"model.unet.{k}={v}".replace(" ", "") for k, v in unet.items()]
    overrides += [f"model.conditioning.{k}={v}" for k, v in TINY_CONDITIONING.items()]
    overrides += ["model.data.synthetic_data=True", "trainer.precision=bf16-mixed", "model.micro_batch_size=2",
                  "model.inductor=False"]
    with initialize_config_dir(config_dir=str(REPO / "examples" / "conf"), version_base=None):
        cfg = compose("base64-500m", overrides)
    printed = []
    run_benchmark(cfg, BenchConfig(compare="diffusers", warmup=0, steps=1, rounds=1, ceiling_size=64),
                  write=printed.append)
    output = "\n".join(["[NeMo W some warning: not a figure]", *printed, "  indented: not a figure either"])
    lines, values = ga.parse_figures(output)
    assert lines == printed
    stage = next(s for s in ga.plan(ga.Options()) if s.name == "base64-500m-mb128-eager")
    row = ga.training_row(ga.Result(stage, "passed", lines=lines, values=values), "unused")
    cells = [cell.strip() for cell in row.strip("|").split(" | ")]
    figure = {key: value for key, (value, _) in values.items()}
    assert cells[0] == "base64-500m (eager)" and cells[1] == figure["device"]
    assert cells[2] == "bf16-mixed" and cells[3] == "2"
    assert cells[4].startswith(figure["ours.images_per_s"] + " (rounds: ")
    assert cells[5] == figure["ours.utilisation_pct"] + "%"
    assert cells[6] == "n/a"  # CPU: no allocator peak
    assert cells[7].startswith(figure["ratio.images_per_s"] + " (peer " + figure["peer.images_per_s"] + " images/s")
    # an SR stage's row says there is no peer
    sr = next(s for s in ga.plan(ga.Options()) if s.name == "sr256-600m-mb32-eager")
    assert ga.training_row(ga.Result(sr, "passed", values={"ours.images_per_s": ("210.5", "")}), "H200").endswith(
        "| (no peer for SR stages) |")


def test_cascade_worker_reports_time_and_memory_per_stage():
    base = [f"model.unet.{k}={v}".replace(" ", "") for k, v in TINY_UNET.items()]
    sr = [f"model.unet.{k}={v}".replace(" ", "") for k, v in TINY_UNETS["sr"].items()]
    text = [f"model.conditioning.{k}={v}" for k, v in TINY_CONDITIONING.items()] + ["trainer.precision=32"]
    printed = []
    images = ga.run_cascade([("base64-500m-edm", base + text), ("sr256-600m-edm", sr + text)], prompts=1,
                            steps=[2, 1], guidance_scale=4.0, device_name="cpu", write=printed.append)
    assert images.shape == (1, 3, 256, 256) and torch.isfinite(images).all()
    lines, values = ga.parse_figures("\n".join(printed))
    figure = {key: value for key, (value, _) in values.items()}
    assert figure["stage1.config"] == "base64-500m-edm" and figure["stage1.resolution"] == "64"
    assert figure["stage2.config"] == "sr256-600m-edm" and figure["stage2.resolution"] == "64 -> 256"
    assert figure["stage1.sampler"] == "edm, 2 steps, cfg 4.0" and figure["output"] == "1x3x256x256"
    seconds = [float(figure[f"stage{i}.sample_s"]) for i in (1, 2)]
    assert all(s > 0 for s in seconds)
    assert float(figure["total.sample_s"]) == pytest.approx(sum(seconds), rel=2e-3)
    assert float(figure["stage2.images_per_s"]) == pytest.approx(1 / seconds[1], rel=2e-3)
    stage = next(s for s in ga.plan(ga.Options()) if s.name == "cascade-1024")
    rows = ga.cascade_rows(ga.Result(stage, "passed", lines=lines, values=values))
    assert len(rows) == 2 and rows[1].startswith("| sr256-600m-edm | 64 -> 256 | 1 | edm, 1 steps, cfg 4.0 | ")
    assert rows[1].endswith("| n/a |")  # CPU: no allocator peak
    with pytest.raises(SystemExit, match="one base stage followed by super-resolution"):
        ga.run_cascade([("sr256-600m-edm", sr + text)], 1, [1], 1.0, "cpu", write=printed.append)


def test_pytest_outcomes_survive_a_cut_run(tmp_path):
    output = ("tests/cuda/t.py::test_a PASSED                    [ 33%]\n"
              "tests/cuda/t.py::test_b[x] FAILED                 [ 66%]\n"
              "tests/cuda/t.py::test_c XFAIL (flash refuses masks)   [100%]\n")
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuites><testsuite><testcase name="test_b[x]"><failure message="AssertionError: dq: '
                     'relative error 0.31&#10;more">trace</failure></testcase></testsuite></testsuites>')
    assert ga.parse_pytest(output, junit) == [("tests/cuda/t.py::test_a", "passed", ""),
                                              ("tests/cuda/t.py::test_b[x]", "failed", "AssertionError: dq: relative error 0.31"),
                                              ("tests/cuda/t.py::test_c", "xfail", "")]
    assert ga.parse_pytest(output, tmp_path / "never_written.xml")[1] == ("tests/cuda/t.py::test_b[x]", "failed", "")


# ---------------------------------------------------------------- carried wheels
def make_wheel(folder, name, version, value):
    path = folder / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VALUE = {value}\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{entry},,\n" for entry in [*files, f"{dist}/RECORD"])
    with zipfile.ZipFile(path, "w") as archive:
        for entry, text in {**files, f"{dist}/RECORD": record}.items():
            archive.writestr(entry, text)
    return path


def test_carried_wheels_install_into_a_target_folder(tmp_path):
    wheels, site = tmp_path / "whl", tmp_path / "site"
    wheels.mkdir()
    make_wheel(wheels, "ga_tiny_pkg", "0.1", 41)
    runner = ga.Runner(ga.Report(tmp_path / "out", ga.Budget(60), False, "test"), dict(os.environ))
    ok, note = ga.install_wheels(wheels, site, runner)
    assert ok, note
    assert note.startswith(f"installed 1 wheels from {wheels} into {site}")
    imported = subprocess.run([sys.executable, "-c", "import ga_tiny_pkg; print(ga_tiny_pkg.VALUE)"], text=True,
                              capture_output=True, env={**os.environ, "PYTHONPATH": ga.pythonpath(site)})
    assert imported.stdout.strip() == "41", imported.stderr
    make_wheel(wheels, "ga_tiny_pkg", "0.2", 42)  # two versions of one project: pip would refuse the whole set
    ok, note = ga.install_wheels(wheels, site, runner)
    assert not ok and "ga_tiny_pkg-0.1-py3-none-any.whl, ga_tiny_pkg-0.2-py3-none-any.whl" in note
    ok, note = ga.install_wheels(tmp_path / "empty", site, runner)
    assert not ok and "fetch_gpu_wheels.sh" in note
