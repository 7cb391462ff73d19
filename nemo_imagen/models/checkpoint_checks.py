"""Checks that turn a wrong checkpoint into a clear error instead of silently random weights.

The loader calls them in this order:

1. ``check_checkpoint_file(path, key)`` before reading: the file exists, has a known suffix and is
   complete (a ``.nemo`` is a tar archive whose members all lie inside the file and which holds
   ``model_config.yaml`` and ``model_weights.ckpt``; a ``.ckpt`` is a zip archive, as ``torch.save``
   writes it, whose central directory, stored at the end, is readable). A truncated copy fails here.
2. ``check_state_dict(model, state_dict, key, path)`` when loading weights: every parameter and buffer
   of the model is present with the same shape, and nothing is left over.
3. ``check_stage(model, key, unet_type=..., image_size=...)`` after loading: the stage is the one the
   config slot expects (e.g. not an SR stage given as ``base_ckpt``, not a 256x256 model for 64x64).

Each raises ``ConfigError`` (or ``FileNotFoundError``) whose message starts with the config key and
names the file.
"""
import tarfile
import zipfile
from pathlib import Path
from typing import Mapping, Optional

import torch

from nemo_imagen.models.config import ConfigError

CHECKPOINT_SUFFIXES = (".nemo", ".ckpt")
_NEMO_MEMBERS = ("model_config.yaml", "model_weights.ckpt")


def check_checkpoint_file(path, key: str) -> Path:
    """Raises unless ``path`` is a complete ``.nemo`` or ``.ckpt`` file; returns it as a Path."""
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{key}: checkpoint {str(file)!r} does not exist")
    if not file.is_file():
        raise ConfigError(f"{key}: {str(file)!r} is not a file (expected a .nemo or .ckpt checkpoint)")
    if file.suffix not in CHECKPOINT_SUFFIXES:
        raise ConfigError(f"{key}: {str(file)!r} is not a checkpoint: the name must end in .nemo or .ckpt")
    size = file.stat().st_size
    if size == 0:
        raise ConfigError(f"{key}: checkpoint {str(file)!r} is empty (0 bytes): an interrupted copy or save?")
    if file.suffix == ".nemo":
        _check_nemo_archive(file, size, key)
    else:
        _check_torch_zip(file, key)
    return file


def _check_nemo_archive(file: Path, size: int, key: str) -> None:
    try:
        with tarfile.open(file, "r:*") as archive:
            members = archive.getmembers()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ConfigError(
            f"{key}: {str(file)!r} is not a readable .nemo archive (truncated or corrupt: {type(error).__name__}: {error})"
        ) from None
    names = {Path(member.name).name for member in members}
    missing = [name for name in _NEMO_MEMBERS if name not in names]
    if missing:
        raise ConfigError(f"{key}: {str(file)!r} is not a complete .nemo file: it has no {', '.join(missing)}")
    if not archive_is_compressed(file):
        end = max(member.offset_data + member.size for member in members)
        if end > size:
            raise ConfigError(
                f"{key}: {str(file)!r} is truncated: its archive needs {end} bytes, the file has {size}"
            )


def archive_is_compressed(file: Path) -> bool:
    with open(file, "rb") as stream:
        magic = stream.read(3)
    return magic[:2] == b"\x1f\x8b" or magic == b"BZh" or magic[:2] == b"\xfd7"


def _check_torch_zip(file: Path, key: str) -> None:
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ConfigError(
            f"{key}: {str(file)!r} is not a readable .ckpt (truncated or corrupt: {type(error).__name__}: {error})"
        ) from None
    if not any(name.endswith("data.pkl") for name in names):
        raise ConfigError(f"{key}: {str(file)!r} is a zip archive but not a torch checkpoint (no data.pkl)")


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], key: str, path=None) -> None:
    """Raises ``ConfigError`` listing missing, unexpected and wrongly shaped weights, if any."""
    expected = model.state_dict()
    where = f" in {str(path)!r}" if path is not None else ""
    missing = [name for name in expected if name not in state_dict]
    unexpected = [name for name in state_dict if name not in expected]
    wrong_shape = [
        f"{name} {tuple(state_dict[name].shape)} (model: {tuple(tensor.shape)})"
        for name, tensor in expected.items()
        if name in state_dict and tuple(state_dict[name].shape) != tuple(tensor.shape)
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if names:
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            problems.append(f"{len(names)} {label}: {', '.join(names[:5])}{more}")
    if problems:
        raise ConfigError(
            f"{key}: the weights{where} do not fit this model ({'; '.join(problems)}); is it a checkpoint of "
            "another stage or UNet size?"
        )


def check_stage(model, key: str, unet_type: Optional[str] = None, image_size: Optional[int] = None) -> None:
    """Raises ``ConfigError`` unless the loaded stage (a ``MegatronImagen``) has the expected type and size."""
    typed = model.typed_cfg
    if unet_type is not None and typed.unet_type != unet_type:
        raise ConfigError(
            f"{key}: expected a {unet_type!r} stage, but the checkpoint holds a {typed.unet_type!r} stage "
            f"({typed.unet.image_size}x{typed.unet.image_size})"
        )
    if image_size is not None and typed.unet.image_size != image_size:
        raise ConfigError(
            f"{key}: expected a stage that makes {image_size}x{image_size} images, but the checkpoint's UNet "
            f"makes {typed.unet.image_size}x{typed.unet.image_size}"
        )
