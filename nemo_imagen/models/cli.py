"""Command-line helpers of the example scripts (`examples/*.py`).

This module imports only the standard library and omegaconf at module level, so that a script can check its
command line before it imports NeMo, Lightning and torch (10-50 s): a mistyped key or config name then fails
in about a second.

- `check_command_line`: the `--config-name` exists in the script's config folder and every plain `key=value`
  override names a key of that YAML (Hydra's own rule: a key the YAML does not set needs `+key=value`); else
  one line with the closest name or key and exit status 2.
- `quiet_dependency_warnings`: hides the warnings that megatron.core prints at import about Transformer Engine
  and Apex, optional GPU libraries that nothing in this package uses, and Hydra's about a working directory
  that NeMo's runner never changes.
- `exit_on_config_error`: a user mistake raised while running (`ConfigError`, a missing file) is printed as one
  line with exit status 2; a run stopped by its data-fault threshold or numerical guard with exit status 3.
- `resume_command`: the command line that resumes a run stopped by a signal.
"""
import difflib
import functools
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

USAGE_ERROR = 2  # exit status of a user mistake in a command line, a config or a path
RUN_STOPPED = 3  # exit status of a run stopped by its data-fault threshold or numerical guard

# (module, message) of warnings that every command printed and that concern no one here:
# - megatron.core (imported by NeMo) says at import that it falls back to torch implementations because the
#   GPU libraries Transformer Engine and Apex are absent; nothing in nemo_imagen uses those code paths;
# - Hydra says that its later versions will not change the working directory: NeMo's `hydra_runner` sets
#   `hydra.run.dir=.`, so the job never changes it anyway.
DEPENDENCY_WARNINGS = (
    (r"megatron\.core\.", r"Transformer Engine and Apex are not installed\. Falling back"),
    (r"megatron\.core\.", r"Apex is not installed\. Falling back to Torch Norm"),
    (r"hydra\.", r"Future Hydra versions will no longer change working directory at job runtime by default"),
)


# GNU OpenMP (torch's CPU threads on Linux) lets an idle thread spin 300,000 times before it sleeps. When two
# processes share the cores (two sampling runs, training and a loader worker), each one's spinning threads take
# the other's time slices: measured on 2 cores under the AVX2 emulation, a 16-image sampling run took 7.6 s
# alone and 33-35 s with a second one beside it, 4.4x; with 10,000 spins 6.5 s alone and 14.7 s in a pair
# (OMP_WAIT_POLICY=PASSIVE: 8.6 s and 12.7 s), and a quickstart training step 0.59-0.63 s against 0.60 s.
OPENMP_SPIN_COUNT = "10000"


def short_openmp_spin() -> None:
    """Sets GOMP_SPINCOUNT (unless the user has) before torch loads its OpenMP runtime, which reads it once."""
    os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)


def quiet_dependency_warnings() -> None:
    """Ignores exactly the warnings of `DEPENDENCY_WARNINGS` (by module and message); every other one still shows.

    The filters name the category `Warning`, not `UserWarning`: NeMo's warning handler drops every warning of
    a category for which any "ignore" filter exists, whatever its message (`_warning_is_ignored` in
    nemo/utils/nemo_logging.py), so a `UserWarning` filter would also hide Lightning's and everyone else's."""
    for module, message in DEPENDENCY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=Warning, module=module)


def fail(message: str, status: int = USAGE_ERROR):
    """Prints `error: message` on stderr and exits with `status`."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


# ---------------------------------------------------------------- the command line, before the heavy imports
def config_names(config_dir) -> List[str]:
    return sorted(path.stem for path in Path(config_dir).glob("*.yaml"))


def _shown_dir(config_dir) -> str:
    """config_dir as the user would type it from the current folder."""
    relative = os.path.relpath(Path(config_dir).resolve())
    return relative if not relative.startswith("..") else str(Path(config_dir).resolve())


def config_name_error(config_dir, name: str, label: Optional[str] = None) -> Optional[str]:
    """None when `name` (with or without .yaml) is a config in `config_dir`; else the one-line message, which
    starts with `label` (default: `--config-name NAME`)."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    names = config_names(config_dir)
    if stem in names:
        return None
    close = difflib.get_close_matches(stem, names, n=1)
    hint = f"; did you mean {close[0]}?" if close else "."
    label = label or f"--config-name {name}"
    return f"{label}: no such config in {_shown_dir(config_dir)}{hint} Configs: {', '.join(names)}"


