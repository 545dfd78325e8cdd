from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from tests.helpers import compose
from xbench.apps.config import validate
from xbench.apps.run import build_job
from xbench.core.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


def _group_options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


#: What an option needs besides itself to build: a dataset path, an image size (a folder of images and
#: InceptionV3's 75 px floor), a model file's path; a shortcut marker needs the marked phantoms.
_ROOT = "data.root=/tmp/somewhere"
_NEEDS = {("data", "covid_radiography"): [_ROOT], ("data", "folder"): [_ROOT, "data.image_size=64"], ("data", "pediatric"): [_ROOT],
          ("experiment", "covid_radiography"): [_ROOT], ("experiment", "pediatric_3class"): [_ROOT],
          ("model", "inceptionv3"): ["data.image_size=96"], ("model", "file"): ["model.path=/tmp/somewhere/model.keras"],
          ("explainer", "file"): ["explainer.path=/tmp/somewhere/maps.npz"],
          ("explainer", "shortcut_marker"): ["+experiment=shortcut"]}
#: Groups chosen by config.yaml from others (fit: setup x model; truth: the data), and experiment overlays.
_CHOSEN = {"fit": lambda o: [f"setup={o.split('_', 1)[0]}", f"model={o.split('_', 1)[1]}"], "truth": lambda o: [f"data={o}"],
           "experiment": lambda o: [f"+experiment={o}"]}
_OPTIONS = [(g.name, o) for g in sorted(CONF.iterdir()) if g.is_dir() and not g.name.startswith("_") for o in _group_options(g.name)]


def test_the_option_list_is_every_config_file():
    groups = {g for g, _ in _OPTIONS}
    assert groups == {"data", "experiment", "explainer", "fit", "model", "perturbation", "setup", "tracking", "train", "truth"}
    count = lambda group: sum(g == group for g, _ in _OPTIONS)
    assert (count("explainer"), count("perturbation"), count("tracking")) == (26, 6, 2)


@pytest.mark.parametrize("group, option", _OPTIONS, ids=[f"{g}={o}" for g, o in _OPTIONS])
def test_every_option_of_every_group_composes_and_builds(group, option):
    """Each conf/<group>/<option>.yaml composes with Hydra's compose API and passes build_job (the Keras-free builder)."""
    overrides = _CHOSEN.get(group, lambda o: [f"{group}={o}"])(option) + _NEEDS.get((group, option), [])
    cfg = compose(overrides)
    OmegaConf.to_container(cfg, resolve=True)
    if (group, option) == ("model", "file"):  # build_job reads the file's input size: built from a real file in test_bring_your_own
        assert cfg.model.path.endswith("model.keras")
        return
    if (group, option) == ("explainer", "file"):  # build_job reads the maps file: built from a real file in test_maps_file
        assert cfg.explainer.path.endswith("maps.npz")
        return
    job = build_job(cfg)
    made = lambda obj, node: type(obj) is get_class(node._target_)
    if group in ("explainer", "perturbation"):
        assert made(getattr(job, group), cfg[group])
    if group == "explainer":
        assert job.explainer.name == option
    elif group == "data":
        assert made(job.source, cfg.data)
    elif group == "model":
        assert job.model.backbone == option
    elif group == "tracking":
        assert job.tracking.kind == option
    elif group == "fit":
        assert job.model.backbone == option.split("_", 1)[1] and job.model.weights == "none"
    elif group == "setup":
        assert job.model.weights == {"offline": "none", "pretrained": "imagenet"}[option]


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
    job = build_job(cfg)
    assert cfg.data._target_.endswith("SyntheticSource") and cfg.model.weights == "none" and cfg.train.epochs == 8  # conf/fit/offline_vgg16.yaml
    assert job.model.weights == "none" and job.settings.epochs == 8 and job.settings.train_from == "block4_conv3"
    assert compose(["model=resnet50"]).train.epochs == 80  # the offline setup's head-only default


