"""Asynchronous (semantic-first) flow matching: interpolant, time sampling and training loss.

SFD (arXiv 2512.04926), docs/method.md §3. A linear path runs from noise (t = 0) to data (t = 1) with target
velocity u = x1 - x0. The semantic channels (the LAST `semantic_chans` of the latent) run `delta_t`
ahead of the texture channels on one global clock tau = t·(1 + delta_t):

    t_sem = min(tau, 1),    t_tex = max(tau - delta_t, 0).

Training draws one base t per sample (docs/method.md §7.4) and regresses x1 - x0 on every channel in every
phase: a clamped branch is NOT masked out of the loss (docs/method.md §7.3). At delta_t = 0 the schedule is
synchronous and the model receives a plain [B] tensor t instead of the tuple (t_tex, t_sem).
"""

import torch
import torch.nn.functional as F

REPA_MODES = ("cos", "mse", "cos_mse")


def check_schedule(delta_t: float, semantic_chans: int, channels: int) -> None:
    """Reject a (delta_t, semantic_chans) pair the asynchronous schedule cannot use.

    delta_t = 1.0 is allowed (the paper's Δt ablation has it; the official assert 0 < Δt < 1
    forbids it, docs/method.md §7.16).
    """
    if not 0.0 <= delta_t <= 1.0:
        raise ValueError(f"delta_t must lie in [0, 1], got {delta_t}")
    if not 0 <= semantic_chans <= channels:
        raise ValueError(
            f"semantic_chans must lie in [0, {channels}] (latent channels), got {semantic_chans}"
        )
    if delta_t > 0 and semantic_chans == 0:
        raise ValueError(f"delta_t = {delta_t} > 0 needs semantic_chans > 0")


def interpolate(t: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor):
    """x_t = t·x1 + (1 - t)·x0 and the constant target velocity u = x1 - x0 (t is [B])."""
    t = t.view(-1, *[1] * (x1.dim() - 1))
    return t * x1 + (1 - t) * x0, x1 - x0


def sample_logit_normal(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n base times t = sigmoid(z), z ~ N(0, 1) (docs/method.md §3.2), float32 on the generator's device.

    Drawn and squashed in float64, then rounded to float32, like the official scipy path. The
    official code draws z from NumPy's unseeded global RNG; a torch.Generator makes runs seedable.
    """
    device = generator.device if generator is not None else None
    z = torch.randn(n, generator=generator, dtype=torch.float64, device=device)
    return (1 / (1 + torch.exp(-z))).float()


def phase_times(tau: torch.Tensor, delta_t: float):
    """(t_tex, t_sem) at global time tau in [0, 1 + delta_t]."""
    return (tau - delta_t).clamp(min=0.0), tau.clamp(max=1.0)


def async_times(t: torch.Tensor, delta_t: float):
    """(t_tex, t_sem) for base times t in [0, 1]: tau = t·(1 + delta_t), then `phase_times`."""
    return phase_times(t * (1 + delta_t), delta_t)


def model_time(t_tex: torch.Tensor, t_sem: torch.Tensor, delta_t: float):
    """What the model's `t` argument is: the tuple (t_tex, t_sem), or one tensor when synchronous."""
    return (t_tex, t_sem) if delta_t > 0 else t_sem


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


def repa_loss(proj: torch.Tensor, target: torch.Tensor, mode: str = "cos") -> torch.Tensor:
    """Per-sample REPA alignment of projected tokens with encoder tokens, both [B, T, D].

    cos: mean over tokens of 1 - cos(target, proj) over features; mse: mean over tokens × features;
    cos_mse: (cos + mse) / 2.
    """
    if proj.shape != target.shape:
        raise ValueError(f"REPA tokens {list(proj.shape)} and target {list(target.shape)} differ in shape")
    if mode not in REPA_MODES:
        raise ValueError(f"repa_mode must be one of {REPA_MODES}, got {mode!r}")
    if mode == "mse":
        return _per_sample_mean((target - proj) ** 2)
    cos = _per_sample_mean(1 - F.cosine_similarity(target, proj, dim=-1))
    if mode == "cos":
        return cos
    return (cos + _per_sample_mean((target - proj) ** 2)) / 2


def training_losses(
    model,
    x1: torch.Tensor,
    y: torch.Tensor,
    *,
    delta_t: float,
    semantic_chans: int,
    semantic_weight: float = 2.0,
    use_cosine_loss: bool = True,
    repa_target: torch.Tensor | None = None,
    repa_weight: float = 1.0,
    repa_mode: str = "cos",
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    """SFD training losses for a batch of normalised latents x1 [B, C, H, W] (docs/method.md §3.4).

    Returns per-sample [B] terms `mse` (squared error averaged over all elements, the last
    `semantic_chans` channels weighted by `semantic_weight`), `cos` (1 - cosine over channels,
    averaged over locations; when `use_cosine_loss`) and `repa` (× repa_weight; when `repa_target`
    [B, T, D] is given, and then the model must return (velocity, repa_tokens)); `total`, the sum
    of their batch means; and the times `t`, `t_tex`, `t_sem` [B].

    `noise` (x0) and `t` default to draws from `generator` (noise first, then t, the official
    order); without a generator the noise comes from torch's default RNG on x1's device.
    """
    batch, channels = x1.shape[:2]
    check_schedule(delta_t, semantic_chans, channels)
    if repa_mode not in REPA_MODES:
        raise ValueError(f"repa_mode must be one of {REPA_MODES}, got {repa_mode!r}")
    if noise is None:
        if generator is None:
            noise = torch.randn_like(x1)
        else:
            noise = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=generator.device)
    if noise.shape != x1.shape:
        raise ValueError(f"noise shape {list(noise.shape)} differs from x1 shape {list(x1.shape)}")
    noise = noise.to(x1)
    if t is None:
        t = sample_logit_normal(batch, generator)
    if t.shape != (batch,):
        raise ValueError(f"t must have shape [{batch}], got {list(t.shape)}")
    t = t.to(x1)

    t_tex, t_sem = async_times(t, delta_t)
    split = channels - semantic_chans
    if delta_t > 0:
        xt_tex, u_tex = interpolate(t_tex, noise[:, :split], x1[:, :split])
        xt_sem, u_sem = interpolate(t_sem, noise[:, split:], x1[:, split:])
        xt, u = torch.cat([xt_tex, xt_sem], dim=1), torch.cat([u_tex, u_sem], dim=1)
    else:
        xt, u = interpolate(t, noise, x1)
    out = model(xt, model_time(t_tex, t_sem, delta_t), y)

    if repa_target is not None:
        if not isinstance(out, tuple):
            raise ValueError("repa_target was given but the model returned no REPA tokens (use_repa off?)")
        v, tokens = out
    elif isinstance(out, tuple):
        raise ValueError("the model returned REPA tokens but no repa_target was given")
    else:
        v = out
    if v.shape != x1.shape:
        raise ValueError(f"model output {list(v.shape)} differs from input shape {list(x1.shape)}")

    sq = (v - u) ** 2
    if semantic_chans > 0:
        sq = torch.cat([sq[:, :split], sq[:, split:] * semantic_weight], dim=1)
    terms = {"mse": _per_sample_mean(sq)}
    if use_cosine_loss:
        terms["cos"] = _per_sample_mean(1 - F.cosine_similarity(v, u, dim=1))
    if repa_target is not None:
        terms["repa"] = repa_loss(tokens, repa_target.to(tokens.device), repa_mode) * repa_weight
    total = sum(term.mean() for term in terms.values())
    return {**terms, "total": total, "t": t, "t_tex": t_tex, "t_sem": t_sem}
