"""AMIR: a Restormer U-Net whose paths are chosen per input by task-adaptive routing."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import AmirConfig
from .onednn import ENGINE_PATHS
from .restormer import NORM_PATHS, ChannelLayerNorm, Computation, Downsample, PatchEmbed, Upsample, channels_last, stage
from .routing import EXPERT_PATHS, ChannelRouting, NoisyTopKExperts, RoutingInstructionNetwork, SpatialRouting

MULTIPLE = 8  # three 2x downsamplings


class AMIR(Computation, nn.Module):
    """Maps a (B, C, H, W) image normalised to [0, 1] to its restored version.

    Training mode returns (image, load_loss), evaluation mode the image. Any H, W >= 9 works: the
    U-Net runs on a reflect-padded copy and the result is cropped back, while the routing
    instruction is computed from the unpadded image (or given: tiles of one slice share the
    whole slice's instruction).
    """

    def __init__(self, config: AmirConfig = AmirConfig()):
        super().__init__()
        self.config = c = config
        widths = [c.dim, c.dim * 2, c.dim * 4, c.dim * 8]
        blocks = dict(expansion=c.ffn_expansion_factor, bias=c.bias, layernorm_type=c.layernorm_type)

        self.patch_embed = PatchEmbed(c.in_channels, c.dim)
        self.dict_generator = RoutingInstructionNetwork(c.in_channels, c.atom_num, c.atom_dim)
        self.spatial_routing_encoder_level1 = SpatialRouting(widths[0], c)
        self.spatial_routing_encoder_level2 = SpatialRouting(widths[1], c)
        self.spatial_routing_encoder_level3 = SpatialRouting(widths[2], c)
        self.channel_routing_latent = ChannelRouting(widths[3], c.atom_dim)
        self.channel_routing_decoder_level3 = ChannelRouting(widths[2], c.atom_dim)
        self.channel_routing_decoder_level2 = ChannelRouting(widths[1], c.atom_dim)
        self.channel_routing_decoder_level1 = ChannelRouting(widths[1], c.atom_dim)

        self.encoder_level1 = stage(widths[0], c.num_blocks[0], c.heads[0], **blocks)
        self.down1_2 = Downsample(widths[0])
        self.encoder_level2 = stage(widths[1], c.num_blocks[1], c.heads[1], **blocks)
        self.down2_3 = Downsample(widths[1])
        self.encoder_level3 = stage(widths[2], c.num_blocks[2], c.heads[2], **blocks)
        self.down3_4 = Downsample(widths[2])
        self.latent = stage(widths[3], c.num_blocks[3], c.heads[3], **blocks)

        self.up4_3 = Upsample(widths[3])
        self.reduce_chan_level3 = nn.Conv2d(widths[3], widths[2], 1, bias=c.bias)
        self.decoder_level3 = stage(widths[2], c.num_blocks[2], c.heads[2], **blocks)
        self.up3_2 = Upsample(widths[2])
        self.reduce_chan_level2 = nn.Conv2d(widths[2], widths[1], 1, bias=c.bias)
        self.decoder_level2 = stage(widths[1], c.num_blocks[1], c.heads[1], **blocks)
        self.up2_1 = Upsample(widths[1])  # level 1 of the decoder keeps the doubled width
        self.decoder_level1 = stage(widths[1], c.num_blocks[0], c.heads[0], **blocks)
        self.refinement = stage(widths[1], c.num_refinement_blocks, c.heads[0], **blocks)
        self.output = nn.Conv2d(widths[1], c.out_channels, 3, padding=1, bias=c.bias)

    def set_computation(self, reference: bool = False, experts: str = "auto", norm: str = "auto",
                        engine: str = "auto") -> "AMIR":
        """Choose how this model computes (the outputs agree to float rounding); returns the model.

        reference: follow the published code step by step (slow; the oracle of tests and benchmarks).
        experts: "dense" runs every expert on every pixel with the gates zero outside each pixel's
        top k (no host synchronisation, the same shapes whatever the routing: what GPUs,
        `torch.compile` and CUDA graphs need), "sparse" runs each expert on its own pixels only,
        "auto" is dense off the CPU and sparse on it. norm: "channels" normalises over C in the
        convolutions' layout, "permuted" runs F.layer_norm on the NHWC view, "auto" is channels off
        the CPU and permuted on it. engine: "native" runs CPU fp32 inference with amir's own
        compiled kernels (`native`: LayerNorm, the whole feed-forward, the Gram matrix, the experts), "fused" with
        oneDNN's fused operators (a convolution with the GELU, product or residual sum after it,
        `onednn`), "plain" with PyTorch's alone, "auto" takes the kernels where they build and
        fuses too when torch runs one thread.
        """
        if experts not in EXPERT_PATHS or norm not in NORM_PATHS or engine not in ENGINE_PATHS:
            raise ValueError(f"experts must be one of {EXPERT_PATHS}, norm one of {NORM_PATHS}, engine one of {ENGINE_PATHS}")
        for m in self.modules():
            if isinstance(m, Computation):
                m.reference = bool(reference)
                m.engine = engine
            if isinstance(m, NoisyTopKExperts):
                m.experts_path = experts
            if isinstance(m, ChannelLayerNorm):
                m.norm_path = norm
        return self

    def instruction(self, image: torch.Tensor) -> torch.Tensor:
        """The routing instruction, (B, 256), for a batch of images."""
        return self.dict_generator(image)

    def forward(self, image: torch.Tensor, instruction: torch.Tensor | None = None):
        if instruction is None:
            instruction = self.dict_generator(image)
        H, W = image.shape[-2:]
        pad_h, pad_w = -H % MULTIPLE, -W % MULTIPLE
        x = F.pad(image, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else image
        restored, load_loss = self._unet(x, instruction)
        restored = restored[..., :H, :W] + image
        return (restored, load_loss) if self.training else restored

    def _unet(self, image, instruction):
        x = channels_last(self.patch_embed(image), self.reference)
        x, loss1 = self.spatial_routing_encoder_level1(x, instruction)
        enc1 = self.encoder_level1(x)
        x, loss2 = self.spatial_routing_encoder_level2(self.down1_2(enc1), instruction)
        enc2 = self.encoder_level2(x)
        x, loss3 = self.spatial_routing_encoder_level3(self.down2_3(enc2), instruction)
        enc3 = self.encoder_level3(x)
        x = self.channel_routing_latent(self.down3_4(enc3), instruction)
        x = self.latent(x)

        # each skip is dropped once used, and x rebound, so that freed maps do not pile up at level 1
        x = self.reduce_chan_level3(torch.cat([self.up4_3(x), enc3], 1))
        del enc3
        x = self.channel_routing_decoder_level3(x, instruction)
        x = self.decoder_level3(x)
        x = self.reduce_chan_level2(torch.cat([self.up3_2(x), enc2], 1))
        del enc2
        x = self.channel_routing_decoder_level2(x, instruction)
        x = self.decoder_level2(x)
        x = torch.cat([self.up2_1(x), enc1], 1)
        del enc1
        x = self.channel_routing_decoder_level1(x, instruction)
        x = self.decoder_level1(x)
        x = self.output(self.refinement(x))
        return x, loss1 + loss2 + loss3
