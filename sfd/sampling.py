"""Semantic-first ODE sampling with classifier-free guidance and AutoGuidance (docs/method.md §4).

The state z [B, C, H, W] (texture channels first, the last `semantic_chans` semantic) is
integrated over global time tau in [0, 1 + delta_t] with torchdiffeq. The drift is the model's
velocity at (t_tex, t_sem) = (max(tau - delta_t, 0), min(tau, 1)), multiplied by a channel mask:

    phase I   tau <  delta_t:      only the semantics move (texture stays at its noise);
    phase II  delta_t <= tau <= 1: both move;
    phase III tau >  1:            only the texture moves (semantics frozen).

The numerics follow the official sampler so that trajectories match it number for number: a
float32 linspace grid, the per-sample time vector ones(B)·tau, tolerances handed to torchdiffeq as
one-element lists (its error norm is then computed in float64), and a CFG state that holds the
conditional and the null-label copy side by side (dopri5's error norm is global over the state).
"""

import contextlib
from dataclasses import dataclass

import torch
from torchdiffeq import odeint

from sfd.flow import check_schedule, phase_times

# Our solver names -> torchdiffeq's. dopri5 is adaptive (the grid only sets output points); the
# others take one step per grid interval (num_steps - 1 steps), heun and midpoint with 2 NFE each.
METHODS = {"dopri5": "dopri5", "euler": "euler", "heun": "heun2", "midpoint": "midpoint"}


def time_grid(num_steps: int, delta_t: float, timestep_shift: float = 0.0) -> torch.Tensor:
    """Output grid over [0, 1 + delta_t] (float32), optionally warped by the timestep shift s.

    Shift s > 0 (docs/method.md §4.2): divide by 1 + delta_t, map t -> s·t / (1 + (s - 1)·t), multiply back.
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2, got {num_steps}")
    if timestep_shift < 0:
        raise ValueError(f"timestep_shift must be >= 0 (0 = off), got {timestep_shift}")
    grid = torch.linspace(0.0, 1.0 + delta_t, num_steps)
    if timestep_shift > 0:
        grid = grid / (1 + delta_t)
        grid = timestep_shift * grid / (1 + (timestep_shift - 1) * grid)
        grid = grid * (1 + delta_t)
    return grid


def channel_mask(tau: torch.Tensor, like: torch.Tensor, delta_t: float, semantic_chans: int) -> torch.Tensor:
    """1 where a channel moves at global time tau [B]: texture iff tau >= delta_t, semantics iff tau <= 1."""
    split = like.shape[1] - semantic_chans
    shape = (-1, 1, *[1] * (like.dim() - 2))
    mask = torch.zeros_like(like)
    mask[:, :split] = (tau >= delta_t).view(shape)
    mask[:, split:] = (tau <= 1.0).view(shape)
    return mask


def guide(v_cond, v_ref, scale: float, t: torch.Tensor, interval_start: float):
    """v_ref + scale·(v_cond - v_ref), or v_cond alone while the branch's time t is below the start."""
    if bool(t[0] < interval_start):
        return v_cond
    return v_ref + scale * (v_cond - v_ref)


@dataclass(frozen=True)
class Guidance:
    """How a guided velocity is mixed, per slice: the texture channels before `split`, the
    semantic ones from it, each with its own scale and interval start (docs/method.md §4.3)."""

    split: int
    scale_tex: float
    scale_sem: float
    start_tex: float
    start_sem: float

    @classmethod
    def of(cls, split: int, scale: float, scale_tex, scale_sem, interval_start: float, interval_mode: str):
        """Per-slice scales default to `scale`; `interval_mode` says which slices the interval gates."""
        return cls(
            split,
            scale_tex=scale if scale_tex is None else scale_tex,
            scale_sem=scale if scale_sem is None else scale_sem,
            start_tex=interval_start if interval_mode in ("both", "tex") else 0.0,
            start_sem=interval_start if interval_mode in ("both", "sem") else 0.0,
        )

    def __call__(self, v_cond, v_ref, t):
        """The guided velocity at model time t (one tensor, or the pair (t_tex, t_sem))."""
        t_tex, t_sem = t if isinstance(t, tuple) else (t, t)
        s = self.split
        return torch.cat(
            [
                guide(v_cond[:, :s], v_ref[:, :s], self.scale_tex, t_tex, self.start_tex),
                guide(v_cond[:, s:], v_ref[:, s:], self.scale_sem, t_sem, self.start_sem),
            ],
            dim=1,
        )


