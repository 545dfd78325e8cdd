"""Rules between a job's objects (data, model, explainer, scoring), checked before any long work; Keras-free.

Each object checks its own fields when it is made; what only two of them
together can judge lives here, once, for the entry point (:func:`xbench.apps.run.build_job`,
before the first job of a sweep starts) and the job (:mod:`xbench.pipeline.job`,
once the model is loaded). A broken rule raises :class:`ConfigError` naming the
config key of the setting to change.
"""

from __future__ import annotations

from collections.abc import Sequence

from xbench.core.errors import ConfigError
from xbench.pipeline.settings import check_region_size

#: What to do when a reference map lacks its masks, by the masks it needs.
GROUND_TRUTH_HINTS = {
    "lesions": "lesion masks exist only on phantoms (data=synthetic)",
    "markers": "marker masks exist only on phantoms with data.shortcut_class set (see +experiment=shortcut)",
}


def check_ground_truth(source, explainer, controls) -> None:
    """A reference map (oracle, shortcut_marker) needs its masks in the data: refuse before training, not after."""
    for method, key in [(explainer, "explainer"), *((c, "score.controls") for c in controls)]:
        need = getattr(type(method), "evidence", None)
        if need is not None and need not in getattr(source, "ground_truth", frozenset()):
            raise ConfigError(f"{key}: {method.name} is scored against {need} masks, which data={source.name} does not have; "
                              f"{GROUND_TRUTH_HINTS[need]}, so drop it here (e.g. score.controls=[random])")


def check_model_outputs(n_outputs: int | None, class_names: Sequence[str]) -> None:
    """A classifier's outputs against the data's classes: one output per class, in the model's order.

    ``n_outputs``: the model's output units (2 for a one-unit sigmoid), None
    when not known yet (then nothing is checked); ``class_names``: the data's
    classes, empty when not known yet.
    """
    if n_outputs is not None and class_names and len(class_names) != n_outputs:
        raise ConfigError(f"data.classes: the model has {n_outputs} outputs but the data has {len(class_names)} classes ({', '.join(class_names)}); "
                          "list the class folders in the model's output order with data.classes=[...]")


def fit_model_file(model, source, region_size: int | None = None) -> None:
    """A model file's input size and class count against the data, read from the file without Keras: one line before any long work.

    ``model``: a :class:`xbench.models.model_file.ModelFile`; ``source``: the
    data source, whose image size defaults to the model's input size (set
    here) and which is scored whole (nothing is trained); ``region_size``:
    the scoring's region side (px), None for the default.
    """
    try:
        info = model.describe()
    except ValueError as exc:
        raise ConfigError(f"model.{exc}") from None
    side = None
    if info.input_shape is not None and info.input_shape[0] is not None:
        if info.input_shape[0] != info.input_shape[1]:
            raise ConfigError(f"model.path: the model takes {info.input_shape[0]}x{info.input_shape[1]} images; xbench scores square images")
        side = int(info.input_shape[0])
    if source.image_size is None:
        if side is None:
            raise ConfigError("data.image_size: the model file does not fix its input size; set data.image_size")
        source.image_size = side
    elif side is not None and source.image_size != side:
        raise ConfigError(f"data.image_size={source.image_size}: the model takes {side} px images; drop data.image_size (it follows the model) or set it to {side}")
    if hasattr(source, "score_only"):
        source.score_only = True
    try:
        check_region_size(region_size, source.image_size, "image the model takes")
    except ValueError as exc:
        raise ConfigError(f"score.{exc}") from None
    classes = source.class_names() if hasattr(source, "class_names") else []
    if info.n_outputs > 1:
        raise ConfigError(f"model.path: the model has {info.n_outputs} outputs; xbench scores single-output classifiers (save a model of the one output)")
    multilabel = getattr(source, "multilabel", False)  # one output per label, a one-label file too (a one-unit softmax reading is 2 classes)
    check_model_outputs(None if info.outputs is None else (2 if info.outputs == 1 and not multilabel else info.outputs), classes)


def check_multilabel(label_names: Sequence[str], explainer, score) -> None:
    """A multi-label job's scoring against its data's labels: ``score.labels`` must name labels the data has, and a maps file
    (explainer=file), which holds one map per image, cannot explain (image, label) targets."""
    from xbench.pipeline.results import label_folder

    folders: dict[str, list[str]] = {}
    for n in label_names:
        folders.setdefault(label_folder(n), []).append(n)
    same = next((names for names in folders.values() if len(names) > 1), None)
    if same:
        raise ConfigError(f"the labels {same} would share the results folder labels/{label_folder(same[0])}/; rename one of them (data.classes "
                          "or the labels file's columns)")
    if score is None or not score.enabled:
        return
    rule = score.labels
    if not isinstance(rule, str):
        unknown = [n for n in rule if n not in label_names]
        if unknown:
            raise ConfigError(f"score.labels: {unknown} are not labels of the data ({list(label_names)}); list some of those")
    if hasattr(explainer, "for_images"):
        raise ConfigError("explainer=file holds one map per image; a multi-label model needs one per (image, label), which maps files "
                          "do not hold yet: score a multi-label model with a built-in explainer")
