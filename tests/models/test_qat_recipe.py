"""fixedq.qat: never worse than the start, LR from a range test, bit-exact, history, bad input.

Real data: scikit-learn's 8x8 digits; a tiny CNN quantized to 4 bits (8-bit first layer).
"""

import io

import keras
import numpy as np
import pytest

import fixedq
from fixedq.engine import convert
from fixedq.models.qat import (
    DistillationLoss,
    LayerScaledAdam,
    LRRangeTest,
    float_training_lr,
    low_bit_layers,
    lr_range_test,
    max_calibrated_low_bit,
)


@pytest.fixture(scope="module")
def setup(digits):
    xtr, ytr, xte, yte = digits
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="img")
    h = keras.layers.Conv2D(12, 3, padding="same", name="conv1")(inp)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU(name="relu1")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(h), name="tiny")
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(np.array(xtr), np.array(ytr), epochs=6, batch_size=32, verbose=0)
    qp = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
    qmodel = fixedq.quantize(model, qp, samples=np.array(xtr[:256]), verbose=False)
    # 700 training samples keep each qat call short
    return model, qmodel, (np.array(xtr[:700]), np.array(ytr[:700])), (np.array(xte),
                                                                       np.array(yte))


def _same_weights(a, b) -> bool:
    return all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights(),
                                                     strict=True))


def _accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def test_never_worse_with_a_huge_learning_rate(setup):
    _, qmodel, train, val = setup
    log = io.StringIO()
    best, history = fixedq.qat(qmodel, train, val, epochs=2, lr=1.0, stream=log)
    assert history.kept_epoch == 0 and not history.improved
    assert max(history.val_metric) < history.start_metric  # the epochs did get worse
    assert history.best_metric == history.start_metric == _accuracy(best, *val)
    assert _same_weights(best, qmodel)
    assert "returning the starting weights unchanged" in log.getvalue()
    assert history.lr_source == "given" and history.peak_lr == 1.0
    assert history.collapsed_peaks == ()  # a given learning rate is used as is


def test_a_collapsed_run_starts_again_at_a_third_of_the_peak(setup):
    _, qmodel, train, val = setup
    log = io.StringIO()
    # the range test's peak forced to 1.0 (min_lr = max_lr): training at 1.0 breaks the model
    best, history = fixedq.qat(qmodel, train, val, epochs=1, range_steps=8, min_lr=1.0,
                               max_lr=1.0, stream=log)
    assert history.range_test.suggested == 1.0 and history.collapsed_peaks[0] == 1.0
    assert 1 <= len(history.collapsed_peaks) <= 2
    for earlier, later in zip(history.collapsed_peaks[:-1], history.collapsed_peaks[1:],
                              strict=True):
        assert later == pytest.approx(earlier / 3)
    assert history.peak_lr == pytest.approx(3.0 ** -len(history.collapsed_peaks))
    assert history.lr[0] == pytest.approx(history.peak_lr)
    assert "collapsed" in log.getvalue() and "again from the start at 0.33" in log.getvalue()
    assert history.best_metric >= history.start_metric == _accuracy(qmodel, *val)
    assert history.best_metric == pytest.approx(_accuracy(best, *val))


def test_range_test_picks_a_bounded_lr_and_restores_weights(setup):
    _, qmodel, (x, y), _ = setup
    model = keras.models.clone_model(qmodel)
    model.set_weights(qmodel.get_weights())
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    test = lr_range_test(model, x, y, loss, steps=24)
    assert isinstance(test, LRRangeTest)
    assert 1e-5 <= test.suggested <= 3e-3 and np.isfinite(test.suggested)
    assert np.all(np.diff(test.lrs) > 0) and 5 <= len(test.lrs) <= 24
    assert len(test.losses) == len(test.probe) == len(test.lrs)
    assert test.lr_at_min in test.lrs and test.lr_edge in test.lrs
    assert test.basis in ("edge", "end") and np.isfinite(test.probe_start)
    assert test.suggested == min(max(test.lr_edge / 3, 1e-5), 3e-3)
    # the edge: the last lr before the smoothed probe loss passes 4x its start
    smooth = np.convolve(test.probe, np.ones(5), "same") / np.convolve(
        np.ones(len(test.probe)), np.ones(5), "same")
    i = test.lrs.index(test.lr_edge)
    assert np.all(smooth[:i + 1] <= 4 * test.probe_start)
    if test.basis == "edge":
        assert smooth[i + 1] > 4 * test.probe_start
    else:
        assert i == len(test.lrs) - 1
    assert _same_weights(model, qmodel)


