"""Speed: FLOPs per image from the architecture, the bf16 peak table behind MFU, torch.compile with
its eager fallback, the fused optimizer and foreach EMA, and no REPA projector at sampling."""

import copy
import logging

import pytest
import torch
from engine_fixtures import TINY_MODEL, one_thread  # noqa: F401

from sfd.config import validate
from sfd.device import Compiled, peak_bf16_flops
from sfd.models import build_model
from sfd.models.flops import sample_flops_per_nfe, train_flops_per_image
from sfd.train import Throughput, make_optimizer, update_ema

XL = {
    "model_type": "LightningDiT-XL/1",
    "in_chans": 48,
    "semantic_chans": 16,
    "semfirst_delta_t": 0.3,
    "use_qknorm": True,
    "use_swiglu": True,
    "use_rope": True,
    "use_rmsnorm": True,
    "use_repa": True,
}


def _model_cfg(**changes) -> dict:
    return validate({**TINY_MODEL, **changes}, "model", source="test")


def _tiny_model(**changes):
    """The tiny test DiT with every weight perturbed (an initialised one predicts exactly 0)."""
    torch.manual_seed(0)
    model = build_model(_model_cfg(**changes), num_classes=4, input_size=4)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def _inputs(n=3):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(n, 8, 4, 4, generator=g),
        (torch.rand(n, generator=g), torch.rand(n, generator=g)),
        torch.arange(n) % 4,
    )


# ----------------------------------------------------------------------------
# FLOPs and MFU.


def test_flops_hand_count_of_the_tiny_model():
    # P/1 (depth 2, D 64) on a 4x4 grid: 16 tokens, 8 channels, SwiGLU hidden int(2/3*256) = 170,
    # two time embedders of width 32 (semantic-first), REPA 64 -> 32 -> 32 -> 16. Multiply-adds:
    patch = 16 * 8 * 64
    time = 2 * (256 * 32 + 32 * 32)
    block = 64 * 6 * 64 + 16 * 64 * 192 + 16 * 64 * 64 + 2 * 16 * 16 * 64 + 16 * 64 * 340 + 16 * 170 * 64
    final = 64 * 128 + 16 * 64 * 8
    repa = 16 * (64 * 32 + 32 * 32 + 32 * 16)
    cfg = _model_cfg()
    assert sample_flops_per_nfe(cfg, 4) == 2 * (patch + time + 2 * block + final)
    assert train_flops_per_image(cfg, 4) == 3 * 2 * (patch + time + 2 * block + final + repa)
    # shift-free adaLN has 4 chunks; a synchronous model one embedder of full width
    two_shifts = 2 * 2 * 64 * 2 * 64  # per block: 2 of the 6 adaLN chunks, multiply-adds -> FLOPs
    assert sample_flops_per_nfe(_model_cfg(wo_shift=True), 4) == sample_flops_per_nfe(cfg, 4) - two_shifts
    sync = _model_cfg(semfirst_delta_t=0.0)
    assert sample_flops_per_nfe(sync, 4) - sample_flops_per_nfe(cfg, 4) == 2 * (256 * 64 + 64 * 64 - time)


def test_xl_flops_against_the_real_model_and_the_6nt_rule():
    """6 x parameters x tokens gives the issue's 1.05 TFLOP per XL/1 training image; the
    architecture count charges per-image weights (adaLN, time MLPs) once, not per token."""
    cfg = validate(XL, "model", source="test")
    with torch.device("meta"):
        model = build_model(cfg)
    params = {name: p for name, p in model.named_parameters()}
    tokens, depth, width = 256, 28, 1152
    assert 6 * sum(p.numel() for p in params.values()) * tokens == pytest.approx(1.05e12, rel=0.005)

    matrices = {
        n: p.numel()
        for n, p in params.items()
        if p.dim() >= 2 and n not in ("pos_embed", "y_embedder.embedding_table.weight")
    }
    per_image = sum(v for n, v in matrices.items() if "adaLN" in n or "t_embedder" in n)
    per_token = sum(matrices.values()) - per_image
    attention = 2 * 2 * depth * tokens * tokens * width  # q·kᵀ and softmax·v, forward
    expected = 3 * (2 * (per_token * tokens + per_image) + attention)
    assert train_flops_per_image(cfg, 16) == expected
    assert train_flops_per_image(cfg, 16) == pytest.approx(0.724e12, rel=0.001)


@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H200", 989),
        ("NVIDIA H800", 989),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A800-SXM4-80GB", 312),
        ("NVIDIA L40S", 362),
        ("NVIDIA GeForce RTX 4090", 165),
        ("Ascend910B3", 320),
        ("Tesla V100-SXM2-32GB", None),
        ("cpu", None),
    ],
)
def test_peak_table(name, tflops):
    assert peak_bf16_flops(name) == (None if tflops is None else tflops * 1e12)


