"""GPU acceptance in one call: the CUDA correctness tests, the training-throughput rows of docs/performance.md
and the cascade's time and memory at 1024x1024, within a time budget that this script enforces itself.

Run from the repository root on a machine with a CUDA build of torch and no network (normally through
examples/scripts/gpu_acceptance.sh, after examples/scripts/fetch_gpu_wheels.sh filled .whl/ on a machine with
the package registry):

    python examples/gpu_acceptance.py [--budget-s 480] [--out DIR] [--only NAME,...] [--skip NAME,...]
    python examples/gpu_acceptance.py --list           # the planned stages, their estimates, and exit
    python examples/gpu_acceptance.py --dry-run        # (or DRY_RUN=1) the plumbing on CPU, in seconds

What it does, in order:
1. Imports: a probe process imports torch, NeMo, megatron-core, Hydra, webdataset, Lightning, transformers,
   diffusers and nemo_imagen. If a required one fails and .whl/ holds wheels, they are installed with
   `pip install --no-deps --no-index --target SITE` and SITE goes first on PYTHONPATH; then the probe runs
   again. The probe also composes and validates every planned benchmark and cascade config with its
   overrides, so a typo costs no GPU time.
2. The stages of `plan()`, in order of value. Each has a planned duration (`estimate_s`, a guess until a GPU
   run replaces it: the report lists estimate and actual time side by side). A stage whose estimate exceeds
   the budget left is not started and is reported "cut by budget"; later, shorter stages still run. Each
   stage runs as a subprocess whose timeout is the budget left (and at most `--stage-timeout-factor` times its
   estimate, so one hung stage cannot take the rest).
3. After every stage, `report.md` is rewritten in --out (default $OUT if set, else outputs/gpu_acceptance), so
   a run cut short still reports what it finished; `log.txt` holds every command and its whole output.

The benchmark rows are `examples/benchmark.py` runs (its printed `key: value` figures, copied as printed into
rows laid out as docs/performance.md's GPU table); the cascade stage is this script's `--cascade-worker`
(base64-500m-edm -> sr256-600m-edm -> sr1024-400m-edm with random weights and random text embeddings, since
no text encoder or trained weights travel: time and peak memory per stage).

--dry-run runs on CPU: the probe and `pytest -m cuda tests/cuda` (every test skips) run for real; benchmark and
cascade stages are stand-ins that run nothing and are reported as "dry run". The budget runs on a simulated
clock on which every stage takes its estimate, so the dry run shows which stages a GPU run with the same
budget would cut.
"""
import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "examples" / "conf"
DEFAULT_BUDGET_S = 480.0
DEFAULT_SITE = "/tmp/gpu_acceptance_site"
LOG_LIMIT_BYTES = 15 * 2**20  # what the device tool brings back: at most 16 MiB a file
LINE = re.compile(r"^([A-Za-z_][\w.]*): (.*?)(?: \((.*)\))?$")  # the benchmark's `key: value (note)` lines
PYTEST_LINE = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
# (module, distribution whose version is reported); a required module that fails to import stops the run
REQUIRED_MODULES = [
    ("torch", "torch"),
    ("omegaconf", "omegaconf"),
    ("hydra", "hydra-core"),
    ("lightning.pytorch", "lightning"),
    ("megatron.core.parallel_state", "megatron-core"),
    ("nemo.core", "nemo_toolkit"),
    ("webdataset", "webdataset"),
    ("transformers", "transformers"),
    ("nemo_imagen.models.imagen", None),
    ("benchmarks.throughput", None),
]
OPTIONAL_MODULES = [("diffusers", "diffusers"), ("triton", "triton"), ("pytest", "pytest")]
PEER_MEMORY_GIB = 120  # base64-2b with the diffusers peer needs both models' weights and Adam state: H200, not H100


# ---------------------------------------------------------------- the plan
@dataclass
class Stage:
    """One unit of work. kind: tests | bench | cascade. `argv` runs from the repository root (argv[0] "python"
    is this interpreter). `configs` are (config name, overrides) pairs the probe validates before anything runs."""

    name: str
    kind: str
    estimate_s: float
    title: str
    argv: List[str] = field(default_factory=list)
    configs: List[Tuple[str, List[str]]] = field(default_factory=list)
    bench: Dict[str, str] = field(default_factory=dict)  # the benchmark's own keys (mode, compare, ...)
    label: str = ""  # the row's config cell
    note: str = ""


@dataclass
class Options:
    bench_steps: int = 5
    bench_rounds: int = 3
    cascade_prompts: int = 8
    cascade_steps: Tuple[int, int, int] = (30, 20, 20)
    cascade_cfg: float = 4.0
    peer: bool = True  # compare=diffusers where it applies (base stages)
    big_peer: bool = True  # also for base64-2b (needs about PEER_MEMORY_GIB of GPU memory)


