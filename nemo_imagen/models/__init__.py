"""The NeMo-facing model code. Importing this package first hides the warnings that concern no one here: those
of megatron.core about the absent Transformer Engine and Apex, and Hydra's about the working directory
(`cli.quiet_dependency_warnings`); and, when torch is not loaded yet, shortens OpenMP's spin-wait so that processes
sharing the cores slow down in proportion (`cli.short_openmp_spin`)."""
from nemo_imagen.models.cli import quiet_dependency_warnings, short_openmp_spin

short_openmp_spin()
quiet_dependency_warnings()
