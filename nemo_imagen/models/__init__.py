"""The NeMo-facing model code. Importing this package first hides the warnings that concern no one here: those
of megatron.core about the absent Transformer Engine and Apex, and Hydra's about the working directory
(`cli.quiet_dependency_warnings`)."""
from nemo_imagen.models.cli import quiet_dependency_warnings

quiet_dependency_warnings()
