"""sfd.sampling: three-phase ODE, solvers, timestep shift, CFG and AutoGuidance on analytic fields."""

import math

import pytest
import torch
from torchdiffeq import odeint

from sfd.sampling import channel_mask, ode_sample, time_grid

C, SEM = 4, 2  # 2 texture channels first, 2 semantic channels last
E = math.exp(-1.0)


class Field(torch.nn.Module):
    """v = k(t)·x + c·(1 + label) on each channel, with t = t_tex on texture and t_sem on semantic
    channels; the null label (`num_classes`) gives c·0. Records every call."""

    def __init__(self, k=lambda t_tex, t_sem, x: torch.zeros_like(x), c=0.0, num_classes=10):
        super().__init__()
        self.k, self.c = k, c
        self.y_embedder = torch.nn.Module()
        self.y_embedder.num_classes = num_classes
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append(
            dict(t=t, x=x.clone(), y=y.clone(), training=self.training, grad=torch.is_grad_enabled())
        )
        t_tex, t_sem = t if isinstance(t, tuple) else (t, t)
        k = self.k(t_tex.view(-1, 1, 1, 1), t_sem.view(-1, 1, 1, 1), x)
        label = torch.where(y == self.y_embedder.num_classes, -1, y).to(x.dtype) + 1
        return k * x + self.c * label.view(-1, 1, 1, 1)


def decay(t_tex, t_sem, x):
    """k = -2·t_tex on texture, -2·(1 - t_sem) on semantics: continuous at the phase boundaries and
    integrating to -1 over each branch's active time, so both branches end at x0·e^-1."""
    k = torch.empty_like(x)
    k[:, :-SEM] = -2 * t_tex
    k[:, -SEM:] = -2 * (1 - t_sem)
    return k


def noise(batch=3, seed=0):
    return torch.randn(batch, C, 2, 2, generator=torch.Generator().manual_seed(seed))


LABELS = torch.tensor([0, 3, 7])
TIGHT = dict(rtol=1e-7, atol=1e-9)
# Euler on linspace(0, 1.3, 12): h = 1.3/11, left ends i·h. Texture moves at steps i = 3..10 (8 steps,
# tau_i >= 0.3), semantics at i = 0..8 (9 steps, tau_i <= 1). No grid point lies on a boundary.
H12 = 1.3 / 11


def test_time_grid_and_shift():
    grid = time_grid(5, 0.3)
    assert grid.dtype == torch.float32
    torch.testing.assert_close(grid, torch.linspace(0, 1.3, 5))
    shifted = time_grid(5, 0.3, timestep_shift=2.0)
    torch.testing.assert_close(shifted[[0, -1]], torch.tensor([0.0, 1.3]))
    torch.testing.assert_close(shifted[2], torch.tensor(1.3 * (2 * 0.5) / (1 + 0.5)))
    assert (shifted.diff() > 0).all() and (shifted[1:-1] > grid[1:-1]).all()
    torch.testing.assert_close(time_grid(7, 0.0, timestep_shift=3.0)[3], torch.tensor(3 * 0.5 / 2.0))
    torch.testing.assert_close(time_grid(9, 0.3, timestep_shift=1.0), time_grid(9, 0.3))
    with pytest.raises(ValueError, match="num_steps"):
        time_grid(1, 0.3)


def test_channel_mask_phases():
    x = torch.zeros(5, C, 1, 1)
    mask = channel_mask(torch.tensor([0.1, 0.3, 0.5, 1.0, 1.2]), x, 0.3, SEM)[:, :, 0, 0]
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]


