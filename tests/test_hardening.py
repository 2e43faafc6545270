"""Hardening (issue 11): umask modes, full disk, unwritable outputs, temporary files of killed runs,
one lock per output directory, a table of bad inputs that each get one line, exit 2 and leave every
file as it was, and `sfd sample` / `sfd train` SIGKILLed at seeded random moments. The other
resumable commands' kill-and-resume tests (test_latents, test_semantic, test_semvae) also plant a
kill-during-save's temporary files and a torn shard or checkpoint, and check that none survive."""

import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from engine_fixtures import (
    ENV,
    make_latents,
    make_texture_vae,
    plant_leftovers,  # noqa: F401
    tiny_experiment,
    train_tiny,
)

from sfd import cli
from sfd import io as sio
from sfd.io import LockedError, OutputError, atomic_path, directory_lock, sweep_temps, torch_save, write_json


@pytest.fixture(autouse=True)
def keep_pytest_logging():
    """`cli.main` sets up logging for a command (force=True): give pytest its handlers back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def tree(root: Path) -> dict:
    """{relative path: (size, mtime_ns) of a file, None for a folder} of everything under `root`."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


# ----------------------------------------------------------------------------
# sfd.io: modes, full disk, unwritable outputs, temporary files, locks.


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json({"a": 1}, tmp_path / "m.json")
        with atomic_path(tmp_path / "s.npz") as tmp:
            np.savez(tmp, x=np.zeros(3))
        torch_save({"w": torch.zeros(2)}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == dict.fromkeys(
        ["m.json", "s.npz", "c.pt"], mode
    )


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_is_one_error_naming_the_file_and_leaves_the_old_file(tmp_path, monkeypatch):
    write_json({"old": True}, tmp_path / "m.json")
    monkeypatch.setattr(os, "fsync", _enospc)  # e.g. NFS reports ENOSPC at fsync
    with pytest.raises(OutputError, match=r"m\.json: disk full while writing"):
        write_json({"new": True}, tmp_path / "m.json")
    monkeypatch.undo()
    with pytest.raises(OutputError, match=r"s\.safetensors: disk full"):  # safetensors' Rust error text
        with atomic_path(tmp_path / "s.safetensors"):
            raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    class FullFile:  # torch.save reports a failed write as a RuntimeError without the errno
        def __init__(self, f):
            self.f = f

        def write(self, data):
            _enospc()

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FullFile(real_fdopen(fd, mode)))
    with pytest.raises(OutputError, match=r"c\.pt: disk full"):
        torch_save({"w": torch.zeros(1000)}, tmp_path / "c.pt")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
    assert json.loads((tmp_path / "m.json").read_text()) == {"old": True}


def test_unwritable_output_is_one_error_naming_the_file(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(sio.tempfile, "mkstemp", denied)
    with pytest.raises(OutputError, match=r"m\.json: cannot write here \(Permission denied\)"):
        write_json({}, tmp_path / "m.json")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="file/m.json: cannot write here"):
        sio.require_writable(tmp_path / "file" / "m.json")
    with pytest.raises(OutputError, match="is a directory"):
        sio.require_writable(tmp_path)
    sio.require_writable(tmp_path, directory=True)
    with pytest.raises(OutputError, match="file/cache: cannot write here"):
        sio.require_writable(tmp_path / "file" / "cache", directory=True)


def test_sweep_removes_the_temporary_files_of_killed_writes_only(tmp_path):
    left = plant_leftovers(tmp_path, "shard-00001.npz")
    keep = ["shard-00000.npz", ".sfd-state.json", ".tmp", "x.tmp", ".tmpTooLong1"]
    for name in keep:
        (tmp_path / name).write_bytes(b"final")
    assert sweep_temps(tmp_path, "other.npz") == []  # shared directories: only the named target's
    assert sorted(sweep_temps(tmp_path)) == left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


