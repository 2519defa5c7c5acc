"""Per-keypoint confidence: a heatmap's spread, an ensemble's disagreement, the pipeline's
confidences in picture units, keypoints.csv and overlays, how well confidences rank errors,
and faces' estimated turn."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import face_scene

from fkd_jax.evaluation import metrics as pm
from fkd_jax.geometry import face_shape_stats
from fkd_jax.geometry import framing as geo
from fkd_jax.geometry import keypoints
from fkd_jax.pictures import location, reading


def test_heatmap_moments_mean_is_soft_argmax_and_spread_is_the_maps_radius():
    from fkd_jax.models.networks import heatmap_moments, soft_argmax

    h = w = 8
    logits = np.full((2, h, w, 3), -1e4, np.float32)
    logits[0, 2, 5, 0] = 0.0  # one sharp cell: the cell's centre, no spread
    logits[0, :, :, 1] = 0.0  # flat: the centre, the grid's RMS radius
    logits[0, 1, 1, 2] = logits[0, 1, 6, 2] = 0.0  # two cells apart: spread half the gap
    logits[1] = np.random.default_rng(0).normal(size=(h, w, 3))
    mean, spread = map(np.asarray, heatmap_moments(logits))
    np.testing.assert_allclose(mean, np.asarray(soft_argmax(logits)), atol=1e-6)
    cell = 2.0 / w  # normalised width of a cell
    np.testing.assert_allclose(mean[0, 0], [-1 + 5.5 * cell, -1 + 2.5 * cell], atol=1e-6)
    np.testing.assert_allclose(spread[0, 0], 0.0, atol=1e-3)
    centres = (np.arange(w) + 0.5) * cell - 1
    np.testing.assert_allclose(spread[0, 1], np.sqrt(2 * np.mean(centres ** 2)), rtol=1e-5)
    np.testing.assert_allclose(spread[0, 2], 2.5 * cell, rtol=1e-4)


def _random_unet_run(members: int):
    from flax import nnx

    from configs import unet_pair
    from fkd_jax import models
    from fkd_jax.inference.predictor import Run

    c = unet_pair.get_config()
    c.model.widths = (4, 8, 16, 32)
    params = [nnx.split(models.create_model(c.model, 15, seed))[1] for seed in range(members)]
    graphdef = nnx.split(models.create_model(c.model, 15, 0))[0]
    return Run(c, graphdef, params[0] if members == 1 else tuple(params), {}, members)


@pytest.mark.parametrize("members", [1, 2])
def test_with_spread_gives_the_same_keypoints_and_a_spread_in_crop_pixels(members):
    from fkd_jax.data import synthetic
    from fkd_jax.inference.predictor import Predictor

    predictor = Predictor.from_run(_random_unet_run(members), batch_size=4)
    images = synthetic.generate_faces(5, 0)[0][..., None].astype(np.float32) / 255
    for tta in (False, True):
        pred, spread = predictor.with_spread(images, tta=tta)
        np.testing.assert_allclose(pred, predictor(images, tta=tta), atol=1e-4)
        assert spread.shape == (5, 15) and np.all(spread > 0)
        # an untrained net's maps are near flat: about the 96-px square's RMS radius (39.2 px),
        # never beyond its corners' distance from the centre
        assert np.all(spread < 48 * np.sqrt(2)) and np.all(spread > 25)


def test_an_ensembles_spread_counts_its_members_disagreement(monkeypatch):
    import jax.numpy as jnp

    from fkd_jax import models
    from fkd_jax.inference import predictor

    def fake_member(points):  # a regression model's (B, K, 2) answer and no spread of its own
        return points, jnp.zeros(points.shape[:2])

    a, b = jnp.zeros((1, 2, 2)), jnp.array([[[0.2, 0.0], [0.0, 0.0]]])
    answers = iter([fake_member(a), fake_member(b)])
    monkeypatch.setattr(models, "apply_with_spread", lambda graphdef, p, images: next(answers))
    mean, spread = predictor.apply_members_with_spread(None, 2, ("p0", "p1"),
                                                       jnp.zeros((1, 96, 96, 1)))
    np.testing.assert_allclose(np.asarray(mean), [[0.1, 0.0, 0.0, 0.0]], atol=1e-7)
    np.testing.assert_allclose(np.asarray(spread), [[0.1, 0.0]], atol=1e-7)  # half the gap


def test_confidence_falls_with_the_spread_and_is_one_minus_1_over_e_at_the_threshold():
    eye = 50.0
    r = location.CONFIDENT_WITHIN * eye
    at_r = r / location.SPREAD_SCALE  # a spread that, scaled, is the threshold's radius
    conf = location.confidence_from_spread(np.array([0.0, at_r / 2, at_r, 2 * at_r, np.nan]),
                                           eye)
    assert conf[0] == 1.0 and np.all(np.diff(conf[:4]) < 0)
    assert conf[2] == pytest.approx(1 - np.exp(-1))
    assert np.isnan(conf[4])


class SpreadModel:
    """A stand-in predictor: the mean face where its training square is the crop, each
    point's spread in crop pixels given; `with_spread` as Predictor has it."""
    image_size = 96

    def __init__(self, spread_px):
        mean = np.asarray(face_shape_stats.MEAN_SHAPE, np.float64)
        self.rest = geo.framing_from_keypoints(mean, rotate=True).to_crop(mean)
        self.spread_px = np.asarray(spread_px, np.float32)

    def __call__(self, crops, tta=False):
        return np.tile(self.rest, (len(crops), 1))

    def with_spread(self, crops, tta=False):
        return self(crops), np.tile(self.spread_px, (len(crops), 1))


