import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xbench.core.errors import DataError
from xbench.data.decode import CorruptImage, decode_image
from xbench.data.phantoms import RADIOGRAPHY_CLASSES
from xbench.data.split import balanced_subset, stratified_split
from xbench.pipeline.sources import PediatricSource, RadiographySource
from xbench.pipeline.sources.pediatric import patient_id, scan_pediatric
from xbench.pipeline.sources.radiography import scan_radiography
from xbench.pipeline.sources.synthetic import MARKER_FILE
from xbench.pipeline.store.decoded import load_decoded


def test_phantom_database_has_the_radiography_layout(phantom_db):
    for c in RADIOGRAPHY_CLASSES:
        imgs = sorted((phantom_db / c / "images").iterdir())
        assert len(imgs) == 12
        assert (phantom_db / c / "images" / f"{c}-1.png").is_file()
        with Image.open(phantom_db / c / "images" / f"{c}-1.png") as im:
            assert im.size == (299, 299) and im.mode == "L"
        with Image.open(phantom_db / c / "masks" / f"{c}-1.png") as im:
            assert im.size == (256, 256)
        assert (phantom_db / c / "lesions" / f"{c}-1.png").is_file()
    spec = json.loads((phantom_db / MARKER_FILE).read_text())["spec"]
    assert spec["n_per_class"] == 12


def test_scan_radiography_labels_and_natural_order(phantom_db):
    rec = scan_radiography(phantom_db)
    assert rec.class_names == list(RADIOGRAPHY_CLASSES)
    assert len(rec) == 48 and np.bincount(rec.labels).tolist() == [12] * 4
    covid = [p.name for p, l in zip(rec.paths, rec.labels) if l == 0]
    assert covid[:3] == ["COVID-1.png", "COVID-2.png", "COVID-3.png"] and covid[-1] == "COVID-12.png"
    assert rec.has_masks and rec.disease_classes == ["COVID", "Lung_Opacity", "Viral Pneumonia"]
    sub = scan_radiography(phantom_db, classes=["Normal", "COVID"])
    assert sub.class_names == ["Normal", "COVID"] and len(sub) == 24


def test_split_is_stratified_disjoint_and_deterministic():
    labels = np.repeat(np.arange(4), 1345)
    s1 = stratified_split(labels, (0.8, 0.1, 0.1), seed=7)
    s2 = stratified_split(labels, (0.8, 0.1, 0.1), seed=7)
    s3 = stratified_split(labels, (0.8, 0.1, 0.1), seed=8)
    assert np.array_equal(s1, s2) and not np.array_equal(s1, s3)
    # The paper's counts: 4,304 / 536 / 540, i.e. 1,076 / 134 / 135 per class.
    assert [(s1 == s).sum() for s in ("train", "val", "test")] == [4304, 536, 540]
    for c in range(4):
        assert [(s1[labels == c] == s).sum() for s in ("train", "val", "test")] == [1076, 134, 135]


def test_group_split_keeps_patients_together():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(200), 3).astype(str)
    labels = np.repeat(rng.integers(0, 3, 200), 3)
    s = stratified_split(labels, (0.7, 0.15, 0.15), 0, groups)
    for g in np.unique(groups):
        assert len(set(s[groups == g])) == 1


def test_balanced_subset_downsamples_to_the_smallest_class():
    labels = np.array([0] * 3616 + [1] * 6012 + [2] * 10192 + [3] * 1345)
    keep = balanced_subset(labels, seed=0)
    assert np.bincount(labels[keep]).tolist() == [1345] * 4
    assert np.array_equal(keep, balanced_subset(labels, seed=0))


def test_source_writes_the_same_split_for_the_same_seed(phantom_db):
    src = RadiographySource(str(phantom_db), fractions=(0.5, 0.25, 0.25), image_size=32)
    rec = src.records(0)
    a, b = src.split(rec, 0), src.split(rec, 0)
    assert np.array_equal(a, b)
    assert {(a == s).sum() for s in ("train", "val", "test")} == {24, 12}


# --- bad input ------------------------------------------------------------------

def test_missing_root_names_path_and_layout(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*COVID,Lung_Opacity,Normal,Viral Pneumonia"):
        scan_radiography(tmp_path / "nope")


def test_missing_class_folder(tmp_path):
    (tmp_path / "COVID" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"class folder .*Lung_Opacity' is missing"):
        scan_radiography(tmp_path)


def test_empty_class_and_non_images_ignored(tmp_path):
    for c in RADIOGRAPHY_CLASSES:
        (tmp_path / c / "images").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / c / "images" / f"{c}-1.png")
    (tmp_path / "Normal" / "images" / "Normal-1.png").unlink()
    (tmp_path / "Normal" / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "Normal" / "images" / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(DataError, match=r"class 'Normal' has no images"):
        scan_radiography(tmp_path)


def test_missing_masks_turn_mask_metrics_off(tmp_path):
    for c in RADIOGRAPHY_CLASSES:
        (tmp_path / c / "images").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / c / "images" / f"{c}-1.png")
    rec = scan_radiography(tmp_path)
    assert not rec.has_masks and any("lung share" in n for n in rec.notes)