def test_history_bit_exact_save_load(setup, tmp_path):
    _, qmodel, train, (xte, _) = setup
    before = [w.copy() for w in qmodel.get_weights()]
    best, history = fixedq.qat(qmodel, train, epochs=2, range_steps=24, verbose=False)
    # the input model is not modified
    assert all(np.array_equal(a, b) for a, b in zip(before, qmodel.get_weights(), strict=True))
    # history: one entry per epoch, the range test's rule, cosine from the peak
    assert history.metric == "accuracy" and history.lr_source == "range test"
    assert len(history.train_loss) == len(history.val_metric) == len(history.lr) == 2
    assert history.lr[0] == pytest.approx(history.peak_lr) and history.lr[1] < history.lr[0]
    assert history.peak_lr == history.range_test.suggested
    assert 0 <= history.kept_epoch <= 2 and history.best_metric >= history.start_metric
    # the keep rule: an epoch replaces the start only if fixed - broken > 2.5 sqrt(fixed + broken)
    clear = [f - b > 2.5 * np.sqrt(f + b) for f, b in history.val_changes]
    if history.kept_epoch:
        assert clear[history.kept_epoch - 1]
        assert history.best_metric == max(
            m for m, c in zip(history.val_metric, clear, strict=True) if c)
    else:
        assert not any(c and m > history.start_metric
                       for m, c in zip(history.val_metric, clear, strict=True))
    assert set(history.to_dict()) >= {"train_loss", "val_metric", "lr", "kept_epoch"}
    # bit-exact with the integer engine after training
    out = best.predict(xte, verbose=0)
    np.testing.assert_array_equal(convert(best).predict(xte), out)
    # save / load round trip
    path = tmp_path / "qat.keras"
    fixedq.save_model(best, path)
    np.testing.assert_array_equal(fixedq.load_model(path).predict(xte, verbose=0), out)


def test_npz_and_dataset_inputs(setup, tmp_path):
    import tensorflow as tf

    _, qmodel, (x, y), (xte, yte) = setup
    np.savez(tmp_path / "train.npz", x=x[:400], y=np.eye(10)[y[:400]])  # one-hot labels
    val = tf.data.Dataset.from_tensor_slices((xte[:200], yte[:200])).batch(50)
    # an impossible significance: no epoch may replace the start
    best, history = fixedq.qat(qmodel, tmp_path / "train.npz", val, epochs=1, lr=1e-3,
                               keep="clear", significance=1e9, verbose=False)
    assert len(history.val_metric) == len(history.val_changes) == 1
    assert history.kept_epoch == 0 and _same_weights(best, qmodel)
    assert history.start_metric == _accuracy(qmodel, xte[:200], yte[:200])


def test_bad_inputs(setup, tmp_path):
    model, qmodel, (x, y), _ = setup
    with pytest.raises(ValueError, match="not quantized"):
        fixedq.qat(model, (x, y), verbose=False)
    with pytest.raises(ValueError, match="rows for"):
        fixedq.qat(qmodel, (x, y[:-3]), verbose=False)
    with pytest.raises(ValueError, match="class id 12"):
        fixedq.qat(qmodel, (x, np.where(y == 3, 12, y)), verbose=False)
    with pytest.raises(ValueError, match="one-hot rows of 5 classes"):
        fixedq.qat(qmodel, (x, np.eye(5)[y % 5]), verbose=False)
    with pytest.raises(ValueError, match="empty validation split"):
        fixedq.qat(qmodel, (x[:3], y[:3]), validation_split=0.1, verbose=False)
    with pytest.raises(ValueError, match="shape"):
        fixedq.qat(qmodel, (x[:, :4], y), verbose=False)
    with pytest.raises(ValueError, match="epochs"):
        fixedq.qat(qmodel, (x, y), epochs=0, verbose=False)
    with pytest.raises(ValueError, match="lr must be"):
        fixedq.qat(qmodel, (x, y), lr=-1.0, verbose=False)
    np.savez(tmp_path / "nolabels.npz", x=x)
    with pytest.raises(ValueError, match="no labels"):
        fixedq.qat(qmodel, tmp_path / "nolabels.npz", verbose=False)
    with pytest.raises(TypeError):
        fixedq.qat(qmodel, x, verbose=False)