def test_offline_is_an_overlay_the_experiments_swap_for_pretrained():
    assert compose(["setup=pretrained"]).model.weights == "imagenet" and compose(["setup=pretrained"]).train.epochs == 20
    for experiment in ("covid_radiography", "pediatric_3class"):
        text = (CONF / "experiment" / f"{experiment}.yaml").read_text()
        assert "override /setup: pretrained" in text and "weights:" not in text
    for option in _group_options("model"):  # a backbone's model file names its backbone only; model=file, the required path
        body = [l for l in (CONF / "model" / f"{option}.yaml").read_text().splitlines() if l and not l.startswith(("#", " ", "defaults"))]
        assert body == ([f"backbone: {option}"] if option != "file" else ["path: null   # required: model.path=/path/to/model.keras"]), body


def test_synthetic_defaults_are_declared_once_and_xbench_synth_uses_them():
    from xbench.apps.synth import parser
    from xbench.pipeline.sources import SyntheticSource
    from xbench.pipeline.sources.synthetic import SynthSpec

    src, spec, cli = SyntheticSource(), SynthSpec(), parser().parse_args(["--out", "x"])
    assert (src.n_per_class, src.difficulty, src.shortcut_class, src.shortcut_fraction, src.synth_seed) == (400, 0.0, "", 0.0, 0)
    assert (src.image_size, list(src.fractions)) == (72, [0.8, 0.1, 0.1])
    assert (cli.n_per_class, cli.difficulty, cli.shortcut_class, cli.shortcut_fraction, cli.seed) == (
        spec.n_per_class, spec.difficulty, spec.shortcut_class, spec.shortcut_fraction, spec.seed) == (
        src.n_per_class, src.difficulty, src.shortcut_class, src.shortcut_fraction, src.synth_seed)
    data = compose().data
    assert {k: data[k] for k in ("n_per_class", "difficulty", "image_size", "shortcut_class", "shortcut_fraction")} == {
        "n_per_class": 400, "difficulty": 0.0, "image_size": 72, "shortcut_class": "", "shortcut_fraction": 0.0}
    # The YAML restates no value: its body is the defaults list only.
    assert [l for l in (CONF / "data" / "synthetic.yaml").read_text().splitlines() if l and not l.startswith(("#", " ", "defaults"))] == []


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
        (["model._target_=xbench.models.ClassifierSpec"], r"model._target_: xbench builds classifiers with xbench.models.build_classifier"),
        (["seed=-1"], r"seed: must be >= 0"),
        (["score.metrics=[selectivity]", "+score.metric_params={selectivity:{patch_size:99}}"],
         r"score.metric_params.selectivity.patch_size: must lie in \[1, 72\] \(the image side\), got 99"),
        (["score.metrics=[selectivity]", "+score.metric_params={selectivity:{runs:3}}"],
         r"score.metric_params.selectivity: unknown parameter\(s\) \['runs'\]"),
        (["score.metrics=[faithful]"], r"score.metrics: unknown \['faithful'\]"),
        (["score.metrics=[effective_complexity]", "+score.metric_params={effective_complexity:{eps:-1}}"],
         r"score.metric_params.effective_complexity.eps: must be a threshold >= 0 and < 1 \(a share of the map max\), got -1"),
    ],
)
def test_bad_values_are_rejected_with_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_job(compose(overrides))