def _write(path: Path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def test_image_conversions(tmp_path):
    gray = np.tile(np.arange(16, dtype=np.uint8)[None, :] * 16, (16, 1))
    out = decode_image(_write(tmp_path / "g.png", gray), 16)
    assert out.shape == (16, 16, 3) and np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    assert np.array_equal(decode_image(_write(tmp_path / "a.png", rgba), 16), out)
    pal = Image.fromarray(gray).convert("P")
    pal.save(tmp_path / "p.png")
    assert np.array_equal(decode_image(tmp_path / "p.png", 16), out)
    # 12-bit data in a 16-bit PNG is scaled by 4095, not 65535.
    g16 = (gray.astype(np.int64) * 4095 // 240).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "w.png")
    dec = decode_image(tmp_path / "w.png", 16)[..., 0]
    assert dec.max() == 255 and np.abs(dec.astype(int) - gray.astype(int) * 255 // 240).max() <= 1


def test_corrupt_truncated_zero_byte_are_skipped_and_listed(tmp_path):
    good = _write(tmp_path / "ok.png", np.full((20, 20), 100, np.uint8))
    zero = tmp_path / "zero.png"
    zero.write_bytes(b"")
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good.read_bytes()[:40])
    junk = tmp_path / "junk.jpeg"
    junk.write_bytes(b"this is not a jpeg")
    for bad in (zero, trunc, junk):
        with pytest.raises(CorruptImage):
            decode_image(bad, 8)
    paths = [good, zero, trunc, junk]
    dec = load_decoded(paths, 8, tmp_path / "cache")
    assert dec.ok.tolist() == [0] and len(dec.skipped) == 3
    assert dec.array.shape == (4, 8, 8, 3) and (dec.array[0] == 100).all()
    with pytest.raises(DataError, match=r"3 image file\(s\) cannot be decoded.*data.on_corrupt=skip"):
        load_decoded(paths, 8, tmp_path / "cache", on_corrupt="error")


def test_cache_hit_decodes_nothing(tmp_path, monkeypatch):
    paths = [_write(tmp_path / f"{i}.png", np.full((10, 10), i * 20, np.uint8)) for i in range(5)]
    first = load_decoded(paths, 8, tmp_path / "c")
    import xbench.pipeline.store.decoded as cache

    monkeypatch.setattr(cache, "decode_image", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    second = load_decoded(paths, 8, tmp_path / "c")
    assert np.array_equal(np.asarray(first.array), np.asarray(second.array))
    assert isinstance(second.array, np.memmap)
    # Touching a file invalidates the entry.
    _write(paths[0], np.zeros((10, 10), np.uint8))
    with pytest.raises(AssertionError, match="decoded again"):
        load_decoded(paths, 8, tmp_path / "c")


# --- pediatric ---------------------------------------------------------------------

def _pediatric_tree(root: Path):
    rng = np.random.default_rng(0)
    px = lambda: rng.integers(0, 255, (12, 12), dtype=np.uint8)
    for split, n_pat in (("train", 30), ("test", 6)):
        for p in range(n_pat):
            pid = p + (1000 if split == "test" else 0)
            for k in range(2):
                _write(root / split / "PNEUMONIA" / f"person{pid}_bacteria_{k}.jpeg", px())
                _write(root / split / "PNEUMONIA" / f"person{pid}_virus_{k + 5}.jpeg", px())
            _write(root / split / "NORMAL" / f"IM-{pid:04d}-0001.jpeg", px())
    _write(root / "val" / "NORMAL" / "IM-9999-0001.jpeg", px())
    return root


def test_pediatric_three_class_and_patient_split(tmp_path):
    root = _pediatric_tree(tmp_path / "chest_xray")
    assert patient_id(Path("person12_virus_3.jpeg")) == "person12"
    assert patient_id(Path("NORMAL2-IM-1427-0001.jpeg")) == "NORMAL2-IM-1427"
    rec = scan_pediatric(root, three_class=True)
    assert rec.class_names == ["bacteria", "normal", "virus"]
    src = PediatricSource(str(root), val_fraction=0.2, image_size=12)
    split = src.split(rec, seed=0)
    # Test is exactly the shipped test folder; val comes from train only.
    is_test_file = np.array(["/test/" in str(p) for p in rec.paths])
    assert np.array_equal(split == "test", is_test_file)
    assert (split == "val").sum() > 0
    patients = np.array([patient_id(p) for p in rec.paths])
    for pat in np.unique(patients[split != "test"]):
        assert len(set(split[(patients == pat) & (split != "test")])) == 1
    two = scan_pediatric(root, three_class=False)
    assert two.class_names == ["NORMAL", "PNEUMONIA"] and len(two) == len(rec)


def test_pediatric_missing_split(tmp_path):
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    with pytest.raises(DataError, match="PNEUMONIA' is missing"):
        scan_pediatric(tmp_path)


def test_atomic_writes_leave_no_temp_files_and_normal_permissions(tmp_path):
    import os

    from xbench.core import io

    io.write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_shortcut_phantoms_carry_marker_masks_and_the_test_split_can_differ(tmp_path):
    from xbench.pipeline.sources import SyntheticSource

    clean = SyntheticSource(n_per_class=10, shortcut_class="Normal", shortcut_fraction=0.0, test_shortcut_fraction=1.0)
    clean.prepare(tmp_path)
    rec = clean.records(0)
    split = clean.split(rec, 0)
    test, train = split == "test", split == "train"
    normal = rec.labels == rec.class_names.index("Normal")
    # Training images come from the clean database (a markers/ folder without files: no marker anywhere) ...
    assert all(rec.marker_paths[i] is None for i in np.flatnonzero(train))
    assert all(rec.paths[i].is_relative_to(Path(clean.root)) for i in np.flatnonzero(train))
    # ... the test split's Normal images from the marked one, the same phantoms otherwise.
    assert all(rec.marker_paths[i] is not None for i in np.flatnonzero(test & normal))
    assert all(rec.marker_paths[i] is None for i in np.flatnonzero(test & ~normal))
    assert not any(rec.paths[i].is_relative_to(Path(clean.root)) for i in np.flatnonzero(test))
