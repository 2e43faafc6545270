"""LightningDiT with Semantic-First dual timesteps (SFD, arXiv 2512.04926, docs/method.md §2).

One class serves every size. The module names, parameter shapes and numerics follow the official
SFD model so that the released checkpoints load strictly and give the same outputs; each
LightningDiT feature flag (RMSNorm, QK-norm, RoPE, SwiGLU, shift-free adaLN) switches back to the
DiT component when off.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sfd.config import validate
from sfd.models.embeddings import (
    LabelEmbedder,
    TimestepEmbedder,
    VisionRope,
    sincos_pos_embed_2d,
)
from sfd.models.sizes import MODEL_SIZES, parse_model_type, repa_out_dim


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back to the input dtype, then scaled by the weight."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def token_norm(dim: int, use_rmsnorm: bool) -> nn.Module:
    """Pre-norm of blocks and final layer: RMSNorm, or DiT's LayerNorm without affine."""
    return RMSNorm(dim) if use_rmsnorm else nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


def head_norm(dim: int, use_rmsnorm: bool) -> nn.Module:
    """QK-norm: RMSNorm, or (RMSNorm off) timm's default LayerNorm with affine and eps 1e-5, as upstream."""
    return RMSNorm(dim) if use_rmsnorm else nn.LayerNorm(dim)