# Each object checks its own fields; the entry point names the group: "<group>.<field>: ...".
OWN_RULES = [
    (["data.n_per_class=3"], "data.n_per_class: need at least 10 phantoms per class to split 80/10/10, got 3"),
    (["data.shortcut_class=Lung"], "data.shortcut_class: must be '' or one of"),
    (["data.shortcut_fraction=1.5"], "data.shortcut_fraction: must lie in [0, 1]"),
    (["data.classes=[COVID,Tumour]"], "data.classes: unknown classes ['Tumour']"),
    (["data.classes=[COVID]"], "data.classes: need at least two classes"),
    (["data.max_per_class=0"], "data.max_per_class: must be >= 1"),
    (["data.fractions=[0.8,0.2]"], "data.fractions: give three fractions"),
    (["data.fractions=[1.2,-0.1,-0.1]"], "data.fractions: fractions must be non-negative"),
    (["data=pediatric", "data.root=/x", "data.val_fraction=1"], "data.val_fraction: must lie in (0, 1)"),
    (["data=pediatric"], "data.root: not set"),
    (["model.head=big"], "model.head: unknown head 'big'"),
    (["model.dropout=1.0"], "model.dropout: must lie in [0, 1)"),
    (["model.pool_size=0"], "model.pool_size: must be >= 1"),
    (["model.dense_units=[64,0]"], "model.dense_units: widths must be >= 1"),
    (["train.batch_size=0"], "train.batch_size: must be >= 1"),
    (["train.lr=0"], "train.lr: must be > 0"),
    (["train.label_smoothing=1"], "train.label_smoothing: must lie in [0, 1)"),
    (["train.rotation=-1"], "train.rotation: must be >= 0"),
    (["train.zoom=-1"], "train.zoom: must be >= 0"),
    (["train.fine_tune.epochs=-1"], "train.fine_tune.epochs: must be >= 0"),
    (["train.fine_tune.lr=0"], "train.fine_tune.lr: must be > 0"),
    (["explainer=scorecam", "explainer.max_n=0"], "explainer.max_n: must be >= 1"),
    (["explainer=occlusion", "explainer.stride=0"], "explainer.stride: must lie in [1, patch_size = 16]"),
    (["explainer=rise", "explainer.keep_prob=0"], "explainer.keep_prob: must lie in (0, 1]"),
    (["explainer=gradcampp", "explainer.impl=captum"], "explainer.impl: must be one of ['native', 'tfkv']"),
    (["explainer=integrated_gradients", "explainer.steps=0"], "explainer.steps: must be >= 1"),
    (["explainer.batch_size=0"], "explainer.batch_size: must be >= 1"),
    (["explainer=center", "explainer.sigma=0"], "explainer.sigma: must be > 0"),
    (["perturbation=uniform", "perturbation.low=0.5", "perturbation.high=0.2"], "perturbation.high: must be >= low"),
    (["score.max_steps=-1"], "score.max_steps: must be >= 0"),
    (["score.pixel_steps=0"], "score.pixel_steps: must be >= 1"),
    (["score.insertion_blur=0"], "score.insertion_blur: must be > 0"),
    (["score.orders=[morf,delete]"], "score.orders: choose from ['morf', 'lerf', 'random', 'deletion', 'insertion']"),
    (["score.subset=some"], "score.subset: must be 'correct' or 'all'"),
    (["score.target=best"], "score.target: must be 'predicted' or 'true'"),
    (["score.controls=[random,oracle2]"], "score.controls: choose from ['random', 'center', 'oracle', 'shortcut_marker', 'edge']"),
    (["score.max_images=0"], "score.max_images: must be >= 1"),
    (["score.memory_budget_mb=0"], "score.memory_budget_mb: must be > 0"),
]


@pytest.mark.parametrize("overrides, message", OWN_RULES, ids=[" ".join(c[0]) for c in OWN_RULES])
def test_an_objects_own_rule_surfaces_as_group_dot_field(overrides, message):
    cfg = compose(overrides)
    validate(cfg)  # not a cross-group rule: the object itself says it
    with pytest.raises(ConfigError) as err:
        build_job(cfg)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_objects_raise_plain_value_errors_naming_their_field():
    from xbench.models.spec import ClassifierSpec
    from xbench.pipeline.settings import ScoreSettings
    from xbench.pipeline.sources import SyntheticSource

    for make, message in [(lambda: SyntheticSource(n_per_class=3), "n_per_class: "),
                          (lambda: SyntheticSource(image_size=0), "image_size: must be a positive number of pixels"),
                          (lambda: SyntheticSource(on_corrupt="ignore"), "on_corrupt: "), (lambda: ClassifierSpec(backbone="vgg61"), "backbone: "),
                          (lambda: ScoreSettings(bootstrap=10), "bootstrap: ")]:
        with pytest.raises(ValueError) as err:
            make()
        assert str(err.value).startswith(message)