class CountingSpreadModel(SpreadModel):
    """SpreadModel that records each call's (number of crops, tta)."""

    def __init__(self, spread_px):
        super().__init__(spread_px)
        self.calls = []

    def with_spread(self, crops, tta=False):
        self.calls.append((len(crops), tta))
        return super().with_spread(crops, tta)


def test_located_faces_carry_spreads_in_picture_pixels_and_confidences():
    rgb, _ = face_scene(0)
    gray = rgb[..., 1]
    spread = np.full(15, 2.0, np.float32)
    spread[3] = 90.0  # one point the model cannot place
    faces = location.find_faces([gray], SpreadModel(spread), boxes=[[
        location.Detection((60, 20, 192, 192), 1.0)]], confirm=False)[0]
    face = faces[0]
    side = geo.framing_from_keypoints(face.history[-2], rotate=True).side
    np.testing.assert_allclose(face.spread_px, spread * side / 96, rtol=1e-4)
    conf = face.confidence
    assert conf.shape == (15,) and conf[3] < 0.1 and np.all(np.delete(conf, 3) > 0.9)
    np.testing.assert_allclose(face.kaggle15_confidence, conf)
    # a bare function gives no spread: NaN confidences, keypoints as before
    bare = location.find_faces([gray], SpreadModel(spread).__call__, boxes=[[
        location.Detection((60, 20, 192, 192), 1.0)]], confirm=False)[0][0]
    assert np.all(np.isnan(bare.confidence))
    np.testing.assert_array_equal(bare.keypoints_px, face.keypoints_px)


def test_keypoints_csv_has_confidences_and_a_68_point_model_also_writes_landmarks(tmp_path):
    import pandas as pd

    from fkd_jax.pictures import outputs

    spread = np.linspace(1, 30, 15)
    kp = np.asarray(face_shape_stats.MEAN_SHAPE, np.float64) * 3
    face = location.Face((0, 0, 300, 300), 0.9, kp, spread_px=spread)
    rows = outputs.face_rows("a.jpg", 0, [face]) + outputs.face_rows("b.jpg", 0, [])
    table = pd.read_csv(__import__("io").StringIO(outputs.rows_to_csv(rows)))
    conf = table.loc[0, [f"{n}_confidence" for n in keypoints.KEYPOINT_NAMES]].to_numpy(float)
    np.testing.assert_allclose(conf, np.round(face.confidence, 2))
    assert table.loc[1, "file"] == "b.jpg" and np.isnan(table.loc[1, "face"])

    ibug = keypoints.IBUG68
    kp68 = np.random.default_rng(0).uniform(50, 250, 136)
    results = outputs.Results(tmp_path, overlays=False, keypoint_set=ibug)
    results.add("c.jpg", 0, [location.Face((0, 0, 300, 300), 0.9, kp68,
                                           spread_px=np.full(68, 3.0))])
    results.add("d.jpg", 0, [])
    results.finish(2, {}, None, 8, 0.0)
    landmarks = pd.read_csv(tmp_path / "landmarks.csv")
    assert list(landmarks.columns) == list(outputs.landmark_columns(ibug))
    np.testing.assert_allclose(landmarks.loc[0, list(ibug.columns)].to_numpy(float), kp68,
                               atol=0.005)
    kaggle = pd.read_csv(tmp_path / "keypoints.csv")
    np.testing.assert_allclose(kaggle.loc[0, list(keypoints.COLUMNS)].to_numpy(float),
                               keypoints.kaggle15_from_ibug68(kp68), atol=0.005)
    assert len(landmarks) == len(kaggle) == 2


