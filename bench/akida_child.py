"""Time BrainChip's akida software engine on the engine bench's MNIST architectures.

Run by ``bench/engine_bench.py`` with the Python of a separate virtual environment holding
akida 2.19.3, cnn2snn 2.19.3, quantizeml 1.2.5 and TensorFlow 2.19 (``--akida-python``); not
importable from fixedq's environment. Prints one JSON object per model: the median seconds of
``akida_model.predict`` at each batch size (uint8 inputs, 8-bit quantizeml models converted by
cnn2snn, random-init weights), or the error that stopped the model.

Run:  /work/akida-venv/bin/python bench/akida_child.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(name, tfk):
    """The engine bench's MNIST nets in tf-keras (same layers and sizes)."""
    L = tfk.layers
    x = tfk.Input((28, 28, 1))
    if name == "ds_cnn_mnist":
        y = L.Conv2D(64, 3, strides=2, padding="same", use_bias=False)(x)
        y = L.ReLU()(L.BatchNormalization()(y))
        for _ in range(4):
            y = L.ReLU()(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same",
                                                                   use_bias=False)(y)))
            y = L.ReLU()(L.BatchNormalization()(L.Conv2D(64, 1, use_bias=False)(y)))
        y = L.GlobalAveragePooling2D()(y)
        return tfk.Model(x, L.Dense(10)(y))
    y = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(16, 3, strides=2, padding="same")(x)))
    for c in (16, 24, 24, 32):
        z = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(c * 4, 1)(y)))
        z = L.ReLU(6.0)(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same")(z)))
        z = L.BatchNormalization()(L.Conv2D(c, 1)(z))
        y = L.Add()([y, z]) if y.shape[-1] == c else z
    return tfk.Model(x, L.Dense(10)(L.GlobalAveragePooling2D()(y)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="ds_cnn_mnist,mbv2_mnist")
    args = parser.parse_args()
    import numpy as np
    import tf_keras as tfk
    from cnn2snn import convert
    from quantizeml.models import QuantizationParams, quantize

    rng = np.random.default_rng(0)
    for name in args.models.split(","):
        row = {"name": name}
        try:
            tfk.utils.set_random_seed(0)
            model = build(name, tfk)
            x8 = rng.integers(0, 256, (100, 28, 28, 1)).astype(np.uint8)
            qp = QuantizationParams(input_weight_bits=8, weight_bits=8, activation_bits=8)
            q = quantize(model, qparams=qp, samples=x8[:64].astype(np.float32), batch_size=32)
            ak = convert(q)
            times = {}
            for b in (1, 32, 100):
                xb = x8[:b]
                ak.predict(xb)
                ts = []
                for _ in range(args.repeats):
                    time.sleep(0.2)
                    t0 = time.perf_counter()
                    ak.predict(xb)
                    ts.append(time.perf_counter() - t0)
                times[str(b)] = float(np.median(ts))
            row["seconds"] = times
        except Exception as err:  # noqa: BLE001 - reported as the model's row
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
