"""MegatronImagen: one Imagen stage (a text-conditioned UNet under a diffusion preconditioning) as a NeMo model."""
import copy
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from nemo_imagen.data.synthetic import build_synthetic_dataloader
from nemo_imagen.data.webdataset_pipeline import bad_fraction, build_train_dataloader
from nemo_imagen.diffusion import (
    SAMPLERS,
    build_preconditioning,
    drop_nonfinite_gradients,
    lowres_inputs,
    sample_images,
    sampling_augmentation_sigma,
    step_seed,
    training_loss,
    update_ema,
)
from nemo_imagen.diffusion.numerics import NonFiniteGuard
from nemo_imagen.models.config import AUTOCAST_DTYPES, ConfigError, validate_model_config
from nemo_imagen.models.megatron_base import MegatronImagenBase, gather_from_ranks
from nemo_imagen.models.reliability import capture_rng_state, restore_rng_state
from nemo_imagen.models.sample_grid import log_sample_grid
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
        self.first_batch_text: Optional[Tuple[List[str], torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = None
        # Not registered as submodules: the frozen encoder must never enter a checkpoint, and the compiled
        # UNet shares the weights of `self.unet`.
        object.__setattr__(self, "_text_encoder", None)
        object.__setattr__(self, "_compiled_unet", None)
        # Training state that a checkpoint carries besides the weights (see on_save_checkpoint).
        self._guard = NonFiniteGuard(typed.reliability.max_consecutive_nonfinite_steps)
        self._loss_finite = torch.ones((), dtype=torch.bool)
        self._step_skipped = False
        # the data pipeline's totals (samples, skipped per kind) as of the last batch trained on
        self._data_counts: Optional[Dict[str, Any]] = None
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
        if self.first_batch_text is None:
            count = min(batch_size, len(typed.sample_log.prompts) or 4)
            self.first_batch_text = (list(batch["captions"][:count]), text_embed[:count], text_mask[:count],
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
        counts = batch.get("data_counts")
        if counts is not None:
            self._data_counts = counts
            for kind, count in counts["skipped"].items():
                if count:
                    self.log(f"data/skipped_{kind}", float(count))
            self.log("data/bad_fraction", bad_fraction(counts["samples"], counts["skipped"]))

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
                log_sample_grid(self)

    # ---- exact resume: what a checkpoint carries besides weights, optimizer, schedule and loop counters ----
    def on_save_checkpoint(self, checkpoint):
        own = {
            "data_epoch": self._data_epoch,
            "batches_in_epoch": self._batches_in_epoch,
            "data_counts": self._data_counts,
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
            own = dict(per_rank[0], batches_in_epoch=0, data_counts=None)
            counts = [entry["data_counts"] for entry in per_rank if entry.get("data_counts") is not None]
            if rank == 0 and counts:
                kinds = {kind for entry in counts for kind in entry["skipped"]}
                own["data_counts"] = {
                    "samples": sum(entry["samples"] for entry in counts),
                    "skipped": {kind: sum(entry["skipped"].get(kind, 0) for entry in counts) for kind in kinds},
                }
        self._data_counts = own.get("data_counts")  # None in checkpoints of older versions
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
        if hasattr(self._train_dl, "restore_counts") and self._data_counts is not None:
            self._train_dl.restore_counts(self._data_counts["samples"], self._data_counts["skipped"])

    def _update_ema(self, step: int):
        update_ema(self.ema_unet, self.unet, self.typed_cfg.ema.decay, step)

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
        unet_cfg = self.typed_cfg.unet
        side = unet_cfg.image_size if lowres is None else lowres.shape[-1] * self.typed_cfg.upscale_factor
        autocast_dtype = AUTOCAST_DTYPES.get(str(choose_precision(precision, self.device.type)[0]))
        was_training = net.training
        net.eval()
        images = sample_images(
            self.precond, net, (batch_size, unet_cfg.channels, side, side), text_embed, text_mask,
            lowres_cond=lowres_cond, sampler=sampler, steps=steps, guidance_scale=guidance_scale,
            thresholding=thresholding, generator=generator, callback=callback,
            autocast_dtype=getattr(torch, autocast_dtype) if autocast_dtype else None,
        )
        net.train(was_training)
        return images

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