@pytest.mark.parametrize("method", ["dopri5", "euler", "heun", "midpoint"])
def test_constant_field_reaches_closed_form(method):
    z = noise()
    stats = {}
    out = ode_sample(
        Field(c=0.5), z, LABELS, delta_t=0.0, semantic_chans=SEM, method=method, num_steps=11, stats=stats
    )
    expected = z + 0.5 * (1 + LABELS.float()).view(-1, 1, 1, 1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    fixed_nfe = {"euler": 10, "heun": 20, "midpoint": 20}
    if method in fixed_nfe:
        assert stats == {"nfe": fixed_nfe[method], "forwards": fixed_nfe[method]}


def test_linear_field_dopri5_and_euler():
    z = noise()
    out = ode_sample(
        Field(k=lambda a, b, x: -torch.ones_like(x)), z, LABELS, delta_t=0.0, semantic_chans=0, **TIGHT
    )
    torch.testing.assert_close(out, z * E, rtol=1e-6, atol=1e-6)
    out = ode_sample(
        Field(k=lambda a, b, x: -torch.ones_like(x)),
        z,
        LABELS,
        delta_t=0.0,
        semantic_chans=0,
        method="euler",
        num_steps=21,
    )
    torch.testing.assert_close(out, z * (1 - 1 / 20) ** 20, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("delta_t", [0.3, 1.0])
def test_three_phase_dopri5_closed_form(delta_t):
    z = noise()
    model = Field(k=decay)
    out = ode_sample(model, z, LABELS, delta_t=delta_t, semantic_chans=SEM, num_steps=50, **TIGHT)
    torch.testing.assert_close(out, z * E, rtol=1e-5, atol=1e-5)
    for call in model.calls:
        t_tex, t_sem = call["t"]
        assert (
            (t_tex >= 0).all()
            and (t_sem <= 1).all()
            and ((t_tex == 0) | (t_sem == 1) | (t_sem - t_tex - delta_t).abs().lt(1e-6)).all()
        )
        if t_tex[0] == 0 and t_sem[0] < delta_t:  # phase I: texture still the initial noise, exactly
            assert torch.equal(call["x"][:, :-SEM], z[:, :-SEM])


def test_three_phase_euler_counts_steps_per_phase():
    z = noise()
    model = Field(c=1.0)
    out = ode_sample(model, z, LABELS, delta_t=0.3, semantic_chans=SEM, method="euler", num_steps=12)
    gain = (1 + LABELS.float()).view(-1, 1, 1, 1) * H12
    torch.testing.assert_close(out[:, :-SEM], z[:, :-SEM] + 8 * gain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, -SEM:], z[:, -SEM:] + 9 * gain, rtol=1e-5, atol=1e-5)
    for call in model.calls:
        t_tex, t_sem = call["t"]
        if t_tex[0] == 0:  # tau < 0.3: texture frozen at the noise
            assert torch.equal(call["x"][:, :-SEM], z[:, :-SEM])
        if t_sem[0] == 1 and t_tex[0] > 0.71:  # tau > 1: semantics frozen at their final value
            assert torch.equal(call["x"][:, -SEM:], out[:, -SEM:])


def test_delta_t_one_runs_phases_back_to_back():
    z = noise()
    model = Field(c=1.0)
    out = ode_sample(model, z, LABELS, delta_t=1.0, semantic_chans=SEM, method="euler", num_steps=12)
    # grid linspace(0, 2, 12), h = 2/11: semantics move at i = 0..5 (tau <= 1), texture at i = 6..10.
    gain = (1 + LABELS.float()).view(-1, 1, 1, 1) * (2 / 11)
    torch.testing.assert_close(out[:, -SEM:], z[:, -SEM:] + 6 * gain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, :-SEM], z[:, :-SEM] + 5 * gain, rtol=1e-5, atol=1e-5)
    assert max(float(c["t"][0][0]) for c in model.calls) == pytest.approx(10 / 11 * 2 - 1, abs=1e-6)


def test_synchronous_model_gets_plain_tensor_and_no_mask():
    z = noise()
    model = Field(c=1.0)
    out = ode_sample(model, z, LABELS, delta_t=0.0, semantic_chans=SEM, method="euler", num_steps=6)
    assert all(isinstance(c["t"], torch.Tensor) for c in model.calls)
    torch.testing.assert_close(out, z + (1 + LABELS.float()).view(-1, 1, 1, 1), rtol=1e-5, atol=1e-5)


def test_models_run_in_eval_without_grad_and_mode_is_restored():
    model, weak = Field(c=1.0).train(), Field(c=0.5).train()
    ode_sample(
        model,
        noise(),
        LABELS,
        delta_t=0.3,
        semantic_chans=SEM,
        method="euler",
        num_steps=4,
        cfg_scale=1.5,
        guide_model=weak,
    )
    assert model.training and weak.training
    calls = model.calls + weak.calls
    assert calls and not any(c["training"] or c["grad"] for c in calls)