def test_unsure_points_are_drawn_hollow():
    from fkd_jax.pictures import drawing

    kp = np.asarray(face_shape_stats.MEAN_SHAPE, np.float64) * 12
    spread = np.full(15, 0.5)
    spread[10] = 400.0  # the nose tip: unsure
    picture = np.zeros((1200, 1200), np.uint8)  # markers of radius 5 px
    out = drawing.draw_faces(picture, [location.Face((0, 0, 1, 1), 1.0, kp, spread_px=spread)])
    pts = keypoints.as_points(kp)
    at = [out[int(y), int(x)].max() for x, y in pts]  # the marker's centre pixel
    assert at[10] == 0 and all(v > 0 for i, v in enumerate(at) if i != 10)
    nose = pts[10]
    ring = out[int(nose[1]) - 8:int(nose[1]) + 9, int(nose[0]) - 8:int(nose[0]) + 9]
    assert ring.max() > 0  # its ring is drawn


def test_fit_scale_matches_the_mean_confidence_to_the_share_within():
    rng = np.random.default_rng(0)
    spread = rng.uniform(0.05, 0.6, 2000)
    within = rng.random(2000) < 0.9
    c = pm.fit_spread_scale(spread, within, 0.1)
    assert np.mean(1 - np.exp(-0.01 / (c * spread) ** 2)) == pytest.approx(within.mean(),
                                                                          abs=1e-6)


def test_auroc_and_confidence_report():
    assert pm.auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert pm.auroc([1, 2, 3], [True, True, True]) != pm.auroc([1, 2, 3], [True, True, True])
    err = np.array([0.01, 0.02, 0.5, 0.03, 0.3])
    conf = np.array([0.9, 0.8, 0.1, 0.7, 0.2])
    report = pm.confidence_report(conf, err)
    assert report["auroc_wrong"] == 1.0 and report["sure_share"] == 0.6
    assert report["error_sure"] == pytest.approx(0.02) and report["wrong_share_sure"] == 0.0
    assert pm.confidence_report(1 - conf, err)["auroc_wrong"] == 0.0


@pytest.mark.parametrize("yaw", [0.0, 20.0, 40.0, 60.0])
def test_estimated_yaw_inverts_the_eye_width_model(yaw):
    a = np.radians(30.0)
    ratio = np.cos(np.radians(yaw) + a) / np.cos(np.radians(yaw) - a)
    kp = np.asarray(face_shape_stats.MEAN_SHAPE, np.float64).copy()
    p = keypoints.as_points(kp)
    names = keypoints.KEYPOINT_NAMES
    inner, outer = names.index("right_eye_inner_corner"), names.index("right_eye_outer_corner")
    p[outer] = p[inner] + (p[outer] - p[inner]) * ratio * (
        np.linalg.norm(p[names.index("left_eye_inner_corner")]
                       - p[names.index("left_eye_outer_corner")])
        / np.linalg.norm(p[outer] - p[inner]))
    assert float(pm.estimated_yaw_deg(p.reshape(-1))) == pytest.approx(yaw, abs=1e-6)
    bins = pm.by_turn([0.03, 0.2], [5.0, 50.0])
    assert [b["yaw_deg"] for b in bins] == [[0.0, 15.0], [45.0, 90.0]]
    assert bins[1]["failure_rate"] == 1.0


def test_views_at_several_scales_average_in_picture_pixels_and_their_gap_adds_to_the_spread():
    """A model that answers the same crop points whatever it is shown: its views at sides
    0.9 and 1.1 land either side of the scale-1 answer, whose picture points are their mean;
    the spread is the views' RMS spread with their half-gap added in quadrature."""
    gray = np.zeros((300, 300), np.uint8)
    model = SpreadModel(np.full(15, 2.0, np.float32))
    square = geo.Framing(150.0, 140.0, 120.0, 0.2)
    mean, spread = reading.read_views([gray], [0], [square], model, (0.9, 1.1))
    np.testing.assert_allclose(mean[0], square.to_picture(model.rest), atol=1e-9)
    gap = 0.1 * np.linalg.norm(keypoints.as_points(model.rest) - 48, axis=1) * 120 / 96
    want = np.sqrt(2.0 ** 2 * (120 / 96) ** 2 * (0.81 + 1.21) / 2 + gap ** 2)
    np.testing.assert_allclose(spread[0], want, rtol=1e-5)