def modulate(x: torch.Tensor, shift, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x·(1+scale) + shift; `shift` is None for shift-free adaLN."""
    x = x * (1 + scale)
    return x if shift is None else x + shift


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches -> D-dim tokens, row-major (token = h·W/p + w)."""

    def __init__(self, patch_size: int, in_chans: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; optional QK-norm per head, applied before RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, use_rmsnorm: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = head_norm(self.head_dim, use_rmsnorm) if qk_norm else nn.Identity()
        self.k_norm = head_norm(self.head_dim, use_rmsnorm) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: VisionRope | None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        x = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class SwiGLU(nn.Module):
    """w3(silu(a)·b) with [a, b] = w12(x); hidden width int(2/3·4D) (XL: 3072)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class GeluMlp(nn.Module):
    """DiT's MLP: fc1 -> GELU(tanh) -> fc2 (key names of timm's Mlp)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LightningDiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero gates from the condition c [N, 1, D].

    adaLN chunks are (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp), or without
    the two shifts when `wo_shift`.
    """

    def __init__(self, dim, num_heads, *, mlp_ratio, use_qknorm, use_swiglu, use_rmsnorm, wo_shift):
        super().__init__()
        self.wo_shift = wo_shift
        self.norm1 = token_norm(dim, use_rmsnorm)
        self.attn = Attention(dim, num_heads, use_qknorm, use_rmsnorm)
        self.norm2 = token_norm(dim, use_rmsnorm)
        mlp_hidden = int(dim * mlp_ratio)
        self.mlp = SwiGLU(dim, int(2 / 3 * mlp_hidden)) if use_swiglu else GeluMlp(dim, mlp_hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, (4 if wo_shift else 6) * dim))

    def forward(self, x, c, rope):
        if self.wo_shift:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(4, dim=-1)
            shift_msa = shift_mlp = None
        else:
            chunks = self.adaLN_modulation(c).chunk(6, dim=-1)
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = chunks
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) -> Linear to p²·C per token.

    The final adaLN keeps its shift even with `wo_shift`: upstream LightningDiT and SFD only drop
    shifts inside the blocks.
    """

    def __init__(self, dim: int, out_dim: int, use_rmsnorm: bool):
        super().__init__()
        self.norm_final = token_norm(dim, use_rmsnorm)
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class LightningDiT(nn.Module):
    """Class-conditional velocity model on a [N, C, H, W] latent (texture channels first,
    the last `semantic_chans` semantic).

    Semantic-first mode (semfirst_delta_t > 0 and semantic_chans > 0): `t` is the tuple
    (t_tex, t_sem) of [N] tensors; two embedders of width D/2 are concatenated as
    [emb_sem(t_sem), emb_tex(t_tex)]. Otherwise one `t_embedder` of width D takes a [N] tensor.

    `forward` returns the velocity [N, C, H, W]; in training mode with REPA it returns
    (velocity, repa_tokens [N, T, repa_out_dim]), the projected output of block
    `repa_feat_depth` (1-based) for the representation-alignment loss. In eval mode the projector
    does not run (the official model runs it and discards its output: -19 % per S/1 forward).
    """

    def __init__(
        self,
        *,
        input_size: int,
        patch_size: int,
        in_chans: int,
        hidden_size: int,
        depth: int,
        num_heads: int,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        mlp_ratio: float = 4.0,
        semantic_chans: int = 0,
        semfirst_delta_t: float = 0.0,
        use_qknorm: bool = False,
        use_swiglu: bool = False,
        use_rope: bool = False,
        use_rmsnorm: bool = False,
        wo_shift: bool = False,
        use_checkpoint: bool = False,
        repa_out_dim: int | None = None,
        repa_feat_depth: int = 2,
        repa_hidden_dim: int = 2048,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not divisible by {num_heads} heads")
        if repa_out_dim is not None and not 1 <= repa_feat_depth <= depth:
            raise ValueError(f"repa_feat_depth {repa_feat_depth} is outside 1..{depth} (the model depth)")
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.grid_size = input_size // patch_size
        self.semantic_chans = semantic_chans
        self.semantic_first = semfirst_delta_t > 0 and semantic_chans > 0
        self.use_checkpoint = use_checkpoint
        self.repa_feat_depth = repa_feat_depth

        self.x_embedder = PatchEmbed(patch_size, in_chans, hidden_size)
        if self.semantic_first:
            self.t_embedder_sem = TimestepEmbedder(hidden_size // 2)
            self.t_embedder_tex = TimestepEmbedder(hidden_size // 2)
        else:
            self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        table = sincos_pos_embed_2d(hidden_size, self.grid_size)
        self.pos_embed = nn.Parameter(table.unsqueeze(0).to(torch.get_default_device()), requires_grad=False)
        self.feat_rope = VisionRope(hidden_size // num_heads, self.grid_size) if use_rope else None
        self.blocks = nn.ModuleList(
            LightningDiTBlock(
                hidden_size,
                num_heads,
                mlp_ratio=mlp_ratio,
                use_qknorm=use_qknorm,
                use_swiglu=use_swiglu,
                use_rmsnorm=use_rmsnorm,
                wo_shift=wo_shift,
            )
            for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size**2 * in_chans, use_rmsnorm)
        self.repa_projector = (
            None
            if repa_out_dim is None
            else nn.Sequential(
                nn.Linear(hidden_size, repa_hidden_dim),
                nn.SiLU(),
                nn.Linear(repa_hidden_dim, repa_hidden_dim),
                nn.SiLU(),
                nn.Linear(repa_hidden_dim, repa_out_dim),
            )
        )
        self.initialize_weights()

    @property
    def use_repa(self) -> bool:
        return self.repa_projector is not None

    def initialize_weights(self) -> None:
        """docs/method.md §2.5: xavier Linears with zero bias, N(0, 0.02) label table and t-MLPs,
        zero adaLN outputs and zero output layer (so an initial model predicts 0)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        embedders = (self.t_embedder_sem, self.t_embedder_tex) if self.semantic_first else (self.t_embedder,)
        for embedder in embedders:
            nn.init.normal_(embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        for layer in [*self.blocks, self.final_layer]:
            nn.init.zeros_(layer.adaLN_modulation[-1].weight)
            nn.init.zeros_(layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def embed_time(self, t, batch: int, device) -> torch.Tensor:
        """[N, D] time embedding; a 0-d tensor or float is broadcast over the batch."""

        def per_sample(value, name):
            value = torch.as_tensor(value, device=device)
            if value.dim() == 0:
                return value.expand(batch)
            if value.shape != (batch,):
                raise ValueError(f"{name} must have shape [{batch}], got {list(value.shape)}")
            return value

        if self.semantic_first:
            if not (isinstance(t, (tuple, list)) and len(t) == 2):
                raise TypeError("a semantic-first model takes t as the tuple (t_tex, t_sem)")
            t_tex, t_sem = per_sample(t[0], "t_tex"), per_sample(t[1], "t_sem")
            return torch.cat([self.t_embedder_sem(t_sem), self.t_embedder_tex(t_tex)], dim=1)
        if isinstance(t, (tuple, list)):
            raise TypeError("a synchronous model (semfirst_delta_t == 0) takes t as one tensor [N]")
        return self.t_embedder(per_sample(t, "t"))

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, p²·C] -> [N, C, H, W] via (n, h, w, p, q, c) -> (n, c, h·p, w·p)."""
        g, p, c = self.grid_size, self.patch_size, self.in_chans
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def forward(self, x, t, y, force_drop_ids=None):
        """Velocity for latents x [N, C, H, W] at time t ((t_tex, t_sem) or [N]) and labels y [N].

        Labels are dropped to the null class with probability class_dropout_prob only in
        training mode; `force_drop_ids == 1` drops them in any mode. Returns
        (velocity, repa_tokens) instead in training mode when the model has a REPA projector.
        """
        size = self.grid_size * self.patch_size
        if x.shape[1:] != (self.in_chans, size, size):
            raise ValueError(f"input must be [N, {self.in_chans}, {size}, {size}], got {list(x.shape)}")
        x = self.x_embedder(x) + self.pos_embed
        c = self.embed_time(t, x.shape[0], x.device)
        c = (c + self.y_embedder(y, self.training, force_drop_ids)).unsqueeze(1)
        repa_tokens = None
        for index, block in enumerate(self.blocks):
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, c, self.feat_rope, use_reentrant=False)
            else:
                x = block(x, c, self.feat_rope)
            if self.use_repa and self.training and index + 1 == self.repa_feat_depth:
                repa_tokens = self.repa_projector(x)
        velocity = self.unpatchify(self.final_layer(x, c))
        if self.use_repa and self.training:
            return velocity, repa_tokens
        return velocity


def build_model(model_cfg: dict, *, num_classes: int = 1000, input_size: int = 16) -> LightningDiT:
    """Build the model described by a `model:` section (official SFD keys; validated here, so a
    raw dict from an official config works). `input_size` is the latent grid (256 px / 16)."""
    cfg = validate(model_cfg, "model", source="model section")
    size, patch_size = parse_model_type(cfg["model_type"])
    depth, hidden_size, num_heads = MODEL_SIZES[size]
    return LightningDiT(
        input_size=input_size,
        patch_size=patch_size,
        in_chans=cfg["in_chans"],
        hidden_size=hidden_size,
        depth=depth,
        num_heads=num_heads,
        num_classes=num_classes,
        class_dropout_prob=cfg["class_dropout_prob"],
        semantic_chans=cfg["semantic_chans"],
        semfirst_delta_t=cfg["semfirst_delta_t"],
        use_qknorm=cfg["use_qknorm"],
        use_swiglu=cfg["use_swiglu"],
        use_rope=cfg["use_rope"],
        use_rmsnorm=cfg["use_rmsnorm"],
        wo_shift=cfg["wo_shift"],
        use_checkpoint=cfg["use_checkpoint"],
        repa_out_dim=repa_out_dim(cfg) if cfg["use_repa"] else None,
        repa_feat_depth=cfg["repa_feat_depth"],
        repa_hidden_dim=cfg["repa_hidden_dim"],
    )
