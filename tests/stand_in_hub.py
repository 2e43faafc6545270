"""A Hub-like HTTP server on 127.0.0.1 (never the network), and the files the paper experiment
names, made tiny: the stand-in for huggingface.co and ADM's asset host in tests.

`FakeHub` serves `files` (URL path -> bytes) with the headers huggingface_hub expects (ETag,
X-Repo-Commit, Range) and can misbehave (gated repos, dropped connections). `publish_experiment`
fills it with every file an experiment's fetch rules download, under the repo ids and file names
the experiment gives, in the layouts the released files have, sized to the experiment.
"""

import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
import threading

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serves `files` under /<repo>/resolve/<rev>/<path>, records requests, can misbehave."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.gated: set[str] = set()
        self.drop_first_get = False
        self.requests: list[dict] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _lookup(self):
                hub.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "range": self.headers.get("Range"),
                        "auth": self.headers.get("Authorization"),
                    }
                )
                repo = "/".join(self.path.strip("/").split("/")[:2])
                if repo in hub.gated:
                    self._reply(401, {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"})
                    return None
                if self.path not in hub.files:
                    self._reply(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
                    return None
                return hub.files[self.path]

            def _reply(self, status, headers, body=b""):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self):
                data = self._lookup()
                if data is None:
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hub.etags.get(self.path, hashlib.sha256(data).hexdigest())}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()

            def do_GET(self):
                data = self._lookup()
                if data is None:
                    return
                start = (
                    int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                )
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if hub.drop_first_get:
                    hub.drop_first_get = False
                    self.wfile.write(data[start : start + len(data) // 3])
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def gets(self):
        return [r for r in self.requests if r["method"] == "GET"]


# ----------------------------------------------------------------------------
# The experiment's files, tiny, in their released layouts.


def _torch_bytes(obj) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _imagenet_archive(names: list[str], seed: int) -> bytes:
    """A tar.gz of random JPEGs named <image>_<wnid>.JPEG, as the ILSVRC/imagenet-1k archives."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in names:
            jpeg = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
            info = tarfile.TarInfo(name)
            info.size = jpeg.tell()
            tar.addfile(info, io.BytesIO(jpeg.getvalue()))
    return buffer.getvalue()


def _texture_vae_ckpt(arch: dict) -> bytes:
    """The LDM/Lightning layout of ldm-imagenet256-f16d32-50ep.ckpt: `state_dict` with `loss.*`."""
    import torch

    from sfd.tokenizers.texture_vae import TextureVAE

    state = dict(TextureVAE(arch).state_dict())
    state["loss.logvar"] = torch.zeros(())
    return _torch_bytes(
        {
            "state_dict": state,
            "epoch": 49,
            "global_step": 1000,
            "pytorch-lightning_version": "2.4.0",
            "callbacks": {},
            "optimizer_states": [],
            "lr_schedulers": [],
        }
    )


def _timm_weights(section: dict) -> bytes:
    """timm's model.safetensors of the encoder (its default 518 px position table)."""
    import timm
    from safetensors.torch import save

    vit = timm.create_model(section["timm_model"], pretrained=False, num_classes=0, **section["timm_kwargs"])
    return save(vit.state_dict())


def _released_ckpt(model_cfg: dict, grid: int, layout: str) -> bytes:
    """An SFD checkpoint: `{'ema'}` or the official train.py dict with its OmegaConf config."""
    from omegaconf import OmegaConf

    from sfd.models import build_model

    state = build_model(model_cfg, num_classes=1000, input_size=grid).state_dict()
    if layout == "ema":
        return _torch_bytes({"ema": state})
    model = {k: v for k, v in model_cfg.items() if v is not None}
    config = OmegaConf.create({"model": model, "train": {"resume": False}})
    return _torch_bytes(
        {"model": state, "ema": state, "opt": {"state": {}, "param_groups": []}, "config": config}
    )


def _inception_graph() -> bytes:
    """classify_image_graph_def.pb in miniature: a random CNN with Inception's tensor names (input
    `ExpandDims`, `mixed_6/conv`, `pool_3`, 1008-way `softmax/logits/MatMul`), built by TensorFlow
    in its own process (after TensorFlow, triton-loading imports crash)."""
    code = (
        "import sys; from sfd.evaluation import toy_detector as t; "
        "g = t.export_graph_def(t.init_params([8, 8, 8, 16], 1008, seed=0), 32, None); "
        "sys.stdout.buffer.write(g.SerializeToString(deterministic=True))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=300).stdout


def _image_batch(count: int, size: int, seed: int) -> bytes:
    """An ADM sample/reference batch: `arr_0` uint8 [count, size, size, 3]."""
    import numpy as np

    buffer = io.BytesIO()
    images = np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    np.savez(buffer, arr_0=images)
    return buffer.getvalue()


def _stats(channels: int) -> bytes:
    import torch

    return _torch_bytes({"mean": torch.zeros(1, channels, 1, 1), "std": torch.ones(1, channels, 1, 1)})


def publish_experiment(hub: FakeHub, exp) -> None:
    """Every file `sfd.workflow.downloads.planned(exp)` lists, made for `exp` (validated), under
    its repo ids and file names. The first released model comes in the official training layout
    (OmegaConf config included), the others as `{'ema'}`. ADM's assets are served under their URL
    paths: a miniature Inception graph and `arr_0` image batches (no precomputed statistics)."""
    from urllib.parse import urlparse

    from sfd.data.imagenet import wnids
    from sfd.workflow.downloads import planned

    cfg = exp.cfg
    grid = cfg["data"]["image_size"] // 2 ** (len(cfg["texture_vae"]["arch"]["ch_mult"]) - 1)
    classes = wnids()
    counter = iter(range(10**6))
    released_layouts = {}
    for d in planned(exp):
        if d.hub is None:
            path = urlparse(d.source).path
            size, count = cfg["data"]["image_size"], cfg["evaluation"]["reference_size"]
            batch = path.endswith(".npz")
            hub.files[path] = _image_batch(count, size, seed=len(path)) if batch else _inception_graph()
            continue
        repo_id, filename, revision, repo_type = d.hub
        prefix = "datasets/" if repo_type == "dataset" else ""
        path = f"/{prefix}{repo_id}/resolve/{revision or 'main'}/{filename}"
        if d.rule == "fetch_imagenet":
            split = d.out.rsplit("/", 1)[1]
            files = cfg["data"]["hf"]["files"][split]
            count = cfg["data"]["hf"]["expected_images"][split] // len(files) + (
                files.index(filename) < cfg["data"]["hf"]["expected_images"][split] % len(files)
            )
            indices = [next(counter) for _ in range(count)]  # classes in turn: 1,000 images cover them all
            names = [f"{split}_{i:05d}_{classes[i % len(classes)]}.JPEG" for i in indices]
            hub.files[path] = _imagenet_archive(names, seed=len(hub.files))
        elif d.rule == "fetch_tokenizer":
            hub.files[path] = _texture_vae_ckpt(cfg["texture_vae"]["arch"])
        elif d.rule == "fetch_encoder":
            hub.files[path] = _timm_weights(cfg["semantic_encoder"])
        elif d.rule == "fetch_released_stats":
            semantic = "latents_sv_stats" in filename
            arch = cfg["texture_vae"]["arch"]
            hub.files[path] = _stats(cfg["semvae"]["bottleneck_dim"] if semantic else arch["z_channels"])
        elif d.rule == "fetch_released":
            model = d.out.split("/")[-2]
            layout = released_layouts.setdefault(model, "training" if not released_layouts else "ema")
            hub.files[path] = _released_ckpt(cfg["models"][model]["model"], grid, layout)