def load_config(config_dir, name: str) -> Optional[DictConfig]:
    """The YAML as Hydra would compose it without overrides, or None where that needs more than one file (a
    Hydra `defaults` list; no config in examples/conf has one), so that the caller leaves the check to Hydra."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    cfg = OmegaConf.load(Path(config_dir) / f"{stem}.yaml")
    if not isinstance(cfg, DictConfig) or "defaults" in cfg:
        return None
    return cfg


def _children(node):
    """{key: child} of a mapping node, {index: child} of a list node, None for a leaf (or null)."""
    if isinstance(node, dict):
        return {str(key): child for key, child in node.items()}
    if isinstance(node, list):
        return {str(index): child for index, child in enumerate(node)}
    return None


def _paths(node, prefix=()):
    """Every dotted path below `node` (mappings only), shallow first."""
    children = _children(node) if isinstance(node, dict) else {}
    for key, child in children.items():
        yield prefix + (key,)
        yield from _paths(child, prefix + (key,))


def _exists(node, segments) -> bool:
    for segment in segments:
        children = _children(node)
        if children is None or segment not in children:
            return False
        node = children[segment]
    return True


def _suggestion(parent, tail: Sequence[str]) -> Optional[List[str]]:
    """The path below `parent` that the user most likely meant by `tail` (whose first segment is not a key of
    `parent`): the same tail nested elsewhere below `parent` (`model.unet.channel_mult` for
    `model.channel_mult`); else a close spelling of each segment in turn; else a close spelling of the last
    segment anywhere below `parent`."""
    tail = tuple(tail)
    paths = list(_paths(parent))
    nested = [path for path in paths if path[-len(tail):] == tail]
    if nested:
        return list(nested[0])
    node, fixed = parent, []
    for segment in tail:
        children = _children(node)
        if children is None:
            break
        if segment not in children:
            close = difflib.get_close_matches(segment, [key for key in children if not key.isdigit()], n=1)
            if not close:
                break
            segment = close[0]
        fixed.append(segment)
        node = children[segment]
    else:
        return fixed
    by_last = {}
    for path in paths:
        by_last.setdefault(path[-1], path)
    close = difflib.get_close_matches(tail[-1], list(by_last), n=1, cutoff=0.8)
    return list(by_last[close[0]]) if close else None


def unknown_key_error(cfg: DictConfig, name: str, key: str, override: str, prefix: str = "") -> Optional[str]:
    """None when the dotted `key` of a plain `key=value` override is in `cfg` (or below a list, a leaf or a
    null, which Hydra itself judges); else the one-line message with the closest key of the YAML. `prefix`
    goes before every key the message shows (`cascade.` for the benchmark's cascade overrides)."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    segments = key.split(".")
    node = tree
    for depth, segment in enumerate(segments):
        children = _children(node) if isinstance(node, dict) else None
        if children is None:
            return None  # a list index, a leaf or a null: Hydra's own error is precise enough
        if segment not in children:
            break
        node = children[segment]
    else:
        return None
    parent_path = segments[:depth]
    parent = node
    suggestion = _suggestion(parent, segments[depth:])
    if suggestion is not None and _exists(parent, suggestion):
        hint = f"; did you mean {prefix}{'.'.join(parent_path + suggestion)}?"
    else:
        where = prefix + ".".join(parent_path) if parent_path else "the top level"
        hint = f"; the keys of {where} are {', '.join(map(str, parent))}"
    if depth == len(segments) - 1:  # a new key in an existing block: maybe one that the block's schema knows
        hint += f" (a key that the code knows but {name}.yaml does not set is added with {prefix}+{override})"
    return f"{prefix}{key}: no such key in {name}{hint}"


def _hydra_overrides(overrides: Sequence[str]):
    """Hydra's own parse of the overrides, or None where Hydra would reject them anyway (it says why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser  # light: no NeMo, no torch
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return None


def override_errors(config_dir, name: str, overrides: Sequence[str], prefix: str = "") -> List[str]:
    """One message per plain `key=value` override whose key is not in the config `name` (`+key`, `++key`,
    `~key`, `hydra.*` and config-group overrides are left to Hydra); `prefix` as in `unknown_key_error`."""
    from hydra.core.override_parser.types import OverrideType

    cfg = load_config(config_dir, name)
    parsed = _hydra_overrides(overrides)
    if cfg is None or parsed is None:
        return []
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    errors = []
    for override in parsed:
        key = override.key_or_group
        if override.type != OverrideType.CHANGE or override.package is not None:
            continue
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or "/" in key:
            continue
        error = unknown_key_error(cfg, stem, key, override.input_line, prefix)
        if error:
            errors.append(error)
    return errors


def check_command_line(config_dir, default_config: str, argv: Optional[Sequence[str]] = None) -> None:
    """Exits with one `error: ...` line (status 2) when the command line of a Hydra script names a config that
    is not in `config_dir`, or overrides a key that the chosen config does not have. Runs in about a second,
    before the script imports anything heavy; Hydra still parses and applies the command line afterwards.
    Command lines that this check cannot judge alone (another config path or folder, help, info, a rerun) pass
    through. The parser is Hydra's own, the one NeMo's `hydra_runner` uses."""
    from hydra._internal.utils import get_args_parser

    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)  # an unknown flag: argparse's one-line usage error, status 2
    elsewhere = args.config_path or args.config_dir or args.experimental_rerun
    if elsewhere or args.help or args.hydra_help or args.info or args.shell_completion:
        return
    name = args.config_name or default_config
    if "/" in name:
        return
    error = config_name_error(config_dir, name)
    if error:
        fail(error)
    errors = override_errors(config_dir, name, args.overrides)
    if errors:
        fail(errors[0])


# ---------------------------------------------------------------- while running
def _loaded_classes(*qualified_names) -> tuple:
    """The classes among `module.Class` names whose module is imported: an exception of a class whose module
    was never imported cannot have been raised, and this module imports nothing heavy to find out."""
    classes = []
    for qualified in qualified_names:
        module, _, name = qualified.rpartition(".")
        if module in sys.modules:
            classes.append(getattr(sys.modules[module], name))
    return tuple(classes)


def exit_on_config_error(main):
    """A user mistake in a config or a path is reported as one line, not a stack trace (exit status 2); so
    is a run stopped by its data-fault threshold or numerical guard (exit status 3)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as error:
            if isinstance(error, (FileNotFoundError, *_loaded_classes("nemo_imagen.config_checks.ConfigError"))):
                fail(str(error))
            stopped = _loaded_classes(
                "nemo_imagen.data.webdataset_pipeline.DataFaultError", "nemo_imagen.diffusion.numerics.NonFiniteStepError"
            )
            if isinstance(error, stopped):
                fail(f"the run stopped: {error}", RUN_STOPPED)
            raise

    return wrapper


def _override_key(argument: str) -> str:
    return argument.lstrip("+~").partition("=")[0]


def resume_command(overrides: Sequence[str], argv: Optional[Sequence[str]] = None) -> Optional[str]:
    """`python <this process's script and arguments> <overrides>`, where an argument that set a key of
    `overrides` is dropped (the new value wins); None when this process is not a script (e.g. pytest)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv or not argv[0].endswith(".py") or Path(argv[0]).name == "__main__.py":
        return None
    replaced = {_override_key(override) for override in overrides}
    kept = [argv[0]] + [argument for argument in argv[1:] if _override_key(argument) not in replaced]
    return shlex.join(["python", *kept, *overrides])
