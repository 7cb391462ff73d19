"""MegatronImagen: one Imagen stage (a text-conditioned UNet under a diffusion preconditioning) as a NeMo model."""
import copy
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from nemo_imagen.data.synthetic import build_synthetic_dataloader
from nemo_imagen.data.webdataset_pipeline import FAULT_KINDS, build_train_dataloader
from nemo_imagen.diffusion import (
    SAMPLERS,
    build_preconditioning,
    classifier_free_guidance,
    drop_nonfinite_gradients,
    lowres_inputs,
    sampling_augmentation_sigma,
    sampling_sigmas,
    step_seed,
    threshold_denoiser,
    training_loss,
    update_ema,
)
from nemo_imagen.diffusion.numerics import NonFiniteGuard
from nemo_imagen.models.config import AUTOCAST_DTYPES, ConfigError, validate_model_config
from nemo_imagen.models.megatron_base import MegatronImagenBase, gather_from_ranks
from nemo_imagen.models.reliability import capture_rng_state, restore_rng_state
from nemo_imagen.models.sample_grid import image_grid, save_png
from nemo_imagen.modules import build_unet
from nemo_imagen.precision import choose_precision
from nemo_imagen.text.encoders import TextEncoder, build_text_encoder, check_width


class MegatronImagen(MegatronImagenBase):
    """Trains one stage of the cascade. `cfg` is the `model` block (see `models/config.py`).

    A base stage (`unet_type: base`) makes images from text. A super-resolution stage (`sr`, `sr-unet`)
    also takes the image of the stage below: in training the low-res half of each `[low, high]` pair of
    `data.train.target_resolutions`, at sampling the previous stage's output; with `noise_cond_aug` that
    input is corrupted at a random level in training and at `noise_cond_aug_sigma` when sampling.
    """

    def __init__(self, cfg, trainer=None):
        self.typed_cfg, cfg = validate_model_config(cfg)
        super().__init__(cfg, trainer=trainer)
        typed = self.typed_cfg
        self.unet = build_unet(
            typed.unet_type, typed.unet, text_embed_dim=typed.conditioning.embed_dim, noise_cond_aug=typed.noise_cond_aug
        )
        if typed.channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.ema_unet = None
        if typed.ema.enable:
            self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False).eval()
        self.precond = build_preconditioning(typed.preconditioning_type, typed.preconditioning)
        # (captions, text_embed, text_mask, lowres or None) of the first training batch, for sample grids
        self._log_batch: Optional[Tuple[List[str], torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = None
        # Not registered as submodules: the frozen encoder must never enter a checkpoint, and the compiled
        # UNet shares the weights of `self.unet`.
        object.__setattr__(self, "_text_encoder", None)
        object.__setattr__(self, "_compiled_unet", None)
        # Training state that a checkpoint carries besides the weights (see on_save_checkpoint).
        self._guard = NonFiniteGuard(typed.reliability.max_consecutive_nonfinite_steps)
        self._loss_finite = torch.ones((), dtype=torch.bool)
        self._step_skipped = False
        self._skipped: Dict[str, int] = {}  # data samples dropped, per kind, over the whole run
        self._samples_read = 0  # samples delivered to this rank's training steps, over the whole run
        self._data_epoch, self._batches_in_epoch = 0, 0
        self._resumed = False
        self._last_sample_log_step = -1

    # ---- text ----
    @property
    def text_encoder(self) -> Optional[TextEncoder]:
        """The frozen encoder named by `conditioning.encoder_path` (None when training on precached embeddings)."""
        if self._text_encoder is None and self.typed_cfg.conditioning.encoder_path:
            object.__setattr__(self, "_text_encoder", build_text_encoder(self.typed_cfg.conditioning))
        if self._text_encoder is not None and self._text_encoder.device != self.device:
            self._text_encoder.to(self.device)
        return self._text_encoder

    def set_text_encoder(self, encoder: TextEncoder):
        """Use `encoder` for prompts (e.g. sampling a model that was trained on precached embeddings)."""
        try:
            check_width(encoder, self.typed_cfg.conditioning.embed_dim, trained=True)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        object.__setattr__(self, "_text_encoder", encoder)

    def encode_prompts(self, prompts: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (text_embed [B, L, D], text_mask [B, L]) with the configured encoder."""
        encoder = self.text_encoder
        if encoder is None:
            raise ConfigError(
                "conditioning.encoder_path: this model was trained on precached embeddings and names no text "
                "encoder; set conditioning.encoder_path (or sample.yaml's encoder_path) to encode prompts"
            )
        embed, mask = encoder.encode(list(prompts), self.typed_cfg.conditioning.token_length)
        return embed.to(self.device), mask.to(self.device)

    def _batch_text(self, batch: Dict) -> Tuple[torch.Tensor, torch.Tensor]:
        """Precached embeddings arrive under `conditioning.out_key`; otherwise the captions are encoded."""
        out_key = self.typed_cfg.conditioning.out_key
        if out_key in batch:
            return batch[out_key].float(), batch[f"{out_key}_mask"].bool()
        return self.encode_prompts(batch["captions"])

    # ---- training ----
    def _net(self) -> Callable:
        if self.typed_cfg.inductor and self.training:
            if self._compiled_unet is None:
                object.__setattr__(self, "_compiled_unet", torch.compile(self.unet))
            return self._compiled_unet
        return self.unet

    def setup_training_data(self, data_cfg):
        typed = self.typed_cfg
        rank, world = self.data_parallel_rank, self.data_parallel_size
        if typed.data.synthetic_data:
            self._train_dl = build_synthetic_dataloader(
                resolutions=typed.training_resolutions(),
                channels=typed.unet.channels,
                token_length=typed.conditioning.token_length,
                embed_dim=typed.conditioning.embed_dim,
                micro_batch_size=typed.micro_batch_size,
                length=typed.data.synthetic_data_length,
                num_workers=typed.data.num_workers,
                seed=typed.seed,
                rank=rank,
                world_size=world,
                out_key=typed.conditioning.out_key,
            )
            return
        self._train_dl = build_train_dataloader(
            typed.data, typed.conditioning, typed.micro_batch_size, rank=rank, world_size=world, seed=typed.seed
        )

    def training_step(self, batch, batch_idx):
        self._batches_in_epoch += 1
        typed = self.typed_cfg
        torch.manual_seed(step_seed(typed.seed, self._data_epoch, self._batches_in_epoch, self.global_rank))
        resolutions = typed.training_resolutions()
        images = batch[f"images_{resolutions[-1]}"] if typed.is_super_resolution else batch["images"]
        if typed.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        profiler = self.trainer.profiler  # sections of `+trainer.profiler=simple` (docs/performance.md)
        with profiler.profile("text_embeddings"):
            text_embed, text_mask = self._batch_text(batch)
        batch_size = images.shape[0]
        lowres = batch[f"images_{resolutions[0]}"] if typed.is_super_resolution else None
        if self._log_batch is None:
            count = min(batch_size, len(typed.sample_log.prompts) or 4)
            self._log_batch = (list(batch["captions"][:count]), text_embed[:count], text_mask[:count],
                               None if lowres is None else lowres[:count])
        if "sample_keys" not in batch:
            raise KeyError(
                "batch: no 'sample_keys' (each sample's identity, which keys its training noise); the model's "
                "data loaders (nemo_imagen.data) provide it, a custom loader must too"
            )
        # noise keyed by sample and step: the update does not depend on the data-parallel layout
        with profiler.profile("diffusion_loss_forward"):
            loss = training_loss(
                self.precond, self._net(), images, text_embed, text_mask, seed=typed.seed,
                step=self.trainer.global_step, sample_keys=batch["sample_keys"],
                drop_rate=typed.conditioning.drop_rate, lowres=lowres, noise_cond_aug=typed.noise_cond_aug,
            )
        with profiler.profile("logging"):
            self._log_training_step(loss, batch)
        return loss

    def _log_training_step(self, loss, batch):
        """Loss, learning rate, counters and the data pipeline's skip counts to the loggers."""
        self._loss_finite = self._loss_finite.to(loss.device) & torch.isfinite(loss.detach())
        self.log("reduced_train_loss", loss.detach(), prog_bar=True, sync_dist=self.data_parallel_size > 1)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True)
        self.log("global_step", float(self.trainer.global_step))
        self.log("consumed_samples", float(self.consumed_samples))
        self._samples_read += len(batch["captions"])
        if "skipped" in batch:
            for kind, count in batch["skipped"].items():
                self._skipped[kind] = self._skipped.get(kind, 0) + int(count)
            for kind, count in self._skipped.items():
                if count:
                    self.log(f"data/skipped_{kind}", float(count))
            faults = sum(self._skipped.get(kind, 0) for kind in FAULT_KINDS)
            self.log("data/bad_fraction", faults / max(1, self._samples_read + sum(self._skipped.values())))

    def on_train_start(self):
        if self.ema_unet is not None:
            self.ema_unet.to(self.device)

    def on_train_epoch_start(self):
        """Starts the data stream's next epoch (after a resume, on_load_checkpoint positioned it already:
        Lightning makes the first iterator before this hook then)."""
        if self._resumed:
            self._resumed = False
            return
        self._data_epoch, self._batches_in_epoch = self.trainer.current_epoch, 0
        if hasattr(self._train_dl, "set_epoch"):
            self._train_dl.set_epoch(self._data_epoch)

    def on_before_optimizer_step(self, optimizer):
        """The numerical guard: a NaN/inf loss or gradient drops every gradient, so the step changes nothing."""
        finite = drop_nonfinite_gradients(self._loss_finite, self.parameters())
        self._loss_finite = torch.ones((), dtype=torch.bool, device=self._loss_finite.device)
        self._step_skipped = not finite
        if not finite:
            callback = self.trainer.checkpoint_callback
            self._guard.record(False, self.trainer.global_step, getattr(callback, "last_model_path", None))
        else:
            self._guard.record(True, self.trainer.global_step, None)
        self.log("numerics/skipped_steps", float(self._guard.skipped_total))
        self.log("numerics/consecutive_skipped_steps", float(self._guard.consecutive))

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        # here, not in on_train_batch_end, so that a checkpoint written at this step includes this update
        if self.ema_unet is not None and not self._step_skipped:
            with self.trainer.profiler.profile("ema_update"):
                self._update_ema(self.trainer.global_step)
        self._step_skipped = False

    def on_train_batch_end(self, outputs, batch, batch_idx):
        step = self.trainer.global_step
        every = self.typed_cfg.sample_log.every_n_steps
        if every > 0 and step % every == 0 and step != self._last_sample_log_step:
            self._last_sample_log_step = step
            with self.trainer.profiler.profile("sample_grid"):
                self.log_sample_grid()

    # ---- exact resume: what a checkpoint carries besides weights, optimizer, schedule and loop counters ----
    def on_save_checkpoint(self, checkpoint):
        own = {
            "data_epoch": self._data_epoch,
            "batches_in_epoch": self._batches_in_epoch,
            "samples_read": self._samples_read,
            "skipped": dict(self._skipped),
            "rng": capture_rng_state(),
        }
        checkpoint["nemo_imagen"] = {"per_rank": gather_from_ranks(own), "guard": self._guard.state_dict()}
        # Lightning writes the checkpoint inside on_train_batch_end, before it counts the current batch as
        # completed, and on resume numbers batches from the completed count, which would put gradient
        # accumulation one micro batch off. The data stream resumes after this batch, so count it.
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
        if progress is not None:
            for counts in (progress["total"], progress["current"]):
                counts["completed"] = counts["processed"]

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("nemo_imagen")
        if state is None:  # a checkpoint of an older version: weights and optimizer only
            return
        self._guard.load_state_dict(state["guard"])
        per_rank = state["per_rank"]
        rank = self.global_rank
        if len(per_rank) == self.data_parallel_size and rank < len(per_rank):
            own = per_rank[rank]
        else:  # a different number of ranks: rank 0 carries the totals, the data stream restarts
            own = dict(per_rank[0], batches_in_epoch=0)
            own["samples_read"] = sum(entry["samples_read"] for entry in per_rank) if rank == 0 else 0
            own["skipped"] = {
                kind: sum(entry["skipped"].get(kind, 0) for entry in per_rank) if rank == 0 else 0
                for kind in per_rank[0]["skipped"]
            }
        self._skipped = dict(own["skipped"])
        self._samples_read = own["samples_read"]
        if self._trainer is None:  # loaded for sampling or export, not to train on
            return
        restore_rng_state(own["rng"])
        epoch, batches = own["data_epoch"], own["batches_in_epoch"]
        if self.typed_cfg.data.webdataset.infinite_sampler and not self.typed_cfg.data.synthetic_data:
            # An endless random stream cannot be fast-forwarded: continue with a fresh stream of its own seed
            # (shards are drawn with replacement anyway; see docs/reliability.md).
            epoch, batches = epoch + 1_000_000 * (int(checkpoint["global_step"]) + 1), 0
        self._data_epoch, self._batches_in_epoch = epoch, batches
        self._resumed = True
        if hasattr(self._train_dl, "set_epoch"):
            self._train_dl.set_epoch(epoch, batches)
        if hasattr(self._train_dl, "restore_counts"):
            self._train_dl.restore_counts(self._samples_read, self._skipped)

    def _update_ema(self, step: int):
        update_ema(self.ema_unet, self.unet, self.typed_cfg.ema.decay, step)

    def log_sample_grid(self):
        """Samples the fixed prompts and writes a grid to TensorBoard (rank 0 only)."""
        if self.global_rank != 0 or self.logger is None or not hasattr(self.logger.experiment, "add_image"):
            return
        sampled = self.sample_fixed_prompts()
        if sampled is not None:
            prompts, grid = sampled
            self.logger.experiment.add_image("samples", grid, self.trainer.global_step, dataformats="HWC")
            self.logger.experiment.add_text("sample_prompts", " | ".join(prompts), self.trainer.global_step)

    def save_sample_grid(self, path) -> Optional[Path]:
        """Writes the fixed prompts' sample grid (one row per prompt) as a PNG; None if there are no prompts."""
        sampled = self.sample_fixed_prompts()
        return save_png(sampled[1], path) if sampled is not None else None

    def sample_fixed_prompts(self) -> Optional[Tuple[List[str], np.ndarray]]:
        """Samples `sample_log.prompts` (or, without a text encoder, the first batch's captions)
        -> (prompts, grid [H, W, C] uint8 with one row per prompt).

        A super-resolution stage upscales the first training batch's low-res images with their captions;
        each row then starts with the bicubic upscale of its input, for comparison."""
        log_cfg = self.typed_cfg.sample_log
        lowres = None
        if self.text_encoder is not None and log_cfg.prompts and not self.typed_cfg.is_super_resolution:
            prompts = list(log_cfg.prompts)
            text_embed, text_mask = self.encode_prompts(prompts)
        elif self._log_batch is not None:
            prompts, text_embed, text_mask, lowres = self._log_batch
        else:
            return None
        repeat = log_cfg.images_per_prompt
        generator = torch.Generator(device=self.device).manual_seed(log_cfg.seed)
        images = self.sample(
            text_embed.repeat_interleave(repeat, 0),
            text_mask.repeat_interleave(repeat, 0),
            lowres=None if lowres is None else lowres.repeat_interleave(repeat, 0),
            sampler=log_cfg.sampler,
            steps=log_cfg.steps,
            guidance_scale=log_cfg.cfg,
            thresholding=log_cfg.thresholding,
            generator=generator,
            # the training run's resolved precision; without a trainer, what suits this machine
            precision=self._trainer.precision if getattr(self, "_trainer", None) is not None else "auto",
        )
        if lowres is None:
            return prompts, image_grid(images, nrow=repeat)
        upscaled = torch.nn.functional.interpolate(lowres.float(), size=images.shape[-2:], mode="bicubic").clamp(-1, 1)
        rows = torch.cat([upscaled.cpu()[:, None], images.cpu().view(len(prompts), repeat, *images.shape[1:])], dim=1)
        return prompts, image_grid(rows.flatten(0, 1), nrow=repeat + 1)

    # ---- sampling ----
    @torch.no_grad()
    def sample(
        self,
        text_embed: torch.Tensor,
        text_mask: torch.Tensor,
        *,
        lowres: Optional[torch.Tensor] = None,
        noise_cond_aug_sigma: Optional[float] = None,
        sampler: str = "edm",
        steps: int = 30,
        guidance_scale: float = 4.0,
        thresholding: str = "dynamic",
        generator: Optional[torch.Generator] = None,
        use_ema: bool = True,
        callback: Optional[Callable] = None,
        precision: Any = "auto",
    ) -> torch.Tensor:
        """text_embed: [B, L, D], text_mask: [B, L] -> images [B, C, H, W] in [-1, 1] (H = W = unet.image_size).

        A super-resolution stage also needs `lowres` [B, C, h, w] in [-1, 1] with h = w = its
        `low_resolution` (or, for a stage trained on crops, the crops' low-res size; H = W = h x upscale); with noise-conditioning augmentation it is corrupted at `noise_cond_aug_sigma`
        (default: `model.noise_cond_aug_sigma`, else the preconditioning's sigma_min) with noise from
        `generator`. Classifier-free guidance runs the conditional and unconditional halves as one batch.
        The EMA weights are used when the model has them. The UNet runs under the autocast of `precision`: by
        default (`auto`) the one that suits the device it runs on (`nemo_imagen.precision.choose_precision`: bf16
        where bf16 is native, else float32), not the precision the checkpoint was trained with; an explicit
        Lightning precision name (`32`, `bf16-mixed`, `16-mixed`, ...) is honoured.
        """
        if sampler not in SAMPLERS:
            raise ConfigError(f"sampler: {sampler!r} is not one of {', '.join(SAMPLERS)}")
        net = self.ema_unet if use_ema and self.ema_unet is not None else self.unet
        text_embed = text_embed.to(self.device, torch.float32)
        text_mask = text_mask.to(self.device, torch.bool)
        batch_size = text_embed.shape[0]
        lowres_cond = self._sampling_lowres(lowres, batch_size, noise_cond_aug_sigma, generator)
        was_training = net.training
        net.eval()
        unet_cfg = self.typed_cfg.unet
        side = unet_cfg.image_size if lowres is None else lowres.shape[-1] * self.typed_cfg.upscale_factor
        shape = (batch_size, unet_cfg.channels, side, side)

        def denoise(x, sigma, drop_text):
            repeat = x.shape[0] // batch_size  # 2 when guidance batches the conditional and unconditional halves
            tiled = {key: _tile(value, repeat) for key, value in lowres_cond.items()}
            return self.precond.denoise(
                net,
                x,
                sigma,
                text_embed=text_embed.repeat(repeat, 1, 1),
                text_mask=text_mask.repeat(repeat, 1),
                drop_text=drop_text,
                **tiled,
            )

        denoiser = threshold_denoiser(classifier_free_guidance(denoise, guidance_scale), thresholding)
        sigmas = sampling_sigmas(self.precond, sampler, steps).to(self.device)
        noise = torch.randn(shape, generator=generator, device=self.device)
        x = noise * sigmas[0].to(noise.dtype)
        autocast_dtype = AUTOCAST_DTYPES.get(str(choose_precision(precision, self.device.type)[0]))
        with torch.autocast(self.device.type, getattr(torch, autocast_dtype or "float32"), enabled=bool(autocast_dtype)):
            images = SAMPLERS[sampler](denoiser, x, sigmas, generator=generator, callback=callback)
        net.train(was_training)
        return images.clamp(-1, 1)

    def _sampling_lowres(self, lowres, batch_size: int, noise_cond_aug_sigma, generator) -> Dict:
        """Checks the low-res input of a sampling call and returns the UNet's low-res keyword arguments."""
        typed = self.typed_cfg
        if not typed.is_super_resolution:
            if lowres is not None:
                raise ConfigError(f"lowres: a base stage (unet_type {typed.unet_type}) takes no low-res image")
            return {}
        size = typed.low_resolution
        if lowres is None:
            raise ConfigError(f"lowres: this super-resolution stage needs the {size}x{size} images of the stage below")
        # the full-size input, or (for a stage trained on crops, e.g. sr1024) the training crops' low-res size
        sizes = sorted({size, typed.training_resolutions()[0]})
        if lowres.shape[0] != batch_size or lowres.shape[1] != typed.unet.channels or lowres.shape[2:] not in [
            (side, side) for side in sizes
        ]:
            raise ConfigError(
                f"lowres: this stage upscales [{batch_size}, {typed.unet.channels}, {size}, {size}] images "
                f"(x{typed.upscale_factor} to {typed.unet.image_size}), got {list(lowres.shape)}"
            )
        level = noise_cond_aug_sigma if noise_cond_aug_sigma is not None else typed.noise_cond_aug_sigma
        sigma = sampling_augmentation_sigma(self.precond, batch_size, level, device=self.device)
        return lowres_inputs(self.precond, lowres.to(self.device, torch.float32), typed.noise_cond_aug, sigma, generator)


def _tile(tensor: Optional[torch.Tensor], repeat: int) -> Optional[torch.Tensor]:
    """[B, ...] -> [repeat * B, ...], the whole batch repeated (None stays None)."""
    return None if tensor is None else tensor.repeat(repeat, *[1] * (tensor.ndim - 1))
