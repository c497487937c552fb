"""``fixedq quantize`` on clip samples and ``fixedq run`` on a streaming .fqe, as subprocesses."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from fixedq.layers.temporal import BufferTempConv, StatefulRecurrent

L = keras.layers


def _cli(*args):
    proc = subprocess.run([sys.executable, "-m", "fixedq_cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream_cli")
    x = keras.Input((4, 4, 2))
    y = L.ReLU()(BufferTempConv(4, 3, use_bias=True)(x))
    y = StatefulRecurrent()(y)
    model = keras.Model(x, L.Dense(3)(L.Flatten()(y)))
    model.save(d / "stream.keras")
    rng = np.random.default_rng(0)
    clips = rng.normal(size=(12, 5, 4, 4, 2)).astype("float32")
    labels = rng.integers(0, 3, 12)
    np.savez(d / "clips.npz", x=clips, y=labels)
    np.save(d / "frames_bad.npy", clips[:, :, :3])
    code, out, err = _cli("quantize", "-m", d / "stream.keras", "-sa", d / "clips.npz",
                          "-s", d / "q.keras")
    assert code == 0, err
    code, out, err = _cli("convert", "-m", d / "q.keras", "-o", d / "q.fqe")
    assert code == 0, err
    return d, clips, labels


def test_run_reports_the_last_frame_and_every_frame(files):
    import fixedq
    import fixedq.engine as fe
    from fixedq.models import predict_clips

    d, clips, labels = files
    want = predict_clips(fixedq.load_model(d / "q.keras"), clips)
    assert np.array_equal(fe.load(d / "q.fqe").predict(clips), want)
    code, out, err = _cli("run", "-m", d / "q.fqe", "-sa", d / "clips.npz")
    assert code == 0, err
    assert "streaming: 12 clips of 5 frames, each from a clean state; results of the last " \
           "frame" in out
    last = np.argmax(want[:, -1], -1)
    assert f"accuracy: {np.mean(last == labels):.4f}" in out
    code, out, err = _cli("run", "-m", d / "q.fqe", "-sa", d / "clips.npz", "--frames", "all",
                          "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["frames"] == 5
    assert report["frame_predictions"] == np.argmax(want, -1).tolist()
    assert report["frame_accuracy"][-1] == report["accuracy"]


def test_bad_clips_one_line_exit_2(files):
    d, _, _ = files
    code, out, err = _cli("run", "-m", d / "q.fqe", "-sa", d / "frames_bad.npy")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "expects clips of shape (N, T, 4, 4, 2)" in err
    code, out, err = _cli("quantize", "-m", d / "stream.keras", "-sa", d / "frames_bad.npy",
                          "-s", d / "never.keras")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (d / "never.keras").exists()