def _kl_to_teacher(teacher, student, x) -> float:
    """Mean KL(teacher || student) of the softmax outputs on ``x``."""
    t = keras.ops.convert_to_numpy(keras.ops.log_softmax(teacher.predict(x, verbose=0)))
    s = keras.ops.convert_to_numpy(keras.ops.log_softmax(student.predict(x, verbose=0)))
    return float(np.mean(np.sum(np.exp(t) * (t - s), axis=-1)))


def test_distillation_moves_the_student_toward_the_teacher(setup):
    model, qmodel, train, (xte, yte) = setup
    runs = {}
    for distill in (0.0, 1.0):  # labels only / the float model's outputs only
        runs[distill] = fixedq.qat(qmodel, train, (xte, yte), epochs=2, lr=1e-3,
                                   distill=distill, teacher=model, significance=0.0,
                                   verbose=False)
    (plain, h_plain), (distilled, h_dist) = runs[0.0], runs[1.0]
    assert h_plain.distill == 0.0 and h_dist.distill == 1.0
    # the objective differs: cross-entropy on labels vs T^2 KL to the teacher (near 0 at start)
    assert min(h_plain.train_loss) > 10 * max(h_dist.train_loss)
    # the distilled student stays much closer to the teacher on unseen data
    assert _kl_to_teacher(model, distilled, xte) < 0.25 * _kl_to_teacher(model, plain, xte)
    np.testing.assert_array_equal(convert(distilled).predict(xte),
                                  distilled.predict(xte, verbose=0))


def test_distillation_loss_terms():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 10)).astype("float32") * 3
    ids = rng.integers(0, 10, 16)
    teacher = rng.normal(size=(16, 10)).astype("float32") * 3
    teacher = teacher - np.log(np.exp(teacher).sum(-1, keepdims=True))  # log-probabilities
    y = np.concatenate([ids[:, None].astype("float32"), teacher], axis=1)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(ids, logits)
    np.testing.assert_allclose(float(DistillationLoss(0.0, 2.0)(y, logits)), float(ce),
                               rtol=1e-5)
    # weight 1, T = 1: exactly KL(teacher || student)
    s = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    kl = np.mean(np.sum(np.exp(teacher) * (teacher - s), axis=-1))
    np.testing.assert_allclose(float(DistillationLoss(1.0, 1.0)(y, logits)), kl, rtol=1e-4)
    # a student equal to the teacher has no soft loss at any temperature
    same = np.concatenate([ids[:, None].astype("float32"), s], axis=1)
    assert abs(float(DistillationLoss(1.0, 3.0)(same, logits))) < 1e-5
    # probability outputs (from_logits=False) give the same loss as their logits
    probs = np.exp(s)
    np.testing.assert_allclose(float(DistillationLoss(0.5, 2.0, from_logits=False)(y, probs)),
                               float(DistillationLoss(0.5, 2.0)(y, logits)), rtol=1e-4)
    # a quantized softmax's zeros: the soft term compares the classes the student represents
    confident = np.zeros((1, 10), "float32")
    confident[0, 3] = 1.0  # 8-bit probabilities: every other class rounded to 0
    t_row = np.log(np.full((1, 10), 0.02, "float32"))
    t_row[0, 3] = np.log(0.82)
    y1 = np.concatenate([[[3.0]], t_row], axis=1).astype("float32")
    assert abs(float(DistillationLoss(0.5, 2.0, from_logits=False)(y1, confident))) < 1e-6
    two = confident.copy()
    two[0, 3], two[0, 5] = 0.75, 0.25
    s2 = np.log(np.array([0.75, 0.25]) ** 0.5 / np.sum(np.array([0.75, 0.25]) ** 0.5))
    t2 = np.log(np.array([0.82, 0.02]) ** 0.5 / np.sum(np.array([0.82, 0.02]) ** 0.5))
    want = 0.5 * -np.log(0.75) + 0.5 * 4 * np.sum(np.exp(t2) * (t2 - s2))
    np.testing.assert_allclose(float(DistillationLoss(0.5, 2.0, from_logits=False)(y1, two)),
                               want, rtol=1e-4)
    cfg = DistillationLoss(0.3, 4.0).get_config()
    assert DistillationLoss.from_config(cfg).get_config() == cfg