class SpotNet:
    """A network for the real Predictor: every point at a fixed offset from the centroid of
    the crop's bright spot, each with its own spread (normalised units), so that mirroring
    moves and relabels points; `calls` counts its batches."""

    def __init__(self, offset: float = 0.2):
        rng = np.random.default_rng(0)
        self.offsets = rng.uniform(-offset, offset, 30).astype(np.float32)
        self.spreads = rng.uniform(0.01, 0.05, 15).astype(np.float32)
        self.calls = 0

    def __call__(self, images):  # (B, S, S, 1) -> (B, 30), (B, 15) normalised
        self.calls += 1
        w = images[..., 0] ** 4 + 1e-12
        idx = np.arange(images.shape[1]) + 0.5
        x = (w.sum(1) * idx).sum(1) / w.sum((1, 2))
        y = (w.sum(2) * idx).sum(1) / w.sum((1, 2))
        spot = keypoints.to_normalised(np.stack([x, y], 1), images.shape[1])
        return np.tile(spot, 15) + self.offsets, np.tile(self.spreads, (len(images), 1))


def spot_picture(spots):
    yy, xx = np.mgrid[0:240, 0:320] + 0.5
    gray = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.0 ** 2)) for x, y in spots)
    return np.round(255 * gray).astype(np.uint8)


def test_views_through_the_predictor_find_a_spot_in_the_mirror_and_at_every_scale():
    """A predictor (the real class, so the mirror image's answer is un-mirrored by it) whose
    network reads the centroid of a bright spot: read at sides 0.8-1.25 with the mirror,
    each face's spot comes back where it was drawn, to a small fraction of a pixel."""
    from fkd_jax.inference.predictor import Predictor

    net = SpotNet(offset=0.0)
    spots = [(101.3, 88.6), (230.8, 150.2)]
    squares = [geo.Framing(x + 4, y - 3, 70.0, a) for (x, y), a in zip(spots, (0.0, -0.3))]
    mean, _ = reading.read_views([spot_picture(spots)], [0, 0], squares,
                                 Predictor(lambda x: net(x)[0], batch_size=4), (0.8, 1.0, 1.25))
    for (x, y), m in zip(spots, mean):
        np.testing.assert_allclose(keypoints.as_points(m), np.tile([x, y], (15, 1)), atol=0.05)


def test_the_mirror_view_is_the_second_half_of_flip_tta():
    from fkd_jax.inference.predictor import Predictor, pool_views

    net = SpotNet()
    model = Predictor(lambda x: net(x)[0], batch_size=4, spread_fn=net, flip_label_offset_px=0.4)
    gray = spot_picture([(101.3, 88.6)])
    images = reading.crops([gray], [0, 0], [geo.Framing(105.0, 85.0, 70.0, a) for a in (0, .3)])
    plain, mirror = model.with_spread(images), model.mirror_view(images)
    assert not np.allclose(plain[0], mirror[0], atol=0.1)  # the mirror moves the points
    tta = model.with_spread(images, tta=True)
    for got, want in zip(tta, pool_views(np.stack([plain[0], mirror[0]]),
                                         np.stack([plain[1], mirror[1]]))):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(model(images, tta=True), tta[0], rtol=1e-6)
    bare = Predictor(lambda x: net(x)[0], batch_size=4, flip_label_offset_px=0.4)  # no spreads
    bare_mirror = bare.mirror_view(images)
    np.testing.assert_allclose(bare_mirror[0], mirror[0], rtol=1e-6)
    assert bare_mirror[1].shape == mirror[1].shape and np.all(np.isnan(bare_mirror[1]))


