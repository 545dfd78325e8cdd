"""The order records (xbench.perturbation.orders) and the curve specification's cache identity (xbench.perturbation.spec)."""

import numpy as np
import pytest

from xbench.perturbation import ORDERS as ORDER_NAMES
from xbench.perturbation import (
    PIXEL_ORDERS,
    REGION_ORDERS,
    Blur,
    Constant,
    GaussianNoise,
)
from xbench.perturbation.orders import ORDERS, order_of
from xbench.perturbation.spec import CurveSpec

# Checked by hand against Samek et al. 2017 (region orders) and Petsiuk et al. 2018 (deletion, insertion):
# (pixel, higher_is_better, gain_sign, target_step, uses_perturbation, max_steps_applies, swaps_slots, settings)
TABLE = {
    "morf": (False, True, +1, 0, True, True, False, ()),
    "lerf": (False, False, 0, 0, True, True, False, ()),
    "random": (False, None, 0, 0, True, True, False, ()),
    "deletion": (True, False, -1, 0, True, False, False, ("pixel_steps",)),
    "insertion": (True, True, +1, -1, False, False, True, ("pixel_steps", "insertion_blur")),
}


def test_order_records_match_the_hand_checked_table():
    assert list(ORDERS) == list(TABLE)
    for name, row in TABLE.items():
        o = ORDERS[name]
        assert o.name == name
        assert (o.pixel, o.higher_is_better, o.gain_sign, o.target_step, o.uses_perturbation, o.max_steps_applies, o.swaps_slots,
                o.settings) == row
    # The name tuples the rest of xbench imports are derived from the records, in the same order as before.
    assert ORDER_NAMES == ("morf", "lerf", "random", "deletion", "insertion")
    assert REGION_ORDERS == ("morf", "lerf", "random") and PIXEL_ORDERS == ("deletion", "insertion")
    assert [n for n in ORDERS if ORDERS[n].has_gain] == ["morf", "deletion", "insertion"]  # the orders controls are curved on


def test_order_of_names_the_orders_when_it_does_not_know_one():
    assert order_of("insertion") is ORDERS["insertion"]
    with pytest.raises(ValueError, match="unknown order 'morph'; choose one of .*'morf'"):
        order_of("morph")
    with pytest.raises(ValueError, match="unknown order"):
        CurveSpec(order="morph")


def test_curve_spec_identity_keeps_only_what_the_order_uses():
    base = {"perturbation": Constant(0.0), "region_size": 8, "max_steps": 4, "seed": 3, "pixel_steps": 10, "insertion_blur": 3.0}
    morf = CurveSpec("morf", **base).identity()
    assert morf == {"order": "morf", "perturbation": Constant(0.0).describe(), "region": 8, "max_steps": 4, "seed": 3}
    assert CurveSpec("morf", **{**base, "dtype": "bfloat16"}).identity() == {**morf, "dtype": "bfloat16"}
    assert CurveSpec("deletion", **base).identity() == {**morf, "order": "deletion", "max_steps": None, "pixel_steps": 10}
    ins = CurveSpec("insertion", **base).identity()
    assert ins == {**morf, "order": "insertion", "perturbation": {"name": "insertion"}, "max_steps": None, "pixel_steps": 10,
                   "insertion_blur": 3.0}
    assert CurveSpec("insertion", **{**base, "perturbation": GaussianNoise(0.3), "max_steps": 2}).identity() == ins  # ignored settings
    assert CurveSpec("insertion", insertion_blur=2).change == Blur(2.0) and CurveSpec("morf").change == GaussianNoise(0.1)
    with pytest.raises(ValueError, match="pixel_steps must be resolved"):
        CurveSpec("deletion").identity()
    assert CurveSpec("deletion", region_size=8).resolved(24, 20).pixel_steps == 9  # L of the 3 x 3 grid
    assert CurveSpec("morf", region_size=8).resolved(24, 20).pixel_steps is None