HOLDER = """
import sys, time
from sfd.io import directory_lock
with directory_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_lock_refuses_a_second_run_naming_the_holder_and_a_killed_holder_never_blocks(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)],
        stdout=subprocess.PIPE,
        text=True,
        env={**ENV, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=rf"run: in use by pid {holder.pid} on .*; wait for that run"):
            with directory_lock(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert (run / ".sfd-lock").exists()  # the killed holder's file stays, but its flock is gone
    with directory_lock(run) as lock:
        assert f"pid {os.getpid()} " in lock.read_text()
    assert list(run.iterdir()) == []


def test_lock_of_a_failed_run_removes_the_directories_it_created(tmp_path):
    with pytest.raises(KeyError):
        with directory_lock(tmp_path / "a" / "b"):
            raise KeyError("bad input found after locking")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "c").write_text("")
    with pytest.raises(OutputError, match="cannot write here"):
        with directory_lock(tmp_path / "c" / "d"):
            pass


# ----------------------------------------------------------------------------
# Bad inputs through the CLI: exit 2, one line naming the file, nothing created or changed.


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from sfd.data.toy import save_npz

    root = tmp_path_factory.mktemp("hard")
    latents = make_latents(root / "latents")
    cfg = tiny_experiment(sampling={"method": "euler", "num_steps": 2})
    cfg["data"]["image_size"] = 16
    cfg["models"]["other"] = {
        **cfg["models"]["tiny"],
        "model": {**cfg["models"]["tiny"]["model"], "model_type": "LightningDiT-T/1"},
    }
    (root / "exp.yaml").write_text(yaml.safe_dump(cfg))
    train_tiny(root / "exp.yaml", latents, root / "run", until=2)
    make_texture_vae(root / "vae.pt")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    save_npz(root / "toy.npz", images, np.arange(8) % 4, list("abcd"))
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "trunc.pt").write_bytes((root / "run" / "ema" / "0000002.pt").read_bytes()[:300])
    (corrupt / "trunc.npz").write_bytes((root / "toy.npz").read_bytes()[:500])
    (corrupt / "text.pt").write_text("not a checkpoint\n")
    for name in ("no_index", "bad_shard"):
        (corrupt / name).mkdir()
        for p in latents.iterdir():
            if name == "bad_shard" or p.name != "index.json":
                (corrupt / name / p.name).write_bytes(p.read_bytes())
    shard = corrupt / "bad_shard" / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    (corrupt / "samples").mkdir()
    (corrupt / "samples" / "index.json").write_text(
        json.dumps(
            {
                "num_samples": 4,
                "num_classes": 4,
                "image_shape": [16, 16, 3],
                "shards": [{"file": "shard-00000.npz", "start": 0, "stop": 4}],
            }
        )
    )
    (corrupt / "samples" / "shard-00000.npz").write_bytes(b"PK\x03\x04 torn")
    (root / "a_file").write_text("")
    return root


P = Path  # a path under the asset root
SAMPLE = {
    "model": "tiny",
    "ckpt": P("run/ema/0000002.pt"),
    "latents": P("latents"),
    "texture_vae": P("vae.pt"),
    "out": P("out"),
    "num_samples": "8",
}
TRAIN = {"model": "tiny", "latents": P("latents"), "run_dir": P("out"), "until_step": "1"}
EXTRACT = {"data": P("toy.npz"), "texture_vae": P("vae.pt"), "semvae": P("nope.pt"), "out": P("out")}


def _sfd(root: Path, command: str, **flags) -> list[str]:
    """argv of `sfd COMMAND --config exp.yaml --flag value ...`; Path values are taken under `root`."""
    argv = [command, "--config", str(root / "exp.yaml")]
    for flag, value in flags.items():
        argv += [f"--{flag.replace('_', '-')}", str(root / value if isinstance(value, Path) else value)]
    return argv


def _sample_args(root, out, **flags):
    return _sfd(root, "sample", **{**SAMPLE, "out": Path(out), **flags})


BAD_INPUTS = {  # id -> (command, flags, text the one line must hold)
    "sample/truncated-ckpt": (
        "sample",
        {**SAMPLE, "ckpt": P("corrupt/trunc.pt")},
        "trunc.pt: not a readable torch",
    ),
    "sample/text-ckpt": (
        "sample",
        {**SAMPLE, "ckpt": P("corrupt/text.pt")},
        "text.pt: not a readable torch checkpoint (unpickling failed",
    ),
    "sample/ckpt-of-another-size": (
        "sample",
        {**SAMPLE, "model": "other"},
        "0000002.pt (models.other): architecture mismatch",
    ),
    "sample/missing-ckpt": ("sample", {**SAMPLE, "ckpt": P("nope.pt")}, "nope.pt: no such file"),
    "sample/truncated-vae": (
        "sample",
        {**SAMPLE, "texture_vae": P("corrupt/trunc.pt")},
        "trunc.pt: not a readable",
    ),
    "sample/latents-without-stats": (
        "sample",
        {**SAMPLE, "latents": P("corrupt")},
        "latents_stats.pt: missing",
    ),
    "sample/unknown-model": ("sample", {**SAMPLE, "model": "nope"}, "models.nope: no such model"),
    "sample/out-under-a-file": (
        "sample",
        {**SAMPLE, "out": P("a_file/out")},
        "a_file/out: cannot write here",
    ),
    "train/latents-without-index": (
        "train",
        {**TRAIN, "latents": P("corrupt/no_index")},
        "no_index/index.json: missing",
    ),
    "train/corrupt-latent-shard": (
        "train",
        {**TRAIN, "latents": P("corrupt/bad_shard")},
        "bad_shard/shard-00000.safetensors: unreadable shard",
    ),
    "train/missing-latents": ("train", {**TRAIN, "latents": P("nope")}, "nope/index.json: missing"),
    "train/unknown-model": ("train", {**TRAIN, "model": "nope"}, "models.nope"),
    "train/run-dir-under-a-file": (
        "train",
        {**TRAIN, "run_dir": P("a_file/run")},
        "a_file/run: cannot write here",
    ),
    "train-tokenizer/truncated-npz": (
        "train-tokenizer",
        {"data": P("corrupt/trunc.npz"), "out": P("o.pt")},
        "trunc.npz: not a readable npz",
    ),
    "extract-latents/truncated-npz": (
        "extract-latents",
        {**EXTRACT, "data": P("corrupt/trunc.npz")},
        "trunc.npz: not a readable npz",
    ),
    "extract-latents/missing-semvae": ("extract-latents", EXTRACT, "nope.pt: no such file"),
    "extract-features/truncated-encoder": (
        "extract-features",
        {"data": P("toy.npz"), "encoder": P("corrupt/trunc.pt"), "out": P("out")},
        "trunc.pt: not a readable encoder weights file",
    ),
    "train-semvae/features-without-index": (
        "train-semvae",
        {"features": P("corrupt"), "out": P("o.pt")},
        "corrupt/index.json: no features",
    ),
    "latent-stats/latents-without-index": (
        "latent-stats",
        {"latents": P("corrupt/no_index")},
        "no_index/index.json: missing",
    ),
    "pack/no-index": (
        "pack",
        {"samples": P("corrupt"), "out": P("o.npz")},
        "corrupt/index.json: no sample index",
    ),
    "pack/torn-shard": (
        "pack",
        {"samples": P("corrupt/samples"), "out": P("o.npz")},
        "shard-00000.npz: unreadable sample shard",
    ),
    "pack/out-under-a-file": (
        "pack",
        {"samples": P("corrupt/samples"), "out": P("a_file/o.npz")},
        "a_file/o.npz: cannot write here",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(assets, case, capsys):
    command, flags, needle = BAD_INPUTS[case]
    before = tree(assets)
    assert cli.main(_sfd(assets, command, **flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 or not any("Traceback" in line for line in err), err
    line = [x for x in err if x.startswith(f"sfd {case.split('/')[0]}: error: ")]
    assert len(line) == 1 and needle in line[0], err
    assert tree(assets) == before


def test_pack_refuses_a_full_disk_before_writing_and_never_dies_of_sigbus(assets, tmp_path, monkeypatch):
    from sfd.config import validate
    from sfd.generate import sample
    from sfd.pack import pack

    cfg = validate(yaml.safe_load((assets / "exp.yaml").read_text()), "experiment")
    sample(
        cfg,
        "tiny",
        assets / "run" / "ema" / "0000002.pt",
        assets / "latents",
        assets / "vae.pt",
        tmp_path / "s",
        num_samples=8,
    )
    usage = sio.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(sio.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(OutputError, match=r"out\.npz: needs 76\.1 KiB, only 1000 B free"):
        pack(tmp_path / "s", tmp_path / "out" / "out.npz", seed=1, grid=None, rows=1, per_class=1)
    monkeypatch.undo()
    monkeypatch.setattr(os, "posix_fallocate", _enospc)  # the disk fills up after the check
    with pytest.raises(OutputError, match=r"out\.npz: disk full"):
        pack(tmp_path / "s", tmp_path / "out" / "out.npz", seed=1, grid=None, rows=1, per_class=1)
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.undo()
    plant_leftovers(tmp_path / "out", "out.npz")  # a pack killed while staging or writing
    (tmp_path / "out" / ".other.npz.x.sfd-tmp.npz").write_bytes(b"another target's: not ours to sweep")
    pack(tmp_path / "s", tmp_path / "out" / "out.npz", seed=1, grid=None, rows=1, per_class=1)
    # a shared directory: only out.npz's temporary files are pack's to remove
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".other.npz.x.sfd-tmp.npz",
        ".tmpAb12Cd",
        "out.npz",
    ]


# ----------------------------------------------------------------------------
# `sfd sample`: check before writing, and kills at random moments.


def test_sample_with_a_wrong_checkpoint_writes_nothing_and_the_corrected_rerun_works(assets, tmp_path):
    out = tmp_path / "s"
    assert cli.main(_sample_args(assets, out, ckpt=P("corrupt/trunc.pt"))) == 2
    assert not out.exists()
    out.mkdir()
    assert cli.main(_sample_args(assets, out, model="other")) == 2
    assert list(out.iterdir()) == []
    (out / "meta.json").write_text(json.dumps({"seed": 99}))  # an older sfd's: no shard was made with it
    assert cli.main(_sample_args(assets, out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "meta.json", "shard-00000.npz"]


def test_sample_killed_at_random_moments_resumes_bit_equal_with_no_leftovers(assets, tmp_path):
    """SIGKILL at seeded random moments (after a random number of finished shards), plus a torn
    shard and the temporary files of a kill during a save; the rerun redoes what is missing or
    unreadable, and the directory equals an uninterrupted run's, byte for byte."""
    cfg = yaml.safe_load((assets / "exp.yaml").read_text())
    cfg["sampling"].update(num_steps=40, num_samples=40)  # 5 shards, long enough to be killed in
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    reference, out = tmp_path / "reference", tmp_path / "killed"

    def args(where):
        return ["sample", "--config", str(tmp_path / "exp.yaml"), *_sample_args(assets, where)[3:-2]]

    # the reference runs as the killed runs do (a subprocess, one thread): float results depend on the
    # thread count, and the pytest process may run with more
    subprocess.run([sys.executable, "-m", "sfd", *args(reference)], env=ENV, check=True, capture_output=True)
    # the random delay stays under one shard's time and the kills come by the fourth shard, so
    # neither run can finish on a machine faster than this one was when it wrote the reference
    stamps = sorted(p.stat().st_mtime for p in reference.glob("shard-*.npz"))
    shard_seconds = min(b - a for a, b in zip(stamps, stamps[1:]))
    cmd = [sys.executable, "-m", "sfd", *args(out)]
    rng = random.Random(11)
    killed = []
    for _ in range(2):
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shards = min(len(list(out.glob("shard-*.npz"))) + rng.randrange(2), 3)
        while len(list(out.glob("shard-*.npz"))) < shards and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.9 * shard_seconds))
        proc.send_signal(signal.SIGKILL)
        killed.append(proc.wait())
    assert killed == [-signal.SIGKILL] * 2 and not (out / "index.json").exists(), "a run finished unkilled"
    torn = out / "shard-00000.npz"
    torn.write_bytes(torn.read_bytes()[:200])
    left = plant_leftovers(out, "shard-00004.npz")
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "redoing" in done.stderr and f"removed {len(left)} temporary file(s)" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    for path in reference.glob("shard-*.npz"):
        assert path.read_bytes() == (out / path.name).read_bytes(), path.name
    index = {k: v for k, v in json.loads((out / "index.json").read_text()).items() if not k.endswith("_path")}
    assert index == {
        k: v for k, v in json.loads((reference / "index.json").read_text()).items() if not k.endswith("_path")
    }


