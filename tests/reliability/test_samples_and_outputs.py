"""Issue 17: the one reader of samples/labels files and the one atomic writer of outputs.

Every probe of the issue is a test: the library raises a ``ValueError`` naming the file and the
array; the ``fixedq`` command prints one line and exits with 2 (before TensorFlow is imported).
Real signals are sent to a subprocess in the middle of a slow write: it exits with 143/130,
prints one line and leaves neither a temporary file nor a half-written target.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fixedq.io import (
    ArrayFileError,
    Terminated,
    atomic_open,
    atomic_path,
    class_ids,
    read_labelled_samples,
    read_labels,
    read_samples,
    write_atomic,
)
from fixedq.models.samples import iter_batches

DRIVER = Path(__file__).parents[1] / "cli" / "cli_driver.py"
ROOT = Path(__file__).parents[2]


# --- probe files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict[str, Path]:
    """One file per probe of the issue (and a fake .keras model, enough for the CLI checks)."""
    d = tmp_path_factory.mktemp("probes")
    rng = np.random.default_rng(0)
    x = rng.random((64, 28, 28, 1), dtype=np.float32)
    files = {"dir": d}
    model = d / "model.keras"  # a zip like a .keras archive: passes the CLI's cheap check
    with zipfile.ZipFile(model, "w") as z:
        z.writestr("metadata.json", "{}")
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n")
    files["model"] = model
    np.save(d / "good.npy", x)
    np.savez(d / "good.npz", x=x, y=np.arange(64) % 10)
    np.save(d / "flat.npy", x[..., 0])  # (64, 28, 28)
    np.save(d / "y0.npy", np.zeros((64, 0)))
    np.save(d / "y_short.npy", np.arange(5))
    np.save(d / "obj.npy", np.array([[None, 1.0]], dtype=object), allow_pickle=True)
    np.savez(d / "obj.npz", x=np.array([[None, 1.0]], dtype=object), allow_pickle=True)
    np.save(d / "complex.npy", np.ones((2, 3), np.complex64))
    bad = x.copy()
    bad[0, 0, 0, 0], bad[1, 0, 0, 0], bad[2, 0, 0, 0] = np.nan, np.nan, np.inf
    np.save(d / "nan.npy", bad)
    np.save(d / "empty.npy", np.zeros((0, 28, 28, 1), np.float32))
    (d / "random.bin").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (d / "notes.txt").write_text("hello\n")
    np.save(d / "truncated.npy", x)
    raw = (d / "truncated.npy").read_bytes()
    (d / "truncated.npy").write_bytes(raw[:len(raw) // 2])
    np.savez_compressed(d / "zlib.npz", x=x)  # deflate stream broken: zlib.error in NumPy
    raw = bytearray((d / "zlib.npz").read_bytes())
    info = zipfile.ZipFile(d / "zlib.npz").infolist()[0]
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    raw[start:start + 8] = b"\xff" * 8
    (d / "zlib.npz").write_bytes(bytes(raw))
    np.savez(d / "crc.npz", x=x)  # stored, one byte changed: bad CRC
    raw = bytearray((d / "crc.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (d / "crc.npz").write_bytes(bytes(raw))
    config = {"format": "fixedq-qconfig", "version": 1, "qparams": {},
              "layers": {"conv": {"weight_bits": 8, "calibration": None}}}
    (d / "null_calibration.json").write_text(json.dumps(config))
    files.update({p.stem if p.suffix != ".npz" else p.stem + "_npz": p for p in d.iterdir()
                  if p.is_file()})
    return files


# --- the library: every error a ValueError naming the file and the array --------------------


API_CASES = [
    ("model", ["model.keras", "not a NumPy .npz file", "'metadata.json'", "Keras .keras model"]),
    ("zlib_npz", ["zlib.npz", "array 'x'", "truncated or corrupt", "decompressing"]),
    ("crc_npz", ["crc.npz", "array 'x'", "truncated or corrupt", "CRC"]),
    ("truncated", ["truncated.npy", "truncated or corrupt"]),
    ("random", ["random.bin", "not a NumPy .npy/.npz file"]),
    ("notes", ["notes.txt", "not a NumPy .npy/.npz file"]),
    ("obj", ["obj.npy", "dtype object", "real numbers (float or int) are expected"]),
    ("obj_npz", ["obj.npz", "array 'x'", "dtype object"]),
    ("complex", ["complex.npy", "dtype complex64", "complex numbers"]),
    ("nan", ["nan.npy", "2 NaN and 1 infinite values", "finite values are expected"]),
    ("empty", ["empty.npy", "shape (0, 28, 28, 1)", "N >= 1"]),
]


@pytest.mark.parametrize("key, fragments", API_CASES, ids=[c[0] for c in API_CASES])
def test_read_samples_errors(probes, key, fragments):
    with pytest.raises(ValueError) as info:
        read_samples(probes[key])
    message = str(info.value)
    assert isinstance(info.value, ArrayFileError) and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert "pickle" not in message and "allow_pickle" not in message


@pytest.mark.parametrize("path, kind", [("/dev/zero", "a character device"),
                                        ("DIR", "a directory")])
def test_special_files_are_not_reported_missing(probes, path, kind):
    path = probes["dir"] if path == "DIR" else path
    with pytest.raises(ValueError, match=f"is {kind}, not a NumPy .npy/.npz file"):
        read_samples(path)


def test_fifo_is_reported_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is a named pipe"):
        read_samples(fifo)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="samples file not found: .*missing.npz"):
        read_samples(tmp_path / "missing.npz")


def test_good_files(probes):
    assert read_samples(probes["good"]).shape == (64, 28, 28, 1)
    x, y = read_labelled_samples(probes["good_npz"])
    assert x.shape == (64, 28, 28, 1) and y.dtype == np.int64 and y[:3].tolist() == [0, 1, 2]
    assert read_samples(probes["good_npz"]).shape == (64, 28, 28, 1)  # 'y' is not a sample


def test_labels(probes):
    with pytest.raises(ValueError, match=r"y0.npy' have shape \(64, 0\): zero columns"):
        read_labels(probes["y0"], 64)
    with pytest.raises(ValueError, match="5 rows for 64 samples"):
        read_labels(probes["y_short"], 64)
    with pytest.raises(ValueError, match="dtype object"):
        read_labels(probes["obj"])
    assert class_ids(np.eye(4)[[3, 1]], 2).tolist() == [3, 1]
    assert class_ids(np.array([[2.0], [0.0]])).tolist() == [2, 0]
    with pytest.raises(ValueError, match="whole numbers"):
        class_ids(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="negative"):
        class_ids(np.array([-1, 1]))


def test_api_samples_shape_is_the_arrays_not_a_batchs():
    """(64, 28, 28) samples for a (28, 28, 1) model: reported as (64, 28, 28), not (1, 32, ...)."""
    with pytest.raises(ValueError) as info:
        list(iter_batches(np.zeros((64, 28, 28), "float32"), (None, 28, 28, 1), 64, 32))
    assert "(64, 28, 28)" in str(info.value) and "(N, 28, 28, 1)" in str(info.value)
    with pytest.raises(ValueError, match="dtype object"):
        list(iter_batches(np.array([[None, 1.0]], dtype=object), (None, 2), 4))
    one = list(iter_batches(np.zeros((28, 28, 1), "float32"), (None, 28, 28, 1), 4))
    assert [b.shape for b in one] == [(1, 28, 28, 1)]  # a single sample still works


# --- the command line: one line, exit 2, before TensorFlow -----------------------------------


def _run_batch(cases) -> tuple[list[dict], bool]:
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    proc = subprocess.run([sys.executable, str(DRIVER)],
                          input=json.dumps([[str(a) for a in args] for args in cases]),
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    return report["results"], report["tensorflow_imported"]


def _assert_one_line(code, out, err, *fragments, status=2):
    assert code == status, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert out == ""


def test_cli_probes_one_line_exit_2(probes):
    p, m = probes, probes["model"]
    cases = [
        (("quantize", "-m", m, "-sa", m), "not a NumPy .npz file"),
        (("quantize", "-m", m, "-sa", p["zlib_npz"]), "array 'x' is truncated or corrupt"),
        (("check", "-m", m, "-sa", p["crc_npz"]), "array 'x' is truncated or corrupt"),
        (("quantize", "-m", m, "-sa", "/dev/zero"), "is a character device"),
        (("inspect", "-m", m, "-q", m, "-sa", p["dir"]), "is a directory"),
        (("quantize", "-m", m, "-sa", p["random"]), "not a NumPy .npy/.npz file"),
        (("quantize", "-m", m, "-sa", p["obj_npz"]), "dtype object"),
        (("quantize", "-m", m, "-sa", p["nan"]), "2 NaN and 1 infinite values"),
        (("quantize", "-m", m, "-c", p["null_calibration"]),
         "layer 'conv': \"calibration\" must be an object"),
        (("run", "-m", "none.fqe", "-sa", p["good"], "--labels", p["y0"]), "zero columns"),
        (("run", "-m", "none.fqe", "-sa", p["good"], "--labels", p["y_short"]),
         "5 rows for 64 samples"),
        (("mixed_precision", "-m", m, "-c", p["null_calibration"]), "\"calibration\""),
    ]
    results, tf_imported = _run_batch([args for args, _ in cases])
    for (args, fragment), r in zip(cases, results, strict=True):
        _assert_one_line(r["code"], r["out"], r["err"], f"fixedq {args[0]}: error:", fragment)
        assert "pickle" not in r["err"] and "NoneType" not in r["err"]
    assert not tf_imported
    # and once as the real console script
    proc = subprocess.run(["fixedq", "quantize", "-m", str(m), "-sa", "/dev/zero"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}"
                                                     f"{os.pathsep}{os.environ['PATH']}"})
    _assert_one_line(proc.returncode, proc.stdout, proc.stderr, "'/dev/zero' is a character")


# --- the atomic writer ---------------------------------------------------------------------


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_exception_removes_the_temporary_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"new, half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old" and _leftovers(tmp_path, {"out.bin"}) == []
    previous = signal.getsignal(signal.SIGTERM)
    with atomic_path(tmp_path / "b.txt") as tmp:
        assert signal.getsignal(signal.SIGTERM) is not previous
        Path(tmp).write_text("b")
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
    assert (tmp_path / "b.txt").read_text() == "b"


def test_an_ignored_signal_stays_ignored(tmp_path):
    """A process started with SIGINT/SIGTERM ignored (nohup, a shell's background job) keeps
    ignoring them during an atomic write: the write completes and SIG_IGN is still set after
    (a real process, real signals sent to itself in the middle of the write)."""
    code = (
        "import os, signal, sys\n"
        "from fixedq.io.atomic import atomic_path\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
        "    open(tmp, 'w').write('half')\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    open(tmp, 'a').write(' and the rest')\n"
        "assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
        "assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN\n"
        "print('done')\n")
    target = tmp_path / "out.txt"
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    assert target.read_text() == "half and the rest"
    assert _leftovers(tmp_path, {"out.txt"}) == []
    # the same write with default handlers is interrupted and leaves nothing behind
    plain = code.replace("signal.signal(signal.SIGINT, signal.SIG_IGN)\n", "").replace(
        "    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n", "")
    proc = subprocess.run([sys.executable, "-c", plain, str(tmp_path / "other.txt")],
                          capture_output=True, text=True, timeout=60,
                          preexec_fn=_default_sigint)
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr
    assert _leftovers(tmp_path, {"out.txt"}) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_umask_gives_the_mode_of_a_plain_open(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "new.json", "{}")
        with open(tmp_path / "plain.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == mode


def test_replacing_a_file_keeps_its_mode(tmp_path):
    target = tmp_path / "shared.json"
    target.write_text("old")
    target.chmod(0o640)
    write_atomic(target, "new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_text() == "new"


def test_save_model_goes_through_the_helper(tmp_path, monkeypatch):
    import keras

    import fixedq

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    old = os.umask(0o022)
    try:
        fixedq.save_model(model, tmp_path / "m.keras")
        fixedq.save_model(model, tmp_path / "m.h5")
    finally:
        os.umask(old)
    for name in ("m.keras", "m.h5"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644

    def failing_save(model, path, **kwargs):
        Path(path).write_bytes(b"half a model")
        raise Terminated()

    monkeypatch.setattr(keras.saving, "save_model", failing_save)
    with pytest.raises(Terminated):
        fixedq.save_model(model, tmp_path / "m.keras")
    assert _leftovers(tmp_path, {"m.keras", "m.h5"}) == []
    assert zipfile.is_zipfile(tmp_path / "m.keras")  # the old model, intact


# --- real signals in the middle of a write ---------------------------------------------------

_SLOW_WRITER = textwrap.dedent("""
    import sys, time
    import fixedq_cli.commands.config as command
    from fixedq.io import atomic_open
    from fixedq_cli.main import main

    def slow_run(args):
        with atomic_open(sys.argv[1], "wb") as f:
            f.write(b"\\0" * (12 << 20))   # 12 MB written...
            f.flush()
            print("writing", flush=True)
            time.sleep(60)                # ...and the rest never comes
            f.write(b"end")
        return 0

    command.run = slow_run  # main() builds its parser from command.run
    sys.exit(main(["config", "-m", "unused.keras"]))
""")


def _default_sigint() -> None:
    """In a child before exec: SIGINT at its default, as in a foreground process, whatever the
    test runner inherited (a runner started as a background job of a non-interactive shell
    has SIGINT ignored, and its children with it: Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum, code, word, ignored", [
    (signal.SIGTERM, 143, "terminated", False),
    (signal.SIGINT, 130, "interrupted", False),
    # SIGINT ignored by the parent (a shell's background job): it stays ignored, the write
    # goes on; a SIGTERM then stops it cleanly
    (signal.SIGINT, 143, "terminated", True),
], ids=["sigterm", "sigint", "sigint-ignored"])
def test_signal_during_write(tmp_path, signum, code, word, ignored):
    target = tmp_path / "out.bin"
    if signum == signal.SIGINT and not ignored:
        target.write_bytes(b"previous content")  # an existing target stays intact
    before = target.read_bytes() if target.exists() else None

    def preexec():
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            _default_sigint()

    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec)
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert len(_leftovers(tmp_path, {"out.bin"})) == 1  # the hidden temporary file
        time.sleep(0.2)
        proc.send_signal(signum)
        if ignored:
            time.sleep(1.0)
            assert proc.poll() is None  # still writing: the ignored signal did nothing
            assert len(_leftovers(tmp_path, {"out.bin"})) == 1
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    _assert_one_line(proc.returncode, out, err, f"fixedq config: {word}", status=code)
    assert _leftovers(tmp_path, {"out.bin"}) == []
    assert (target.read_bytes() if target.exists() else None) == before


@pytest.mark.parametrize("entry", [None, [], {"min": [0.0]}, {"min": "a", "max": [1.0]},
                                   {"min": [0.0], "max": [float("nan")]}])
def test_api_bad_calibration_entry_names_the_layer(entry):
    import keras

    import fixedq

    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, name="conv")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(keras.layers.Flatten()(h)))
    x = np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 1)).astype("float32")
    cfg = json.loads(json.dumps(fixedq.dump_config(fixedq.quantize(model, samples=x,
                                                                   verbose=False))))
    cfg["layers"]["conv"]["calibration"] = entry
    with pytest.raises(ValueError, match=r"layer 'conv', key 'calibration': must be"):
        fixedq.quantize(model, q_config=cfg, verbose=False)
