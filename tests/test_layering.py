"""The package's floors, as README's Layout draws them, read from the import statements of every module:
modules, diffusion and text import no other floor; data only text; evaluation none; models any. NeMo, Lightning
and Hydra appear only in models; nothing in the package imports diffusers or reads /proc."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nemo_imagen"
FLOORS = ("modules", "diffusion", "text", "data", "evaluation", "models")
HELPERS = ("precision", "config_checks", "images")  # top-level modules any floor may use
ALLOWED = {
    "modules": set(),
    "diffusion": set(),
    "text": set(),
    "data": {"text"},
    "evaluation": set(),
    "models": set(FLOORS),
}
ONLY_IN_MODELS = ("nemo", "lightning", "pytorch_lightning", "hydra", "megatron")


def imported_modules(path: Path, package: Path = PACKAGE):
    """Absolute names of everything `path` imports (relative imports resolved inside `package`)."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(parts[: len(parts) - node.level])
                yield f"{base}.{node.module}" if node.module else base
            else:
                yield node.module


def floor_of(name: str):
    parts = name.split(".")
    return parts[1] if parts[0] == "nemo_imagen" and len(parts) > 1 else None


@pytest.mark.parametrize("floor", FLOORS)
def test_each_floor_imports_only_the_floors_below_it(floor):
    wrong = []
    for path in sorted((PACKAGE / floor).rglob("*.py")):
        for name in imported_modules(path):
            other = floor_of(name)
            if other and other != floor and other not in HELPERS and other not in ALLOWED[floor]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
            if floor != "models" and name.split(".")[0] in ONLY_IN_MODELS:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert wrong == []


def test_the_helpers_import_no_floor():
    for helper in HELPERS:
        names = [name for name in imported_modules(PACKAGE / f"{helper}.py") if floor_of(name) in FLOORS]
        assert names == [], helper


def test_no_module_imports_diffusers_or_reads_proc():
    for path in PACKAGE.rglob("*.py"):
        assert not any(name.split(".")[0] == "diffusers" for name in imported_modules(path)), path
        assert "/proc/" not in path.read_text(), path


def test_the_reader_resolves_absolute_and_relative_imports(tmp_path):
    """What the rules above rest on: a diffusion module's imports of models (absolute) and text (relative)
    are read as those floors."""
    fake = tmp_path / "nemo_imagen"
    (fake / "diffusion").mkdir(parents=True)
    bad = fake / "diffusion" / "bad.py"
    bad.write_text("from nemo_imagen.models.imagen import MegatronImagen\nfrom ..text import encoders\nimport torch\n")
    assert [floor_of(name) for name in imported_modules(bad, fake)] == ["models", "text", None]