def test_distillation_bad_inputs(setup):
    model, qmodel, (x, y), _ = setup
    with pytest.raises(ValueError, match="distill must be a number in"):
        fixedq.qat(qmodel, (x, y), teacher=model, distill=1.5, verbose=False)
    with pytest.raises(ValueError, match="temperature must be"):
        fixedq.qat(qmodel, (x, y), teacher=model, temperature=0, verbose=False)
    with pytest.raises(TypeError, match="teacher must be"):
        fixedq.qat(qmodel, (x, y), teacher="model.keras", verbose=False)
    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(5)])
    with pytest.raises(ValueError, match="pass the float model"):
        fixedq.qat(qmodel, (x, y), teacher=other, verbose=False)
    with pytest.raises(ValueError, match="needs class labels"):
        fixedq.qat(qmodel, (x, np.eye(10)[y]), teacher=model, verbose=False,
                   loss=keras.losses.CategoricalCrossentropy(from_logits=True))


def test_float_training_lr_reads_the_float_models_optimizer(tmp_path):
    def dense():
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])

    m = dense()
    assert float_training_lr(m) is None  # not compiled
    m.compile(keras.optimizers.Adam(3e-3), "mse")
    assert float_training_lr(m) == pytest.approx(3e-3)
    m.compile(keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(
        1e-4, 100, warmup_target=2e-3, warmup_steps=10)), "mse")
    assert float_training_lr(m) == pytest.approx(2e-3)  # the warm-up's target is the peak
    m.compile(keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(
        5e-3, 100, 0.9)), "mse")
    m.fit(np.ones((8, 3)), np.ones((8, 2)), epochs=1, verbose=0)
    assert float_training_lr(m) == pytest.approx(5e-3)  # the peak, not the decayed value
    # a saved, compiled model keeps it; loaded without compiling it does not know it
    m.save(tmp_path / "f.keras")
    assert float_training_lr(keras.models.load_model(tmp_path / "f.keras")) == pytest.approx(
        5e-3)
    assert float_training_lr(keras.models.load_model(tmp_path / "f.keras",
                                                     compile=False)) is None


def test_layer_scaled_adam_scales_only_the_named_variables():
    def step(scale):
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
        before = [w.copy() for w in m.get_weights()]
        m.compile(LayerScaledAdam({m.get_layer("d").kernel.path: scale}, learning_rate=1e-2),
                  "mse")
        m.train_on_batch(np.ones((4, 3), "float32"), np.full((4, 2), 5.0, "float32"))
        return [a - b for a, b in zip(m.get_weights(), before, strict=True)]

    plain, scaled = step(1.0), step(3.0)
    np.testing.assert_allclose(scaled[0], 3.0 * plain[0], rtol=1e-5)  # kernel: 3x the step
    np.testing.assert_allclose(scaled[1], plain[1], rtol=1e-6)  # bias: unchanged
    assert np.all(np.abs(plain[0]) > 1e-3)
    cfg = LayerScaledAdam({"d/kernel": 3.0}, learning_rate=1e-2).get_config()
    assert LayerScaledAdam.from_config(cfg).scales == {"d/kernel": 3.0}


