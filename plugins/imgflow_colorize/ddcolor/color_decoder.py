"""DDColor's colour decoder: 100 learned colour queries refined against three feature scales.

Each of the 9 layers lets the queries attend to one scale of the pixel decoder (1/16, 1/8, 1/4 of
the input, in turn), then to each other, then passes them through an FFN; every sub-layer adds
its result to its input and LayerNorms the sum (post-norm). Keys and values of the cross-attention
are the scale's features projected to 256 channels plus a learned per-scale embedding; keys also
get a fixed sine position code. A final LayerNorm and a 3-layer MLP turn the queries into colour
embeddings, which the model multiplies with the full-resolution pixel features.

Module names follow the release (``query_feat``, ``query_embed``, ``level_embed``,
``input_proj``, ``transformer_cross_attention_layers``, ...), so its checkpoints load strictly.
The attention parameters live in ``nn.MultiheadAttention`` modules (``in_proj_weight``,
``in_proj_bias``, ``out_proj``), but :func:`attend` computes with them on batch-first contiguous
tensors: the module's own batch-first path transposes to sequence-first, and under bfloat16
autocast a linear layer on that non-contiguous input is run as a batched matmul over a weight
copied once per key (measured: 8 s of 11 for a 4 x 512 px batch on 2 cores).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from imgflow_colorize.ddcolor.layers import embedding

HIDDEN = 256
QUERIES = 100
HEADS = 8
FFN = 2048
LAYERS = 9
SCALE_CHANNELS = (512, 512, 256)  # the pixel decoder's 1/16, 1/8 and 1/4 maps
POSITION_TEMPERATURE = 10000.0


def sine_positions(height: int, width: int, channels: int = HIDDEN, *,
                   device: torch.device | None = None) -> torch.Tensor:
    """The fixed 2-D position code of an ``height x width`` map: ``(height * width, channels)``.

    Half the channels encode y, half x. Each coordinate is normalised to (0, 2*pi] (the pixel's
    1-based row or column over the map's size), divided by ``10000 ** (2 * (i // 2) / half)``
    and passed through sin for even i and cos for odd i (DETR's sine code). Independent of the
    batch, so it is computed once per scale and broadcast.
    """
    half = channels // 2
    eps = 1e-6
    ys = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * 2 * math.pi
    xs = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * 2 * math.pi
    index = torch.arange(half, dtype=torch.float32, device=device)
    freq = POSITION_TEMPERATURE ** (2 * torch.div(index, 2, rounding_mode="floor") / half)

    def code(coord: torch.Tensor) -> torch.Tensor:
        phase = coord[:, None] / freq  # (n, half)
        return torch.where(index.long() % 2 == 0, phase.sin(), phase.cos())

    y_code = code(ys)[:, None, :].expand(height, width, half)
    x_code = code(xs)[None, :, :].expand(height, width, half)
    return torch.cat([y_code, x_code], dim=-1).reshape(height * width, channels)


def attend(attn: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """What ``attn(query, key, value)[0]`` computes (no masks, no dropout), for batch-first
    ``(N, L, E)`` tensors: packed input projections, scaled dot-product attention per head, output
    projection."""
    dim, heads = attn.embed_dim, attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(query, weight[:dim], bias[:dim])
    k = F.linear(key, weight[dim:2 * dim], bias[dim:2 * dim])
    v = F.linear(value, weight[2 * dim:], bias[2 * dim:])

    def split(t: torch.Tensor) -> torch.Tensor:  # (N, L, E) -> (N, heads, L, E / heads)
        return t.unflatten(-1, (heads, dim // heads)).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return attn.out_proj(out.transpose(1, 2).flatten(2))


class CrossAttentionLayer(nn.Module):
    """Queries attend to one scale's features; residual and LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(HIDDEN, HEADS, batch_first=True)
        self.norm = nn.LayerNorm(HIDDEN)

    def forward(self, queries: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor,
                memory_pos: torch.Tensor) -> torch.Tensor:
        out = attend(self.multihead_attn, queries + query_pos, memory + memory_pos, memory)
        return self.norm(queries + out)


class SelfAttentionLayer(nn.Module):
    """Queries attend to each other; residual and LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(HIDDEN, HEADS, batch_first=True)
        self.norm = nn.LayerNorm(HIDDEN)

    def forward(self, queries: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        keyed = queries + query_pos
        out = attend(self.self_attn, keyed, keyed, queries)
        return self.norm(queries + out)


class FFNLayer(nn.Module):
    """Linear, ReLU, linear; residual and LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.linear1 = nn.Linear(HIDDEN, FFN)
        self.linear2 = nn.Linear(FFN, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
    """Three linear layers with ReLU between them (``layers.0..2``)."""

    def __init__(self, width: int = HIDDEN, depth: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class MultiScaleColorDecoder(nn.Module):
    """Colour queries refined against three scales; ``forward`` returns ``(N, 100, 256)``."""

    def __init__(self) -> None:
        super().__init__()
        self.query_feat = embedding(QUERIES, HIDDEN)
        self.query_embed = embedding(QUERIES, HIDDEN)
        self.level_embed = embedding(len(SCALE_CHANNELS), HIDDEN)
        self.input_proj = nn.ModuleList(nn.Conv2d(c, HIDDEN, kernel_size=1) for c in SCALE_CHANNELS)
        self.transformer_self_attention_layers = nn.ModuleList(SelfAttentionLayer() for _ in range(LAYERS))
        self.transformer_cross_attention_layers = nn.ModuleList(CrossAttentionLayer() for _ in range(LAYERS))
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer() for _ in range(LAYERS))
        self.decoder_norm = nn.LayerNorm(HIDDEN)
        self.color_embed = MLP()

    def memories(self, scales: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per scale: the projected features plus the scale embedding ``(N, h*w, 256)``, and the
        position code ``(1, h*w, 256)``."""
        out = []
        for i, feature in enumerate(scales):
            # contiguous once here, not in each of the 3 layers that read this scale (twice each)
            projected = self.input_proj[i](feature).flatten(2).transpose(1, 2).contiguous()
            level = self.level_embed.weight[i].to(projected.dtype)
            h, w = feature.shape[-2:]
            pos = sine_positions(h, w, device=feature.device).to(projected.dtype)
            out.append((projected + level, pos.unsqueeze(0)))
        return out

    def forward(self, scales: list[torch.Tensor]) -> torch.Tensor:
        memories = self.memories(scales)
        batch = scales[0].shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
        queries = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)
        for i in range(LAYERS):
            memory, memory_pos = memories[i % len(memories)]
            queries = self.transformer_cross_attention_layers[i](queries, query_pos, memory, memory_pos)
            queries = self.transformer_self_attention_layers[i](queries, query_pos)
            queries = self.transformer_ffn_layers[i](queries)
        return self.color_embed(self.decoder_norm(queries))
