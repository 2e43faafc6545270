# The experiment, checked before any DAG is built, and the helpers every rule file uses.

from sfd.workflow import matrix

# Validation fills defaults and cross-checks every reference between sections; an unknown key or a
# dangling reference stops here with a message naming the file and the key.
EXP = matrix.load(config["experiment"])
CONFIG = EXP.path
E = EXP.root
DEVICE = config["device"]
if DEVICE is not None and EXP.cfg["device"] not in ("auto", DEVICE):
    raise matrix.ConfigError(
        f"{CONFIG}: device: the profile runs jobs on {DEVICE!r}, the experiment allows only "
        f"{EXP.cfg['device']!r} (set device: auto there, or run with --config device=...)"
    )


wildcard_constraints:
    step=r"\d{7}",
    model=r"[A-Za-z0-9_]+",
    run=r"[A-Za-z0-9_]+",
    table=r"[A-Za-z0-9_]+",
    split=r"train|val",


def logfile(rule_name, pattern=""):
    return f"logs/{EXP.name}/{rule_name}{pattern}.log"


def benchfile(rule_name, pattern=""):
    return f"benchmarks/out/{EXP.name}/{rule_name}{pattern}.tsv"


def cfg(*keys):
    """Rule params: the config values a command reads (`cfg`, Snakemake's rerun trigger) and their
    dotted keys (`cfg_keys`, handed to `sfd launch` and turned into DVC params by `sfd dvc-yaml`).
    A key may be a function of the wildcards returning a key or a list of keys."""

    def resolve(wildcards):
        out = []
        for key in keys:
            key = key(wildcards) if callable(key) else key
            out += [key] if isinstance(key, str) else key
        return out

    return {
        "cfg": lambda w: EXP.params(*resolve(w)),
        "cfg_keys": lambda w: " ".join(resolve(w)),
    }


def device_resources(devices=None, nodes=1):
    """Resources of a job that runs on accelerators: `devices` per node (default: all of
    `devices_per_node`; 1 for single-process commands), and the SLURM executor's MPI path when the
    job spans nodes (`sfd launch` then starts one torchrun per node)."""
    n = devices or config["devices_per_node"]
    res = {}
    if DEVICE == "cuda":
        res = {"gpu": n} if nodes == 1 else {"gres": f"gpu:{n}", "tasks_per_gpu": 0}
    elif DEVICE == "npu":
        res = {"gres": f"npu:{n}"}
    if nodes > 1:
        res.update(nodes=nodes, tasks=nodes, mpi="srun")
    return res


def launch(devices=None):
    """`sfd launch` in front of a resumable command: guard its state directory (params.state)
    against results of another configuration, and fan it out over the job's devices."""
    npus = (devices or config["devices_per_node"]) if DEVICE == "npu" else 0
    return (
        "sfd launch" + (f" --npus {npus}" if npus else "")
        + " --state {params.state} --config {CONFIG} --keys {params.cfg_keys} --inputs {input} -- "
    )


def all_targets(wildcards):
    targets = [f"results/{t}.csv" for t in EXP.cfg["tables"]]
    targets += [f"results/{t}.png" for t, table in EXP.cfg["tables"].items() if table["plot"] != "none"]
    return targets
