"""sfd.hub against a Hub-like HTTP server on 127.0.0.1 (never the network)."""

import hashlib
import logging
from pathlib import Path

import huggingface_hub.constants
import pytest
import yaml
from stand_in_hub import FakeHub

from sfd import cli
from sfd.hub import HubError, download, part_path
from sfd.transfer import DownloadError

TOKEN = "hf_secretTOKENvalue123"
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture
def hub(monkeypatch):
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    yield server
    server.server.shutdown()


def test_download_writes_file_atomically_and_keeps_token_out_of_logs(hub, tmp_path, caplog):
    hub.files["/org/vae/resolve/main/weights/ae.ckpt"] = PAYLOAD
    out = tmp_path / "sub" / "ae.ckpt"
    with caplog.at_level(logging.DEBUG):
        assert download("org/vae", "weights/ae.ckpt", out) == out
    assert out.read_bytes() == PAYLOAD
    assert [p.name for p in out.parent.iterdir()] == ["ae.ckpt"]  # no part/temp file left
    assert hub.gets()[0]["auth"] == f"Bearer {TOKEN}"
    assert TOKEN not in caplog.text
    download("org/vae", "weights/ae.ckpt", out)  # present: no second transfer
    assert len(hub.gets()) == 1


def test_dataset_repo_and_revision_in_url(hub, tmp_path):
    hub.files["/datasets/org/data/resolve/v1.0/a/b.tar"] = b"tar bytes"
    out = download("org/data", "a/b.tar", tmp_path / "b.tar", revision="v1.0", repo_type="dataset")
    assert out.read_bytes() == b"tar bytes"


def test_resume_after_killed_process_uses_range(hub, tmp_path):
    hub.files["/org/vae/resolve/main/ae.ckpt"] = PAYLOAD
    out = tmp_path / "ae.ckpt"
    etag = hashlib.sha256(PAYLOAD).hexdigest()
    part_path(out, etag).write_bytes(PAYLOAD[:300_000])  # what a killed download leaves behind
    download("org/vae", "ae.ckpt", out)
    assert out.read_bytes() == PAYLOAD
    assert hub.gets()[0]["range"] == "bytes=300000-"
    assert not part_path(out, etag).exists()


def test_dropped_connection_is_retried_within_the_call(hub, tmp_path):
    hub.files["/org/vae/resolve/main/ae.ckpt"] = PAYLOAD
    hub.drop_first_get = True
    out = download("org/vae", "ae.ckpt", tmp_path / "ae.ckpt")
    assert out.read_bytes() == PAYLOAD
    assert len(hub.gets()) == 2  # huggingface_hub retried once (resuming or restarting the body)


def test_corrupt_transfer_fails_sha256_and_leaves_nothing(hub, tmp_path):
    hub.files["/org/vae/resolve/main/ae.ckpt"] = PAYLOAD
    hub.etags["/org/vae/resolve/main/ae.ckpt"] = "f" * 64  # LFS etag = sha256 of the content
    with pytest.raises(DownloadError, match="does not match"):
        download("org/vae", "ae.ckpt", tmp_path / "ae.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_gated_repo_error_says_what_to_do_without_the_token(hub, tmp_path):
    hub.gated.add("org/private")
    with pytest.raises(HubError) as err:
        download("org/private", "x.pt", tmp_path / "x.pt")
    assert "gated" in str(err.value) and "HF_TOKEN" in str(err.value)
    assert TOKEN not in str(err.value)
    assert not (tmp_path / "x.pt").exists()


def test_missing_file_error(hub, tmp_path):
    with pytest.raises(HubError, match="not found"):
        download("org/vae", "nope.pt", tmp_path / "nope.pt")


def test_offline_mode_and_unreachable_hub(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        download("org/vae", "ae.ckpt", tmp_path / "ae.ckpt")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub.server.shutdown()
    hub.server.server_close()
    with pytest.raises(HubError, match="offline"):
        download("org/vae", "ae.ckpt", tmp_path / "ae.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_fetch_weights_cli_reads_repo_and_file_from_config(hub, tmp_path):
    hub.files["/org/vae/resolve/abc/ae.ckpt"] = PAYLOAD
    config = tmp_path / "exp.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "texture_vae": {
                    "pretrained": {
                        "repo_id": "org/vae",
                        "filename": "ae.ckpt",
                        "revision": "abc",
                        "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
                    }
                },
            }
        )
    )
    out = tmp_path / "w" / "ae.ckpt"
    assert (
        cli.main(
            ["fetch-weights", "--config", str(config), "--key", "texture_vae.pretrained", "--out", str(out)]
        )
        == 0
    )
    assert Path(out).read_bytes() == PAYLOAD
    assert (
        cli.main(["fetch-weights", "--config", str(config), "--key", "texture_vae.nope", "--out", str(out)])
        == 2
    )


