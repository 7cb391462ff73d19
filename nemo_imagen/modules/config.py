"""Typed configs of the UNets: the `model.unet` block. `UNetConfig` is the regular UNet (`unet_type` `base`
or `sr-unet`), `EfficientUNetConfig` the Efficient UNet (`unet_type` `sr`); `UNetKeys` holds the keys and
checks both share.

Field names and defaults are the documented NeMo Imagen keys (the base64-500m and the Efficient UNet
blocks). The types are OmegaConf-structured compatible (no Union), so `models/` can merge a YAML block
into `OmegaConf.structured(UNetConfig)`; `__post_init__` runs when it calls `OmegaConf.to_object` and
rejects values that would only fail later, deep inside model construction.
"""

from dataclasses import dataclass, field
from typing import Any, ClassVar, List

from nemo_imagen.config_checks import is_int

ATTENTION_TYPES = ("self", "cross", "stacked", "fused")
FEATURE_POOLING_TYPES = ("attention", "mean")
GROUPNORM_GROUPS = 32
MIN_CHANNELS_PER_GROUP = 4


def norm_groups(channels: int) -> int:
    """GroupNorm's usual 32 groups, but never fewer than 4 channels a group: with 32 groups a 32-channel
    layer (small models) would be InstanceNorm, normalising away each channel's level. Unchanged (32) for
    every layer of 128 or more channels, i.e. all documented sizes."""
    return min(GROUPNORM_GROUPS, channels // MIN_CHANNELS_PER_GROUP)


@dataclass
class UNetKeys:
    """Keys and checks both UNets share. Defaults: the regular UNet's (base64-500m); `EfficientUNetConfig`
    overrides those its documented block sets differently.

    embed_dim: base channel count E; level `i` has `E * channel_mult[i]` channels and the time
        embedding has `4 * E`.
    num_attn_heads / per_head_channels: heads of an attention block with C channels are
        `C // per_head_channels` when `per_head_channels > 0` (so the documented 4 x 64 gives 4 heads
        at 256 channels and 16 at 1024), else `num_attn_heads`.
    cond_dim: width of the projected text tokens (attention context) and of the pooled text vector.
    dropout: ResBlock dropout rate. Typed `Any` because the documented YAML writes `dropout: False`,
        which an OmegaConf float field rejects; a bool is read as 0.0 / 1.0 and stored as a float.
    use_null_token: dropped text (classifier-free guidance) becomes one learned token instead of one
        zero token.
    stable_attention: attention scores and softmax in float32 (safe in bf16/fp16).
    flash_attention: fused `scaled_dot_product_attention` kernels; excludes stable_attention.
    """

    # the key holding the ResBlocks per level (the documented spellings differ: num_res_blocks, num_resblocks)
    BLOCKS_KEY: ClassVar[str] = "num_res_blocks"

    embed_dim: int = 256
    image_size: int = 64
    channels: int = 3
    channel_mult: List[int] = field(default_factory=lambda: [1, 2, 3, 4])
    num_attn_heads: int = 4
    per_head_channels: int = 64
    cond_dim: int = 512
    attention_type: str = "fused"
    feature_pooling_type: str = "attention"
    learned_sinu_pos_emb_dim: int = 0
    dropout: Any = 0.0
    use_null_token: bool = False
    init_conv_kernel_size: int = 3
    gradient_checkpointing: bool = False
    scale_shift_norm: bool = True
    stable_attention: bool = True
    flash_attention: bool = False

    def __post_init__(self):
        if isinstance(self.dropout, bool):
            self.dropout = float(self.dropout)
        self.validate()

    def validate(self) -> None:
        raise NotImplementedError

    def res_blocks_per_level(self) -> List[int]:
        """The ResBlocks per level (`num_res_blocks` or `num_resblocks`) as one int per level."""
        blocks = getattr(self, self.BLOCKS_KEY)
        if isinstance(blocks, int):
            return [blocks] * self.num_levels
        return list(blocks)

    @property
    def num_levels(self) -> int:
        return len(self.channel_mult)

    def level_channels(self, level: int) -> int:
        return self.embed_dim * self.channel_mult[level]

    def num_heads(self, channels: int) -> int:
        return channels // self.per_head_channels if self.per_head_channels > 0 else self.num_attn_heads

    def _validate_shared(self) -> None:
        for key in ("embed_dim", "image_size", "channels", "cond_dim", "init_conv_kernel_size"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 1:
                raise ValueError(f"unet.{key}: {getattr(self, key)!r} must be a positive int")
        if self.init_conv_kernel_size % 2 == 0:
            raise ValueError(
                f"unet.init_conv_kernel_size: {self.init_conv_kernel_size} must be odd (same padding)"
            )
        if not self.channel_mult or not all(is_int(m) and m >= 1 for m in self.channel_mult):
            raise ValueError(f"unet.channel_mult: {self.channel_mult!r} must be a non-empty list of positive ints")
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(
                f"unet.attention_type: {self.attention_type!r} is not one of {', '.join(ATTENTION_TYPES)}"
            )
        if self.feature_pooling_type not in FEATURE_POOLING_TYPES:
            raise ValueError(
                f"unet.feature_pooling_type: {self.feature_pooling_type!r} is not one of "
                f"{', '.join(FEATURE_POOLING_TYPES)}"
            )
        if not is_int(self.learned_sinu_pos_emb_dim) or self.learned_sinu_pos_emb_dim < 0:
            raise ValueError(
                f"unet.learned_sinu_pos_emb_dim: {self.learned_sinu_pos_emb_dim!r} must be 0 (fixed "
                "sinusoidal embedding) or a positive even int"
            )
        if self.learned_sinu_pos_emb_dim % 2:
            raise ValueError(
                f"unet.learned_sinu_pos_emb_dim: {self.learned_sinu_pos_emb_dim} must be even (half sin, half cos)"
            )
        dropout = self.dropout
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"unet.dropout: {self.dropout!r} must be a float in [0, 1)")
        if self.flash_attention and self.stable_attention:
            raise ValueError(
                "unet.flash_attention: flash_attention and stable_attention are both True, which is "
                "contradictory (the fused kernel cannot use the float32 stable form); set one of them False"
            )

    def _validate_level_list(self, key: str) -> List[int]:
        """An int (every level) or a per-level list of positive ints -> the per-level list."""
        value = getattr(self, key)
        if is_int(value):
            value = [value] * self.num_levels
        elif isinstance(value, (list, tuple)):
            if len(value) != self.num_levels:
                raise ValueError(
                    f"unet.{key}: list {list(value)} has {len(value)} entries but channel_mult "
                    f"has {self.num_levels} levels"
                )
        else:
            raise ValueError(f"unet.{key}: {value!r} must be an int or a list of ints")
        if not all(is_int(n) and n >= 1 for n in value):
            raise ValueError(f"unet.{key}: {getattr(self, key)!r} entries must be positive ints")
        return list(value)

    def _validate_attention_channels(self, level: int, channels: int) -> None:
        """An attention block with `channels` runs at `level`: the heads must divide it."""
        if self.per_head_channels > 0:
            if channels % self.per_head_channels:
                raise ValueError(
                    f"unet.per_head_channels: {self.per_head_channels} does not divide the {channels} channels "
                    f"of attention level {level}"
                )
        elif self.num_attn_heads < 1 or channels % self.num_attn_heads:
            raise ValueError(
                f"unet.num_attn_heads: {self.num_attn_heads} heads do not divide the {channels} channels of "
                f"attention level {level} (per_head_channels <= 0 selects num_attn_heads)"
            )

    def _validate_groupnorm(self) -> None:
        for level in range(self.num_levels):
            ch = self.level_channels(level)
            groups = norm_groups(ch)
            if groups < 1 or ch % groups:
                raise ValueError(
                    f"unet.embed_dim: level {level} has {ch} channels (embed_dim {self.embed_dim} x "
                    f"channel_mult {self.channel_mult[level]}); GroupNorm needs a multiple of {GROUPNORM_GROUPS}, "
                    f"or of {MIN_CHANNELS_PER_GROUP} below {GROUPNORM_GROUPS * MIN_CHANNELS_PER_GROUP}"
                )


@dataclass
class UNetConfig(UNetKeys):
    """Regular (guided-diffusion style) UNet with Imagen text conditioning; the shared keys in `UNetKeys`.

    num_res_blocks: ResBlocks per level on the input side (the output side has one more); an int for
        every level or a list with one entry per level.
    attention_resolutions: feature-map sizes (image_size / 2**level) that get an attention block after
        each ResBlock; the middle block always has one.
    resblock_updown: resample with a ResBlock instead of a plain (conv) resampler.
    resample_with_conv: plain resamplers use a stride-2 conv / nearest-x2 + conv instead of an average
        pool / bare nearest x2.
    float32_resolutions: feature-map sizes whose blocks run in float32 even under bf16 / fp16 autocast;
        at `image_size` this includes the input conv and the output head. In bf16 the pixel-level layers
        round away the small noise of the low noise levels, which biases the gradient the same way at
        every step; the full-resolution level in float32 removes most of the bias (measured with
        examples/precision_bias.py), though not measurably the quickstart's loss of shapes in bf16
        (docs/performance.md).
    """

    num_res_blocks: Any = 3
    attention_resolutions: List[int] = field(default_factory=lambda: [8, 16, 32])
    resblock_updown: bool = False
    resample_with_conv: bool = True
    float32_resolutions: List[int] = field(default_factory=list)

    def level_resolution(self, level: int) -> int:
        return self.image_size // 2**level

    def has_attention(self, level: int) -> bool:
        """Whether the ResBlocks of `level` are followed by attention (the middle block always is)."""
        return self.level_resolution(level) in self.attention_resolutions

    def runs_in_float32(self, level: int) -> bool:
        """Whether the blocks of `level` run in float32 under autocast (`float32_resolutions`)."""
        return self.level_resolution(level) in self.float32_resolutions

    def validate(self) -> None:
        """Raise ValueError('unet.<key>: ...') for the first inconsistent key."""
        self._validate_shared()
        self._validate_level_list(self.BLOCKS_KEY)
        downsampling = 2 ** (self.num_levels - 1)
        if self.image_size % downsampling:
            raise ValueError(
                f"unet.image_size: {self.image_size} is not divisible by 2**(levels-1) = {downsampling} "
                f"({self.num_levels} levels from channel_mult)"
            )
        resolutions = [self.level_resolution(level) for level in range(self.num_levels)]
        for key in ("attention_resolutions", "float32_resolutions"):
            for res in getattr(self, key):
                if res not in resolutions:
                    raise ValueError(
                        f"unet.{key}: {res} is not a resolution of this UNet (levels have {resolutions})"
                    )
        self._validate_groupnorm()
        for level in range(self.num_levels):
            if self.has_attention(level) or level == self.num_levels - 1:  # the middle block has attention
                self._validate_attention_channels(level, self.level_channels(level))


@dataclass
class EfficientUNetConfig(UNetKeys):
    """Imagen's Efficient UNet (`unet_type: sr`), the super-resolution trunk of the paper's appendix.

    Per level `i` (channels `C_i = embed_dim * channel_mult[i]`, `C_-1 = C_0`): on the way down a
    strided conv (`stride`) BEFORE the level's `num_resblocks[i]` ResBlocks (C_{i-1} -> C_i), then an
    attention block if `atnn_enabled_at[i]`; on the way up the same number of ResBlocks (C_i -> C_{i-1},
    after adding the down path's output of that level), the attention block, then a transposed conv
    upsampling AFTER them. The last (deepest) level does not resample, so the input size must be a
    multiple of `stride ** (levels - 1)`; level `i`'s blocks run at `size / stride ** min(i + 1, levels - 1)`.

    atnn_enabled_at: one 0/1 per level (the documented spelling); 1 adds one attention block after
        the level's ResBlocks on each side.
    num_resblocks: ResBlocks per level and side; an int for every level or a per-level list.
    skip_connection_scaling: every ResBlock's skip (shortcut) path is scaled by 1/sqrt(2).
    cond_dim: width of the projected text tokens (attention context) and of the pooled text vector
        (the documentation's "Text Condition Size" 512).
    Other keys: `UNetKeys`. Defaults: the documented Efficient UNet block (sr256-600m).
    """

    BLOCKS_KEY: ClassVar[str] = "num_resblocks"

    # shared keys whose documented Efficient UNet default differs from the regular UNet's
    embed_dim: int = 128
    image_size: int = 256
    channel_mult: List[int] = field(default_factory=lambda: [1, 2, 4, 8, 8])
    num_attn_heads: int = 8
    attention_type: str = "stacked"
    stable_attention: bool = False
    # its own keys
    atnn_enabled_at: List[int] = field(default_factory=lambda: [0, 0, 0, 1, 1])
    stride: int = 2
    num_resblocks: Any = field(default_factory=lambda: [2, 4, 8, 8, 8])
    skip_connection_scaling: bool = True

    @property
    def total_downsampling(self) -> int:
        """Factor between the input size and the deepest feature map: inputs must be multiples of it."""
        return self.stride ** (self.num_levels - 1)

    def resamples(self, level: int) -> bool:
        """Whether `level` downsamples on entry and upsamples on exit (every level but the deepest)."""
        return level < self.num_levels - 1

    def level_resolution(self, level: int) -> int:
        """Feature-map size seen by the blocks of `level` when the input is image_size."""
        return self.image_size // self.stride ** min(level + 1, self.num_levels - 1)

    def level_input_channels(self, level: int) -> int:
        """Channels entering `level` on the way down (and leaving it on the way up)."""
        return self.level_channels(max(level - 1, 0))

    def has_attention(self, level: int) -> bool:
        return bool(self.atnn_enabled_at[level])

    def validate(self) -> None:
        """Raise ValueError('unet.<key>: ...') for the first inconsistent key."""
        self._validate_shared()
        self._validate_level_list(self.BLOCKS_KEY)
        if not isinstance(self.atnn_enabled_at, (list, tuple)) or len(self.atnn_enabled_at) != self.num_levels:
            raise ValueError(
                f"unet.atnn_enabled_at: {self.atnn_enabled_at!r} must be a list of one 0/1 per level "
                f"({self.num_levels} levels from channel_mult)"
            )
        if not all(flag in (0, 1) for flag in self.atnn_enabled_at):
            raise ValueError(f"unet.atnn_enabled_at: {list(self.atnn_enabled_at)} entries must be 0 or 1")
        if not is_int(self.stride) or self.stride < 2:
            raise ValueError(f"unet.stride: {self.stride!r} must be an int >= 2 (the resampling factor)")
        if self.image_size % self.total_downsampling:
            raise ValueError(
                f"unet.image_size: {self.image_size} is not divisible by stride**(levels-1) = "
                f"{self.total_downsampling} (stride {self.stride}, {self.num_levels} levels from channel_mult)"
            )
        if not isinstance(self.skip_connection_scaling, bool):
            raise ValueError(f"unet.skip_connection_scaling: {self.skip_connection_scaling!r} must be a bool")
        self._validate_groupnorm()
        for level in range(self.num_levels):
            if self.has_attention(level):
                for channels in (self.level_channels(level), self.level_input_channels(level)):
                    self._validate_attention_channels(level, channels)