def test_no_guidance_at_scale_one():
    z = noise()
    plain = ode_sample(Field(k=decay, c=0.3), z, LABELS, delta_t=0.3, semantic_chans=SEM)
    weak = Field(c=5.0)
    stats = {}
    ag = ode_sample(
        Field(k=decay, c=0.3),
        z,
        LABELS,
        delta_t=0.3,
        semantic_chans=SEM,
        guide_model=weak,
        cfg_scale=1.0,
        cfg_scale_tex=3.0,
        stats=stats,
    )
    assert torch.equal(ag, plain) and not weak.calls and stats["forwards"] == stats["nfe"]
    model = Field(k=decay, c=0.3)
    cfg = ode_sample(model, z, LABELS, delta_t=0.3, semantic_chans=SEM, cfg_scale=1.0)
    assert torch.equal(cfg, plain) and all(len(c["y"]) == 3 for c in model.calls)


def test_autoguidance_closed_form_with_true_labels_and_split_scales():
    z = noise()
    strong, weak = Field(c=1.0), Field(c=0.25)
    stats = {}
    out = ode_sample(
        strong,
        z,
        LABELS,
        delta_t=0.0,
        semantic_chans=SEM,
        cfg_scale=1.5,
        guide_model=weak,
        cfg_scale_sem=3.0,
        stats=stats,
    )
    label = (1 + LABELS.float()).view(-1, 1, 1, 1)
    v_tex = 0.25 * label + 1.5 * (0.75 * label)
    v_sem = 0.25 * label + 3.0 * (0.75 * label)
    torch.testing.assert_close(out[:, :-SEM], z[:, :-SEM] + v_tex, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, -SEM:], z[:, -SEM:] + v_sem, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(c["y"], LABELS) for c in weak.calls)
    assert stats["forwards"] == 2 * stats["nfe"] and len(weak.calls) == stats["nfe"]


@pytest.mark.parametrize("null_label", [None, 42])
def test_cfg_doubles_batch_with_null_label(null_label):
    z = noise()
    model = Field(c=1.0, num_classes=10 if null_label is None else 42)
    out = ode_sample(
        model,
        z,
        LABELS,
        delta_t=0.3,
        semantic_chans=SEM,
        method="euler",
        num_steps=12,
        cfg_scale=2.0,
        null_label=null_label,
    )
    null = 10 if null_label is None else 42
    assert all(torch.equal(c["y"], torch.cat([LABELS, torch.full((3,), null)])) for c in model.calls)
    gain = 2.0 * (1 + LABELS.float()).view(-1, 1, 1, 1) * H12  # v_null = 0, so v = s·v_cond
    torch.testing.assert_close(out[:, :-SEM], z[:, :-SEM] + 8 * gain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, -SEM:], z[:, -SEM:] + 9 * gain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weak_c", [None, 0.5])
@pytest.mark.parametrize("mode", ["both", "tex", "sem"])
def test_guidance_interval_start_per_branch(weak_c, mode):
    """start 0.5: semantics guided once t_sem >= 0.5 (tau_i >= 0.5: i = 5..8 of the 9 active steps),
    texture once t_tex >= 0.5 (tau_i >= 0.8: i = 7..10 of the 8 active steps); a branch the mode
    leaves out is guided at every step."""
    z = noise()
    guide_model = None if weak_c is None else Field(c=weak_c)
    out = ode_sample(
        Field(c=1.0),
        z,
        LABELS,
        delta_t=0.3,
        semantic_chans=SEM,
        method="euler",
        num_steps=12,
        cfg_scale=2.0,
        cfg_interval_start=0.5,
        cfg_interval_mode=mode,
        guide_model=guide_model,
    )
    label = (1 + LABELS.float()).view(-1, 1, 1, 1)
    ref = 0.0 if weak_c is None else weak_c
    v_cond, v_guided = label, ref * label + 2.0 * (1 - ref) * label
    tex_unguided = 4 if mode in ("both", "tex") else 0
    sem_unguided = 5 if mode in ("both", "sem") else 0
    torch.testing.assert_close(
        out[:, :-SEM],
        z[:, :-SEM] + H12 * (tex_unguided * v_cond + (8 - tex_unguided) * v_guided),
        rtol=1e-5,
        atol=1e-5,
    )
    torch.testing.assert_close(
        out[:, -SEM:],
        z[:, -SEM:] + H12 * (sem_unguided * v_cond + (9 - sem_unguided) * v_guided),
        rtol=1e-5,
        atol=1e-5,
    )


