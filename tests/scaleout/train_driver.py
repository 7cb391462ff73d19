"""Trains like examples/train.py (same build_trainer and MegatronImagen) and records what each rank saw.

    [torchrun --nproc-per-node N] python tests/scaleout/train_driver.py OUT_DIR CONFIG_NAME [hydra overrides...]

Writes OUT_DIR/rank{global_rank}.pt: {"keys": [(global_step, [sample keys])] per micro batch, "embeddings":
[(captions, text embedding, mask)] per micro batch (when the batch carries them), "losses": [(global_step,
local loss, reduced loss)], "initial_unet" / "unet" / "ema": state dicts, "world_size"}.
"""
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir

from nemo_imagen.models.imagen import MegatronImagen
from nemo_imagen.models.trainer_builder import build_trainer

REPO = Path(__file__).resolve().parents[2]


class Recorder(pl.Callback):
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.keys, self.embeddings, self.losses = [], [], []

    def on_train_start(self, trainer, pl_module):
        self.initial_unet = {k: v.detach().cpu().clone() for k, v in pl_module.unet.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.keys.append((trainer.global_step, list(batch["sample_keys"])))
        out_key = pl_module.typed_cfg.conditioning.out_key
        if out_key in batch:
            self.embeddings.append((list(batch["captions"]), batch[out_key].cpu(), batch[f"{out_key}_mask"].cpu()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        reduced = trainer.callback_metrics.get("reduced_train_loss")
        self.losses.append((trainer.global_step, float(outputs["loss"]), float(reduced)))

    def on_train_end(self, trainer, pl_module):
        state = {
            "keys": self.keys,
            "embeddings": self.embeddings,
            "losses": self.losses,
            "world_size": trainer.world_size,
            "initial_unet": self.initial_unet,
            "unet": {k: v.detach().cpu().clone() for k, v in pl_module.unet.state_dict().items()},
            "ema": {k: v.detach().cpu().clone() for k, v in pl_module.ema_unet.state_dict().items()},
        }
        torch.save(state, self.out_dir / f"rank{trainer.global_rank}.pt")


def main(out_dir: str, config_name: str, *overrides: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with initialize_config_dir(config_dir=str(REPO / "examples" / "conf"), version_base=None):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    trainer = build_trainer(cfg)
    trainer.callbacks.append(Recorder(out))
    model = MegatronImagen(cfg.model, trainer)
    trainer.fit(model)


if __name__ == "__main__":
    main(*sys.argv[1:])
