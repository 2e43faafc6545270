"""sfd.flow: interpolant, logit-normal times, asynchronous schedule and the SFD training losses."""

import numpy as np
import pytest
import torch

from sfd.flow import (
    async_times,
    interpolate,
    phase_times,
    repa_loss,
    sample_logit_normal,
    training_losses,
)


class Analytic(torch.nn.Module):
    """v = a[c]·x + b[c]·t_c (t_c = t_tex on texture, t_sem on semantic channels); REPA tokens are
    the latent's pixels projected by a fixed matrix P. Records the `t` it was called with."""

    def __init__(self, channels=4, semantic_chans=2, repa_dim=3, repa=True):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.a = torch.nn.Parameter(torch.randn(channels, generator=g))
        self.b = torch.nn.Parameter(torch.randn(channels, generator=g))
        self.proj = torch.nn.Parameter(torch.randn(channels, repa_dim, generator=g))
        self.split = channels - semantic_chans
        self.repa = repa
        self.seen_t = []

    def forward(self, x, t, y):
        self.seen_t.append(t)
        t_tex, t_sem = t if isinstance(t, tuple) else (t, t)
        tc = torch.cat(
            [t_tex[:, None].expand(-1, self.split), t_sem[:, None].expand(-1, x.shape[1] - self.split)], dim=1
        )
        v = self.a.view(1, -1, 1, 1) * x + (self.b * tc)[:, :, None, None]
        if not self.repa:
            return v
        tokens = x.flatten(2).transpose(1, 2) @ self.proj
        return v, tokens


def numpy_losses(model, x1, x0, t, delta_t, sem, weight, target, mode, repa_weight):
    """docs/method.md §3.3–3.4 written directly in numpy (float64)."""
    a, b, proj = (p.detach().double().numpy() for p in (model.a, model.b, model.proj))
    x1, x0, t = x1.double().numpy(), x0.double().numpy(), t.double().numpy()
    channels = x1.shape[1]
    tau = t * (1 + delta_t)
    t_sem, t_tex = np.minimum(tau, 1.0), np.maximum(tau - delta_t, 0.0)
    tc = np.where(np.arange(channels)[None, :] < channels - sem, t_tex[:, None], t_sem[:, None])
    xt = tc[:, :, None, None] * x1 + (1 - tc[:, :, None, None]) * x0
    u = x1 - x0
    v = a[None, :, None, None] * xt + (b[None, :] * tc)[:, :, None, None]
    w = np.where(np.arange(channels) >= channels - sem, weight, 1.0)[None, :, None, None]
    mse = (w * (v - u) ** 2).reshape(len(t), -1).mean(1)
    cos_px = (v * u).sum(1) / (np.linalg.norm(v, axis=1) * np.linalg.norm(u, axis=1))
    cos = (1 - cos_px).reshape(len(t), -1).mean(1)
    tokens = xt.reshape(len(t), channels, -1).transpose(0, 2, 1) @ proj
    tgt = target.double().numpy()
    tok_cos = (tokens * tgt).sum(-1) / (np.linalg.norm(tokens, axis=-1) * np.linalg.norm(tgt, axis=-1))
    r_cos, r_mse = (1 - tok_cos).mean(1), ((tgt - tokens) ** 2).mean((1, 2))
    repa = {"cos": r_cos, "mse": r_mse, "cos_mse": (r_cos + r_mse) / 2}[mode] * repa_weight
    return {"mse": mse, "cos": cos, "repa": repa, "t_tex": t_tex, "t_sem": t_sem}


def tiny_batch(seed=0, batch=3, channels=4, size=2, tokens=4, dim=3):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(batch, channels, size, size, generator=g)
    x0 = torch.randn(batch, channels, size, size, generator=g)
    target = torch.randn(batch, tokens, dim, generator=g)
    return x1, x0, target


def test_interpolant_endpoints_and_target():
    x1, x0, _ = tiny_batch()
    xt, u = interpolate(torch.zeros(3), x0, x1)
    assert torch.equal(xt, x0) and torch.equal(u, x1 - x0)
    xt, _ = interpolate(torch.ones(3), x0, x1)
    assert torch.equal(xt, x1)
    xt, _ = interpolate(torch.full((3,), 0.25), x0, x1)
    torch.testing.assert_close(xt, 0.25 * x1 + 0.75 * x0)


