"""`sfd fetch-eval-assets`: ADM's Inception GraphDef and reference batch, verified and resumable.

The assets are plain https URLs, not Hub repos, but come through the pipeline's one resumable
download (`sfd.transfer.fetch_url`, huggingface_hub's `http_get`): a download goes to
`<name>.part`, an interrupted one is continued with an HTTP Range request on the next run, and the
file appears under its final name (an atomic rename) only after its sha256 checks out. An asset
whose sha256 is null in the config is trusted on first download: its hash is printed and recorded
in `<name>.sha256`, and every later run checks the file against it.
"""

import logging
from pathlib import Path

from sfd.io import sha256, write_text
from sfd.transfer import DownloadError, fetch_url

log = logging.getLogger(__name__)

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = ("evaluation.assets",)


class AssetError(DownloadError):
    """An asset on disk that does not match its recorded hash."""


def asset_filename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def fetch(url: str, out_dir, expected_sha256: str | None = None) -> Path:
    """Make `out_dir/<file name of url>` present and verified; returns its path."""
    out_dir = Path(out_dir)
    dest = out_dir / asset_filename(url)
    record = dest.with_name(dest.name + ".sha256")
    pinned = expected_sha256 or (record.read_text().split()[0] if record.is_file() else None)
    if dest.is_file():
        digest = sha256(dest)
        if pinned is not None and digest != pinned:
            raise AssetError(
                f"{dest}: sha256 {digest} differs from the expected {pinned}; delete it to download again"
            )
        log.info("%s: present%s", dest, "" if pinned is None else ", sha256 verified")
    else:
        log.info("downloading %s -> %s", url, dest)
        digest = fetch_url(url, dest, dest.with_name(dest.name + ".part"), sha256=pinned)
    if pinned is None:
        write_text(f"{digest}  {dest.name}\n", record)
        print(f"{dest.name}: sha256 {digest} (not pinned in the config; recorded in {record.name})")
    return dest


def add_arguments(parser) -> None:
    parser.add_argument(
        "--config", required=True, help="experiment YAML (evaluation.assets: url + sha256 per asset)"
    )
    parser.add_argument("--out-dir", required=True, help="directory to put the assets in")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="fetch only these assets (default: all)")


def main(args) -> int:
    from sfd.config import ConfigError
    from sfd.reads import view

    assets = view(args.config, __name__)["evaluation"]["assets"]
    names = args.only or list(assets)
    unknown = sorted(set(names) - set(assets))
    if unknown:
        raise ConfigError(
            f"{args.config}: evaluation.assets has no {', '.join(unknown)} (it has {', '.join(assets)})"
        )
    for name in names:
        path = fetch(assets[name]["url"], args.out_dir, assets[name]["sha256"])
        log.info("%s: %s", name, path)
    return 0
