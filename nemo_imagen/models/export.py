"""Exporting a trained stage: a Lightning `.ckpt` to a `.nemo` file, and a stage's UNet to ONNX."""
from pathlib import Path
from typing import Dict, List, Optional

import torch
from omegaconf import OmegaConf

from nemo_imagen.data.synthetic import synthetic_text_batch
from nemo_imagen.models.imagen import MegatronImagen
from nemo_imagen.models.pipeline import model_from_lightning_checkpoint


def checkpoint_to_nemo(ckpt_path: str, output_path: str, use_ema: bool = True) -> MegatronImagen:
    """Writes the stage saved in a Lightning checkpoint as a `.nemo` file that `restore_from` loads.

    With `use_ema` and EMA weights in the checkpoint, the `.nemo` holds the EMA weights as its only UNet
    (`ema.enable: False` in its config, half the size); otherwise the trained weights, and the EMA copy
    too when there is one. Returns the exported model."""
    trained = model_from_lightning_checkpoint(Path(ckpt_path), "ckpt")
    if not (use_ema and trained.ema_unet is not None):
        trained.save_to(output_path)
        return trained
    cfg = OmegaConf.to_container(trained.cfg, resolve=True)
    cfg["ema"]["enable"] = False
    exported = MegatronImagen(OmegaConf.create(cfg))
    exported.unet.load_state_dict(trained.ema_unet.state_dict(), strict=True)
    exported.save_to(output_path)
    return exported


class DenoiserGraph(torch.nn.Module):
    """The raw UNet with every conditioning input positional, in the order of `example_inputs`."""

    def __init__(self, unet: torch.nn.Module, super_resolution: bool):
        super().__init__()
        self.unet = unet
        self.super_resolution = super_resolution

    def forward(self, x, noise_cond, text_embed, text_mask, drop_text, lowres=None, lowres_noise_cond=None):
        if not self.super_resolution:
            return self.unet(x, noise_cond, text_embed, text_mask, drop_text=drop_text)
        return self.unet(x, noise_cond, text_embed, text_mask, lowres, lowres_noise_cond, drop_text=drop_text)


def example_inputs(model: MegatronImagen, batch_size: int = 2, image_size: Optional[int] = None, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random inputs of the stage's UNet by name: x [B, C, H, W], noise_cond [B], text_embed [B, L, D],
    text_mask [B, L] bool (`data.synthetic.synthetic_text_batch`: a random length per sample), drop_text [B] bool, and for SR stages lowres
    [B, C, h, w] (and lowres_noise_cond [B]). `image_size` defaults to the UNet's."""
    typed = model.typed_cfg
    generator = torch.Generator().manual_seed(seed)
    size = image_size or typed.unet.image_size
    channels, length = typed.unet.channels, typed.conditioning.token_length
    x = torch.randn(batch_size, channels, size, size, generator=generator)
    noise_cond = torch.randn(batch_size, generator=generator)
    text_embed, text_mask = synthetic_text_batch(batch_size, length, typed.conditioning.embed_dim, generator)
    inputs = {
        "x": x,
        "noise_cond": noise_cond,
        "text_embed": text_embed,
        "text_mask": text_mask,
        "drop_text": torch.arange(batch_size) % 2 == 1,
    }
    if typed.is_super_resolution:
        low = size // typed.upscale_factor
        inputs["lowres"] = torch.rand(batch_size, channels, low, low, generator=generator) * 2 - 1
        if typed.noise_cond_aug:
            inputs["lowres_noise_cond"] = torch.randn(batch_size, generator=generator)
    return inputs


def denoiser_graph(model: MegatronImagen, use_ema: bool = True) -> DenoiserGraph:
    """The stage's UNet (its EMA weights when present and `use_ema`) with positional inputs, in eval mode."""
    unet = model.ema_unet if use_ema and model.ema_unet is not None else model.unet
    return DenoiserGraph(unet, model.typed_cfg.is_super_resolution).eval()


def export_onnx(model: MegatronImagen, output_path: str, use_ema: bool = True, batch_size: int = 2) -> List[str]:
    """Writes the stage's UNet (the raw denoiser network, EMA weights when present and `use_ema`) as an
    ONNX graph with a dynamic batch dimension, at the UNet's image size. The preconditioning and sampler
    stay outside: a runtime calls it as `unet(x, noise_cond, text_embed, text_mask, drop_text[, lowres
    [, lowres_noise_cond]])`. Returns the input names."""
    graph = denoiser_graph(model, use_ema)
    inputs = example_inputs(model, batch_size)
    names = list(inputs)
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        graph,
        tuple(inputs.values()),
        output_path,
        input_names=names,
        output_names=["out"],
        dynamic_shapes={name: {0: batch} for name in names},
        dynamo=True,
        verbose=False,
    )
    return names


def onnx_relative_error(model: MegatronImagen, onnx_path: str, use_ema: bool = True, batch_size: int = 3) -> float:
    """max |onnxruntime - torch| / max |torch| on fresh random inputs (another batch size than the export's,
    to exercise the dynamic batch). Needs onnxruntime."""
    import onnxruntime

    inputs = example_inputs(model, batch_size=batch_size, seed=1)
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})
    with torch.no_grad():
        reference = denoiser_graph(model, use_ema)(*inputs.values())
    return float((torch.from_numpy(onnx_out) - reference).abs().max() / reference.abs().max().clamp(min=1e-12))