BENCH_KEYS = ("mode", "compare", "warmup", "steps", "rounds")


def bench_stage(name, config, micro_batch, compiled, estimate_s, options: Options, base_stage=True, big=False,
                title=None, **bench_overrides):
    compare = options.peer and base_stage and (options.big_peer or not big)
    bench = {"mode": "train", "compare": "diffusers" if compare else "none",
             "warmup": "3" if compiled else "2", "steps": str(options.bench_steps),
             "rounds": str(options.bench_rounds), **{k: str(v) for k, v in bench_overrides.items()}}
    overrides = ["trainer.precision=bf16-mixed", f"model.micro_batch_size={micro_batch}",
                 f"model.inductor={compiled}"]
    argv = ["python", "examples/benchmark.py", "--config-name", config, *overrides,
            *[f"{key}={value}" for key, value in bench.items()]]
    note = ""
    if not base_stage:
        note = "(no peer for SR stages)"
    elif not compare:
        note = "peer not run" + (" (GPU memory below %d GiB)" % PEER_MEMORY_GIB if big and options.peer else "")
    mode = "compiled" if compiled else "eager"
    return Stage(name, "bench", estimate_s, title or f"{config}, micro batch {micro_batch}, {mode}", argv,
                 [(config, overrides)], bench, label=f"{config} ({mode})", note=note)


def plan(options: Options) -> List[Stage]:
    """The stages in order of value: correctness first, then the figures the issue's targets are about (the
    base stage at micro batch 128 eager and compiled against the diffusers peer, sr256-600m), the cascade's
    memory at 1024, then the remaining rows. Estimates are planned durations on one H100/H200, process start,
    imports, model construction and compilation included; they are guesses until a GPU run measures them."""
    steps = options.cascade_steps
    cascade_configs = ["base64-500m-edm", "sr256-600m-edm", "sr1024-400m-edm"]
    cascade_argv = ["python", "examples/gpu_acceptance.py", "--cascade-worker", "--configs", *cascade_configs,
                    "--prompts", str(options.cascade_prompts), "--steps", *map(str, steps),
                    "--cfg-scale", str(options.cascade_cfg)]
    return [
        Stage("cuda-tests", "tests", 120, "CUDA correctness tests (pytest -m cuda tests/cuda)",
              ["python", "-m", "pytest", "-m", "cuda", "tests/cuda", "-v", "-rA", "-p", "no:cacheprovider"]),
        bench_stage("train-step-mb8", "base64-500m", 8, False, 45, options,
                    title="one bf16 training step of base64-500m at micro batch 8 (eager)",
                    compare="none", warmup=1, steps=1, rounds=1),
        bench_stage("base64-500m-mb128-eager", "base64-500m", 128, False, 60, options),
        bench_stage("base64-500m-mb128-compiled", "base64-500m", 128, True, 180, options),
        bench_stage("sr256-600m-mb32-eager", "sr256-600m", 32, False, 50, options, base_stage=False),
        Stage("cascade-1024", "cascade", 100,
              f"cascade sampling of {options.cascade_prompts} prompts to 1024x1024 in bf16 (random weights)",
              cascade_argv, [(name, ["trainer.precision=bf16-mixed"]) for name in cascade_configs]),
        bench_stage("sr256-600m-mb32-compiled", "sr256-600m", 32, True, 150, options, base_stage=False),
        bench_stage("base64-2b-mb32-eager", "base64-2b", 32, False, 90, options, big=True),
        bench_stage("base64-500m-mb64-eager", "base64-500m", 64, False, 50, options),
        bench_stage("base64-500m-mb64-compiled", "base64-500m", 64, True, 150, options),
        bench_stage("base64-2b-mb32-compiled", "base64-2b", 32, True, 240, options, big=True),
    ]


def select(stages: List[Stage], only: Optional[str], skip: Optional[str]) -> List[Stage]:
    names = [stage.name for stage in stages]
    chosen = set(names)
    for option, value in (("--only", only), ("--skip", skip)):
        if not value:
            continue
        wanted = {name.strip() for name in value.split(",") if name.strip()}
        unknown = sorted(wanted - set(names))
        if unknown:
            raise SystemExit(f"error: {option}: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(names)}")
        chosen = chosen & wanted if option == "--only" else chosen - wanted
    return [stage for stage in stages if stage.name in chosen]