def test_launch_never_wipes_the_directory_of_a_running_command(tmp_path):
    from sfd.workflow import launch

    state = tmp_path / "run"
    assert launch.prepare_state(state, "a" * 64) is False
    (state / "checkpoint.pt").write_text("partial")
    with directory_lock(state):
        with pytest.raises(LockedError, match="run: in use by pid"):
            launch.prepare_state(state, "b" * 64)
    assert (state / "checkpoint.pt").exists()
    assert launch.prepare_state(state, "b" * 64) is False and list(state.iterdir()) == [state / launch.STAMP]


def test_train_killed_at_random_moments_resumes_bit_equal_with_no_leftovers(assets, tmp_path):
    """`sfd train` SIGKILLed after a random number of checkpoints plus a random delay (so also
    inside a save), twice; the rerun ends at the uninterrupted run's state with nothing else left."""
    from sfd.config import validate
    from sfd.train import train

    cfg = yaml.safe_load((assets / "exp.yaml").read_text())
    cfg["models"]["tiny"]["train"].update(budgets=[30], ckpt_every=2, keep_steps=[])
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    assert train(validate(cfg, "experiment"), "tiny", assets / "latents", tmp_path / "reference") == 0
    run = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "sfd",
        "train",
        "--config",
        str(tmp_path / "exp.yaml"),
        "--model",
        "tiny",
        "--latents",
        str(assets / "latents"),
        "--run-dir",
        str(run),
    ]
    rng = random.Random(5)
    for _ in range(2):
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wanted = len(list(run.glob("checkpoints/*.pt"))) + rng.randrange(1, 4)
        while len(list(run.glob("checkpoints/*.pt"))) < wanted and proc.poll() is None:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the run finished before it was killed"
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = tmp_path / "reference"
    assert tree(run).keys() == tree(reference).keys()  # every final artifact, nothing else
    final = torch.load(run / "checkpoints" / "0000030.pt", weights_only=True)
    expected = torch.load(reference / "checkpoints" / "0000030.pt", weights_only=True)
    for key in ("model", "ema"):
        assert all(torch.equal(final[key][n], t) for n, t in expected[key].items()), key
    assert (run / "ema" / "0000030.pt").read_bytes() == (reference / "ema" / "0000030.pt").read_bytes()