def test_throughput_record_has_mfu_only_with_a_known_peak():
    known = Throughput(global_batch=8, flops_per_image=10**9, peak_flops=1e12).record(2.0, steps=4, wait=0.4)
    assert known == pytest.approx(
        {"images_per_s": 16.0, "sec_per_step": 0.5, "data_wait_s": 0.1, "mfu": 0.016}
    )
    unknown = Throughput(global_batch=8, flops_per_image=10**9, peak_flops=None).record(2.0, 4, 0.4)
    assert "mfu" not in unknown and unknown["images_per_s"] == 16.0


# ----------------------------------------------------------------------------
# Optimizer, EMA, REPA projector.


def test_fused_adamw_on_cpu_matches_the_default_implementation():
    model, tcfg = _tiny_model(class_dropout_prob=0.0), {"lr": 1e-3, "beta2": 0.99, "weight_decay": 0.01}
    reference = copy.deepcopy(model)
    opt = make_optimizer(model, tcfg, torch.device("cpu"))
    assert opt.param_groups[0]["fused"]
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01)
    for net, optimizer in ((model, opt), (reference, ref_opt)):
        for _ in range(3):
            x, t, y = _inputs()
            v, r = net.train()(x, t, y)
            optimizer.zero_grad()
            (v.square().mean() + r.square().mean()).backward()
            optimizer.step()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_foreach_ema_is_the_ema_formula_over_every_parameter():
    model, ema = _tiny_model(), build_model(_model_cfg(), num_classes=4, input_size=4)
    before = copy.deepcopy(ema.state_dict())
    update_ema(ema, model, 0.9)
    for name, param in model.named_parameters():
        expected = 0.9 * before[name] + 0.1 * param
        torch.testing.assert_close(ema.state_dict()[name], expected, rtol=1e-6, atol=1e-7)


def test_repa_projector_runs_only_in_training():
    model = _tiny_model(class_dropout_prob=0.0)
    calls = []
    model.repa_projector.register_forward_hook(lambda *args: calls.append(1))
    x, t, y = _inputs()
    with torch.no_grad():
        v_eval = model.eval()(x, t, y)
        assert calls == []
        v_train, tokens = model.train()(x, t, y)
    assert len(calls) == 1 and tokens.shape == (3, 16, 16)
    assert torch.equal(v_eval, v_train)


# ----------------------------------------------------------------------------
# torch.compile.


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    """A backend that fails (as inductor does without a C++ compiler) costs one warning line."""

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module: real_compile(module, backend=broken_backend))
    torch._dynamo.reset()
    model = _tiny_model().eval()
    compiled = Compiled(model, "tiny")
    x, t, y = _inputs()
    with pytest.raises(ValueError, match="input must be"):  # a bad input is the caller's error, not compile's
        compiled(x[:, :4], t, y)
    assert compiled.compiled is not None and not [r for r in caplog.records if r.name == "sfd.device"]
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="sfd.device"):
        first, second = compiled(x, t, y), compiled(x, t, y)
        expected = model(x, t, y)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    warnings = [r.getMessage() for r in caplog.records if r.name == "sfd.device"]
    assert len(warnings) == 1
    assert warnings[0] == "tiny: torch.compile failed (RuntimeError: no C++ compiler found); running eager"
    assert compiled.training is False and compiled.y_embedder is model.y_embedder  # stands in for the model
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_model_matches_eager_in_training_and_sampling():
    """Inductor on this CPU: ~1 min of compiling for the two graphs."""
    from sfd.flow import training_losses
    from sfd.sampling import ode_sample

    torch._dynamo.reset()
    model = _tiny_model()
    model.y_embedder.dropout_prob = 0.0  # same labels in both (inductor draws its own random bits)
    compiled = Compiled(model, "tiny")
    x, _, y = _inputs()
    feats = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(2))
    grads = []
    for net in (compiled, model):
        model.train().zero_grad()
        losses = training_losses(
            net,
            x,
            y,
            delta_t=0.3,
            semantic_chans=4,
            semantic_weight=2.0,
            repa_target=feats,
            generator=torch.Generator().manual_seed(3),
        )
        losses["total"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)

    model.y_embedder.dropout_prob = 0.1  # its null row is CFG's null label
    kwargs = dict(delta_t=0.3, semantic_chans=4, method="euler", num_steps=6, cfg_scale=2.0)
    out = ode_sample(compiled, x, y, **kwargs)
    torch.testing.assert_close(out, ode_sample(model, x, y, **kwargs), rtol=1e-5, atol=1e-5)
    assert compiled.compiled is not None  # it did compile, no fallback
    torch._dynamo.reset()


def test_optimizer_state_resumes_with_this_devices_kernel():
    from sfd.train import load_optimizer

    net = torch.nn.Linear(4, 4)
    saved = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=None)
    net(torch.randn(2, 4)).sum().backward()
    saved.step()
    here = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
    load_optimizer(here, saved.state_dict())
    assert here.param_groups[0]["fused"] is True
    assert torch.equal(here.state[net.weight]["exp_avg"], saved.state[net.weight]["exp_avg"])
    here.step()  # the fused kernel runs on the loaded state