# ---------------------------------------------------------------- budget
class Budget:
    """Seconds left of `total_s` since construction. In a dry run the clock is simulated: `charge` adds the
    difference between a stage's estimate and the time it really took, so each stage costs its estimate."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic):
        self.total_s, self.clock, self.start, self.extra = float(total_s), clock, clock(), 0.0

    def elapsed(self) -> float:
        return self.clock() - self.start + self.extra

    def remaining(self) -> float:
        return self.total_s - self.elapsed()

    def charge(self, seconds: float):
        self.extra += max(0.0, seconds)


# ---------------------------------------------------------------- results and report
@dataclass
class Result:
    stage: Stage
    status: str  # passed | failed | timed out | cut by budget | not run | dry run | interrupted | running
    detail: str = ""
    seconds: Optional[float] = None
    lines: List[str] = field(default_factory=list)  # the stage's printed `key: value` figures
    values: Dict[str, Tuple[str, str]] = field(default_factory=dict)  # key -> (value as printed, note)
    tests: List[Tuple[str, str, str]] = field(default_factory=list)  # (test, outcome, detail)


def parse_figures(output: str) -> Tuple[List[str], Dict[str, Tuple[str, str]]]:
    """The `key: value (note)` lines of a benchmark or cascade-worker run -> (lines, {key: (value, note)})."""
    lines, values = [], {}
    for line in output.splitlines():
        match = LINE.match(line.strip())
        if match and not line.startswith((" ", "\t", "[")):
            lines.append(line.strip())
            values[match.group(1)] = (match.group(2), match.group(3) or "")
    return lines, values


def parse_pytest(output: str, junit: Optional[Path]) -> List[Tuple[str, str, str]]:
    """Per-test outcomes from `pytest -v` output (known even when the run was cut), with failure, skip and xfail
    messages from its JUnit XML where that was written."""
    outcomes = {}
    for line in output.splitlines():
        match = PYTEST_LINE.match(line.strip())
        if match:
            outcomes[match.group(1)] = match.group(2).lower()
    details = {}
    if junit is not None and junit.is_file():
        try:
            for case in ElementTree.parse(junit).getroot().iter("testcase"):
                name = case.get("name", "")
                for child in case:
                    if child.tag in ("failure", "error", "skipped"):
                        message = (child.get("message") or child.text or "").strip().splitlines()
                        details[name] = message[0][:300] if message else child.tag
        except ElementTree.ParseError:
            pass
    return [(test, outcome, details.get(test.split("::")[-1], "")) for test, outcome in outcomes.items()]


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def training_row(result: Result, device_name: str) -> str:
    """One row in docs/performance.md's GPU table layout, every figure as the benchmark printed it."""
    v = {key: value for key, (value, _) in result.values.items()}
    stage = result.stage

    def get(key, suffix=""):
        """The printed value, with its unit where it is a number."""
        if key not in v:
            return "n/a"
        return v[key] + suffix if re.fullmatch(r"[-+0-9.e]+", v[key]) else v[key]

    images = get("ours.images_per_s")
    if stage.name == "train-step-mb8" and "ours.step_ms" in v:
        images += f" (one step: {v['ours.step_ms']} ms)"
    elif "ours.images_per_s" in result.values and result.values["ours.images_per_s"][1]:
        images += f" ({result.values['ours.images_per_s'][1]})"
    if "ratio.images_per_s" in v:
        ratio = f"{v['ratio.images_per_s']} (peer {get('peer.images_per_s')} images/s; FLOPs ratio " \
                f"{get('ratio.train_flops_per_image')})"
    else:
        ratio = stage.note
    gpu = v.get("device", device_name).replace(" (1 GPU)", "")
    cells = [stage.label, gpu, get("precision"), get("micro_batch"), images, get("ours.utilisation_pct", "%"),
             get("ours.peak_memory_gib", " GiB"), ratio]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def cascade_rows(result: Result) -> List[str]:
    v = {key: value for key, (value, _) in result.values.items()}
    rows = []
    index = 1
    while f"stage{index}.config" in v:
        p = f"stage{index}."
        peak = v.get(p + "peak_memory_gib", "n/a")
        cells = [v[p + "config"], v.get(p + "resolution", "?"), v.get("prompts", "?"), v.get(p + "sampler", "?"),
                 v.get(p + "sample_s", "n/a"), v.get(p + "images_per_s", "n/a"),
                 peak + " GiB" if re.fullmatch(r"[-+0-9.e]+", peak) else peak]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        index += 1
    return rows


