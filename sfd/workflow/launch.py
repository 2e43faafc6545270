"""`sfd launch`: run one pipeline command on every device of the job's allocation.

Two jobs that Snakemake and DVC cannot do for a resumable command:

1. Device fan-out. One process when the job sees one device (or none: CPU); `torchrun
   --standalone` with one worker per visible GPU/NPU on a single node; on a multi-node SLURM
   allocation (the executor plugin's MPI path: the job script runs once, on the first node)
   `srun` starts one `torchrun` per node, joined by c10d rendezvous on the first node.
   SLURM exports CUDA_VISIBLE_DEVICES for `gpu` GRES. An `npu` GRES is generic to SLURM: the
   plugin submits it as a CPU job, nothing names the devices, and the Ascend runtime would see
   every NPU of the node, so `--npus N` sets ASCEND_RT_VISIBLE_DEVICES=0..N-1 when unset (the
   allocation holds the whole node's N NPUs).

2. Stale state. Training, extraction and sampling resume from partial results in their output
   directory, which Snakemake must therefore not own (it deletes a failed job's outputs). The
   directory is stamped with a fingerprint of the job's configuration values and of its input
   files (path, size, mtime). A job that finds a stamp with another fingerprint (a parameter or
   an upstream artifact changed since) deletes the directory and starts afresh; the same job
   resubmitted after a walltime kill finds its own stamp and resumes.
"""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from sfd.config import ConfigError
from sfd.io import LOCK_NAME, directory_lock, write_json

log = logging.getLogger("sfd.launch")

STAMP = ".sfd-state.json"
RDZV_PORT = 29500


def fingerprint(values: dict, inputs: list[str]) -> str:
    """sha256 over configuration values and the identity (path, size, mtime) of input files."""
    h = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode())
    for path in inputs:
        st = os.stat(path)
        h.update(f"\0{path}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def prepare_state(state: Path, digest: str) -> bool:
    """Make `state` belong to `digest`; returns True when earlier partial results are kept."""
    stamp = state / STAMP
    if state.exists():
        try:
            previous = json.loads(stamp.read_text())["fingerprint"]
        except (OSError, ValueError, KeyError):
            previous = None
        if previous == digest:
            return True
        with directory_lock(state, sweep=()):  # never wipe the directory of a running command
            if any(p.is_file() and p.name != LOCK_NAME for p in state.rglob("*")):  # not just empty dirs
                log.info(
                    "%s holds results of another configuration or input (%s): removing it",
                    state,
                    "no stamp" if previous is None else previous[:12],
                )
            shutil.rmtree(state)
    state.mkdir(parents=True)
    write_json({"fingerprint": digest}, stamp)
    return False


def _visible(env, var: str) -> int:
    value = env.get(var, "").strip()
    return len([d for d in value.split(",") if d]) if value else 0


def _hostnames(nodelist: str) -> list[str]:
    out = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True
    )
    return out.stdout.split()


def command_line(command: list[str], npus: int = 0, env=os.environ) -> list[str]:
    """The process tree for `command`: itself, torchrun on this node, or srun x torchrun."""
    nodes = int(env.get("SLURM_JOB_NUM_NODES", "1")) if "SLURM_JOB_ID" in env else 1
    per_node = max(_visible(env, "CUDA_VISIBLE_DEVICES"), _visible(env, "ASCEND_RT_VISIBLE_DEVICES"), 1)
    if nodes == 1 and per_node == 1:
        return command
    torchrun = ["torchrun", f"--nproc-per-node={per_node}", "--no-python"]
    if nodes == 1:
        return torchrun[:1] + ["--standalone"] + torchrun[1:] + command
    head = _hostnames(env["SLURM_JOB_NODELIST"])[0]
    return [
        "srun",
        f"--nodes={nodes}",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        *torchrun,
        f"--nnodes={nodes}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={head}:{RDZV_PORT}",
        f"--rdzv-id={env['SLURM_JOB_ID']}",
        *command,
    ]


def add_arguments(parser) -> None:
    parser.add_argument(
        "--state", type=Path, default=None, help="resumable output directory to stamp (see module docstring)"
    )
    parser.add_argument("--config", default=None, help="experiment YAML whose --keys are fingerprinted")
    parser.add_argument("--keys", nargs="*", default=[], help="dotted config keys the command reads")
    parser.add_argument("--inputs", nargs="*", default=[], help="input files of the job")
    parser.add_argument(
        "--npus",
        type=int,
        default=0,
        help="NPUs of the allocation per node (ASCEND_RT_VISIBLE_DEVICES when unset)",
    )
    parser.add_argument("command", nargs="+", help="the command, after `--`")


def main(args) -> int:
    from sfd.workflow.matrix import load

    if args.state is not None:
        if args.config is None:
            raise ConfigError("sfd launch: --state needs --config and --keys")
        values = load(args.config).params(*args.keys)
        kept = prepare_state(args.state, fingerprint(values, args.inputs))
        log.info("%s: %s", args.state, "resuming earlier partial results" if kept else "fresh start")
    if args.npus and not os.environ.get("ASCEND_RT_VISIBLE_DEVICES"):
        os.environ["ASCEND_RT_VISIBLE_DEVICES"] = ",".join(map(str, range(args.npus)))
    argv = command_line(args.command, args.npus)
    log.info("exec: %s", " ".join(argv))
    sys.stdout.flush()
    os.execvp(argv[0], argv)
