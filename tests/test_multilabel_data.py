"""The multi-label data layer: phantoms with several findings, their database, and a folder read through a labels file."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xbench.core import io
from xbench.core.errors import DataError
from xbench.data.phantoms import (
    MULTILABEL_FINDINGS,
    RADIOGRAPHY_CLASSES,
    make_multilabel_phantom,
    make_phantom,
)
from xbench.data.records import stratification_code
from xbench.pipeline.sources import FolderSource, SyntheticMultiLabelSource
from xbench.pipeline.sources.folder import scan_labels_csv
from xbench.pipeline.sources.synthetic_multilabel import (
    LABELS_FILE,
    MARKER_FILE,
    MultiLabelSynthSpec,
    is_complete,
    write_multilabel_database,
)

F = MULTILABEL_FINDINGS

# ---------------------------------------------------------------------------------------------------------------------
# make_phantom stays bit-identical: cached databases (generator 4) and test figures depend on it.

#: sha256 (first 16 hex) of image, lungs, lesion and marker bytes, recorded with make_phantom as it was before the
#: anatomy / pattern / acquisition helpers were split out (and checked then on a 576-phantom grid: every class,
#: indices 0/1/5/123, seeds 0/7, sizes 33/72/299, difficulties 0/0.3/1, with and without the marker).
_BEFORE = {
    ("COVID", 3, 0, 64, 0.3, False): "5b5990a1fef5b5a2",
    ("COVID", 1, 7, 299, 0.0, True): "10b8ae7ebfab90a8",
    ("COVID", 123, 2, 41, 1.0, True): "162c04075b930f83",
    ("Lung_Opacity", 3, 0, 64, 0.3, False): "7b137be6b2786d3e",
    ("Lung_Opacity", 1, 7, 299, 0.0, True): "a664e226d35232b8",
    ("Lung_Opacity", 123, 2, 41, 1.0, True): "4ed4eafe5c51ff1c",
    ("Normal", 3, 0, 64, 0.3, False): "2ca22f9faf8d4678",
    ("Normal", 1, 7, 299, 0.0, True): "d1a335f70f14f53a",
    ("Normal", 123, 2, 41, 1.0, True): "7777982b7db511e0",
    ("Viral Pneumonia", 3, 0, 64, 0.3, False): "7c2f212f6753c796",
    ("Viral Pneumonia", 1, 7, 299, 0.0, True): "251c7f2e6122e71c",
    ("Viral Pneumonia", 123, 2, 41, 1.0, True): "5216ea0ec2ebfb40",
}


def _digest(p) -> str:
    d = hashlib.sha256()
    for a in (p.image, p.lungs, p.lesion, p.marker):
        d.update(np.ascontiguousarray(a).tobytes())
    return d.hexdigest()[:16]


def test_make_phantom_is_bit_identical_to_generator_4():
    assert {c for c, *_ in _BEFORE} == set(RADIOGRAPHY_CLASSES)
    got = {k: _digest(make_phantom(k[0], k[1], seed=k[2], size=k[3], difficulty=k[4], marker=k[5])) for k in _BEFORE}
    assert got == _BEFORE


# ---------------------------------------------------------------------------------------------------------------------
# Multi-label phantoms


def test_a_phantom_carries_several_findings_each_inside_the_lungs():
    p = make_multilabel_phantom(F, 4, seed=1, size=64)
    assert p.image.dtype == np.uint8 and p.image.shape == (64, 64) and p.lungs.dtype == bool and p.lungs.mean() > 0.1
    assert list(p.lesions) == list(F)
    for f, mask in p.lesions.items():
        assert mask.shape == (64, 64) and mask.dtype == bool
        assert mask.sum() > 10 and not (mask & ~p.lungs).any(), f
    normal = make_multilabel_phantom((), 4, seed=1, size=64)
    assert normal.lesions == {} and np.array_equal(normal.lungs, p.lungs)
    asked = make_multilabel_phantom(("Viral Pneumonia", "COVID"), 4, seed=1, size=64)
    assert list(asked.lesions) == ["Viral Pneumonia", "COVID"]  # the order asked


@pytest.mark.parametrize("finding", F)
def test_a_findings_lesion_is_where_its_pattern_brightens_the_image(finding):
    """The same chest with and without the finding (same anatomy and noise streams): the image brightens on its lesion."""
    with_it = make_multilabel_phantom((finding,), 2, size=64)
    without = make_multilabel_phantom((), 2, size=64)
    lesion = with_it.lesions[finding]
    gain = with_it.image.astype(int) - without.image.astype(int)
    assert gain[lesion].mean() > 20  # about 0.25 x 255 x the pattern at difficulty 0.3
    assert gain[lesion].mean() > 2 * gain[with_it.lungs & ~lesion].mean()
    assert np.abs(gain[~with_it.lungs]).mean() < 1  # nothing outside the lungs (the final blur bleeds a pixel)
    from scipy.ndimage import label

    half = lesion.shape[1] // 2
    if finding == "COVID":  # bilateral
        assert lesion[:, :half].any() and lesion[:, half:].any()
    if finding == "Lung_Opacity":  # one focal consolidation
        assert label(lesion)[1] == 1


def test_each_finding_has_its_own_stream():
    """A finding's lesion does not depend on which others are present, nor on the order asked; the chest is shared."""
    alone = {f: make_multilabel_phantom((f,), 6, seed=3, size=48) for f in F}
    every = make_multilabel_phantom(F, 6, seed=3, size=48)
    backwards = make_multilabel_phantom(F[::-1], 6, seed=3, size=48)
    for f in F:
        assert np.array_equal(every.lesions[f], alone[f].lesions[f]) and np.array_equal(backwards.lesions[f], alone[f].lesions[f])
        assert np.array_equal(every.lungs, alone[f].lungs)
    assert np.array_equal(every.image, backwards.image)
    pair = make_multilabel_phantom(F[:2], 6, seed=3, size=48)
    assert not np.array_equal(pair.image, every.image)
    # Different images and seeds draw different findings.
    assert not np.array_equal(make_multilabel_phantom(F[:1], 7, seed=3, size=48).lesions[F[0]], alone[F[0]].lesions[F[0]])
    assert not np.array_equal(make_multilabel_phantom(F[:1], 6, seed=4, size=48).lesions[F[0]], alone[F[0]].lesions[F[0]])