class Report:
    """report.md, rewritten in full after every change (atomically), and log.txt, appended as output arrives."""

    def __init__(self, out: Path, budget: Budget, dry_run: bool, command: str):
        self.out, self.budget, self.dry_run, self.command = out, budget, dry_run, command
        out.mkdir(parents=True, exist_ok=True)
        self.log_path, self.report_path = out / "log.txt", out / "report.md"
        self.log_path.write_text("")
        self.log_bytes, self.log_lock = 0, threading.Lock()
        self.started = datetime.now(timezone.utc)
        self.environment: Dict[str, object] = {}
        self.install_note = ""
        self.results: List[Result] = []
        self.notes: List[str] = []

    def log(self, text: str):
        with self.log_lock:
            if self.log_bytes > LOG_LIMIT_BYTES:
                return
            data = text if text.endswith("\n") else text + "\n"
            self.log_bytes += len(data.encode())
            if self.log_bytes > LOG_LIMIT_BYTES:
                data += "[log.txt truncated here: the device tool brings back at most 16 MiB a file]\n"
            with self.log_path.open("a", encoding="utf-8") as handle:
                handle.write(data)

    def say(self, text: str):
        stamp = f"[{self.budget.elapsed():7.1f} s]"
        print(f"{stamp} {text}", flush=True)
        self.log(f"{stamp} {text}")

    def write(self):
        tmp = self.report_path.with_suffix(".md.tmp")
        tmp.write_text(self.render(), encoding="utf-8")
        os.replace(tmp, self.report_path)

    def render(self) -> str:
        env = self.environment
        device = env.get("device_name") or "unknown"
        mode = "dry run on CPU: stand-ins and a simulated clock on which each stage takes its estimate" \
            if self.dry_run else "real"
        out = ["# GPU acceptance run", ""]
        out += [f"- date: {self.started:%Y-%m-%d %H:%M} UTC",
                f"- device: {device}" + (f", {env['device_memory_gib']} GiB" if env.get("device_memory_gib") else "")
                + (f", driver {env['driver']}" if env.get("driver") else ""),
                f"- torch {env.get('torch', '?')}, CUDA {env.get('cuda', 'none')}, cuDNN {env.get('cudnn', 'none')}, "
                f"Python {env.get('python', '?')}"]
        versions = env.get("versions") or {}
        if versions:
            out.append("- packages: " + ", ".join(f"{name} {version}" for name, version in versions.items()))
        if self.install_note:
            out.append(f"- wheels: {self.install_note}")
        out += [f"- mode: {mode}",
                f"- budget: {self.budget.total_s:.0f} s, used {self.budget.elapsed():.0f} s"
                + (" (simulated)" if self.dry_run else ""),
                f"- command: `{self.command}`", ""]
        out += [f"> {note}" for note in self.notes] + ([""] if self.notes else [])
        out += ["## Stages", "", "| # | stage | estimate s | took s | result |", "|---|---|---|---|---|"]
        for index, result in enumerate(self.results, 1):
            took = "" if result.seconds is None else f"{result.seconds:.0f}"
            status = result.status + (f": {result.detail}" if result.detail else "")
            out.append(f"| {index} | {_cell(result.stage.name)} | {result.stage.estimate_s:.0f} | {took} | "
                       f"{_cell(status)} |")
        out.append("")
        tests = [r for r in self.results if r.stage.kind == "tests"]
        for result in tests:
            out += [f"## {result.stage.title}", ""]
            if result.tests:
                out += ["| test | result | detail |", "|---|---|---|"]
                out += [f"| {_cell(t)} | {o} | {_cell(d)} |" for t, o, d in result.tests]
                counts: Dict[str, int] = {}
                for _, outcome, _ in result.tests:
                    counts[outcome] = counts.get(outcome, 0) + 1
                out += ["", ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))]
            else:
                out.append(f"no per-test results ({result.status})")
            out.append("")
        bench = [r for r in self.results if r.stage.kind == "bench" and r.values]
        out += ["## Training throughput (docs/performance.md layout)", ""]
        if bench:
            out += ["| config | GPU | precision | micro batch | images/s/GPU | utilisation | peak memory | ours / peer |",
                    "|---|---|---|---|---|---|---|---|"]
            out += [training_row(r, device) for r in bench]
        else:
            out.append("no benchmark figures" + (" (dry run)" if self.dry_run else ""))
        out.append("")
        cascade = [r for r in self.results if r.stage.kind == "cascade" and r.values]
        out += ["## Cascade sampling (random weights, random text embeddings)", ""]
        if cascade:
            for result in cascade:
                out += ["| stage | resolution | prompts | sampler | seconds | images/s | peak memory |",
                        "|---|---|---|---|---|---|---|"] + cascade_rows(result)
                total = result.values.get("total.sample_s")
                if total:
                    out += ["", f"total sampling time: {total[0]} s"]
        else:
            out.append("no cascade figures" + (" (dry run)" if self.dry_run else ""))
        out.append("")
        printed = [r for r in self.results if r.lines]
        if printed:
            out += ["## Printed figures", ""]
            for result in printed:
                out += [f"### {result.stage.name}: {result.stage.title}", "",
                        f"`{' '.join(shlex.quote(a) for a in result.stage.argv)}`", "", "```"]
                out += result.lines + ["```", ""]
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------- running commands
class Runner:
    """Runs a command in its own process group, streaming its output into the log; kills the group on timeout."""

    def __init__(self, report: Report, env: Dict[str, str]):
        self.report, self.env = report, env
        self.current: Optional[subprocess.Popen] = None

    def run(self, argv: Sequence[str], timeout_s: float) -> Tuple[int, str, bool, float]:
        """-> (exit status, output, timed out, seconds)."""
        argv = [sys.executable if a == "python" else a for a in argv]
        self.report.log(f"$ {' '.join(shlex.quote(a) for a in argv)}   (timeout {timeout_s:.0f} s)")
        start = time.monotonic()
        process = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace", start_new_session=True)
        self.current = process
        chunks: List[str] = []

        def pump():  # drains the pipe whatever happens to the log, so the child never blocks on a full pipe
            for line in process.stdout:
                chunks.append(line)
                try:
                    self.report.log(line)
                except OSError:
                    pass

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            process.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
            process.wait()
        reader.join(timeout=10)
        self.current = None
        seconds = time.monotonic() - start
        self.report.log(f"[exit status {process.returncode}{', timed out' if timed_out else ''}, {seconds:.1f} s]")
        return process.returncode, "".join(chunks), timed_out, seconds

    def kill(self):
        process = self.current
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                process.kill()