def test_low_bit_lr_scale_trains_the_4bit_layers_faster_and_stays_exact(setup, tmp_path):
    _, qmodel, train, (xte, yte) = setup
    assert low_bit_layers(qmodel) == ("conv2", "logits")  # conv1 keeps 8-bit weights
    moved = {}
    for scale in (1.0, 10.0):
        best, history = fixedq.qat(qmodel, train, (xte, yte), epochs=1, lr=1e-4,
                                   low_bit_lr_scale=scale, significance=-1e9, verbose=False)
        assert history.kept_epoch == 1  # any epoch replaces the start: the trained weights
        moved[scale] = {name: float(np.max(np.abs(
            best.get_layer(name).kernel.numpy() - qmodel.get_layer(name).kernel.numpy())))
            for name in ("conv1", "conv2")}
        np.testing.assert_array_equal(convert(best).predict(xte), best.predict(xte, verbose=0))
    # the 4-bit conv moves clearly farther with 10x its learning rate; the 8-bit one does not
    assert moved[10.0]["conv2"] > 4 * moved[1.0]["conv2"]
    assert moved[10.0]["conv1"] < 2 * moved[1.0]["conv1"]
    path = tmp_path / "scaled.keras"
    fixedq.save_model(best, path)
    np.testing.assert_array_equal(fixedq.load_model(path).predict(xte, verbose=0),
                                  best.predict(xte, verbose=0))
    for bad in (0.0, -2.0, float("nan"), True, "4"):
        with pytest.raises(ValueError, match="low_bit_lr_scale must be a positive"):
            fixedq.qat(qmodel, train, low_bit_lr_scale=bad, verbose=False)


def test_the_float_models_own_lr_caps_the_range_test(setup):
    model, qmodel, train, (xte, yte) = setup
    teacher = keras.models.clone_model(model)
    teacher.set_weights(model.get_weights())
    teacher.compile(keras.optimizers.Adam(2e-6), "mse")  # the float model trained slowly
    log = io.StringIO()
    best, history = fixedq.qat(qmodel, train, (xte, yte), epochs=1, range_steps=24,
                               teacher=teacher, stream=log)
    assert history.range_test.suggested > 2e-6  # >= min_lr 1e-5
    assert history.peak_lr == pytest.approx(2e-6) and history.lr[0] == pytest.approx(2e-6)
    assert history.lr_source == "range test, capped at the float model's peak lr"
    assert "the float model's own peak learning rate" in log.getvalue()
    # an uncompiled teacher: the range test alone
    uncompiled = keras.models.clone_model(model)
    uncompiled.set_weights(model.get_weights())
    _, plain = fixedq.qat(qmodel, train, (xte, yte), epochs=1, range_steps=24,
                          teacher=uncompiled, verbose=False)
    assert plain.lr_source == "range test" and plain.peak_lr == plain.range_test.suggested


def test_unlabelled_rows_are_distilled_only():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(8, 10)).astype("float32") * 2
    teacher = rng.normal(size=(8, 10)).astype("float32")
    teacher = teacher - np.log(np.exp(teacher).sum(-1, keepdims=True))
    ids = rng.integers(0, 10, 8).astype("float32")
    y = np.concatenate([ids[:, None], teacher], axis=1)
    unlabelled = y.copy()
    unlabelled[:, 0] = -1.0
    soft = float(DistillationLoss(1.0, 2.0)(y, logits))  # the soft term alone
    for weight in (0.0, 0.3, 1.0):  # no label: the weight does not matter
        np.testing.assert_allclose(float(DistillationLoss(weight, 2.0)(unlabelled, logits)),
                                   soft, rtol=1e-5)
    # a batch mixing both kinds: the mean of the two per-row losses
    mixed = np.concatenate([y[:4], unlabelled[4:]])
    want = (4 * float(DistillationLoss(0.3, 2.0)(y[:4], logits[:4]))
            + 4 * float(DistillationLoss(1.0, 2.0)(y[4:], logits[4:]))) / 8
    np.testing.assert_allclose(float(DistillationLoss(0.3, 2.0)(mixed, logits)), want, rtol=1e-5)