def test_logit_normal_is_seeded_sigmoid_of_standard_normal():
    t1 = sample_logit_normal(20000, torch.Generator().manual_seed(3))
    t2 = sample_logit_normal(20000, torch.Generator().manual_seed(3))
    assert t1.dtype == torch.float32 and torch.equal(t1, t2)
    assert 0 < t1.min() and t1.max() < 1
    z = torch.randn(20000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(t1, torch.sigmoid(z).float())
    logit = torch.log(t1.double() / (1 - t1.double()))
    assert abs(logit.mean().item()) < 0.03 and abs(logit.std().item() - 1) < 0.03


@pytest.mark.parametrize(
    "delta_t, t, t_tex, t_sem",
    [
        (0.3, [0.0, 0.2, 0.5, 0.9, 1.0], [0.0, 0.0, 0.35, 0.87, 1.0], [0.0, 0.26, 0.65, 1.0, 1.0]),
        (1.0, [0.25, 0.5, 0.75], [0.0, 0.0, 0.5], [0.5, 1.0, 1.0]),
        (0.0, [0.1, 0.7], [0.1, 0.7], [0.1, 0.7]),
    ],
)
def test_async_times(delta_t, t, t_tex, t_sem):
    got_tex, got_sem = async_times(torch.tensor(t, dtype=torch.float64), delta_t)
    torch.testing.assert_close(got_tex, torch.tensor(t_tex, dtype=torch.float64))
    torch.testing.assert_close(got_sem, torch.tensor(t_sem, dtype=torch.float64))
    tau = torch.tensor(t, dtype=torch.float64) * (1 + delta_t)
    assert all(torch.equal(a, b) for a, b in zip(phase_times(tau, delta_t), (got_tex, got_sem)))


@pytest.mark.parametrize("delta_t", [0.3, 1.0])
@pytest.mark.parametrize("mode, repa_weight", [("cos", 1.0), ("mse", 0.5), ("cos_mse", 0.5)])
def test_training_losses_match_numpy(delta_t, mode, repa_weight):
    x1, x0, target = tiny_batch()
    t = torch.tensor([0.1, 0.5, 0.9])  # phase I (t_tex clamped to 0), II, III (t_sem clamped to 1)
    model = Analytic()
    out = training_losses(
        model,
        x1,
        torch.zeros(3, dtype=torch.long),
        delta_t=delta_t,
        semantic_chans=2,
        repa_target=target,
        repa_weight=repa_weight,
        repa_mode=mode,
        t=t,
        noise=x0,
    )
    ref = numpy_losses(model, x1, x0, t, delta_t, 2, 2.0, target, mode, repa_weight)
    for key in ("mse", "cos", "repa", "t_tex", "t_sem"):
        np.testing.assert_allclose(out[key].detach().numpy(), ref[key], rtol=2e-6, atol=1e-7, err_msg=key)
    expected_total = ref["mse"].mean() + ref["cos"].mean() + ref["repa"].mean()
    np.testing.assert_allclose(out["total"].item(), expected_total, rtol=2e-6)
    assert isinstance(model.seen_t[0], tuple)
    assert ref["t_tex"][0] == 0 and ref["t_sem"][2] == 1  # clamped branches are still in the loss


def test_synchronous_model_gets_plain_t_and_same_time_on_all_channels():
    x1, x0, target = tiny_batch()
    t = torch.tensor([0.2, 0.6, 0.95])
    model = Analytic()
    out = training_losses(model, x1, None, delta_t=0.0, semantic_chans=2, repa_target=target, t=t, noise=x0)
    assert isinstance(model.seen_t[0], torch.Tensor) and torch.equal(model.seen_t[0], t)
    assert torch.equal(out["t_tex"], t) and torch.equal(out["t_sem"], t)
    ref = numpy_losses(model, x1, x0, t, 0.0, 2, 2.0, target, "cos", 1.0)
    np.testing.assert_allclose(out["mse"].detach().numpy(), ref["mse"], rtol=2e-6)


def test_semantic_weight_only_scales_last_channels():
    x1, x0, _ = tiny_batch()
    t = torch.tensor([0.3, 0.5, 0.7])
    model = Analytic(repa=False)
    common = dict(delta_t=0.3, semantic_chans=2, use_cosine_loss=False, t=t, noise=x0)
    w1 = training_losses(model, x1, None, semantic_weight=1.0, **common)["mse"]
    w3 = training_losses(model, x1, None, semantic_weight=3.0, **common)["mse"]
    w0 = training_losses(model, x1, None, semantic_weight=0.0, **common)["mse"]
    torch.testing.assert_close(w3 - w1, 2 * (w1 - w0))  # linear in the weight; tex part is w0
    assert (w1 > w0).all()


def test_terms_total_and_gradients():
    x1, x0, target = tiny_batch()
    model = Analytic()
    out = training_losses(
        model,
        x1,
        None,
        delta_t=0.3,
        semantic_chans=2,
        repa_target=target,
        use_cosine_loss=False,
        t=torch.tensor([0.2, 0.4, 0.8]),
        noise=x0,
    )
    assert set(out) == {"mse", "repa", "total", "t", "t_tex", "t_sem"}  # kept: docs/method.md §7.15
    torch.testing.assert_close(out["total"], out["mse"].mean() + out["repa"].mean())
    out["total"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_generator_draws_noise_then_t():
    x1, _, _ = tiny_batch()
    model = Analytic(repa=False)
    out = training_losses(
        model, x1, None, delta_t=0.3, semantic_chans=2, generator=torch.Generator().manual_seed(5)
    )
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(x1.shape, generator=g)
    t = sample_logit_normal(3, g)
    assert torch.equal(out["t"], t)
    again = training_losses(model, x1, None, delta_t=0.3, semantic_chans=2, t=t, noise=noise)
    assert torch.equal(out["total"], again["total"])


def test_repa_modes_on_identical_tokens():
    tokens = torch.randn(2, 5, 4)
    for mode in ("cos", "mse", "cos_mse"):
        torch.testing.assert_close(repa_loss(tokens, tokens.clone(), mode), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(repa_loss(tokens, -tokens, "cos"), torch.full((2,), 2.0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(delta_t=0.3, semantic_chans=0), "semantic_chans > 0"),
        (dict(delta_t=1.5, semantic_chans=2), r"\[0, 1\]"),
        (dict(delta_t=0.3, semantic_chans=9), "semantic_chans"),
        (dict(delta_t=0.3, semantic_chans=2, repa_mode="l1"), "repa_mode"),
        (dict(delta_t=0.3, semantic_chans=2, t=torch.ones(2)), "t must have shape"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    x1, _, _ = tiny_batch()
    with pytest.raises(ValueError, match=message):
        training_losses(Analytic(repa=False), x1, None, **kwargs)


def test_repa_contract_mismatch_is_an_error():
    x1, _, target = tiny_batch()
    with pytest.raises(ValueError, match="no repa_target"):
        training_losses(Analytic(repa=True), x1, None, delta_t=0.3, semantic_chans=2)
    with pytest.raises(ValueError, match="no REPA tokens"):
        training_losses(Analytic(repa=False), x1, None, delta_t=0.3, semantic_chans=2, repa_target=target)


def test_matches_official_op_order_bitwise():
    """The official Transport.training_losses + train.py total, written out op by op."""
    x1, x0, target = tiny_batch(batch=4)
    t = sample_logit_normal(4, torch.Generator().manual_seed(1))
    model = Analytic()
    out = training_losses(model, x1, None, delta_t=0.3, semantic_chans=2, repa_target=target, t=t, noise=x0)

    t_sem = t * (1 + 0.3)
    t_tex = (t_sem - 0.3).clamp(min=0.0)
    t_sem = t_sem.clamp(max=1.0)
    xt = torch.cat(
        [
            t_tex.view(-1, 1, 1, 1) * x1[:, :2] + (1 - t_tex.view(-1, 1, 1, 1)) * x0[:, :2],
            t_sem.view(-1, 1, 1, 1) * x1[:, 2:] + (1 - t_sem.view(-1, 1, 1, 1)) * x0[:, 2:],
        ],
        dim=1,
    )
    ut = torch.cat([1 * x1[:, :2] + -1 * x0[:, :2], 1 * x1[:, 2:] + -1 * x0[:, 2:]], dim=1)
    v, tokens = model(xt, (t_tex, t_sem), None)
    sq = (v - ut) ** 2
    mse = torch.mean(torch.cat([sq[:, :2], sq[:, 2:] * 2.0], dim=1), dim=[1, 2, 3])
    cos = torch.mean(1 - torch.nn.functional.cosine_similarity(v, ut, dim=1), dim=[1, 2])
    repa = torch.mean(1 - torch.nn.functional.cosine_similarity(target, tokens, dim=-1), dim=[1]) * 1.0
    total = cos.mean() + mse.mean() + repa.mean()
    for got, want in ((out["mse"], mse), (out["cos"], cos), (out["repa"], repa), (out["total"], total)):
        assert torch.equal(got, want)