# ---------------------------------------------------------------- imports and wheels
def probe(runner: Runner, stages: List[Stage], out: Path) -> Dict[str, object]:
    """Runs `--probe` in a fresh interpreter: versions, device, import results, planned configs validated."""
    request = out / "probe_request.json"
    request.write_text(json.dumps({"configs": {s.name: [s.configs, s.bench] for s in stages if s.configs}}))
    rc, output, timed_out, _ = runner.run(["python", "examples/gpu_acceptance.py", "--probe", str(request)], 300)
    request.unlink(missing_ok=True)
    for line in output.splitlines():
        if line.startswith("PROBE_JSON: "):
            return json.loads(line[len("PROBE_JSON: "):])
    tail = " ".join(output.strip().splitlines()[-3:])
    return {"failed": f"the probe {'timed out' if timed_out else f'exited with status {rc}'}: {tail[-500:]}"}


def missing_required(info: Dict[str, object]) -> List[str]:
    if "failed" in info:
        return [str(info["failed"])]
    modules = info.get("modules") or {}
    return [f"{name}: {modules.get(name, 'not tried')}" for name, _ in REQUIRED_MODULES
            if not str(modules.get(name, "")).startswith("ok")]


def wheel_project(path: Path) -> str:
    """The normalised project name of a wheel file (PEP 427: name-version-...whl)."""
    return re.sub(r"[-_.]+", "-", path.name.split("-")[0]).lower()


def install_wheels(wheel_dir: Path, site: Path, runner: Runner) -> Tuple[bool, str]:
    """pip install --no-deps --no-index --target `site` every wheel in `wheel_dir` -> (ok, what happened)."""
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        return False, f"no wheels in {wheel_dir} (run examples/scripts/fetch_gpu_wheels.sh on a networked machine)"
    projects: Dict[str, List[str]] = {}
    for wheel in wheels:
        projects.setdefault(wheel_project(wheel), []).append(wheel.name)
    twice = {name: files for name, files in projects.items() if len(files) > 1}
    if twice:
        return False, "two versions of one project in %s (pip would refuse them all): %s" % (
            wheel_dir, "; ".join(", ".join(files) for files in twice.values()))
    argv = ["python", "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
            "--disable-pip-version-check", "--upgrade", "--target", str(site), *map(str, wheels)]
    rc, output, timed_out, seconds = runner.run(argv, 300)
    if rc != 0:
        return False, f"pip install failed ({'timed out' if timed_out else f'status {rc}'}): " \
                      f"{' '.join(output.strip().splitlines()[-2:])[-400:]}"
    return True, f"installed {len(wheels)} wheels from {wheel_dir} into {site} in {seconds:.0f} s"


def pythonpath(*entries) -> str:
    existing = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    ordered = []
    for entry in [*map(str, entries), *existing]:
        if entry not in ordered:
            ordered.append(entry)
    return os.pathsep.join(ordered)


# ---------------------------------------------------------------- the probe (runs in its own interpreter)
def probe_main(request_path: str):
    """Prints one `PROBE_JSON: {...}` line: versions, device, import results and each planned config's check."""
    import importlib
    import importlib.metadata as metadata
    import platform

    info: Dict[str, object] = {"python": platform.python_version(), "modules": {}, "versions": {}, "plans": {}}
    for module, dist in REQUIRED_MODULES + OPTIONAL_MODULES:
        try:
            importlib.import_module(module)
            version = metadata.version(dist) if dist else ""
            info["modules"][module] = f"ok {version}".strip()
            if dist:
                info["versions"][dist] = version
        except Exception as error:  # ImportError, and RuntimeError from a half-installed accelerator library
            info["modules"][module] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["device_name"] = props.name
            info["device_memory_gib"] = round(props.total_memory / 2**30, 1)
            info["cudnn"] = torch.backends.cudnn.version()
        else:
            info["device_name"] = "cpu (no CUDA device)"
    except Exception as error:
        info["torch"] = f"{type(error).__name__}: {error}"
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if smi.returncode == 0 and smi.stdout.strip():
            info["driver"] = smi.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    if all(str(info["modules"].get(m, "")).startswith("ok") for m, _ in REQUIRED_MODULES):
        request = json.loads(Path(request_path).read_text())
        for name, (configs, bench) in request["configs"].items():
            info["plans"][name] = check_planned_configs(configs, bench)
    print("PROBE_JSON: " + json.dumps(info), flush=True)


