"""Small real inputs for the engine tests (test_train.py, test_generate.py): a tiny latent dataset
in the extraction format, a tiny texture VAE and a tiny SFD DiT experiment."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sfd.config import validate
from sfd.io import is_temp

# LightningDiT-P/1 with every SFD switch on, on a 4x4 grid of 4 texture + 4 semantic channels,
# REPA onto 16-wide tokens after block 1.
TINY_MODEL = {
    "model_type": "LightningDiT-P/1",
    "in_chans": 8,
    "semantic_chans": 4,
    "semfirst_delta_t": 0.3,
    "semantic_weight": 2.0,
    "use_qknorm": True,
    "use_swiglu": True,
    "use_rope": True,
    "use_rmsnorm": True,
    "use_repa": True,
    "repa_out_dim": 16,
    "repa_hidden_dim": 32,
    "repa_feat_depth": 1,
}
NUM_ITEMS, NUM_CLASSES, GRID, TOKENS = 40, 4, 4, 16
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # for subprocesses


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread while the engine tests run: the tiny models gain nothing from more,
    and on a loaded 2-core machine two spinning threads make each step 20x slower. Subprocesses
    get OMP_NUM_THREADS=1 (`ENV`) for the same reason, which also keeps 1- and 2-process runs
    on the same kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_experiment(train: dict | None = None, sampling: dict | None = None) -> dict:
    """Eager (compile off): torch.compile costs ~1 min per process on this CPU; tests/test_speed.py
    checks the compiled path."""
    return {
        "name": "tiny",
        "seed": 3,
        "device": "cpu",
        "data": {"num_classes": NUM_CLASSES},
        "models": {
            "tiny": {
                "model": copy.deepcopy(TINY_MODEL),
                "train": {
                    "global_batch_size": 16,
                    "lr": 5e-4,
                    "ema_decay": 0.9,
                    "budgets": [4],
                    "ckpt_every": 2,
                    "log_every": 1,
                    "num_workers": 0,
                    "mixed_precision": "bf16",
                    "compile": False,
                    **(train or {}),
                },
            }
        },
        "sampling": {
            "num_samples": 24,
            "batch_size": 4,
            "shard_size": 8,
            "compile": False,
            **(sampling or {}),
        },
    }


def make_latents(path: Path) -> Path:
    """NUM_ITEMS composite latents (+ flipped copies, REPA tokens, labels) and their statistics,
    written with the extraction code's own shard writer."""
    from sfd.latents import compute_stats, write_index, write_shard

    g = torch.Generator().manual_seed(0)
    tex = torch.randn(NUM_ITEMS, 4, GRID, GRID, generator=g) * 2 + 1
    sem = torch.randn(NUM_ITEMS, 4, GRID, GRID, generator=g) * 0.5 - 1
    shard = {
        "latents": tex,
        "latents_flip": tex.flip(-1),
        "latents_sv": sem,
        "latents_sv_flip": sem.flip(-1),
        "feats": torch.randn(NUM_ITEMS, TOKENS, 16, generator=g).half(),
        "feats_flip": torch.randn(NUM_ITEMS, TOKENS, 16, generator=g).half(),
        "labels": torch.arange(NUM_ITEMS) % NUM_CLASSES,
    }
    write_shard(path, 0, shard)
    write_index(path)
    compute_stats(path, samples=NUM_ITEMS, seed=0)
    return path


def make_texture_vae(path: Path) -> Path:
    """A randomly initialised f4 texture VAE with 4 latent channels (decodes 4x4 -> 16x16 images)."""
    from sfd.tokenizers import TextureVAE, save_texture_vae

    torch.manual_seed(0)
    arch = {
        "ch": 32,
        "ch_mult": [1, 1, 1],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "z_channels": 4,
        "resolution": 16,
    }
    save_texture_vae(TextureVAE(arch), path)
    return path


def train_tiny(cfg_path: Path, latents: Path, run_dir: Path, until: int) -> Path:
    import yaml

    from sfd.train import train

    cfg = validate(yaml.safe_load(Path(cfg_path).read_text()), "experiment")
    assert train(cfg, "tiny", latents, run_dir, until_step=until) == 0
    return run_dir


def plant_leftovers(directory: Path, target: str) -> list[Path]:
    """The temporary files a run killed while saving `target` leaves: a real one (a child process
    SIGKILLed inside atomic_path) and one named as safetensors names its own. Returns every
    temporary file now in `directory` (a run killed at random may have left one of its own)."""
    before = {p for p in directory.iterdir() if is_temp(p)}
    code = (
        f"import os, signal; from sfd.io import atomic_path\n"
        f"with atomic_path({str(directory / target)!r}) as tmp:\n"
        f"    tmp.write_bytes(b'half a file')\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code], env={**ENV, "PYTHONPATH": os.pathsep.join(sys.path)})
    safetensors_tmp = directory / ".tmpAb12Cd"
    safetensors_tmp.write_bytes(b"torn")
    left = sorted(p for p in directory.iterdir() if is_temp(p))
    assert len(set(left) - before) == 2, left
    return left


def hidden_files(root: Path) -> list[str]:
    """Hidden files anywhere under `root` (temporary files, locks): none may survive a finished run."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))
