import pytest
import yaml

from sfd.config import ConfigError, load_experiment, load_model_section, validate

OFFICIAL_XL = {
    "model_type": "LightningDiT-XL/1",
    "use_qknorm": True,
    "use_swiglu": True,
    "use_rope": True,
    "use_rmsnorm": True,
    "wo_shift": False,
    "in_chans": 48,
    "semantic_chans": 16,
    "semfirst_delta_t": 0.3,
    "semantic_weight": 2.0,
    "use_repa": True,
    "repa_dino_version": "dinov2_vitb14_reg",
    "repa_feat_depth": 2,
}


def test_official_model_section_is_accepted_as_is(tmp_path):
    path = tmp_path / "official.yaml"
    path.write_text(yaml.safe_dump({"model": OFFICIAL_XL, "train": {"max_steps": 4000000}}))
    model = load_model_section(path)
    assert {k: model[k] for k in OFFICIAL_XL} == OFFICIAL_XL
    assert model["class_dropout_prob"] == 0.1  # default filled in
    assert (model["repa_weight"], model["repa_mode"], model["semfirst_infer_interval_mode"]) == (
        1.0,
        "cos",
        "both",
    )


def test_official_80_epoch_recipe_model_section_is_accepted(tmp_path):
    """The post-paper recipe writes the REPA loss settings and the guidance-interval mode in `model:`."""
    recipe = {
        **OFFICIAL_XL,
        "repa_weight": 0.5,
        "repa_mode": "cos_mse",
        "semfirst_infer_interval_mode": "both",
    }
    path = tmp_path / "train_80ep_lr2e-4.yaml"
    path.write_text(yaml.safe_dump({"model": recipe}))
    model = load_model_section(path)
    assert {k: model[k] for k in recipe} == recipe
    with pytest.raises(ConfigError, match="semfirst_infer_interval_mode"):
        validate({**recipe, "semfirst_infer_interval_mode": "texture"}, "model", source="mine.yaml")


@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"semfirst_delta_t": 1.5}, "semfirst_delta_t: 1.5 is greater than the maximum of 1"),
        ({"semantic_chans": 64}, "semantic_chans: 64 exceeds in_chans 48"),
        ({"use_rope": "yes"}, "use_rope: 'yes' is not of type 'boolean'"),
        ({"use_ropee": True}, "'use_ropee' was unexpected"),
        ({"model_type": "LightningDiT-XXXL/1"}, "model_type"),
    ],
)
def test_bad_model_section_names_key_and_file(patch, needle):
    with pytest.raises(ConfigError) as err:
        validate({**OFFICIAL_XL, **patch}, "model", source="mine.yaml")
    assert needle in str(err.value)
    assert "mine.yaml" in str(err.value)


def test_experiment_typo_fails_with_file_and_key(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "models": {"a": {"model": {**OFFICIAL_XL, "semantic_chans": 0, "semfirst_delta_t": 0.3}}},
            }
        )
    )
    with pytest.raises(ConfigError, match=r"exp.yaml: models.a.model.semfirst_delta_t"):
        load_experiment(path)
    path.write_text("name: x\nsede: 3\n")
    with pytest.raises(ConfigError, match=r"exp.yaml: <top level>: .*'sede' was unexpected"):
        load_experiment(path)


def test_shipped_experiments_validate():
    for name in ("config/toy.yaml",):
        cfg = load_experiment(name)
        assert cfg["name"]
