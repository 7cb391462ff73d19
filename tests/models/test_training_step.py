"""The benchmark times the model's own training step: one step through MegatronImagen's Lightning hooks and one
through the benchmark, from the same state and batch, give the same weights and EMA bit for bit."""
import lightning.pytorch as pl
import torch
from omegaconf import OmegaConf

from benchmarks.throughput import Contestant, model_train_step
from nemo_imagen.diffusion import TrainingBatch
from nemo_imagen.models.imagen import MegatronImagen
from nemo_imagen.models.megatron_base import build_optimizer
from tests.tiny import TINY_CONDITIONING, TINY_UNET

GRAD_CLIP = 0.05  # small enough that the tiny UNet's first gradient is clipped


def tiny_cfg():
    cfg = OmegaConf.load("examples/conf/base64-500m.yaml").model
    cfg.precision = 32
    cfg.unet = OmegaConf.merge(cfg.unet, TINY_UNET)
    cfg.conditioning = OmegaConf.merge(cfg.conditioning, TINY_CONDITIONING)
    cfg.data.synthetic_data = True
    cfg.data.num_workers = 0
    cfg.micro_batch_size = cfg.global_batch_size = 2
    cfg.inductor = False
    cfg.ema.decay = 0.9  # the warm-up decay min(0.9, 1/10) applies at step 0
    cfg.optim.sched = None  # the benchmark's optimizer has no schedule: compare at a constant learning rate
    cfg.sample_log.every_n_steps = 0
    return cfg


def test_lightning_step_and_benchmark_step_are_the_same_step(tmp_path):
    cfg = tiny_cfg()
    trainer = pl.Trainer(
        max_steps=1, accelerator="cpu", devices=1, precision="32-true", gradient_clip_val=GRAD_CLIP, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    torch.manual_seed(0)
    lightning_model = MegatronImagen(cfg, trainer=trainer)
    torch.manual_seed(0)
    bench_model = MegatronImagen(cfg)
    for a, b in zip(lightning_model.state_dict().values(), bench_model.state_dict().values()):
        assert torch.equal(a, b)

    # the batch Lightning's first step gets: the model's own synthetic loader, epoch 0
    bench_model.setup_training_data(cfg.data)
    loader = bench_model._train_dl
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(0)
    batch = next(iter(loader))
    out_key = bench_model.typed_cfg.conditioning.out_key
    training_batch = TrainingBatch(batch["images"], batch[out_key].float(), batch[f"{out_key}_mask"].bool(),
                                   batch["sample_keys"])

    trainer.fit(lightning_model)
    assert trainer.global_step == 1

    typed = bench_model.typed_cfg
    ours = Contestant("ours", "", bench_model.unet, bench_model._net(),
                      build_optimizer(bench_model.unet.parameters(), typed.optim), bench_model.ema_unet)
    loss, stepped = model_train_step(typed, bench_model.precond, ours, training_batch, step=0, grad_clip=GRAD_CLIP)
    assert stepped and torch.isfinite(loss)

    for name in ("unet", "ema_unet"):
        after = dict(getattr(lightning_model, name).state_dict())
        for key, value in getattr(bench_model, name).state_dict().items():
            assert torch.equal(after[key], value), f"{name}.{key}"
    # not trivially equal: the step moved the weights, and the EMA moved part of the way (warm-up decay 0.1)
    torch.manual_seed(0)
    initial = MegatronImagen(cfg).unet
    moved = lambda a, b: any(not torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))  # noqa: E731
    assert moved(initial, bench_model.unet) and moved(initial, bench_model.ema_unet)
    assert moved(bench_model.unet, bench_model.ema_unet)