def test_mix_trains_on_teacher_labelled_mixtures_only(setup):
    model, qmodel, train, (xte, yte) = setup
    runs = {}
    for distill in (0.2, 0.8):
        seen = []
        best, history = fixedq.qat(qmodel, train, (xte, yte), epochs=2, lr=1e-3, mix=1.0,
                                   teacher=model, distill=distill, significance=0.0,
                                   verbose=False, on_epoch=lambda e, m, seen=seen: seen.append(
                                       (e, [w.copy() for w in m.get_weights()])))
        runs[distill] = (best, history, seen)
    # mix=1.0: every training row is a mixture with the teacher's targets only, so the label
    # weight `distill` changes nothing (with labels, 0.2 vs 0.8 changes the loss ~3x)
    (_, h_a, _), (best_b, h_b, seen_b) = runs[0.2], runs[0.8]
    np.testing.assert_allclose(h_a.train_loss, h_b.train_loss, rtol=1e-3)
    labelled = fixedq.qat(qmodel, train, (xte, yte), epochs=1, lr=1e-3, teacher=model,
                          distill=0.2, verbose=False)[1]
    assert labelled.train_loss[0] > 2 * h_a.train_loss[0]
    # on_epoch saw every epoch, with that epoch's weights (the kept one is returned)
    assert [e for e, _ in seen_b] == [1, 2]
    if h_b.kept_epoch:
        for got, want in zip(best_b.get_weights(), seen_b[h_b.kept_epoch - 1][1], strict=True):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(convert(best_b).predict(xte), best_b.predict(xte, verbose=0))


def test_mix_and_on_epoch_bad_inputs(setup):
    model, qmodel, (x, y), _ = setup
    with pytest.raises(ValueError, match="mix= needs teacher="):
        fixedq.qat(qmodel, (x, y), mix=0.5, verbose=False)
    for bad in (1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="mix must be a number in"):
            fixedq.qat(qmodel, (x, y), teacher=model, mix=bad, verbose=False)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="mix_alpha must be a positive"):
            fixedq.qat(qmodel, (x, y), teacher=model, mix=0.5, mix_alpha=bad, verbose=False)
    with pytest.raises(TypeError, match="on_epoch must be callable"):
        fixedq.qat(qmodel, (x, y), on_epoch="log.txt", verbose=False)


def _scripted_evaluations(monkeypatch, correct_counts, losses=None, n=100):
    """Make qat's validation read ``correct_counts`` (start, then one per epoch): the first
    ``k`` of ``n`` samples right; the losses given, or falling with every call."""
    import fixedq.models.qat as qat_module

    calls = iter(range(len(correct_counts)))

    def fake(model, x, y, loss_fn, batch_size):
        i = next(calls)
        hits = np.arange(n) < correct_counts[i]
        loss = 1.0 - 0.01 * i if losses is None else losses[i]
        return loss, float(hits.mean()), hits

    monkeypatch.setattr(qat_module, "_evaluate", fake)


@pytest.mark.parametrize("counts, losses, keep, kept", [
    ((50, 52, 53), None, "end", 2),     # no clear gain: the end of the schedule
    ((50, 52, 53), None, "clear", 0),   # the same under the old rule: the start
    ((50, 52, 49), None, "end", 0),     # the last epoch below the start: the start
    ((50, 80, 60), None, "end", 1),     # a clear gain beats a later, lower epoch
    ((50, 80, 80), None, "end", 2),     # ties with the clear one, lower loss: the end
    ((50, 50, 50), None, "end", 2),     # the start's accuracy, a lower loss: the end
    ((50, 50, 50), (0.5, 0.9, 2.0), "end", 0),         # a tie, a higher loss: the start
    ((50, 80, 80), (0.5, 0.3, 0.4), "end", 1),         # ties the clear one, higher loss
    ((50, 51, 50), (0.5, 0.4, float("nan")), "end", 0),  # not a finite loss: never kept
])
def test_keep_rule(setup, monkeypatch, counts, losses, keep, kept):
    _, qmodel, (x, y), _ = setup
    _scripted_evaluations(monkeypatch, counts, losses)
    seen = {}
    best, history = fixedq.qat(qmodel, (x[:200], y[:200]), (x[:100], y[:100]), epochs=2,
                               lr=1e-3, keep=keep, verbose=False,
                               on_epoch=lambda e, m: seen.update({e: m.get_weights()}))
    assert history.kept_epoch == kept and history.keep == keep
    want = qmodel.get_weights() if kept == 0 else seen[kept]
    assert all(np.array_equal(a, b) for a, b in zip(best.get_weights(), want, strict=True))


