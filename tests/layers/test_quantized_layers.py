"""Quantized layers: config round trip, on-grid outputs, and an independent int64 reference."""

import keras
import numpy as np
import pytest

from fixedq import QuantizationParams, quantize
from fixedq.layers import DepthwiseConv2DTranspose
from fixedq.layers.base import QuantizedLayer
from fixedq.layers.neural import QuantizedConv2D
from fixedq.layers.spec import QSpec
from fixedq.tensors.rounding import requantize

L = keras.layers
RNG = np.random.default_rng(1)


def _models():
    def make(build, shape=(6, 6, 3)):
        x = keras.Input(shape, name="x")
        return keras.Model(x, build(x))

    return {
        "conv_transpose": make(lambda x: L.ReLU()(L.Conv2DTranspose(4, 3, strides=2,
                                                                    padding="same")(x))),
        "dw_transpose": make(lambda x: DepthwiseConv2DTranspose(3, strides=2)(x)),
        "dw_mult2_strided": make(lambda x: L.DepthwiseConv2D(3, 2, depth_multiplier=2)(x)),
        "conv_dilated": make(lambda x: L.Conv2D(5, 3, dilation_rate=2, padding="same")(x)),
        "concat_reshape": make(lambda x: L.Reshape((36, 8))(L.Permute((2, 1, 3))(
            L.Concatenate()([L.Conv2D(5, 1)(x), L.ReLU()(L.Conv2D(3, 1)(x))])))),
        "concat_axis1": make(lambda x: L.Flatten()(L.Concatenate(axis=1)(
            [L.Conv2D(4, 1)(x), L.Conv2D(4, 1)(x)]))),
        "bn_rescale": make(lambda x: L.BatchNormalization()(L.Rescaling(2.0, offset=-1.0)(x))),
        "dense_tokens": make(lambda x: L.Dense(6)(L.Reshape((36, 3))(x))),
        "maxpool_gap": make(lambda x: L.GlobalAveragePooling2D()(L.MaxPooling2D()(
            L.ReLU(max_value=1.5)(L.Conv2D(4, 3)(x))))),
    }


def _randomize_bn(model):
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([RNG.uniform(0.5, 2, c), RNG.normal(0, 1, c), RNG.normal(0, 1, c),
                               RNG.uniform(0.5, 2, c)])


@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("name", sorted(_models()))
def test_layer_roundtrip_and_accuracy(name, per_tensor, tmp_path):
    model = _models()[name]
    _randomize_bn(model)
    x = RNG.uniform(0, 1, (64, 6, 6, 3)).astype("float32")
    q = quantize(model, QuantizationParams(per_tensor_activations=per_tensor), samples=x,
                 verbose=False)
    qlayers = [ly for ly in q.layers if isinstance(ly, QuantizedLayer)]
    assert len(qlayers) >= 2, [type(ly).__name__ for ly in q.layers]
    y = q.predict(x, verbose=0)
    ref = model.predict(x, verbose=0)
    scale = np.abs(ref).max()
    assert np.abs(y - ref).max() <= 0.08 * scale + 1e-6
    for layer in qlayers:  # config round trip: a fresh layer computes the same
        clone = type(layer).from_config(layer.get_config())
        probe = keras.Model(q.inputs, layer.input)
        inp = probe.predict(x[:8], verbose=0)
        out = np.asarray(layer(inp))
        clone(inp)
        clone.set_weights(layer.get_weights())
        assert np.array_equal(np.asarray(clone(inp)), out), layer.name
    path = tmp_path / "m.keras"
    q.save(path)
    assert np.array_equal(keras.saving.load_model(path).predict(x, verbose=0), y)


def _im2col_int(v, kh, kw):
    n, h, w, c = v.shape
    cols = np.empty((n, h - kh + 1, w - kw + 1, kh, kw, c), dtype=object)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = v[:, i:i + h - kh + 1, j:j + w - kw + 1, :]
    return cols.reshape(n, h - kh + 1, w - kw + 1, -1)