def with_null_labels(model, noise: torch.Tensor, labels: torch.Tensor, null_label: int | None):
    """The CFG state: noise twice, with the true labels then the null label (default the model's
    `y_embedder.num_classes`), side by side so that dopri5's error norm covers both."""
    if null_label is None:
        null_label = getattr(getattr(model, "y_embedder", None), "num_classes", None)
        if null_label is None:
            raise ValueError("CFG needs null_label: the model has no y_embedder.num_classes")
    return torch.cat([noise, noise]), torch.cat([labels, torch.full_like(labels, null_label)])


@contextlib.contextmanager
def evaluating(*models):
    """Eval mode under no_grad for the block; each model's own mode is restored afterwards."""
    models = [m for m in models if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def ode_sample(
    model,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    delta_t: float,
    semantic_chans: int,
    method: str = "dopri5",
    num_steps: int = 250,
    atol: float = 1e-6,
    rtol: float = 1e-3,
    timestep_shift: float = 0.0,
    cfg_scale: float = 1.0,
    cfg_interval_start: float = 0.0,
    cfg_interval_mode: str = "both",
    guide_model=None,
    cfg_scale_tex: float | None = None,
    cfg_scale_sem: float | None = None,
    null_label: int | None = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """Integrate noise [B, C, H, W] to tau = 1 + delta_t; returns the final latent (all channels).

    Guidance acts only when cfg_scale > 1 (docs/method.md §4.3), with scale cfg_scale_tex / cfg_scale_sem
    (default cfg_scale) on the texture / semantic slice:
      * CFG (guide_model None): the batch is doubled with the null label (`null_label`, default
        the model's `y_embedder.num_classes`); v = v_null + s·(v_cond - v_null).
      * AutoGuidance: guide_model is the weak model, given the TRUE labels;
        v = v_weak + s·(v_model - v_weak).
    A slice whose time (t_tex or t_sem) is below cfg_interval_start gets the unguided v_cond;
    cfg_interval_mode (the model's `semfirst_infer_interval_mode`) says which slices the interval
    gates: `both`, `tex` (texture only) or `sem` (semantics only).

    Models run in eval mode under no_grad (their mode is restored afterwards). If `stats` is
    given it receives `nfe` (drift evaluations) and `forwards` (network calls, the guide included).
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {sorted(METHODS)}")
    check_schedule(delta_t, semantic_chans, noise.shape[1])
    if labels.shape != noise.shape[:1]:
        raise ValueError(f"labels must have shape [{noise.shape[0]}], got {list(labels.shape)}")
    if cfg_interval_mode not in ("both", "tex", "sem"):
        raise ValueError(f"cfg_interval_mode must be both, tex or sem, got {cfg_interval_mode!r}")
    guided = cfg_scale > 1.0
    use_cfg = guided and guide_model is None
    mix = Guidance.of(
        noise.shape[1] - semantic_chans,
        cfg_scale,
        cfg_scale_tex,
        cfg_scale_sem,
        cfg_interval_start,
        cfg_interval_mode,
    )
    counts = {"nfe": 0, "forwards": 0}
    z, y = with_null_labels(model, noise, labels, null_label) if use_cfg else (noise, labels)

    def velocity(x, t):
        counts["forwards"] += 1
        v = model(x, t, y)
        if not guided:
            return v
        if use_cfg:
            v_cond, v_ref = v.chunk(2)
        else:
            counts["forwards"] += 1
            v_cond, v_ref = v, guide_model(x, t, y)
        v = mix(v_cond, v_ref, t)
        return torch.cat([v, v]) if use_cfg else v

    def drift(tau, x):
        counts["nfe"] += 1
        tau = torch.ones(x.shape[0], dtype=x.dtype, device=x.device) * tau
        if delta_t == 0:
            return velocity(x, tau)
        return velocity(x, phase_times(tau, delta_t)) * channel_mask(tau, x, delta_t, semantic_chans)

    grid = time_grid(num_steps, delta_t, timestep_shift).to(noise.device)
    with evaluating(model, guide_model):
        final = odeint(drift, z, grid, method=METHODS[method], atol=[atol], rtol=[rtol])[-1]
    if stats is not None:
        stats.update(counts)
    return final[: noise.shape[0]]
