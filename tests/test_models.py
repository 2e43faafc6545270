"""LightningDiT-SFD (docs/method.md §2): sizes, parameter counts, released key layout and the conventions
that a checkpoint would not catch (time order, embedding layouts, RoPE pairing)."""

import math

import pytest
import torch
from torch import nn

from sfd.config import ConfigError
from sfd.models import MODEL_SIZES, LightningDiT, build_model
from sfd.models.embeddings import VisionRope, rotate_half, sincos_pos_embed_2d, timestep_features
from sfd.models.lightningdit import RMSNorm

# The official SFD `model:` section (configs/sfd/lightningdit_xl/*.yaml) with a size placeholder.
SFD = dict(
    use_qknorm=True,
    use_swiglu=True,
    use_rope=True,
    use_rmsnorm=True,
    wo_shift=False,
    in_chans=48,
    semantic_chans=16,
    semfirst_delta_t=0.3,
    semantic_weight=2.0,
    use_repa=True,
    repa_dino_version="dinov2_vitb14_reg",
    repa_feat_depth=2,
)

# docs/method.md §2.6 in=48, p=1, dual t-embedders: (params without REPA projector and pos_embed,
# all parameters), in millions rounded to 0.1, and the exact integers they round.
PAPER_COUNTS = {
    "S": (32.8, 39.5, 32_827_056, 39_483_824),
    "B": (130.1, 137.6, 130_090_800, 137_632_304),
    "L": (457.4, 465.5, 457_402_384, 465_533_712),
    "XL": (674.3, 682.8, 674_339_184, 682_765_424),
    "1p0B": (1027.9, 1037.2, 1_027_880_496, 1_037_191_472),
    "1p6B": (1629.8, 1639.7, 1_629_763_680, 1_639_664_480),
}


def sfd_cfg(size="T", patch=1, **overrides):
    return {**SFD, "model_type": f"LightningDiT-{size}/{patch}", **overrides}


def toy_cfg(size="P", **overrides):
    """A small SFD model: 8 channels (last 4 semantic) on an 8x8 grid, REPA width 24."""
    base = dict(in_chans=8, semantic_chans=4, repa_out_dim=24, repa_hidden_dim=32)
    return sfd_cfg(size, **{**base, **overrides})


def meta_model(cfg, **kwargs) -> LightningDiT:
    with torch.device("meta"):
        return build_model(cfg, **kwargs)


