"""The docs name what the code has: each list in README.md and docs/*.md that can drift from the
code or the configs is compared with its source here, so a rename or a dropped run fails a test."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

from sfd.cli import COMMANDS
from sfd.config import schema
from sfd.models.sizes import MODEL_SIZES

ROOT = Path(__file__).resolve().parents[1]


def read(name: str) -> str:
    return (ROOT / name).read_text()


def table_row(doc: str, first_cell: str) -> list[str]:
    """The cells of the markdown table row of `doc` whose first cell starts with `first_cell`."""
    for line in read(doc).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith(first_cell):
            return cells
    raise AssertionError(f"{doc}: no table row starting with {first_cell!r}")


def delta_ts(cfg: dict, table: str) -> list[float]:
    """The Δt of every run of an experiment's table, sorted."""
    runs = [row["run"] for row in cfg["tables"][table]["rows"]]
    return sorted(cfg["models"][cfg["runs"][run]["model"]]["model"]["semfirst_delta_t"] for run in runs)


def test_every_subcommand_is_mentioned_in_the_readme_or_the_workflow_doc():
    text = read("README.md") + read("docs/workflow.md")
    missing = [name for name in COMMANDS if not re.search(rf"\bsfd {re.escape(name)}(?![\w-])", text)]
    assert not missing, f"`sfd` subcommands named nowhere in README.md or docs/workflow.md: {missing}"


def test_delta_t_sweeps_in_the_workflow_doc_match_the_configs():
    _, paper_cell, toy_cell = table_row("docs/workflow.md", "`fig_fid_vs_delta_t")
    toy = [float(v) for v in re.search(r"Δt ([\d., ]+)", toy_cell).group(1).split(",")]
    assert toy == delta_ts(yaml.safe_load(read("config/toy.yaml")), "fig_fid_vs_delta_t")
    grid = re.search(r"\{([\d.]+), ([\d.]+), \.\.\., ([\d.]+)\}", paper_cell)  # {first, second, ..., last}
    first, second, last = (float(v) for v in grid.groups())
    step = second - first
    paper = [round(first + k * step, 10) for k in range(round((last - first) / step) + 1)]
    assert paper == delta_ts(yaml.safe_load(read("config/paper.yaml")), "fig_fid_vs_delta_t")


def test_model_sizes_in_the_readme_and_the_method_doc_match_the_size_table():
    readme = set(re.findall(r"\w+", table_row("README.md", "`sfd/models/`")[1]))
    assert set(MODEL_SIZES) <= readme, f"README.md misses sizes {sorted(set(MODEL_SIZES) - readme)}"
    method = read("docs/method.md")
    section = method[method.index("### 2.6 Sizes") : method.index("### 2.7")]
    rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")][1:]
    documented = {size for cell in rows for size in cell.split(", ")}
    assert documented == set(MODEL_SIZES)


def test_sampling_methods_in_the_readme_match_the_schema():
    row = table_row("README.md", "`sfd/sampling.py`")[1]
    documented = re.search(r"torchdiffeq: ([\w, ]+)\)", row).group(1).split(", ")
    assert documented == schema("sampling")["properties"]["method"]["enum"]


def test_make_reference_imports_neither_tensorflow_nor_torch(tmp_path):
    """README and docs/architecture.md: only `sfd evaluate` and `sfd train-detector` import TensorFlow."""
    code = f"""
import sys, importlib
import numpy as np
module = importlib.import_module({COMMANDS["make-reference"][0]!r})
np.savez({str(tmp_path / "toy.npz")!r}, images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.arange(4),
         class_names=np.array(list("abcd")))
module.make_reference({str(tmp_path / "toy.npz")!r}, 4, {str(tmp_path / "ref.npz")!r})
loaded = [name for name in ("tensorflow", "torch") if name in sys.modules]
assert not loaded, f"sfd make-reference imported {{loaded}}"
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "ref.npz").is_file()


CITING = ["sfd", "tests", "workflow", "config", "benchmarks", "docs", "Snakefile", "README.md"]


def citing_files():
    for entry in CITING:
        path = ROOT / entry
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        keep = {"", ".py", ".smk", ".yaml", ".md"}
        yield from (p for p in files if p.suffix in keep and p.name != "method.md" and p != Path(__file__))


def test_method_citations_resolve_to_sections_of_docs_method():
    method = read("docs/method.md")
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", method, re.M))
    pitfalls = method[method.index("## 7. Pitfalls") :]
    sections |= {f"7.{n}" for n in re.findall(r"^(\d+)\. \*\*", pitfalls, re.M)}
    equations = set(re.findall(r"\(eq\. (\d+\.\d+)\)", method))
    cited, unresolved = 0, []
    for path in citing_files():
        for cite in re.findall(r"docs/method\.md((?:,? ?(?:§|eq\. )[\d.–-]+)+)", path.read_text()):
            for kind, number in re.findall(r"(§|eq\. )(\d+(?:\.\d+)?)", cite):
                cited += 1
                if number not in (sections if kind == "§" else equations):
                    unresolved.append(f"{path.relative_to(ROOT)}: docs/method.md {kind}{number}")
    assert cited > 50 and not unresolved, (cited, unresolved)


def test_no_comment_cites_a_document_outside_the_repository():
    stale = re.compile(r"\b[Ss]pec §|\bpitfalls? \d|sfd-method\.md|shared/spec")
    hits = [str(p.relative_to(ROOT)) for p in citing_files() if stale.search(p.read_text())]
    assert not hits, f"cite docs/method.md or the paper instead: {hits}"
