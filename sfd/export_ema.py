"""`sfd export-ema`: the EMA of a full training checkpoint in the released layout {'ema': state_dict}.

Training already exports ema/{step:07d}.pt at every budget and `keep_steps` entry; this command
serves any other checkpoint (e.g. a convergence-curve point at a `ckpt_every` multiple).
"""

from pathlib import Path

from sfd.io import torch_save
from sfd.train import read_checkpoint


def export_ema(ckpt: Path, out: Path) -> int:
    """Write {'ema': ...} of `ckpt` to `out`; returns the checkpoint's step."""
    state = read_checkpoint(ckpt)
    torch_save({"ema": state["ema"]}, out)
    return state["step"]


def add_arguments(parser) -> None:
    parser.add_argument(
        "--ckpt", required=True, type=Path, help="full training checkpoint (checkpoints/NNNNNNN.pt)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output EMA file")


def main(args) -> int:
    step = export_ema(args.ckpt, args.out)
    print(f"wrote the EMA of step {step} to {args.out}")
    return 0