def randomize(model: LightningDiT, seed: int = 0) -> LightningDiT:
    """Non-zero weights everywhere (the adaLN-Zero init would hide most of the network)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=gen) * (0.05 if p.dim() > 1 else 0.5))
    return model


def inputs(model: LightningDiT, n: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    size = model.grid_size * model.patch_size
    x = torch.randn(n, model.in_chans, size, size, generator=gen)
    t_tex, t_sem = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return x, (t_tex, t_sem), y


# --------------------------------------------------------------------------------------------
# Sizes and parameter counts


@pytest.mark.parametrize("patch", [1, 2])
@pytest.mark.parametrize("size", list(MODEL_SIZES))
def test_every_size_builds_and_maps_shapes(size, patch):
    model = meta_model(sfd_cfg(size, patch))
    depth, hidden, heads = MODEL_SIZES[size]
    assert len(model.blocks) == depth
    assert model.blocks[0].attn.num_heads == heads
    assert model.pos_embed.shape == (1, (16 // patch) ** 2, hidden)
    assert model.final_layer.linear.out_features == patch**2 * 48
    with torch.device("meta"):
        x, t, y = torch.randn(2, 48, 16, 16), (torch.rand(2), torch.rand(2)), torch.zeros(2, dtype=torch.long)
        velocity, repa = model.train()(x, t, y)
    assert velocity.shape == (2, 48, 16, 16)
    assert repa.shape == (2, (16 // patch) ** 2, 768)


@pytest.mark.parametrize("size", list(PAPER_COUNTS))
def test_parameter_counts_match_spec_table(size):
    model = meta_model(sfd_cfg(size))
    core = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n != "pos_embed" and not n.startswith("repa_projector.")
    )
    total = sum(p.numel() for p in model.parameters())
    core_m, total_m, core_exact, total_exact = PAPER_COUNTS[size]
    assert round(core / 1e6, 1) == core_m
    assert round(total / 1e6, 1) == total_m
    assert (core, total) == (core_exact, total_exact)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == total - model.pos_embed.numel()


def test_swiglu_hidden_width_per_spec():
    widths = {s: meta_model(sfd_cfg(s)).blocks[0].mlp.w3.in_features for s in ("B", "L", "XL", "1p0B")}
    assert widths == {"B": 2048, "L": 2730, "XL": 3072, "1p0B": 4096}


# --------------------------------------------------------------------------------------------
# Released layout (docs/method.md §2.7)


def test_released_state_dict_layout_xl():
    sd = meta_model(sfd_cfg("XL")).state_dict()
    D, depth, d = 1152, 28, 72
    expected = {
        "x_embedder.proj.weight": (D, 48, 1, 1),
        "x_embedder.proj.bias": (D,),
        "y_embedder.embedding_table.weight": (1001, D),
        "pos_embed": (1, 256, D),
        "feat_rope.freqs_cos": (256, d),
        "feat_rope.freqs_sin": (256, d),
        "final_layer.norm_final.weight": (D,),
        "final_layer.linear.weight": (48, D),
        "final_layer.linear.bias": (48,),
        "final_layer.adaLN_modulation.1.weight": (2 * D, D),
        "final_layer.adaLN_modulation.1.bias": (2 * D,),
        "repa_projector.0.weight": (2048, D),
        "repa_projector.0.bias": (2048,),
        "repa_projector.2.weight": (2048, 2048),
        "repa_projector.2.bias": (2048,),
        "repa_projector.4.weight": (768, 2048),
        "repa_projector.4.bias": (768,),
    }
    for branch in ("sem", "tex"):
        expected |= {
            f"t_embedder_{branch}.mlp.0.weight": (D // 2, 256),
            f"t_embedder_{branch}.mlp.0.bias": (D // 2,),
            f"t_embedder_{branch}.mlp.2.weight": (D // 2, D // 2),
            f"t_embedder_{branch}.mlp.2.bias": (D // 2,),
        }
    for i in range(depth):
        expected |= {
            f"blocks.{i}.norm1.weight": (D,),
            f"blocks.{i}.norm2.weight": (D,),
            f"blocks.{i}.attn.qkv.weight": (3 * D, D),
            f"blocks.{i}.attn.qkv.bias": (3 * D,),
            f"blocks.{i}.attn.q_norm.weight": (d,),
            f"blocks.{i}.attn.k_norm.weight": (d,),
            f"blocks.{i}.attn.proj.weight": (D, D),
            f"blocks.{i}.attn.proj.bias": (D,),
            f"blocks.{i}.mlp.w12.weight": (2 * 3072, D),
            f"blocks.{i}.mlp.w12.bias": (2 * 3072,),
            f"blocks.{i}.mlp.w3.weight": (D, 3072),
            f"blocks.{i}.mlp.w3.bias": (D,),
            f"blocks.{i}.adaLN_modulation.1.weight": (6 * D, D),
            f"blocks.{i}.adaLN_modulation.1.bias": (6 * D,),
        }
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


def test_synchronous_model_has_single_full_width_t_embedder():
    sd = meta_model(sfd_cfg("XL", semfirst_delta_t=0.0)).state_dict()
    assert sd["t_embedder.mlp.0.weight"].shape == (1152, 256)
    assert not any(k.startswith(("t_embedder_sem", "t_embedder_tex")) for k in sd)


def test_feature_flags_switch_their_components():
    off = dict(use_qknorm=False, use_swiglu=False, use_rope=False, use_rmsnorm=False)
    plain = build_model(toy_cfg(**off), num_classes=10, input_size=8)
    block = plain.blocks[0]
    assert isinstance(block.norm1, nn.LayerNorm) and not block.norm1.elementwise_affine
    assert block.norm1.eps == 1e-6 and isinstance(plain.final_layer.norm_final, nn.LayerNorm)
    assert isinstance(block.attn.q_norm, nn.Identity)
    assert block.mlp.fc1.out_features == 4 * 64 and block.mlp.act.approximate == "tanh"
    assert plain.feat_rope is None and "feat_rope.freqs_cos" not in plain.state_dict()

    qk_ln = build_model(toy_cfg(**{**off, "use_qknorm": True}), num_classes=10, input_size=8).blocks[0].attn
    assert isinstance(qk_ln.q_norm, nn.LayerNorm) and qk_ln.q_norm.weight.shape == (32,)
    lightning = build_model(toy_cfg(), num_classes=10, input_size=8).blocks[0]
    assert isinstance(lightning.norm1, RMSNorm) and isinstance(lightning.attn.k_norm, RMSNorm)
    assert lightning.mlp.w12.out_features == 2 * int(2 / 3 * 256)


def test_wo_shift_drops_block_shifts_only():
    model = randomize(build_model(toy_cfg(wo_shift=True), num_classes=10, input_size=8))
    assert model.blocks[0].adaLN_modulation[1].out_features == 4 * 64
    assert model.final_layer.adaLN_modulation[1].out_features == 2 * 64  # as upstream
    x, t, y = inputs(model)
    assert model.eval()(x, t, y).shape == x.shape


def test_label_table_has_null_row_only_with_dropout():
    assert (
        meta_model(
            sfd_cfg("S", class_dropout_prob=0.0), num_classes=7
        ).y_embedder.embedding_table.num_embeddings
        == 7
    )
    assert meta_model(sfd_cfg("S"), num_classes=7).y_embedder.embedding_table.num_embeddings == 8


# --------------------------------------------------------------------------------------------
# Behaviour


def test_initial_model_predicts_zero_and_init_per_spec():
    model = build_model(toy_cfg(), num_classes=10, input_size=8)
    x, t, y = inputs(model)
    assert torch.equal(model.eval()(x, t, y), torch.zeros_like(x))
    for layer in [*model.blocks, model.final_layer]:
        assert not layer.adaLN_modulation[1].weight.any() and not layer.adaLN_modulation[1].bias.any()
    assert not model.blocks[0].attn.qkv.bias.any() and model.blocks[0].attn.qkv.weight.any()
    assert not model.pos_embed.requires_grad
    # xavier-uniform bounds sqrt(6 / (fan_in + fan_out)); the patch conv as a [D, C·p²] matrix
    assert model.blocks[0].attn.qkv.weight.abs().max() <= math.sqrt(6 / (64 + 192))
    assert model.repa_projector[0].weight.abs().max() <= math.sqrt(6 / (64 + 32))
    assert model.x_embedder.proj.weight.abs().max() <= math.sqrt(6 / (64 + 8))
    assert model.x_embedder.proj.weight.abs().max() > math.sqrt(6 / (64 + 8)) / 2
    assert 0.01 < model.t_embedder_sem.mlp[0].weight.std() < 0.03
    assert 0.01 < model.y_embedder.embedding_table.weight.std() < 0.03


def test_eval_forward_is_deterministic():
    model = randomize(build_model(toy_cfg("T"), num_classes=10, input_size=8)).eval()
    x, t, y = inputs(model)
    first = model(x, t, y)
    torch.manual_seed(123)
    assert torch.equal(first, model(x, t, y))
    assert first.abs().sum() > 0


def test_label_dropout_only_in_train_mode():
    model = build_model(toy_cfg(class_dropout_prob=0.5), num_classes=10, input_size=8)
    labels = torch.arange(10).repeat(20)
    table = model.y_embedder.embedding_table.weight
    model.eval()
    assert torch.equal(model.y_embedder(labels, model.training), table[labels])
    model.train()
    torch.manual_seed(0)
    dropped = model.y_embedder(labels, model.training)
    torch.manual_seed(0)
    mask = torch.rand(len(labels)) < 0.5
    assert 0 < mask.sum() < len(labels)
    assert torch.equal(dropped, table[torch.where(mask, 10, labels)])
    forced = model.y_embedder(labels[:3], False, force_drop_ids=torch.tensor([1, 0, 1]))
    assert torch.equal(forced, table[torch.tensor([10, 1, 10])])


def test_time_tuple_is_ordered_tex_then_sem():
    model = randomize(build_model(toy_cfg(), num_classes=10, input_size=8)).eval()
    x, (t_tex, t_sem), y = inputs(model)
    out = model(x, (t_tex, t_sem), y)
    assert not torch.allclose(out, model(x, (t_sem, t_tex), y))
    # The condition is [emb_sem(t_sem), emb_tex(t_tex)]: t_sem drives the first D/2 features.
    emb = model.embed_time((t_tex, t_sem), 3, x.device)
    assert torch.equal(emb[:, :32], model.t_embedder_sem(t_sem))
    assert torch.equal(emb[:, 32:], model.t_embedder_tex(t_tex))


def test_synchronous_path_takes_a_tensor_t():
    model = randomize(build_model(toy_cfg(semfirst_delta_t=0.0), num_classes=10, input_size=8)).eval()
    x, (t, _), y = inputs(model)
    out = model(x, t, y)
    assert out.shape == x.shape
    assert torch.equal(model(x, torch.tensor(0.25), y), model(x, torch.full((3,), 0.25), y))
    with pytest.raises(TypeError, match="one tensor"):
        model(x, (t, t), y)
    sfd = build_model(toy_cfg(), num_classes=10, input_size=8)
    with pytest.raises(TypeError, match=r"\(t_tex, t_sem\)"):
        sfd(x, t, y)


def test_repa_tokens_come_from_block_repa_feat_depth():
    model = randomize(build_model(toy_cfg("T", repa_feat_depth=2), num_classes=10, input_size=8))
    x, t, y = inputs(model)
    model.eval()
    assert isinstance(model(x, t, y), torch.Tensor)
    model.train()
    velocity, tokens = model(x, t, y, force_drop_ids=torch.zeros(3))
    assert tokens.shape == (3, 64, 24)
    assert torch.equal(velocity, model.eval()(x, t, y))
    with torch.no_grad():
        model.blocks[2].attn.proj.weight.add_(1.0)  # after the REPA tap: only the velocity changes
    velocity2, tokens2 = model.train()(x, t, y, force_drop_ids=torch.zeros(3))
    assert torch.equal(tokens, tokens2) and not torch.allclose(velocity, velocity2)


def test_repa_width_lookup_and_errors():
    assert meta_model(sfd_cfg("S", repa_dino_version="dinov2_vitl14")).repa_projector[4].out_features == 1024
    assert (
        meta_model(sfd_cfg("S", repa_dino_version="dinov2_vitg14_reg")).repa_projector[4].out_features == 1536
    )
    assert (
        meta_model(sfd_cfg("S", repa_dino_version="toy_vit", repa_out_dim=48)).repa_projector[4].out_features
        == 48
    )
    assert meta_model(sfd_cfg("S", use_repa=False)).repa_projector is None
    with pytest.raises(ConfigError, match="repa_dino_version.*repa_out_dim"):
        meta_model(sfd_cfg("S", repa_dino_version="toy_vit"))
    with pytest.raises(ValueError, match="repa_feat_depth 3 is outside 1..2"):
        meta_model(sfd_cfg("P", repa_feat_depth=3))
    with pytest.raises(ConfigError, match="model_type"):
        build_model(sfd_cfg("Q"))


def test_gradient_checkpointing_gives_same_gradients():
    grads = []
    for use_checkpoint in (False, True):
        model = randomize(build_model(toy_cfg(use_checkpoint=use_checkpoint), num_classes=10, input_size=8))
        x, t, y = inputs(model)
        velocity, tokens = model.train()(x, t, y, force_drop_ids=torch.zeros(3))
        (velocity.square().mean() + tokens.mean()).backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)


def test_patch_two_round_trips_layout():
    model = build_model(toy_cfg(patch=2, in_chans=8), num_classes=10, input_size=8)
    tokens = torch.arange(2 * 16 * 32, dtype=torch.float32).reshape(2, 16, 32)
    image = model.unpatchify(tokens)
    # token (h, w) holds the p x p x C patch in (p, q, c) order
    assert image.shape == (2, 8, 8, 8)
    assert image[1, 3, 2 * 1 + 1, 2 * 2 + 0] == tokens[1, 1 * 4 + 2, (1 * 2 + 0) * 8 + 3]


def test_bad_input_shape_is_named():
    model = build_model(toy_cfg(), num_classes=10, input_size=8)
    with pytest.raises(ValueError, match=r"\[N, 8, 8, 8\]"):
        model(torch.zeros(1, 8, 16, 16), (torch.zeros(1), torch.zeros(1)), torch.zeros(1, dtype=torch.long))


# --------------------------------------------------------------------------------------------
# Embedding conventions (docs/method.md §2.1–2.3, §7.2)


def test_pos_embed_first_half_encodes_column():
    D, g = 16, 4
    table = sincos_pos_embed_2d(D, g)
    omega = [10000 ** (-k / (D / 4)) for k in range(D // 4)]
    for h, w in [(0, 3), (2, 1), (3, 3)]:
        row = table[h * g + w]
        expected = (
            [math.sin(w * o) for o in omega]
            + [math.cos(w * o) for o in omega]
            + [math.sin(h * o) for o in omega]
            + [math.cos(h * o) for o in omega]
        )
        torch.testing.assert_close(row, torch.tensor(expected), rtol=0, atol=1e-7)
    model = meta_model(sfd_cfg("S"))
    assert model.pos_embed.shape == (1, 256, 384)


def test_rope_tables_and_rotate_half_pairing():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert torch.equal(rotate_half(x), torch.tensor([-2.0, 1.0, -4.0, 3.0, -6.0, 5.0]))
    d, g = 8, 3
    rope = VisionRope(d, g)
    freqs = [1 / 10000 ** (2 * k / (d / 2)) for k in range(d // 4)]
    for h, w in [(0, 2), (2, 1)]:
        angles = [h * f for f in freqs for _ in (0, 1)] + [w * f for f in freqs for _ in (0, 1)]
        torch.testing.assert_close(rope.freqs_cos[h * g + w], torch.tensor(angles).cos(), rtol=0, atol=1e-6)
        torch.testing.assert_close(rope.freqs_sin[h * g + w], torch.tensor(angles).sin(), rtol=0, atol=1e-6)
    # Applying it rotates each adjacent pair by its angle: norms per pair are preserved.
    q = torch.randn(2, 1, g * g, d)
    out = rope(q)
    torch.testing.assert_close(out.unflatten(-1, (-1, 2)).norm(dim=-1), q.unflatten(-1, (-1, 2)).norm(dim=-1))
    token, pair = 2 * g + 1, 1  # (h=2, w=1), pair 1 -> angle h·f1
    a = 2 * freqs[1]
    x0, x1 = q[0, 0, token, 2], q[0, 0, token, 3]
    torch.testing.assert_close(out[0, 0, token, 2 * pair], x0 * math.cos(a) - x1 * math.sin(a))
    assert "feat_rope.freqs_cos" in meta_model(sfd_cfg("S")).state_dict()


def test_timestep_features_raw_t_cos_first():
    t = torch.tensor([0.0, 0.5, 1.0])
    feats = timestep_features(t)
    assert feats.shape == (3, 256)
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    torch.testing.assert_close(feats[:, :128], torch.cos(t[:, None] * freqs))
    torch.testing.assert_close(feats[:, 128:], torch.sin(t[:, None] * freqs))
    assert feats[1, 0] == pytest.approx(math.cos(0.5)) and feats[1, 128] == pytest.approx(math.sin(0.5))


def test_rmsnorm_computes_in_float32_then_scales():
    norm = RMSNorm(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.tensor([[1e-3, 2e-3, 3e-3, 4e-3]], dtype=torch.bfloat16)
    out = norm(x)
    x32 = x.float()
    expected = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16() * norm.weight
    assert out.dtype == torch.float32  # bf16 result times the fp32 weight, as upstream
    assert torch.equal(out, expected)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"use_swiglu": False, "wo_shift": True},
        {"semfirst_delta_t": 0.0},
        {"use_checkpoint": True, "use_repa": False},
        {"model_type": "LightningDiT-P/2"},
    ],
)
def test_flops_count_every_matmul(overrides):
    """sfd.models.flops against torch's FlopCounterMode. Its CPU attention kernel is not counted,
    so the two attention products (4 T^2 D per block) are added; a backward skips the grad of
    inputs that need none (latents, timestep features), hence the small tolerance in training;
    recomputation under gradient checkpointing is not model work and is not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    from sfd.config import validate
    from sfd.models.flops import sample_flops_per_nfe, train_flops_per_image

    cfg = validate(
        {
            "model_type": "LightningDiT-P/1",
            "in_chans": 8,
            "semantic_chans": 4,
            "semfirst_delta_t": 0.3,
            "use_qknorm": True,
            "use_swiglu": True,
            "use_rope": True,
            "use_rmsnorm": True,
            "use_repa": True,
            "repa_out_dim": 24,
            "repa_hidden_dim": 32,
            **overrides,
        },
        "model",
    )
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=10, input_size=8)
    depth, width, _ = MODEL_SIZES["P"]
    tokens = (8 // model.patch_size) ** 2
    x, y = torch.randn(3, 8, 8, 8), torch.tensor([1, 2, 3])
    t = (torch.rand(3), torch.rand(3)) if model.semantic_first else torch.rand(3)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x, t, y)
    attention = 4 * tokens * tokens * width * depth
    assert sample_flops_per_nfe(cfg, 8) == counter.get_total_flops() // 3 + attention
    model.use_checkpoint = False
    with FlopCounterMode(display=False) as counter:
        out = model.train()(x, t, y)
        sum(o.sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
    assert train_flops_per_image(cfg, 8) == pytest.approx(
        counter.get_total_flops() / 3 + 3 * attention, rel=0.02
    )
