"""Lets torchvision's Python parts import next to a torch build its compiled ops do not match.

PyPI's torchvision wheel is built against the CUDA torch. Next to the CPU torch wheel its compiled library
(`torchvision/_C.so`) cannot load, and `import torchvision` then fails in its fake-tensor registrations
("operator torchvision::nms does not exist"). Lightning (through torchmetrics), transformers and open_clip
all import torchvision whenever it is installed, so the failure reaches far beyond torchvision itself.
The evaluation only uses torchvision's transforms and model building blocks, which are pure Python; they
work once the two operator schemas those registrations look up exist. `ensure_torchvision_importable`
defines them, and only when the compiled library really cannot load: with a matching pair (a normal CUDA
install, or any consistent one) it changes nothing.
"""
import importlib.util
import sys
from pathlib import Path
from typing import Optional

import torch

# Kept alive for the life of the process: a torch.library.Library removes its definitions when collected.
_schemas: Optional[torch.library.Library] = None


def _compiled_ops_load(package_dir: Path) -> bool:
    libraries = sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd"))
    if not libraries:
        return False
    try:
        torch.ops.load_library(str(libraries[0]))
    except (OSError, RuntimeError):
        return False
    return True


def ensure_torchvision_importable() -> bool:
    """Call before anything imports torchvision (lightning, transformers, open_clip, timm, torchmetrics).

    Returns True when it had to define the operator schemas (torchvision's compiled ops are unusable here)."""
    global _schemas
    if _schemas is not None or "torchvision" in sys.modules:
        return _schemas is not None
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False  # not installed: nothing imports it
    if _compiled_ops_load(Path(next(iter(spec.submodule_search_locations)))):
        return False
    _schemas = torch.library.Library("torchvision", "DEF")
    _schemas.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _schemas.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return True