@pytest.mark.parametrize("in_bits, w_bits", [(8, 8), (16, 16)])
def test_worst_case_conv_is_exact(in_bits, w_bits):
    """3x3x512 conv, inputs at the top of the range, weights at +-max: exact Python ints."""
    ins = QSpec(in_bits, False, (0,))
    frac = -6 if in_bits == 8 else -14  # keeps the largest accumulator just inside 16 bits
    out = QSpec(15, True, (frac,) * 4)
    layer = QuantizedConv2D(4, 3, weight_bits=w_bits, input_specs=[ins], output_spec=out,
                            buffer_bits=48)
    top = 2**in_bits - 1
    x = np.where(RNG.random((2, 4, 4, 512)) < 0.9, top, 0).astype("float32")
    layer(x)
    kernel = np.where(RNG.random((3, 3, 512, 4)) < 0.5, 1.0, -1.0)
    kernel[..., 0] = 1.0  # one channel with every product at its maximum
    layer.set_weights([kernel.astype("float32"), np.full(4, 3.0, "float32")])
    assert layer.static_accumulator_bound >= 2**24 and layer._dtype_exact == "float64"
    got = np.asarray(layer(x)).astype(np.float64) * 2.0**frac  # back to integers y
    p = layer.integer_params()
    cols = _im2col_int(x.astype(np.int64).astype(object), 3, 3)
    acc = np.einsum("nhwk,ko->nhwo", cols, p["kernel"].reshape(-1, 4).astype(object))
    acc = acc + p["bias"].astype(object)
    acc = np.clip(acc, p["acc_lo"], p["acc_hi"]).astype(np.int64)
    want = requantize(acc, p["multiplier"], p["shift"], p["out_lo"], p["out_hi"])
    assert np.array_equal(got, want)
    assert np.abs(want).max() > 2**13  # the test is not trivially saturated or zero
    assert int(np.abs(acc).max()) > 2**27  # far past float32's exact range


def test_add_gradient_is_cut_where_the_sum_saturates():
    """QAT through an Add (numerics.md eq. 24): the forward value is the saturated integer
    sum, and a sum the integers clip passes no gradient (as in the neural layers); inside the
    range the gradient of a sum is 1 for every input. Asymmetric windows clip at their own
    ends."""
    import tensorflow as tf

    from fixedq.layers.merge import QuantizedAdd

    spec_in = QSpec(7, True, (4,))          # steps of 1/16, |x| <= 8
    cases = [(QSpec(3, True, (2,)), -2.0, 1.75),                # [-8, 7] / 4
             (QSpec(3, True, (2,), lo=(-2,)), -0.5, 3.25)]      # window [-2, 13] / 4
    for spec_out, low, high in cases:
        add = QuantizedAdd(input_specs=[spec_in, spec_in], output_spec=spec_out)
        a = tf.constant([[1.0, 1.5, -1.0, -3.0, 0.25]])
        b = tf.constant([[0.5, 1.0, -0.5, -2.0, 0.0]])
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([a, b])
            y = add([a, b], training=True)
        total = (a + b).numpy()
        want_y = np.clip(np.round(total * 4) / 4, low, high)   # no ties in these sums
        np.testing.assert_array_equal(np.asarray(y), want_y)
        inside = ((total >= low) & (total <= high)).astype("float32")
        assert 0 < inside.sum() < inside.size, "some sums saturate, some do not"
        for x in (a, b):
            np.testing.assert_array_equal(np.asarray(tape.gradient(y, x)), inside)


def test_requantizing_layers_cut_the_gradient_where_they_saturate():
    """Eq. 24 for the other layers that re-grid without weights: OutputQuantizer, Multiply and
    a Concatenate on a non-channel axis. Forward: the saturated integers; gradient: that of the
    float function where the output is inside its range, 0 where it saturates."""
    import tensorflow as tf

    from fixedq.layers.merge import QuantizedConcatenate
    from fixedq.layers.multiply import QuantizedMultiply
    from fixedq.layers.quantizers.output_quantizer import OutputQuantizer

    spec_in, spec_out = QSpec(7, True, (4,)), QSpec(3, True, (2,))   # out: [-2, 1.75]
    x = tf.constant([[1.0, 2.5, -1.5, -3.0, 0.25]])
    y = tf.constant([[0.5, 1.0, 2.0, 1.0, -1.0]])
    inside = lambda v: ((v >= -2.0) & (v <= 1.75)).astype("float32")  # noqa: E731

    requant = OutputQuantizer(input_specs=[spec_in], output_spec=spec_out)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = requant(x, training=True)
    np.testing.assert_array_equal(np.asarray(out), np.clip(x.numpy(), -2.0, 1.75))
    np.testing.assert_array_equal(np.asarray(tape.gradient(out, x)), inside(x.numpy()))

    mul = QuantizedMultiply(input_specs=[spec_in, spec_in], output_spec=spec_out)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, y])
        out = mul([x, y], training=True)
    prod = (x * y).numpy()
    assert 0 < inside(prod).sum() < prod.size
    np.testing.assert_array_equal(np.asarray(out), np.clip(np.round(prod * 4) / 4, -2.0, 1.75))
    np.testing.assert_array_equal(np.asarray(tape.gradient(out, x)), y.numpy() * inside(prod))
    np.testing.assert_array_equal(np.asarray(tape.gradient(out, y)), x.numpy() * inside(prod))

    cat = QuantizedConcatenate(axis=1, input_specs=[spec_in, spec_in], output_spec=spec_out)
    a, b = tf.reshape(x, (1, 5, 1)), tf.reshape(y, (1, 5, 1))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([a, b])
        out = cat([a, b], training=True)
    np.testing.assert_array_equal(np.asarray(out)[0, :, 0], np.clip(
        np.concatenate([x.numpy()[0], y.numpy()[0]]), -2.0, 1.75))
    np.testing.assert_array_equal(np.asarray(tape.gradient(out, a))[0, :, 0],
                                  inside(x.numpy()[0]))
    np.testing.assert_array_equal(np.asarray(tape.gradient(out, b))[0, :, 0],
                                  inside(y.numpy()[0]))