def test_a_square_already_read_plain_costs_one_crop_at_scale_1_and_reads_the_same():
    """`known` readings (one a plain reading of its square; the other, read with TTA, counts
    as not known, as a face that settled in a square it was not read in): the views come out
    as when every square is read again, with one crop fewer."""
    from fkd_jax.inference.predictor import Predictor

    net = SpotNet()
    model = Predictor(lambda x: net(x)[0], batch_size=1, spread_fn=net)  # a call a crop
    spots = [(101.3, 88.6), (230.8, 150.2)]
    gray = spot_picture(spots)
    squares = [geo.Framing(x + 4, y - 3, 70.0, a) for (x, y), a in zip(spots, (0.0, -0.3))]
    images = reading.crops([gray], [0, 0], squares)
    readings = [model.with_spread(images, tta) for tta in (False, True)]
    known_px = [np.stack([readings[tta][0][i] for i, tta in enumerate((0, 1))]),
                np.stack([readings[tta][1][i] for i, tta in enumerate((0, 1))])]
    known = (np.stack([s.to_picture(k, 96) for s, k in zip(squares, known_px[0])]),
             known_px[1] * 70.0 / 96, np.array([True, False]))
    net.calls = 0
    want = reading.read_views([gray], [0, 0], squares, model, (1.0, 1.1))
    assert net.calls == 8  # each scale: the two crops and their mirror images
    net.calls = 0
    got = reading.read_views([gray], [0, 0], squares, model, (1.0, 1.1), known)
    assert net.calls == 7  # scale 1: the mirror image alone of the square read plain
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)


def test_find_faces_reads_each_face_again_in_views_of_its_last_square():
    rgb, _ = face_scene(0)
    gray = rgb[..., 1]
    box = [[location.Detection((60, 20, 192, 192), 1.0)]]
    once, views = CountingSpreadModel(np.full(15, 2.0)), CountingSpreadModel(np.full(15, 2.0))
    plain = location.find_faces([gray], once, boxes=box, confirm=False)
    viewed = location.find_faces([gray], views, boxes=box, confirm=False,
                                 final_scales=(0.95, 1.0, 1.05))
    assert views.calls[:len(once.calls)] == once.calls  # the same passes
    assert views.calls[len(once.calls):] == [(1, True)] * 3  # 3 scales, each with the mirror
    a, b = plain[0][0], viewed[0][0]
    assert len(b.history) == len(a.history) + 1
    np.testing.assert_allclose(b.keypoints_px, a.keypoints_px, atol=1e-9)  # a fixed answer
    assert np.all(b.spread_px > a.spread_px)  # the views' gap adds to it


def test_find_faces_reads_a_face_it_read_plain_again_in_the_mirror_only():
    """Through the real Predictor, `final_scales=(1,)` reads each face's last square in its
    mirror image alone (its plain reading is the last pass's), and gives what a predictor
    without `mirror_view`, reading both views again, gives."""
    from fkd_jax.inference.predictor import Predictor

    class BothViews:  # the same predictor without mirror_view
        image_size = 96

        def __init__(self, predictor):
            self.with_spread = predictor.with_spread

    net = SpotNet()
    model = Predictor(lambda x: net(x)[0], batch_size=4, spread_fn=net)
    gray = spot_picture([(101.3, 88.6), (230.8, 150.2)])
    boxes = [[location.Detection((60, 50, 80, 80), 1.0),
              location.Detection((190, 110, 80, 80), 1.0)]]
    for passes in (1, location.DEFAULT_PASSES):  # the box's square; squares re-framed
        kw = dict(boxes=boxes, confirm=False, passes=passes)
        plain = location.find_faces([gray], model, **kw)
        calls = net.calls
        mirrored = location.find_faces([gray], model, final_scales=(1.0,), **kw)
        assert net.calls - calls == calls + 1  # the same passes, then the mirror images
        both = location.find_faces([gray], BothViews(model), final_scales=(1.0,), **kw)
        for a, b, p in zip(mirrored[0], both[0], plain[0]):
            np.testing.assert_allclose(a.keypoints_px, b.keypoints_px, atol=1e-4)
            np.testing.assert_allclose(a.spread_px, b.spread_px, rtol=1e-5)
            assert passes > 1 or not np.allclose(a.keypoints_px, p.keypoints_px, atol=0.5)
        net.calls = 0


def test_a_tracked_face_is_read_again_in_the_mirror_of_its_square():
    rgb, _ = face_scene(0)
    gray = rgb[..., 1]
    model = CountingSpreadModel(np.full(15, 2.0))
    previous = geo.Framing(150.0, 120.0, 180.0).to_picture(model.rest)
    plain = location.refine_faces(gray, [previous], model)[0]
    viewed = location.refine_faces(gray, [previous], model, final_scales=(1.0,))[0]
    assert model.calls == [(1, False), (1, False), (1, True)]  # a pass each, then the mirror
    assert len(viewed.history) == len(plain.history) + 1
    np.testing.assert_allclose(viewed.keypoints_px, plain.keypoints_px, atol=1e-9)