def test_schemas_are_out_of_sight():
    from hydra.core.config_store import ConfigStore

    from xbench.apps.config import register

    register()
    repo = ConfigStore.instance().repo
    assert not any(name.endswith("_schema") or name.endswith("_schema.yaml") for group in ("data", "model", "train", "explainer", "perturbation", "tracking")
                   for name in repo.get(group, {}))
    assert sorted(repo["schema"]) == ["data", "explainer", "model", "perturbation", "tracking", "train"]


def test_help_lists_the_real_options_and_no_schema():
    import subprocess
    import sys

    from xbench.apps.run import GROUPS, help_text

    r = subprocess.run([sys.executable, "-m", "xbench", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == help_text() and "powered by Hydra" not in r.stdout
    assert "schema" not in r.stdout and "_target_" not in r.stdout
    for group in GROUPS:
        line = next(l for l in r.stdout.splitlines() if l.strip().startswith(f"{group}:"))
        assert [o.rstrip("*") for o in line.split(":", 1)[1].split("(")[0].replace(",", " ").split()] == _group_options(group), line
    assert r.stdout.count("\n  xbench ") == 4  # four example commands
    assert "data:" in r.stdout and "synthetic*" in r.stdout and "offline*" in r.stdout


@pytest.mark.parametrize("overrides, message", [
    (["data=covid_radiography", "data.root=/x", "score.controls=[random,oracle]"], "score.controls: oracle is scored against lesions masks, which data=covid_radiography does not have"),
    (["data=pediatric", "data.root=/x", "score.controls=[random]", "explainer=oracle"], "explainer: oracle is scored against lesions masks"),
    (["score.controls=[random,shortcut_marker]"], "score.controls: shortcut_marker is scored against markers masks, which data=synthetic"),
])
def test_a_reference_map_without_its_ground_truth_is_refused_before_training(overrides, message):
    with pytest.raises(ConfigError) as err:
        build_job(compose(overrides))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_offline_setup_trains_the_layer_grad_cam_reads_and_phantoms_add_the_oracle():
    """conf/fit/<setup>_<backbone>.yaml and conf/truth/<data>.yaml are chosen by the defaults list; overrides still win."""
    vgg, dense = compose([]), compose(["model=densenet201"])
    assert (vgg.model.gradcam_layer, vgg.train.train_from) == ("block4_conv3", "block4_conv3")
    assert (dense.model.gradcam_layer, dense.train.train_from) == ("pool4_conv", "conv4_block37_0_bn")
    assert list(vgg.score.controls) == ["random", "oracle"]
    pre = compose(["setup=pretrained"])
    assert pre.model.gradcam_layer is None and pre.train.train_from is None  # the paper: last conv map, head only
    assert compose(["model=resnet50"]).train.train_from is None  # no fit file: the offline head-only default
    assert compose(["train.epochs=3", "model.gradcam_layer=block5_conv3"]).train.epochs == 3
    assert list(compose(["data=covid_radiography", "data.root=/x"]).score.controls) == ["random"]
    build_job(vgg), build_job(dense)  # valid jobs


def test_complexity_metrics_compose_into_a_job_beside_the_faithfulness_metrics():
    cfg = compose(["score.metrics=[sparseness,effective_complexity,irof]", "+score.metric_params={effective_complexity:{eps:0.001}}"])
    built = build_job(cfg).score.scored_metrics()
    assert [m.name for m in built] == ["sparseness", "effective_complexity", "irof"] and built[1].eps == 0.001
    assert [m.needs_model for m in built] == [False, False, True]