# The curve-cache keys scoring.method_curves wrote at c91d202 (before CurveSpec), per
# "order|dtype|perturbation|max_steps|pixel_steps|insertion_blur": [chunk 0's key, chunk 1's key].
PINNED_KEYS = {
    "deletion|bfloat16|constant|4|10|3.0": ["ea47a1228ec8f5494d4e", "ac94f2980c4642429261"],
    "deletion|bfloat16|constant|None|None|5.0": ["f5ebb2ca8e630dc60888", "96baa53318cc9c1a2098"],
    "deletion|bfloat16|gaussian|4|10|3.0": ["6bf8d40e62d2f0f19f6f", "e6831a1a7dec3648d4f7"],
    "deletion|bfloat16|gaussian|None|None|5.0": ["c5d04c99cdb32f388a28", "90e6e244c959b52e390a"],
    "deletion|float32|constant|4|10|3.0": ["118c0fb3af5fa97e1868", "bebaeef2bd607d791d1c"],
    "deletion|float32|constant|None|None|5.0": ["664a8e9d6860f4796a46", "dd1e754bbd62ab90eadd"],
    "deletion|float32|gaussian|4|10|3.0": ["ddcccfec372a785b3343", "22bd52daf0c983c27901"],
    "deletion|float32|gaussian|None|None|5.0": ["affcbcc06ada401c96ea", "0b37387e196cdf02f74d"],
    "insertion|bfloat16|constant|4|10|3.0": ["1c4821afc193e036db61", "d7d7917a19f6179eac3e"],
    "insertion|bfloat16|constant|None|None|5.0": ["d6e8bcd920a16e20212f", "e61c97196139b35310a6"],
    "insertion|bfloat16|gaussian|4|10|3.0": ["1c4821afc193e036db61", "d7d7917a19f6179eac3e"],
    "insertion|bfloat16|gaussian|None|None|5.0": ["d6e8bcd920a16e20212f", "e61c97196139b35310a6"],
    "insertion|float32|constant|4|10|3.0": ["5f700ca711675f3b23a2", "fe32ae6140e868df6cc1"],
    "insertion|float32|constant|None|None|5.0": ["6c5c19c0330a63436e12", "9f1f1adf7d20d8525f17"],
    "insertion|float32|gaussian|4|10|3.0": ["5f700ca711675f3b23a2", "fe32ae6140e868df6cc1"],
    "insertion|float32|gaussian|None|None|5.0": ["6c5c19c0330a63436e12", "9f1f1adf7d20d8525f17"],
    "lerf|bfloat16|constant|4|10|3.0": ["7c8aede5bd85ebd53d7d", "229c5dd011337c000cb5"],
    "lerf|bfloat16|constant|None|None|5.0": ["84278f9ad779889be4e3", "600ea6ca6446a87c3421"],
    "lerf|bfloat16|gaussian|4|10|3.0": ["14a8594fe94e3f1ff27e", "68a2fb9e50ee82dca0c9"],
    "lerf|bfloat16|gaussian|None|None|5.0": ["6c59b4018d4548caf447", "e1b65339b7c20e018757"],
    "lerf|float32|constant|4|10|3.0": ["039cbad2048284e74e3d", "87403c710f02054b1b38"],
    "lerf|float32|constant|None|None|5.0": ["f71a80598cecc0167fbf", "f0e94b109618cc0da7e6"],
    "lerf|float32|gaussian|4|10|3.0": ["31f93518db36c26cbd04", "6e7960ecd14e61a4ae8b"],
    "lerf|float32|gaussian|None|None|5.0": ["fb9ecb3ceccc368684f2", "d71680b2ecc6f0c544a1"],
    "morf|bfloat16|constant|4|10|3.0": ["2e2fbcefa83f0eba6e6e", "3609009d05fbc92b50ed"],
    "morf|bfloat16|constant|None|None|5.0": ["509628d672e1be8c224d", "aa69a4157d6412fda5db"],
    "morf|bfloat16|gaussian|4|10|3.0": ["078ad023913db7d726e3", "63f7b990d6ac2f5a5a40"],
    "morf|bfloat16|gaussian|None|None|5.0": ["0cb093d21af0f9d5c99e", "03edc5200425be95524e"],
    "morf|float32|constant|4|10|3.0": ["fc6d10fc4a77d8e3f198", "438214cd36dde0a3b7d9"],
    "morf|float32|constant|None|None|5.0": ["f797436c818683454e5b", "580e0f2c3aa0ab87f33e"],
    "morf|float32|gaussian|4|10|3.0": ["629dc5b0a9c3263345f6", "934ccc1bff763327cab3"],
    "morf|float32|gaussian|None|None|5.0": ["4bcdaef92e1abb94546e", "95efcd2669beca2b3eb1"],
    "random|bfloat16|constant|4|10|3.0": ["cddf4f97d3ab7be1c332", "4954b7f4ad79e57d0ec4"],
    "random|bfloat16|constant|None|None|5.0": ["2cfd05546f45621045ea", "a639da45786c686e52df"],
    "random|bfloat16|gaussian|4|10|3.0": ["7d80c6dfc1540c86760e", "5205112525f308836b5a"],
    "random|bfloat16|gaussian|None|None|5.0": ["8198d7b66363a729aaea", "6cd4cfe034448a3c6e30"],
    "random|float32|constant|4|10|3.0": ["7080b53e9665e7b72417", "d79cb04a8e099436a92e"],
    "random|float32|constant|None|None|5.0": ["25f44ecff4e8b8bf6a3a", "770d47b973b88e7a5ced"],
    "random|float32|gaussian|4|10|3.0": ["ae9eb6a5980c3bfed985", "e19b149f0925a10fc4fe"],
    "random|float32|gaussian|None|None|5.0": ["b1d585529160b39dfe87", "474d6ab56d6895ea53c8"],
}


def test_curve_cache_keys_are_unchanged(tmp_path, monkeypatch):
    from xbench.models import precision
    from xbench.pipeline import scoring
    from xbench.pipeline.settings import ScoreSettings
    from xbench.pipeline.store import CurveStore

    monkeypatch.setattr(precision, "with_compute_dtype", lambda model, dtype: model)  # keys only: no model runs
    keys = {}

    class Recording(CurveStore):
        def fetch(self, name, compute, rows):
            keys.setdefault(self.case, []).append(name)
            return np.zeros((rows, 3), np.float32), True

    rng = np.random.default_rng(0)
    images = (rng.random((3, 24, 24, 3)) * 255).astype(np.uint8)
    heat = rng.random((3, 24, 24)).astype(np.float32)
    rows, targets = np.array([5, 7, 9]), np.array([1, 0, 1])
    store = Recording(tmp_path, "m")
    for case in PINNED_KEYS:
        order, dtype, pert, ms, ps, blur = case.split("|")
        s = ScoreSettings(orders=[order], max_steps=None if ms == "None" else int(ms), pixel_steps=None if ps == "None" else int(ps),
                          insertion_blur=float(blur), dtype=dtype, chunk_images=2)
        batch = scoring._Batch(scoring.ScoredImages(images, np.arange(3)), rows, targets, targets, scoring.GroundTruth(), 8,
                               [slice(0, 2), slice(2, 3)], 3, ["a", "b"], {"computed": 0, "reused": 0})
        store.case = case
        scoring.method_curves(None, batch, "gradcam", heat, order, GaussianNoise(0.1) if pert == "gaussian" else Constant(0.0), s, store)
    assert keys == PINNED_KEYS