def test_multilabel_phantom_refuses_unknown_and_repeated_findings():
    with pytest.raises(ValueError, match="unknown finding 'Normal'"):
        make_multilabel_phantom(("Normal",), 0, size=32)
    with pytest.raises(ValueError, match="each finding at most once"):
        make_multilabel_phantom(("COVID", "COVID"), 0, size=32)


def test_stratification_code_is_each_images_rarest_positive_label():
    m = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1], [1, 1, 1]], bool)
    freq = m.sum(0)  # [4, 3, 3]: labels 1 and 2 tie, the lower index wins
    slow = [min(np.flatnonzero(row), key=lambda j: (freq[j], j)) if row.any() else 3 for row in m]
    assert slow == [1, 0, 1, 3, 2, 1]
    code = stratification_code(m)
    assert code.dtype == np.int64 and code.tolist() == slow


# ---------------------------------------------------------------------------------------------------------------------
# The database on disk

_SPEC = MultiLabelSynthSpec(n_images=24, seed=5, difficulty=0.3, size=64, mask_size=48)


@pytest.fixture(scope="module")
def ml_db(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml") / "db"
    write_multilabel_database(root, _SPEC, workers=1)
    return root


def _png(path):
    return np.asarray(Image.open(path))


def test_database_layout_and_labels_agree_with_the_lesion_masks(ml_db):
    table = pd.read_csv(ml_db / LABELS_FILE)
    assert list(table.columns) == ["path", *F]
    assert table["path"].tolist() == [f"images/{n}.png" for n in range(1, 25)]
    truth = np.array([[f in _SPEC.findings(n) for f in F] for n in range(1, 25)])
    assert np.array_equal(table[list(F)].to_numpy(), truth.astype(int))
    assert truth.any(1).sum() < 24 and (truth.sum(1) >= 2).any() and truth.all(0).sum() == 0  # some none, some several
    for n in range(1, 25):
        assert _png(ml_db / "images" / f"{n}.png").shape == (64, 64)
        lungs = _png(ml_db / "masks" / "images" / f"{n}.png")
        assert lungs.shape == (48, 48) and set(np.unique(lungs)) == {0, 255}
        for j, f in enumerate(F):
            lesion = _png(ml_db / "lesions" / f / "images" / f"{n}.png")
            assert lesion.shape == (48, 48) and lesion.any() == truth[n - 1, j], (n, f)
            assert not (lesion & ~lungs).any()
    p = make_multilabel_phantom(_SPEC.findings(3), 3, seed=5, size=64, difficulty=0.3)
    assert np.array_equal(_png(ml_db / "images" / "3.png"), p.image)
    meta = json.loads((ml_db / MARKER_FILE).read_text())
    assert meta["spec"]["n_images"] == 24 and meta["findings"] == list(F) and is_complete(ml_db, _SPEC)
    assert not is_complete(ml_db, MultiLabelSynthSpec(n_images=25, seed=5, difficulty=0.3, size=64, mask_size=48))


def test_database_is_not_rewritten_and_findings_are_stable_as_it_grows(ml_db):
    before = (ml_db / "images" / "1.png").stat().st_mtime_ns
    write_multilabel_database(ml_db, _SPEC, workers=1)
    assert (ml_db / "images" / "1.png").stat().st_mtime_ns == before
    bigger = MultiLabelSynthSpec(n_images=240, seed=5)
    assert [bigger.findings(n) for n in range(1, 25)] == [_SPEC.findings(n) for n in range(1, 25)]
    share = np.mean([[f in bigger.findings(n) for f in F] for n in range(1, 241)], axis=0)
    assert np.all(np.abs(share - 0.35) < 0.1)  # independent draws at the default prevalence (binomial sd 0.03)


@pytest.mark.parametrize("field, value, message", [
    ("n_images", 0, "n_images: must be >= 1"),
    ("prevalence", (0.3, 0.3), "prevalence: give one fraction per finding"),
    ("prevalence", (0.3, 0.0, 0.3), "prevalence: each must lie in (0, 1]"),
    ("difficulty", 2.0, "difficulty: must lie in [0, 1]"),
])
def test_spec_refuses_bad_values(field, value, message):
    with pytest.raises(ValueError) as e:
        MultiLabelSynthSpec(**{field: value})
    assert str(e.value).startswith(message)


# ---------------------------------------------------------------------------------------------------------------------
# Reading a folder through a labels file


def test_scan_labels_csv_reads_values_order_and_masks(ml_db):
    table = pd.read_csv(ml_db / LABELS_FILE)
    rec = scan_labels_csv(ml_db, ml_db / LABELS_FILE, ml_db / "masks", ml_db / "lesions")
    assert rec.multilabel and rec.class_names == list(F) and rec.disease_classes == list(F) and rec.lesion_paths is None
    assert rec.paths == [ml_db / p for p in table["path"]] and rec.mask_paths == [ml_db / "masks" / p for p in table["path"]]
    assert rec.label_matrix.dtype == bool and np.array_equal(rec.label_matrix, table[list(F)].to_numpy() == 1)
    assert np.array_equal(rec.labels, stratification_code(rec.label_matrix)) and rec.notes == []
    assert rec.label_lesion_paths == {f: [ml_db / "lesions" / f / p for p in table["path"]] for f in F}
    # classes selects and reorders the label columns: the model's output order.
    two = scan_labels_csv(ml_db, ml_db / LABELS_FILE, classes=["Viral Pneumonia", "COVID"])
    assert two.class_names == ["Viral Pneumonia", "COVID"] and two.label_lesion_paths is None and two.mask_paths == [None] * 24
    assert np.array_equal(two.label_matrix, rec.label_matrix[:, [2, 0]])
    # subset carries the multi-label fields, row by row.
    sub = rec.subset(np.array([5, 2]))
    assert np.array_equal(sub.label_matrix, rec.label_matrix[[5, 2]]) and sub.label_lesion_paths["COVID"] == [rec.label_lesion_paths["COVID"][i] for i in (5, 2)]


@pytest.fixture
def tiny(tmp_path):
    """root/{a/1.png, a/2.png, b/3.png}, and a writer of labels files into tmp_path."""
    root = tmp_path / "imgs"
    for rel in ("a/1.png", "a/2.png", "b/3.png"):
        io.write_png(root / rel, np.full((8, 8), 100, np.uint8))

    def write(text: str, name: str = "labels.csv"):
        (tmp_path / name).write_text(text)
        return tmp_path / name

    return root, write


_GOOD = "path,X,Y\na/1.png,1,0\na/2.png,0,1\nb/3.png,1,1\n"


@pytest.mark.parametrize("csv, kwargs, message", [
    (None, {}, "data.labels_csv '{d}/absent.csv' does not exist"),
    ("file,X\na/1.png,1\n", {}, "has no 'path' column"),
    ("path\na/1.png\n", {}, "has no label column besides 'path'"),
    ("path,X,Y\na/1.png,1,0\na/2.png,2,1\n", {}, "row 2 ('a/2.png'), column 'X': '2' is not 0 or 1"),
    ("path,X,Y\na/1.png,1,0\na/2.png,,1\n", {}, "row 2 ('a/2.png'), column 'X': '' is not 0 or 1"),
    ("path,X,Y\na/1.png,1,0\n\na/1.png,0,1\n", {}, "lists 'a/1.png' twice (rows 1 and 2)"),  # rows: blank lines do not count
    ("path,X,Y\na/1.png,1,0\nc/4.png,0,1\nc/5.png,0,1\n", {}, "image '{d}/imgs/c/4.png' listed in data.labels_csv is missing (and 1 more)"),
    ("path,X,Y\na/1.png,1,0\na/2.png,1,0\n", {}, "label 'Y' has no positive image"),
    ("path,X,X\na/1.png,1,0\n", {}, "has the column 'X' twice"),
    ("path,X\n/abs/1.png,1\n", {}, "path '/abs/1.png' must be relative to data.root"),
    (_GOOD, {"classes": ["X", "Z"]}, "data.classes names 'Z', which is not a column"),
    (_GOOD, {"mask_root": "nowhere"}, "data.mask_root '{d}/nowhere' does not exist"),
    (_GOOD, {"lesion_root": "nowhere"}, "data.lesion_root '{d}/nowhere' does not exist"),
    (_GOOD, {"mask_root": "."}, "data.mask_root '{d}' has no mask at any image's relative path"),
    (_GOOD, {"root": "nowhere"}, "data.root '{d}/nowhere' does not exist"),
])
def test_scan_labels_csv_refuses_in_one_line(tiny, tmp_path, csv, kwargs, message):
    root, write = tiny
    labels = tmp_path / "absent.csv" if csv is None else write(csv)
    kw = {k: (tmp_path / v if k != "classes" else v) for k, v in kwargs.items()}
    with pytest.raises(DataError) as e:
        scan_labels_csv(kw.pop("root", root), labels, **kw)
    assert message.format(d=tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_scan_labels_csv_accepts_one_label_and_notes_missing_masks(tiny, tmp_path):
    root, write = tiny
    io.write_png(tmp_path / "lesions" / "X" / "a/1.png", np.zeros((8, 8), np.uint8))
    rec = scan_labels_csv(root, write("path,X\na/1.png,1\nb/3.png,0\n"), lesion_root=tmp_path / "lesions")
    assert rec.class_names == ["X"] and rec.label_matrix.tolist() == [[True], [False]] and rec.labels.tolist() == [0, 1]
    assert rec.label_lesion_paths == {"X": [tmp_path / "lesions" / "X" / "a/1.png", None]} and rec.notes == []
    rec = scan_labels_csv(root, write("path,X,Y\na/1.png,1.0,0.0\na/2.png,1,0\nb/3.png,0,1\n"), lesion_root=tmp_path / "lesions")
    assert rec.label_matrix.tolist() == [[True, False], [True, False], [False, True]]
    assert rec.notes == ["1 of 2 images positive for X have no lesion mask: X's localisation metrics use the others",
                         "1 of 1 images positive for Y have no lesion mask: Y's localisation metrics use the others"]


def test_folder_source_with_labels_csv_splits_and_refuses(tiny, tmp_path):
    root, write = tiny
    labels = write(_GOOD)
    src = FolderSource(root=str(root), labels_csv=str(labels), classes=["Y", "X"], image_size=8)
    assert src.multilabel and src.class_names() == ["Y", "X"] and src.ground_truth == frozenset()
    rec = src.records(0)
    assert rec.label_matrix.tolist() == [[False, True], [True, False], [True, True]]
    assert set(src.split(rec, 0)) <= {"train", "val", "test"}
    src.score_only = True
    assert src.split(rec, 0).tolist() == ["test"] * 3
    src.test_size = 2
    assert sorted(src.split(rec, 0).tolist()) == ["none", "test", "test"]
    src = FolderSource(root=str(root), labels_csv=str(labels), split_csv=str(write("path,split\na/2.png,test\nb/3.png,train\n", "split.csv")))
    assert src.split(src.records(0), 0).tolist() == ["none", "test", "train"]
    for field, value, message in [("max_per_class", 5, "max_per_class: does not apply with labels_csv"),
                                  ("normal_class", "X", "normal_class: does not apply with labels_csv"),
                                  ("classes", [], "classes: name at least one label column")]:
        with pytest.raises(ValueError) as e:
            FolderSource(root=str(root), labels_csv=str(labels), **{field: value})
        assert str(e.value).startswith(message) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        FolderSource(root=str(root), labels_csv=str(tmp_path / "absent.csv")).class_names()


# ---------------------------------------------------------------------------------------------------------------------
# data=synthetic_multilabel through the pipeline


def test_data_source_through_prepare_data(cache_dir):
    """In the session cache: a multi-label smoke job with the same 40 phantoms finds them written."""
    from tests.helpers import compose
    from xbench.apps.run import build_job
    from xbench.pipeline.job import prepare_data

    cfg = compose(["data=synthetic_multilabel", "data.n_images=40", "data.image_size=32", "data.classes=[Lung_Opacity,COVID,Viral Pneumonia]"])
    source = build_job(cfg).source
    assert isinstance(source, SyntheticMultiLabelSource) and source.class_names() == ["Lung_Opacity", "COVID", "Viral Pneumonia"]
    data = prepare_data(source, 0, cache_dir)
    rec = data.records
    db = cache_dir / "synthetic_multilabel" / source.spec.key()
    assert rec.root == db and is_complete(db, source.spec) and rec.multilabel
    table = pd.read_csv(db / LABELS_FILE)
    assert np.array_equal(rec.label_matrix, table[["Lung_Opacity", "COVID", "Viral Pneumonia"]].to_numpy() == 1)
    assert data.images.shape == (40, 32, 32, 3) and data.image_size == 32
    assert set(data.split) == {"train", "val", "test"} and np.array_equal(data.split, source.split(rec, 0))
    assert np.array_equal(rec.labels, stratification_code(rec.label_matrix))
    assert all(len(v) == 40 and all(p.is_file() for p in v) for v in rec.label_lesion_paths.values())
    with pytest.raises(ValueError, match="n_images: need at least 40"):
        SyntheticMultiLabelSource(n_images=10)
    with pytest.raises(ValueError, match="classes: name findings from"):
        SyntheticMultiLabelSource(classes=["Normal"])
