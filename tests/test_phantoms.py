import numpy as np
import pytest

from xbench.data.phantoms import (
    RADIOGRAPHY_CLASSES,
    lesion_amplitude,
    make_phantom,
    resize_mask,
)


def test_deterministic_per_seed_and_index():
    a = make_phantom("COVID", 5, seed=1, size=96)
    b = make_phantom("COVID", 5, seed=1, size=96)
    c = make_phantom("COVID", 6, seed=1, size=96)
    d = make_phantom("COVID", 5, seed=2, size=96)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.lesion, b.lesion)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.image, d.image)


@pytest.mark.parametrize("label", RADIOGRAPHY_CLASSES)
def test_class_pattern_sits_inside_the_lungs(label):
    p = make_phantom(label, 0, seed=0, size=128)
    assert p.image.dtype == np.uint8 and p.image.shape == (128, 128)
    assert p.lungs.mean() > 0.1  # two lung fields of a plausible size
    if label == "Normal":
        assert not p.lesion.any()
    else:
        assert p.lesion.sum() > 10
        assert not (p.lesion & ~p.lungs).any()


def test_covid_is_bilateral_and_opacity_is_focal():
    cov = make_phantom("COVID", 1, seed=0, size=128)
    opa = make_phantom("Lung_Opacity", 1, seed=0, size=128)
    mid = 64
    assert cov.lesion[:, :mid].any() and cov.lesion[:, mid:].any()
    from scipy.ndimage import label

    assert label(opa.lesion)[1] == 1


def test_lesions_raise_the_lung_intensity_and_difficulty_lowers_it():
    easy = make_phantom("Lung_Opacity", 2, seed=0, size=128, difficulty=0.0)
    hard = make_phantom("Lung_Opacity", 2, seed=0, size=128, difficulty=1.0)
    gain_easy = easy.image[easy.lesion].mean() - easy.image[easy.lungs & ~easy.lesion].mean()
    gain_hard = hard.image[hard.lesion].mean() - hard.image[hard.lungs & ~hard.lesion].mean()
    assert gain_easy > gain_hard > 0
    assert lesion_amplitude(0.0) > lesion_amplitude(1.0) > 0
    with pytest.raises(ValueError):
        lesion_amplitude(1.5)


def test_marker_is_bright_and_outside_the_lungs():
    p = make_phantom("Normal", 0, seed=0, size=128, marker=True)
    assert p.marker.any() and not (p.marker & p.lungs).any()
    assert p.image[p.marker].mean() > 200


def test_resize_mask_nearest():
    m = np.zeros((4, 4), bool)
    m[:2, :2] = True
    r = resize_mask(m, 8)
    assert r.shape == (8, 8) and r[:4, :4].all() and not r[4:, :].any()


def test_xbench_synth_cli(tmp_path, capsys):
    from PIL import Image

    from xbench.apps.synth import main

    assert main(["--out", str(tmp_path / "db"), "--n-per-class", "2", "--workers", "1", "--shortcut-class", "Normal", "--shortcut-fraction", "1.0"]) == 0
    for c in RADIOGRAPHY_CLASSES:
        assert sorted(p.name for p in (tmp_path / "db" / c / "images").iterdir()) == [f"{c}-1.png", f"{c}-2.png"]
    with Image.open(tmp_path / "db" / "Normal" / "images" / "Normal-1.png") as im:
        marked = np.asarray(im)
    assert marked[int(299 * 0.06) + 3, int(299 * 0.08) + 3] > 230  # the shortcut marker
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--difficulty", "3"])
    assert "--difficulty must lie in [0, 1]" in capsys.readouterr().err
