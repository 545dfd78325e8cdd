from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose
from xbench.config import validate
from xbench.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


def _group_options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["data", "model", "train"])
def test_every_group_option_composes(group):
    for option in _group_options(group):
        cfg = compose([f"{group}={option}", "data.root=/tmp/somewhere"] if group == "data" and option != "synthetic" else [f"{group}={option}"])
        OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("experiment", _group_options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose([f"+experiment={experiment}"])
    OmegaConf.to_container(cfg, resolve=True)


def test_paper_experiment_values():
    cfg = compose(["+experiment=covid_radiography", "model=densenet201"])
    assert cfg.data.balance and list(cfg.data.fractions) == [0.8, 0.1, 0.1] and cfg.data.image_size == 299
    assert cfg.model.backbone == "densenet201" and cfg.model.weights == "imagenet" and cfg.train.epochs == 20


def test_pediatric_experiment_values():
    cfg = compose(["+experiment=pediatric_3class"])
    assert cfg.model.backbone == "mobilenetv2" and cfg.model.head == "pediatric" and cfg.model.dropout == 0.2
    assert cfg.train.batch_size == 100 and cfg.train.epochs == 50 and cfg.train.lr == 1e-3
    assert cfg.train.fine_tune.enabled and cfg.train.fine_tune.from_layer == "145" and cfg.train.fine_tune.lr == 1e-5


def test_default_is_valid_and_offline():
    cfg = compose()
    validate(cfg)
    assert cfg.data._target_.endswith("SyntheticSource") and cfg.model.weights == "none"


@pytest.mark.parametrize("override", ["model.backbnoe=vgg16", "train.epoch=3", "sed=1", "data.n_per_clas=3"])
def test_misspelled_keys_fail_at_compose_time(override):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose([override])


def test_wrong_type_fails_at_compose_time():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose(["train.epochs=many"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.backbone=vgg61"], r"model.backbone: unknown backbone 'vgg61'"),
        (["model=inceptionv3", "data.image_size=64"], r"data.image_size: 64 px is below inceptionv3's minimum of 75"),
        (["data.fractions=[0.8,0.1,0.2]"], r"data.fractions: fractions must sum to 1"),
        (["train.epochs=-1"], r"train.epochs: must be >= 0"),
        (["data.difficulty=2"], r"data.difficulty: must lie in \[0, 1\]"),
        (["data.on_corrupt=ignore"], r"data.on_corrupt"),
        (["train.select=accuracy"], r"train.select"),
        (["model.weights=/no/such/file.h5"], r"model.weights: weights file '/no/such/file.h5' does not exist"),
        (["data=covid_radiography"], r"data.root: not set"),
        (["data._target_=os.system"], r"data._target_: 'os.system' is not allowed"),
    ],
)
def test_bad_values_are_rejected_with_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(overrides))