def compose(name: str, overrides: List[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return hydra_compose(config_name=name, overrides=list(overrides))


def check_planned_configs(configs, bench: Dict[str, str]) -> str:
    """'ok', or the first error of composing / validating a stage's configs and benchmark keys."""
    from benchmarks.throughput import parse_bench_config
    from nemo_imagen.models.config import validate_model_config

    try:
        if bench:
            parse_bench_config(bench)
        for name, overrides in configs:
            typed, _ = validate_model_config(compose(name, overrides).model)
            if bench.get("compare", "none") != "none" and typed.unet_type != "base":
                return f"{name}: compare=diffusers needs a base stage, not {typed.unet_type}"
        return "ok"
    except Exception as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


# ---------------------------------------------------------------- the cascade (runs in its own interpreter)
def run_cascade(configs: Sequence[Tuple[str, List[str]]], prompts: int, steps: Sequence[int], guidance_scale: float,
                device_name: str = "auto", seed: int = 0, write: Callable[[str], None] = print):
    """Samples `prompts` random text embeddings through the stages `configs` (base first, each SR stage taking the
    previous output) with random weights, each built just before it samples and freed after, so a stage's peak
    memory is its own weights plus its sampling. Prints `key: value (note)` lines, figures as soon as known."""
    import torch
    from omegaconf import OmegaConf

    from nemo_imagen.models.imagen import MegatronImagen

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device_name == "auto" else device_name)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def report(key, value, note=""):
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        write(f"{key}: {text}" + (f" ({note})" if note else ""))

    report("device", torch.cuda.get_device_name(device) if cuda else "cpu")
    report("torch", torch.__version__)
    report("prompts", prompts, f"classifier-free guidance: {2 * prompts} per UNet call" if guidance_scale != 1 else "")
    if len(steps) != len(configs):
        raise SystemExit(f"error: --steps: {len(configs)} stages need {len(configs)} step counts, got {len(steps)}")
    images, total = None, 0.0
    for index, ((name, overrides), stage_steps) in enumerate(zip(configs, steps), 1):
        key = f"stage{index}."
        cfg = compose(name, overrides).model
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        cfg.ema.enable = False  # sampling speed does not depend on which weights
        start = time.perf_counter()
        torch.manual_seed(seed + index)
        stage = MegatronImagen(cfg).to(device).eval()
        typed = stage.typed_cfg
        build_s = time.perf_counter() - start
        report(key + "config", name)
        report(key + "params", sum(p.numel() for p in stage.unet.parameters()))
        report(key + "precision", str(typed.precision))
        generator = torch.Generator().manual_seed(seed)
        cond = typed.conditioning
        text = torch.randn(prompts, cond.token_length, cond.embed_dim, generator=generator)
        lengths = torch.randint(1, cond.token_length + 1, (prompts, 1), generator=generator)
        mask = torch.arange(cond.token_length)[None] < lengths
        if (images is None) != (not typed.is_super_resolution):
            raise SystemExit(f"error: {name}: a cascade is one base stage followed by super-resolution stages")
        side = typed.unet.image_size if images is None else images.shape[-1] * typed.upscale_factor
        low = "" if images is None else f"{images.shape[-1]} -> "
        report(key + "resolution", f"{low}{side}")
        report(key + "sampler", f"edm, {stage_steps} steps, cfg {guidance_scale}")
        report(key + "build_s", build_s, "model construction on the CPU and transfer, not timed below")

        def sample(n_steps, lowres):
            return stage.sample(text, mask, lowres=lowres, sampler="edm", steps=n_steps, guidance_scale=guidance_scale,
                                thresholding="dynamic", generator=torch.Generator(device).manual_seed(seed),
                                use_ema=False)

        lowres = images
        sample(1, lowres)  # warm-up: kernel selection and library handles, one step
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        try:
            images = sample(stage_steps, lowres)
            if cuda:
                torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError as error:
            report(key + "error", "out of memory", str(error).splitlines()[0])
            raise SystemExit(3)
        seconds = time.perf_counter() - start
        total += seconds
        report(key + "sample_s", seconds, "wall time, synchronised")
        report(key + "images_per_s", prompts / seconds)
        if cuda:
            report(key + "peak_memory_gib", torch.cuda.max_memory_allocated(device) / 2**30,
                   "torch.cuda.max_memory_allocated: this stage's weights and sampling")
        else:
            report(key + "peak_memory_gib", "n/a", "CPU: torch tracks allocator peaks on CUDA only")
        if not torch.isfinite(images).all():
            report(key + "error", "non-finite images")
            raise SystemExit(3)
        del stage
        if cuda:
            torch.cuda.empty_cache()
    report("total.sample_s", total, "all stages, sampling only")
    report("output", "x".join(map(str, images.shape)))
    return images


# ---------------------------------------------------------------- the driver
def run_stage(stage: Stage, runner: Runner, report: Report, budget: Budget, timeout_factor: float,
              dry_run: bool) -> Result:
    result = Result(stage, "running")
    report.results.append(result)
    report.write()
    reserve = 5.0  # to write the report after the last stage
    timeout = budget.remaining() - reserve
    if timeout_factor > 0:
        timeout = min(timeout, timeout_factor * stage.estimate_s)
    if dry_run and stage.kind != "tests":
        result.status, result.detail, result.seconds = "dry run", "stand-in: nothing run (config validated)", 0.0
        report.say(f"{stage.name}: dry run (stand-in), charged its estimate {stage.estimate_s:.0f} s")
        return result
    report.say(f"{stage.name}: start ({stage.title}); estimate {stage.estimate_s:.0f} s, timeout {timeout:.0f} s")
    argv = list(stage.argv)
    junit = None
    if stage.kind == "tests":
        junit = report.out / "cuda_tests.xml"
        junit.unlink(missing_ok=True)
        argv.append(f"--junitxml={junit}")
    rc, output, timed_out, seconds = runner.run(argv, timeout)
    result.seconds = seconds
    if stage.kind == "tests":
        result.tests = parse_pytest(output, junit)
    else:
        result.lines, result.values = parse_figures(output)
    if timed_out:
        result.status, result.detail = "timed out", f"killed after {seconds:.0f} s"
    elif stage.kind == "tests" and rc in (0, 1) and result.tests:
        failed = [t for t, o, _ in result.tests if o in ("failed", "error")]
        result.status = "failed" if failed else "passed"
        result.detail = f"{len(failed)} of {len(result.tests)} tests failed" if failed else ""
    elif rc == 0:
        result.status = "passed"
    else:
        result.status = "failed"
        tail = [line for line in output.strip().splitlines() if line.strip()][-2:]
        result.detail = f"exit status {rc}: {' '.join(tail)[-300:]}"
    report.say(f"{stage.name}: {result.status} {result.detail} ({seconds:.0f} s)")
    return result


def run_plan(stages: List[Stage], budget: Budget, plans: Dict[str, str], report: Report,
             execute: Callable[[Stage], Result], simulated: bool = False):
    """Runs the stages in order: a stage whose config check failed is not run; a stage whose estimate exceeds the
    budget left is cut (later, shorter ones may still run); else `execute(stage)` (which appends its Result to
    the report). With `simulated`, each executed stage is charged its estimate on the budget's clock."""
    for stage in stages:
        remaining = budget.remaining()
        check = plans.get(stage.name, "ok")
        if check != "ok":
            report.results.append(Result(stage, "not run", f"invalid plan: {check}"))
            report.say(f"{stage.name}: not run, invalid plan: {check}")
        elif stage.estimate_s > remaining:
            result = Result(stage, "cut by budget",
                            f"estimate {stage.estimate_s:.0f} s > {max(0.0, remaining):.0f} s left")
            report.results.append(result)
            report.say(f"{stage.name}: cut by budget ({result.detail})")
        else:
            result = execute(stage)
            if simulated:
                budget.charge(stage.estimate_s - (result.seconds or 0.0))
        report.write()


def drive(args) -> int:
    dry_run = args.dry_run
    out = Path(args.out)
    budget = Budget(args.budget_s)
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    report = Report(out, budget, dry_run, command)
    options = Options(bench_steps=args.bench_steps, bench_rounds=args.bench_rounds, peer=not args.no_peer)
    stages = select(plan(options), args.only, args.skip)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": pythonpath(REPO)}
    runner = Runner(report, env)

    def interrupted(signum, _frame):
        runner.kill()
        for result in report.results:
            if result.status == "running":
                result.status, result.detail = "interrupted", f"signal {signum}"
        report.notes.append(f"interrupted by signal {signum} after {budget.elapsed():.0f} s")
        report.write()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    report.say(f"gpu_acceptance: {len(stages)} stages, budget {budget.total_s:.0f} s"
               + (", DRY RUN (CPU stand-ins, simulated clock)" if dry_run else "") + f"; report: {report.report_path}")
    report.write()

    info = probe(runner, stages, out)
    missing = missing_required(info)
    if missing:
        report.say("imports failed: " + "; ".join(missing))
        site = Path(args.site)
        ok, note = install_wheels(Path(args.wheels), site, runner)
        report.install_note = note
        report.say(note)
        if ok:
            runner.env["PYTHONPATH"] = env["PYTHONPATH"] = pythonpath(site, REPO)
            info = probe(runner, stages, out)
            missing = missing_required(info)
    else:
        report.install_note = "not needed: every required module imported without the carried wheels"
    report.environment = {k: info.get(k) for k in ("device_name", "device_memory_gib", "driver", "torch", "cuda",
                                                   "cudnn", "python", "versions")}
    (out / "probe.json").write_text(json.dumps(info, indent=1))
    if missing:
        report.notes.append("required imports failed, nothing else was run: " + "; ".join(missing))
        for stage in stages:
            report.results.append(Result(stage, "not run", "imports failed"))
        report.say("stopping: required imports failed")
        report.write()
        return 2
    cuda = bool(info.get("cuda_available"))
    if not cuda and not dry_run:
        report.notes.append("torch sees no CUDA device: the CUDA tests skip and the benchmarks would run on the CPU; "
                            "use --dry-run on a CPU machine")
        report.say("no CUDA device: not running the GPU stages (use --dry-run on a CPU machine)")
        for stage in stages:
            report.results.append(Result(stage, "not run", "no CUDA device"))
        report.write()
        return 2
    # the plan, adjusted to what the probe found
    if options.peer and not str(info["modules"].get("diffusers", "")).startswith("ok"):
        options.peer = False
        report.notes.append(f"diffusers does not import ({info['modules'].get('diffusers')}): rows run without the peer")
    memory = info.get("device_memory_gib")
    if memory is not None and float(memory) < PEER_MEMORY_GIB:
        options.big_peer = False
        report.notes.append(f"{memory} GiB of GPU memory: base64-2b runs without the peer (both need ~{PEER_MEMORY_GIB})")
    stages = [next(s for s in plan(options) if s.name == stage.name) for stage in stages]
    run_plan(stages, budget, info.get("plans") or {}, report,
             lambda stage: run_stage(stage, runner, report, budget, args.stage_timeout_factor, dry_run), dry_run)
    done = sum(r.status == "passed" for r in report.results)
    report.say(f"finished: {done} of {len(report.results)} stages passed, {budget.elapsed():.0f} s used"
               + (" (simulated)" if dry_run else ""))
    report.write()
    return 0 if all(r.status in ("passed", "dry run", "cut by budget") for r in report.results) else 1


def truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="time budget in seconds (480)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "outputs/gpu_acceptance",
                        help="output folder (default $OUT if set, else outputs/gpu_acceptance)")
    parser.add_argument("--dry-run", action="store_true", default=truthy(os.environ.get("DRY_RUN")),
                        help="CPU rehearsal: stand-ins, simulated clock (also DRY_RUN=1)")
    parser.add_argument("--only", help="comma-separated stage names to run (see --list)")
    parser.add_argument("--skip", help="comma-separated stage names to leave out")
    parser.add_argument("--list", action="store_true", help="print the planned stages and exit")
    parser.add_argument("--wheels", default=str(REPO / ".whl"), help="wheels to install when imports fail (.whl)")
    parser.add_argument("--site", default=DEFAULT_SITE, help=f"pip --target folder for them ({DEFAULT_SITE})")
    parser.add_argument("--stage-timeout-factor", type=float, default=3.0,
                        help="a stage is killed after this many times its estimate (0: only the budget limits it)")
    parser.add_argument("--bench-steps", type=int, default=Options.bench_steps, help="benchmark steps per round")
    parser.add_argument("--bench-rounds", type=int, default=Options.bench_rounds, help="benchmark rounds")
    parser.add_argument("--no-peer", action="store_true", help="run the benchmark rows without compare=diffusers")
    # internal entry points, each run in its own interpreter by the driver
    parser.add_argument("--probe", metavar="REQUEST", help=argparse.SUPPRESS)
    parser.add_argument("--cascade-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--configs", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--cfg-scale", type=float, default=4.0, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--override", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        probe_main(args.probe)
        return 0
    if args.cascade_worker:
        if not args.configs or not args.steps:
            parser.error("--cascade-worker needs --configs NAME... and --steps N... (one per config)")
        overrides = ["trainer.precision=bf16-mixed", *args.override]
        run_cascade([(name, overrides) for name in args.configs], args.prompts, args.steps, args.cfg_scale,
                    args.device)
        return 0
    if args.list:
        options = Options(bench_steps=args.bench_steps, bench_rounds=args.bench_rounds, peer=not args.no_peer)
        total = 0.0
        for stage in select(plan(options), args.only, args.skip):
            total += stage.estimate_s
            print(f"{stage.name:30s} {stage.estimate_s:5.0f} s (sum {total:5.0f})  {stage.title}")
        return 0
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