def test_download_sizes_come_from_the_hub_online_and_from_the_config_offline(hub, tmp_path):
    from sfd.workflow.downloads import Download, hub_file, report, sized

    hub.files["/org/vae/resolve/main/ae.ckpt"] = PAYLOAD
    hub.files["/assets/graph.pb"] = b"g" * 1000
    files = [
        hub_file("fetch_tokenizer", "out/ae.ckpt", "org/vae", "ae.ckpt"),
        Download("fetch_eval_assets", f"{hub.url}/assets/graph.pb", "out/graph.pb"),
        hub_file("fetch_released", "out/gone.pt", "org/sfd", "gone.pt"),
    ]
    configured = {"hf://org/vae/ae.ckpt": 5, "hf://org/sfd/gone.pt": {"bytes": 7, "basis": "two tensors"}}
    online = sized(files, configured, online=True)
    assert [(r.size, r.origin) for r in online] == [
        (len(PAYLOAD), "hub"),
        (1000, "server"),
        (7, "estimate"),
    ]
    offline = sized(files, configured, online=False)
    assert [(r.size, r.origin) for r in offline] == [
        (5, "config"),
        (None, "unknown"),
        (7, "estimate"),
    ]
    assert not hub.gets()  # sizes never download anything
    lines = report(offline).splitlines()
    assert "hf://org/vae/ae.ckpt -> out/ae.ckpt" in lines[1]
    assert lines[-2] == (
        "total: 3 file(s), 12 B, 1 of them estimated (+ 1 file(s) of unknown size: set download_sizes)"
    )
    assert lines[-1] == "estimated gone.pt: two tensors"


def test_fetched_encoder_file_loads_as_timm_loads_its_hub_weights(hub, tmp_path):
    """rule fetch_encoder's command, then the compute side: tokens equal to timm's own pretrained load."""
    timm = pytest.importorskip("timm")
    import torch
    from safetensors.torch import save_file

    from sfd.semantic.encoder import load_encoder

    section = {
        "timm_model": "vit_base_patch14_reg4_dinov2.lvd142m",
        "img_size": 56,
        "timm_kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 2},
        "weights": {"repo_id": "timm/dinov2-tiny", "filename": "model.safetensors"},
    }
    torch.manual_seed(0)
    published = timm.create_model(
        section["timm_model"], pretrained=False, num_classes=0, **section["timm_kwargs"]
    )
    save_file(published.state_dict(), tmp_path / "published.safetensors")  # timm's Hub layout (518 px table)
    hub.files["/timm/dinov2-tiny/resolve/main/model.safetensors"] = (
        tmp_path / "published.safetensors"
    ).read_bytes()
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"name": "x", "semantic_encoder": section}))
    out = tmp_path / "semantic" / "encoder.safetensors"
    assert (
        cli.main(
            ["fetch-weights", "--config", str(config), "--key", "semantic_encoder.weights", "--out", str(out)]
        )
        == 0
    )
    from sfd.config import load_experiment

    encoder = load_encoder(load_experiment(config)["semantic_encoder"], out)
    reference = timm.create_model(
        section["timm_model"],
        pretrained=True,
        num_classes=0,
        img_size=56,
        pretrained_cfg_overlay={"file": str(out)},
        **section["timm_kwargs"],
    ).eval()
    for module in reference.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    x = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(
            encoder.features(x), reference.forward_features(x)[:, reference.num_prefix_tokens :]
        )
