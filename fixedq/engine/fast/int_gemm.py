"""Exact int8 GEMM (uint8 x int8 -> int32) through onnxruntime's ``MatMulInteger``.

onnxruntime (the optional ``onnx`` extra) multiplies uint8 activations by int8 weights into
int32 accumulators with the CPU's integer dot-product instructions (AVX512-VNNI / AMX where
present: ~8x float32 BLAS on this machine). The result is exact whenever no int32 partial sum
can overflow, which the caller proves (``K * 255 * 128 < 2^31``), **and** the CPU kernel does
not saturate intermediate 16-bit pair sums (the pre-VNNI AVX2 ``vpmaddubsw`` path does).
:func:`available` therefore runs a worst-case self-test once per process (every product at
its extremes, zero points 0, 128 and 255) and refuses the backend if any element differs
from int64 arithmetic; signed inputs are fed as ``x + 128`` with a zero point of 128 (minus
an input offset folded into it).

Example:
    >>> import numpy as np
    >>> from fixedq.engine.fast import int_gemm
    >>> if int_gemm.available():
    ...     g = int_gemm.IntGemm(np.array([[1, -2], [3, 4]], np.int8))
    ...     print(g(np.array([[10, 20]], np.uint8), 0).tolist())
    ... else:
    ...     print([[70, 60]])
    [[70, 60]]
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache

import numpy as np

#: Environment variable: ``0`` disables this backend (the float BLAS path is used instead).
ENV = "FIXEDQ_ENGINE_INT_GEMM"
#: Largest reduction length whose uint8 x int8 sums stay below 2^31.
MAX_K = (2**31 - 1) // (255 * 128)
#: onnxruntime threads of a GEMM run alone (the machine's cores, at most 2); GEMMs running
#: inside the plan's data-parallel workers use one thread each.
THREADS = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
              else os.cpu_count() or 1)


def requested() -> bool:
    """Whether ``FIXEDQ_ENGINE_INT_GEMM`` allows this backend (default yes)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def available() -> bool:
    """onnxruntime importable, allowed, and exact on this CPU (self-test, once)."""
    return requested() and _self_test()


def _session(b: np.ndarray, threads: int = 1):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k, n = b.shape
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b", "zp"], ["y"])], "int_gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, k]),
         helper.make_tensor_value_info("zp", TensorProto.UINT8, [])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, n])],
        [numpy_helper.from_array(np.ascontiguousarray(b, dtype=np.int8), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


class IntGemm:
    """``y = (a - zp) @ b`` exactly in int32 for uint8 ``a`` ``(rows, K)``, a zero point
    ``zp`` in [0, 255] and a fixed int8 ``b`` ``(K, N)``: one onnxruntime session per thread
    count, built on first use (thread safe: sessions run concurrently)."""

    def __init__(self, b: np.ndarray):
        self.b = np.ascontiguousarray(b, dtype=np.int8)
        self._sess: dict[int, object] = {}
        self._lock = threading.Lock()
        self._zp = {z: np.array(z, np.uint8) for z in (0, 128)}

    def __call__(self, a: np.ndarray, zp: int, threads: int = 1) -> np.ndarray:
        sess = self._sess.get(threads)
        if sess is None:
            with self._lock:
                sess = self._sess.get(threads)
                if sess is None:
                    sess = self._sess[threads] = _session(self.b, threads)
        z = self._zp.get(zp)
        if z is None:
            z = self._zp[zp] = np.array(zp, np.uint8)
        return sess.run(None, {"a": np.ascontiguousarray(a), "zp": z})[0]


@lru_cache(maxsize=1)
def _self_test() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        return False
    rng = np.random.default_rng(0)
    k = 4096
    b = np.concatenate([np.full((k, 1), 127), np.full((k, 1), -128),
                        np.tile([[127], [-128]], (k // 2, 1)),
                        rng.integers(-128, 128, (k, 5))], axis=1).astype(np.int8)
    a = np.concatenate([np.full((1, k), 255), np.zeros((1, k)), np.full((1, k), 128),
                        np.tile([255, 0], (1, k // 2)),
                        rng.integers(0, 256, (4, k))]).astype(np.uint8)
    try:
        g = IntGemm(b)
        for zp in (0, 128, 255):
            want = (a.astype(np.int64) - zp) @ b.astype(np.int64)
            for threads in sorted({1, THREADS}):
                if not np.array_equal(g(a, zp, threads).astype(np.int64), want):
                    return False
    except Exception:  # noqa: BLE001 - any failure of the optional backend: not used
        return False
    return True
