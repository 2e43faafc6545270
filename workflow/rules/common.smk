# The experiment, checked before any DAG is built; artifact paths; the helpers the rules use.

import os

from sfd.workflow import matrix

# Validation fills defaults and cross-checks every reference between sections; an unknown key or a
# dangling reference stops here with a message naming the file and the key.
EXP = matrix.load(config["experiment"])
E = EXP.root
DEVICE = config["device"]
if DEVICE is not None and EXP.cfg["device"] not in ("auto", DEVICE):
    raise matrix.ConfigError(
        f"{EXP.path}: device: the profile runs jobs on {DEVICE!r}, the experiment allows only "
        f"{EXP.cfg['device']!r} (set device: auto there, or run with --config device=...)"
    )


wildcard_constraints:
    step=r"\d{7}",
    model=r"[A-Za-z0-9_]+",
    run=r"[A-Za-z0-9_]+",
    table=r"[A-Za-z0-9_]+",
    split=r"train|val",


# ----------------------------------------------------------------------------
# Artifacts whose producer depends on the experiment (trained here or downloaded).

DATA = EXP.cfg["data"]
TEXTURE_VAE = f"{E}/tokenizer/texture_vae.pt"
ENCODER_WEIGHTS = (
    EXP.cfg["semantic_encoder"]["weights"] if EXP.cfg["semantic_encoder"]["pretrained"] else None
)
if EXP.cfg["semantic_encoder"]["pretrained"] and ENCODER_WEIGHTS is None:
    raise matrix.ConfigError(
        f"{EXP.path}: semantic_encoder.weights: null, but pretrained is true; name the Hub file"
    )
ENCODER = (
    f"{E}/semantic/encoder{os.path.splitext(ENCODER_WEIGHTS['filename'])[1]}"
    if ENCODER_WEIGHTS
    else f"{E}/semantic/encoder.pt"
)
FEATURES = f"{E}/semantic/features/index.json"
SEMVAE = f"{E}/semantic/semvae.pt"
LATENTS = f"{E}/latents/index.json"
STATS = [f"{E}/latents/latents_stats.pt", f"{E}/latents/latents_sv_stats.pt"]
RELEASED_STATS = [f"{E}/released/stats/latents_stats.pt", f"{E}/released/stats/latents_sv_stats.pt"]
EVAL = EXP.cfg["evaluation"]
if EVAL["detector"] == "inception":
    ASSETS = {name: f"{E}/eval/{os.path.basename(a['url'])}" for name, a in EVAL["assets"].items()}
    DETECTOR, REFERENCE = ASSETS["inception"], ASSETS["reference"]
else:
    DETECTOR, REFERENCE = f"{E}/eval/detector.pb", f"{E}/eval/reference.npz"


def data_path(split):
    """The image set of a split as `sfd` commands take it: a toy npz or a class folder."""
    if DATA["source"] == "toy":
        return f"{E}/data/{split}.npz"
    if DATA["source"] == "hf":
        return f"{E}/data/{split}"
    return f"{DATA['folder']}/{split}"


# ----------------------------------------------------------------------------
# Rule helpers.


def logfile(*parts):
    return os.path.join("logs", EXP.name, *parts) + ".log"


def benchfile(*parts):
    return os.path.join("benchmarks", "out", EXP.name, *parts) + ".tsv"


def reads(command, **names):
    """Rule params of a job of `sfd <command>`, from the keys that command declares it reads
    (READS in its module, sfd/reads.py), placeholders filled from the job's wildcards and `names`:
    their values (`cfg`: Snakemake's params rerun-trigger sees exactly these change), the dotted
    keys (`cfg_keys`: for `sfd launch`, and DVC params in `sfd dvc-yaml`) and the file itself."""

    def keys(wildcards):
        return EXP.reads(command, **dict(wildcards.items()), **names)

    return {
        "experiment": EXP.path,
        "cfg": lambda w: EXP.params(*keys(w)),
        "cfg_keys": lambda w: " ".join(keys(w)),
    }


# Scheduler priorities, for when jobs wait for cores (a laptop, a busy partition): everything up
# to the latents lies on every path to a table; then training, the costliest model first (its
# chain is the critical path); then sampling, costliest first. The detector, the reference, the
# evaluations and the tables keep priority 0: they are short and lead to nothing else.
PREPARE_PRIORITY = 1000


def train_priority(wildcards):
    return 500 + EXP.priority(wildcards.model)


def sample_priority(wildcards):
    return 100 + EXP.priority(EXP.run(wildcards.run)["model"])


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
        "sfd launch"
        + (f" --npus {npus}" if npus else "")
        + " --state {params.state} --config {params.experiment} --keys {params.cfg_keys}"
        " --inputs {input} -- "
    )


def parent(name, levels=1):
    """A params function: the directory `levels` above a file of the job, named by its input or
    output key, or 'input' / 'output' for the first one."""

    def directory(wildcards, input, output):
        if name in ("input", "output"):
            path = (input if name == "input" else output)[0]
        else:
            path = getattr(output if name in output.keys() else input, name)
            path = path[0] if isinstance(path, list) else path
        for _ in range(levels):
            path = os.path.dirname(path)
        return path

    return directory


def option(flag, name):
    """A params function: `flag <input file name>` when the job has that input, else nothing."""

    def render(wildcards, input):
        return f"{flag} {getattr(input, name)}" if name in input.keys() else ""

    return render


def encoder_input():
    """The encoder weights: trained here, or fetched on the login node (compute jobs stay offline)."""
    return {"encoder": ENCODER}


def train_inputs(wildcards):
    inputs = {"latents": LATENTS, "stats": STATS}
    prev = EXP.previous_step(wildcards.model, int(wildcards.step))
    if prev is not None:
        inputs["init"] = EXP.checkpoint(wildcards.model, prev)
    return inputs


def sample_inputs(wildcards):
    """EMA weights (trained here or released), the AutoGuidance model's, and what decodes them."""
    spec = EXP.run(wildcards.run)
    source = spec["source"]
    inputs = {
        "ckpt": EXP.ema(spec["model"], spec["step"], source),
        "texture_vae": TEXTURE_VAE,
        "stats": RELEASED_STATS if source == "released" else STATS,
    }
    if spec["guidance"]["kind"] == "autoguidance":
        inputs["guide"] = EXP.ema(spec["guidance"]["model"], spec["guidance"]["step"], source)
    return inputs


def table_metrics(wildcards):
    return [f"{E}/metrics/{run}.json" for run in EXP.table_runs(wildcards.table)]


def replication_metrics(wildcards):
    return [f"{E}/metrics/{run}.json" for run in EXP.replication_runs()]


def all_targets(wildcards):
    tables = EXP.cfg["tables"]
    return [f"results/{t}.csv" for t in tables] + [
        f"results/{t}.png" for t, table in tables.items() if table["plot"] != "none"
    ]


def released_targets(wildcards):
    return [
        f"results/{name}.csv"
        for name in EXP.cfg["tables"]
        if all(EXP.run(run)["source"] == "released" for run in EXP.table_runs(name))
    ]