def _saturating_model():
    """A 4-bit model whose InputQuantizer, BatchNormalization (affine), tanh table and Dense
    saturate on inputs wider than their calibration samples."""
    rng = np.random.default_rng(0)
    inp = keras.Input((6, 6, 2), name="x")
    x = keras.layers.BatchNormalization(name="bn")(inp)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = keras.layers.Activation("tanh", name="act")(x)
    x = keras.layers.Flatten()(keras.layers.AveragePooling2D(2)(x))
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(x))
    model.get_layer("bn").set_weights([rng.uniform(0.5, 2, 2), rng.normal(0, 1, 2),
                                       rng.normal(0, 1, 2), rng.uniform(0.5, 2, 2)])
    samples = rng.normal(0, 1, (64, 6, 6, 2)).astype("float32")
    return quantize(model, QuantizationParams(weight_bits=4, activation_bits=4),
                    samples=samples, verbose=False)


def _float_bounds(layer):
    from fixedq.layers.base import output_bounds

    f = layer.output_spec.frac_array(layer.channels).astype(np.float64)
    return tuple(b * 2.0**-f for b in output_bounds(layer.output_spec, layer.channels))


def _on_grid(spec, shape, rng):
    """Values spread over the whole range of ``spec`` (on its grid)."""
    from fixedq.layers.base import output_bounds

    f = spec.frac_array(shape[-1]).astype(np.float64)
    lo, hi = (b * 2.0**-f for b in output_bounds(spec, shape[-1]))
    v = rng.uniform(lo, hi, shape)
    return np.clip(np.round(v * 2.0**f) * 2.0**-f, lo, hi).astype("float32")


@pytest.mark.parametrize("name", ["x_quantizer", "bn", "act", "fc"])
def test_layers_with_a_float_path_cut_the_gradient_where_they_saturate(name):
    """Eq. 24 for the layers whose QAT float path is a known function ``z(x)`` (InputQuantizer
    ``x``, an affine ``a x + c``, a table's float function, a Dense ``x W + b`` with the
    dequantized kernel): the gradient of the summed outputs is ``dz/dx`` where ``z`` is inside
    the output range and 0 where the output saturates. Fails if a layer's float path is not
    clipped (checked by replacing ``saturate_float`` with the identity in each module)."""
    import tensorflow as tf

    q = _saturating_model()
    layer = q.get_layer(name)
    rng = np.random.default_rng(1)
    shape = (8, *layer.input.shape[1:])
    if name == "x_quantizer":
        x = tf.constant(rng.normal(0, 4, shape).astype("float32"))
    else:
        x = tf.constant(_on_grid(layer.input_specs[0], shape, rng))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = tf.reduce_sum(layer(x, training=True))
    got = np.asarray(tape.gradient(out, x), np.float64)

    xf = np.asarray(x, np.float64)
    if name == "fc":
        w_q, scale = (np.asarray(t, np.float64) for t in layer.quantized_weights()[:2])
        w = w_q * scale
        z = xf @ w + np.asarray(layer.bias, np.float64)
    else:
        with tf.GradientTape() as tape:
            tape.watch(x)
            zt = x if name == "x_quantizer" else (
                layer.float_call(x) if name == "act" else
                x * tf.cast(layer.affine()[0], x.dtype) + tf.cast(layer.affine()[1], x.dtype))
            total = tf.reduce_sum(zt)
        dz = np.asarray(tape.gradient(total, x), np.float64)
        z = np.asarray(zt, np.float64)
    lo, hi = _float_bounds(layer)
    inside = (z >= lo) & (z <= hi)
    assert 0 < inside.mean() < 1, "some outputs saturate, some do not"
    want = inside @ w.T if name == "fc" else dz * inside
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