def test_unknown_interval_mode_is_refused():
    with pytest.raises(ValueError, match="cfg_interval_mode"):
        ode_sample(
            Field(c=1.0),
            noise(),
            LABELS,
            delta_t=0.3,
            semantic_chans=SEM,
            method="euler",
            num_steps=4,
            cfg_scale=2.0,
            cfg_interval_mode="texture",
        )


def test_timestep_shift_keeps_the_endpoint():
    z = noise()
    out = ode_sample(Field(k=decay), z, LABELS, delta_t=0.3, semantic_chans=SEM, timestep_shift=3.0, **TIGHT)
    torch.testing.assert_close(out, z * E, rtol=1e-5, atol=1e-5)


def official_reference(model, z, y, delta_t, cfg_scale, null):
    """The official call structure (Sampler.sample_ode_semantic_first + forward_with_cfg) for the
    CFG case, written out: doubled state, ones(B)·t, tolerances as one-element lists."""
    z, y = torch.cat([z, z]), torch.cat([y, torch.full_like(y, null)])

    def fn(t, x):
        t = torch.ones(x.size(0)) * t
        t_sem, t_tex = t.clamp(max=1.0), (t - delta_t).clamp(min=0.0)
        out = model(x, (t_tex, t_sem), y)
        cond, uncond = out.chunk(2)
        half = uncond + cfg_scale * (cond - uncond)
        mask = torch.zeros_like(x)
        mask[:, :-SEM] = (t >= delta_t).view(-1, 1, 1, 1)
        mask[:, -SEM:] = (t <= 1.0).view(-1, 1, 1, 1)
        return torch.cat([half, half]) * mask

    grid = torch.linspace(0, 1 + delta_t, 250)
    return odeint(fn, z, grid, method="dopri5", atol=[1e-6], rtol=[1e-3])[-1][: len(z) // 2]


def test_cfg_dopri5_matches_official_structure_bitwise():
    z = noise()
    model = Field(k=lambda a, b, x: -torch.sin(3 * a + b) * torch.ones_like(x), c=0.7)
    out = ode_sample(model, z, LABELS, delta_t=0.3, semantic_chans=SEM, cfg_scale=1.5)
    assert torch.equal(out, official_reference(model, z, LABELS, 0.3, 1.5, 10))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="rk45"), "unknown sampling method"),
        (dict(delta_t=0.3, semantic_chans=0), "semantic_chans > 0"),
        (dict(delta_t=-0.1), r"\[0, 1\]"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    args = dict(delta_t=0.3, semantic_chans=SEM) | kwargs
    with pytest.raises(ValueError, match=message):
        ode_sample(Field(), noise(), LABELS, **args)


def test_cfg_without_known_null_label_is_an_error():
    class Bare(torch.nn.Module):
        def forward(self, x, t, y):
            return x

    with pytest.raises(ValueError, match="null_label"):
        ode_sample(Bare(), noise(), LABELS, delta_t=0.3, semantic_chans=SEM, cfg_scale=2.0)


def test_with_the_real_model_contract():
    """LightningDiT (toy size P): REPA tokens in training, velocity only while sampling."""
    models = pytest.importorskip("sfd.models")
    from sfd.flow import training_losses

    cfg = dict(
        model_type="LightningDiT-P/1",
        in_chans=C,
        semantic_chans=SEM,
        semfirst_delta_t=0.3,
        use_qknorm=True,
        use_swiglu=True,
        use_rope=True,
        use_rmsnorm=True,
        use_repa=True,
        repa_out_dim=8,
    )
    torch.manual_seed(0)
    model = models.build_model(cfg, num_classes=10, input_size=4)
    x1 = torch.randn(3, C, 4, 4)
    losses = training_losses(
        model,
        x1,
        LABELS,
        delta_t=0.3,
        semantic_chans=SEM,
        repa_target=torch.randn(3, 16, 8),
        generator=torch.Generator().manual_seed(0),
    )
    losses["total"].backward()
    stats = {}
    out = ode_sample(
        model,
        torch.randn(3, C, 4, 4),
        LABELS,
        delta_t=0.3,
        semantic_chans=SEM,
        method="euler",
        num_steps=5,
        cfg_scale=1.5,
        stats=stats,
    )
    assert out.shape == (3, C, 4, 4) and stats["nfe"] == 4 and model.training