def test_integer_targets_of_a_non_class_output_are_scored_by_the_loss(digits):
    """A regressor (one output) with integer targets and a given loss: the metric is the loss
    (argmax of one column would be a constant "accuracy", under which keep="end" returned a
    far worse model)."""
    xtr, ytr, _, _ = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    model.fit(np.array(xtr), np.array(ytr, "float32"), epochs=3, verbose=0)
    q = fixedq.quantize(model, fixedq.QuantizationParams(), samples=np.array(xtr[:256]),
                        verbose=False)
    train, val = (np.array(xtr[:600]), np.array(ytr[:600])), (np.array(xtr[600:800]),
                                                               np.array(ytr[600:800]))
    best, history = fixedq.qat(q, train, val, epochs=2, lr=0.3, verbose=False,
                               loss=keras.losses.MeanSquaredError())
    assert history.metric == "loss"
    mse = float(np.mean((best.predict(val[0], verbose=0)[:, 0] - val[1]) ** 2))
    assert mse <= history.start_loss * (1 + 1e-6)


def test_numpy_scalars_are_accepted(setup):
    model, qmodel, (x, y), (xte, yte) = setup
    _, history = fixedq.qat(qmodel, (x[:200], y[:200]), (xte, yte), epochs=1, lr=np.float32(1e-3),
                            teacher=model, distill=np.float32(0.5), temperature=np.int64(2),
                            mix=np.float32(0.25), mix_alpha=np.float64(0.4),
                            low_bit_lr_scale=np.float32(1.0), verbose=False)
    assert history.distill == 0.5


@pytest.mark.parametrize("with_teacher, rule, kept", [(True, "end", 2), (False, "clear", 0)])
def test_keep_auto_is_end_with_a_teacher_and_clear_without(setup, monkeypatch, with_teacher,
                                                           rule, kept):
    model, qmodel, (x, y), _ = setup
    _scripted_evaluations(monkeypatch, (50, 52, 53))  # gains, none clear on its own
    _, history = fixedq.qat(qmodel, (x[:200], y[:200]), (x[:100], y[:100]), epochs=2,
                            lr=1e-3, teacher=model if with_teacher else None, verbose=False)
    assert history.keep == rule and history.kept_epoch == kept


def test_keep_bad_value(setup):
    _, qmodel, (x, y), _ = setup
    with pytest.raises(ValueError, match="keep must be 'auto', 'end' or 'clear'"):
        fixedq.qat(qmodel, (x, y), keep="best", verbose=False)


def test_a_max_calibrated_4bit_start_gets_a_note(setup, digits):
    """The default start (mse at 4 bits) has no layer to name; a max-calibrated one names its
    4-bit activation layers, and qat says so once, before training."""
    model, qmodel, (x, y), _ = setup
    assert max_calibrated_low_bit(qmodel) == ()
    qp = fixedq.QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4)
    old = fixedq.quantize(model, qp, samples=x[:256], verbose=False, calibration="max")
    assert set(max_calibrated_low_bit(old)) == {"conv1", "conv2", "gap"}  # logits: 8-bit
    log = io.StringIO()
    fixedq.qat(old, (x[:200], y[:200]), validation=(x[200:300], y[200:300]), epochs=1,
               lr=1e-4, stream=log)
    assert log.getvalue().count("calibrated by max (conv1, conv2, gap)") == 1
    log = io.StringIO()
    fixedq.qat(qmodel, (x[:200], y[:200]), validation=(x[200:300], y[200:300]), epochs=1,
               lr=1e-4, stream=log)
    assert "calibrated by max" not in log.getvalue()



def test_the_max_note_names_an_input_as_the_q_config_does(setup):
    """A 4-bit input is named by its input layer (the q-config / overrides key), not by the
    InputQuantizer layer that carries it."""
    model, _, (x, _), _ = setup
    qp = fixedq.QuantizationParams(weight_bits=4, activation_bits=4, input_bits=4)
    old = fixedq.quantize(model, qp, samples=x[:128], verbose=False, calibration="max")
    names = max_calibrated_low_bit(old)
    entries = fixedq.dump_config(old)["layers"]
    assert "img" in names and "img_quantizer" not in names and set(names) <= set(entries)
