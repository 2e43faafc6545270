"""`sfd downloads`: every file the experiment downloads, where from, where to, and its size.

Each download is a local rule (fetch_imagenet, fetch_tokenizer, fetch_encoder, fetch_eval_assets,
fetch_released_stats, fetch_released): it runs on the submitting (login) node, and the compute jobs
run with the Hub offline (the SLURM profiles' `precommand`). This lists those files from the
experiment file exactly as the rules name them, before anything is submitted. A size comes from
the Hub's file metadata or the server's Content-Length when online, else from the experiment's
`download_sizes`, keyed by the source printed here (hf://<repo>/<path> or the URL).
"""

import os
import urllib.request
from dataclasses import dataclass
from typing import NamedTuple

from sfd.workflow.matrix import Experiment, load


@dataclass(frozen=True)
class Download:
    """One file a local rule fetches: `out` is that rule's output (a directory for ImageNet)."""

    rule: str
    source: str
    out: str
    hub: tuple[str, str, str | None, str] | None = None  # (repo_id, filename, revision, repo_type)


def hub_file(rule: str, out: str, repo_id: str, filename: str, revision=None, repo_type="model") -> Download:
    prefix = "datasets/" if repo_type == "dataset" else ""
    return Download(rule, f"hf://{prefix}{repo_id}/{filename}", out, (repo_id, filename, revision, repo_type))


def planned(exp: Experiment) -> list[Download]:
    """The files the fetch rules of `exp` can download, with the rule outputs they land in (the
    paths of workflow/rules/*.smk; tests/test_downloads.py checks them against the DAG)."""
    cfg, root = exp.cfg, exp.root
    out = []
    if cfg["data"]["source"] == "hf":
        hf = cfg["data"]["hf"]
        for split, files in hf["files"].items():
            out += [
                hub_file(
                    "fetch_imagenet", f"{root}/data/{split}", hf["repo_id"], f, hf["revision"], "dataset"
                )
                for f in files
            ]
    pretrained = cfg["texture_vae"]["pretrained"]
    if pretrained is not None:
        out.append(
            hub_file(
                "fetch_tokenizer",
                f"{root}/tokenizer/texture_vae.pt",
                pretrained["repo_id"],
                pretrained["filename"],
                pretrained["revision"],
                pretrained["repo_type"],
            )
        )
    encoder = cfg["semantic_encoder"]
    if encoder["pretrained"]:
        weights = encoder["weights"]
        suffix = os.path.splitext(weights["filename"])[1]
        out.append(
            hub_file(
                "fetch_encoder",
                f"{root}/semantic/encoder{suffix}",
                weights["repo_id"],
                weights["filename"],
                weights["revision"],
                weights["repo_type"],
            )
        )
    if cfg["evaluation"]["detector"] == "inception":
        for asset in cfg["evaluation"]["assets"].values():
            url = asset["url"]
            out.append(Download("fetch_eval_assets", url, f"{root}/eval/{os.path.basename(url)}"))
    if exp.released_weights:
        stats = cfg["latents"]["released_stats"]
        for key in ("latents_stats", "latents_sv_stats"):
            out.append(
                hub_file(
                    "fetch_released_stats",
                    f"{root}/released/stats/{key}.pt",
                    stats["repo_id"],
                    stats[key],
                    stats["revision"],
                    stats["repo_type"],
                )
            )
        released = cfg["released"]
        for model, step in exp.released_weights:
            filename = released["checkpoints"][model].format(step=step)
            out.append(
                hub_file(
                    "fetch_released",
                    exp.ema(model, step, "released"),
                    released["repo_id"],
                    filename,
                    released["revision"],
                )
            )
    return out


def remote_size(download: Download, timeout: float = 20.0) -> int | None:
    """The size the server reports (Hub metadata, or an HTTP HEAD), None when it cannot be asked."""
    try:
        if download.hub is None:
            request = urllib.request.Request(download.source, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
            return int(length) if length is not None else None
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        repo_id, filename, revision, repo_type = download.hub
        endpoint = os.environ.get("HF_ENDPOINT") or None
        url = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=endpoint)
        return get_hf_file_metadata(
            url, token=os.environ.get("HF_TOKEN") or None, endpoint=endpoint, timeout=timeout
        ).size
    except Exception:  # offline, gated without a token, not found: the configured size stands in
        return None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


class Sized(NamedTuple):
    """A planned download with its size, where the number comes from (hub / server / config /
    estimate / unknown) and, for an estimate, its basis."""

    download: Download
    size: int | None
    origin: str
    basis: str | None = None


def sized(downloads: list[Download], configured: dict, online: bool) -> list[Sized]:
    rows = []
    for d in downloads:
        size = remote_size(d) if online else None
        entry = configured.get(d.source)
        if size is not None:
            rows.append(Sized(d, size, "hub" if d.hub else "server"))
        elif isinstance(entry, dict):
            rows.append(Sized(d, entry["bytes"], "estimate", entry["basis"]))
        elif entry is not None:
            rows.append(Sized(d, entry, "config"))
        else:
            rows.append(Sized(d, None, "unknown"))
    return rows


def human(size: int | None) -> str:
    if size is None:
        return "?"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def report(rows: list[Sized]) -> str:
    """One line per file, then the total (and how many sizes are unknown or estimated), then the
    basis of each estimate."""
    lines = [f"{'rule':<21} {'size':>10}  {'from':<8} source -> output"]
    for d, size, origin, _ in rows:
        lines.append(f"{d.rule:<21} {human(size):>10}  {origin:<8} {d.source} -> {d.out}")
    total = sum(r.size for r in rows if r.size is not None)
    unknown = sum(r.size is None for r in rows)
    estimated = [r for r in rows if r.origin == "estimate"]
    tail = f", {len(estimated)} of them estimated" if estimated else ""
    tail += f" (+ {unknown} file(s) of unknown size: set download_sizes)" if unknown else ""
    lines.append(f"total: {len(rows)} file(s), {human(total)}{tail}")
    bases = {}
    for r in estimated:
        bases.setdefault(r.basis, []).append(r.download.source.rsplit("/", 1)[-1])
    lines += [f"estimated {', '.join(names)}: {basis}" for basis, names in bases.items()]
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument(
        "--offline",
        action="store_true",
        help="do not ask the Hub/servers for sizes (implied by HF_HUB_OFFLINE=1)",
    )


def main(args) -> int:
    exp = load(args.config)
    print(report(sized(planned(exp), exp.cfg["download_sizes"], online=not (args.offline or hub_offline()))))
    return 0
