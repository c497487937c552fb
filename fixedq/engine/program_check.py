"""``check_program(program, samples=None)``: the ``check`` report of an engine program.

:func:`fixedq.analysis.check` reads a quantized *Keras* model (its float weights give the
weight errors). A program imported from TFLite or ONNX (:mod:`fixedq.interop`), or any ``.fqe``
file, has only integers; this report gives what the integers alone can tell, per op:

- **accumulators, static** (``accumulator_bound``): ``accum_bound + max|b|`` (the program's
  own worst case of ``|Σ w·x|``, the bound the engine relies on, plus the largest bias) against
  the accumulator range ``[acc_lo, acc_hi]`` (int32 for imported programs); above it the
  accumulator *can* saturate. ``headroom_bits = log2(limit / bound)``.
- **accumulators on samples** (``accumulator_saturated``): how many accumulator values (bias
  included) fell outside the range on the samples (the engine clips them).
- **outputs on samples** (``output_saturated``): requantized values that sit on the op's
  clip bounds: at ``out_hi`` (an upper bound of the clipped count, as in ``check``), and at
  ``out_lo`` when ``out_lo < 0`` (engine values are ``q − zp``-like, 0 is the real zero: a
  floor at or above 0 is a fused ReLU, not saturation).
- **target** (``target``, with ``target=``): every reason the program does not fit a hardware
  profile (:func:`fixedq.engine.targets.violations`), e.g. an int8 TFLite model against
  ``akida-2.0``.

The samples run through the reference kernels op by op; the outputs equal
``program.predict(samples, output="int")`` (a test checks it). Streaming programs are refused
(their state makes per-op statistics frame-dependent).

Example:
    >>> import numpy as np
    >>> report = check_program(program, samples=x)  # doctest: +SKIP
    >>> report.ok, [p.kind for p in report.problems]  # doctest: +SKIP
    (True, [])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from fixedq.engine.model import Model
from fixedq.engine.ops import aligned_input, linear, neural_output, op_error, run_op
from fixedq.engine.targets import TARGETS, Target, violations
from fixedq.text_table import text_table

__all__ = ["OpCheck", "ProgramCheck", "ProgramProblem", "check_program"]

#: Problem kinds, in report order.
PROBLEM_KINDS = ("accumulator_bound", "accumulator_saturated", "output_saturated", "target")


@dataclass(frozen=True)
class ProgramProblem:
    """One problem found by :func:`check_program` (``op`` is ``"(program)"`` for target
    reasons that name their op in the message)."""

    op: str
    kind: str
    message: str
    value: float
    threshold: float


@dataclass
class OpCheck:
    """Measurements of one engine op (``None`` when not applicable)."""

    name: str
    kind: str
    rounding: str | None = None
    accumulator_bound: int | None = None
    accumulator_limit: int | None = None
    headroom_bits: float | None = None
    accumulator_saturations: int | None = None
    accumulator_values: int | None = None
    output_low: int | None = None
    output_high: int | None = None
    output_values: int | None = None

    @property
    def output_saturation_rate(self) -> float | None:
        if not self.output_values:
            return None
        return (self.output_low + self.output_high) / self.output_values

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output_saturation_rate"] = self.output_saturation_rate
        return d


@dataclass
class ProgramCheck:
    """What :func:`check_program` found."""

    model: str
    ops: list[OpCheck]
    problems: list[ProgramProblem]
    num_samples: int | None
    thresholds: dict = field(default_factory=dict)
    target: str | None = None

    @property
    def ok(self) -> bool:
        """``True`` when no problem was found."""
        return not self.problems

    def to_dict(self) -> dict:
        """JSON-able dict (``fixedq check --json`` on a ``.fqe``)."""
        return {"model": self.model, "ok": self.ok, "num_samples": self.num_samples,
                "target": self.target, "thresholds": dict(self.thresholds),
                "ops": [o.to_dict() for o in self.ops],
                "problems": [asdict(p) for p in self.problems]}

    def format_table(self) -> str:
        """A fixed-width table of the ops followed by the problems."""
        header = ("op", "kind", "rounding", "acc bound", "headroom", "acc sat", "out sat %")
        rows = [header]
        for oc in self.ops:
            rate = oc.output_saturation_rate
            rows.append((oc.name, oc.kind, oc.rounding or "-", _fmt(oc.accumulator_bound),
                         _fmt(oc.headroom_bits, ".1f", " b"), _fmt(oc.accumulator_saturations),
                         _fmt(None if rate is None else 100 * rate, ".3f")))
        lines = text_table(rows, left=3)
        samples = ("static checks only (no samples)" if self.num_samples is None
                   else f"{self.num_samples} samples")
        target = f", target {self.target}" if self.target else ""
        lines.insert(0, f"program {self.model!r}: {len(self.ops)} ops, {samples}{target}")
        lines.append("")
        if self.ok:
            lines.append("no problems found")
        else:
            lines.append(f"{len(self.problems)} problem(s) found:")
            lines.extend(f"  {p.op}: {p.kind}: {p.message}" for p in self.problems)
        return "\n".join(lines)


def _fmt(value, spec: str = "", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _static(op, oc: OpCheck) -> None:
    a = op.attrs
    if op.kind != "neural" or "accum_bound" not in a:
        return
    bound = int(a["accum_bound"]) + int(np.abs(op.arrays["bias"]).max(initial=0))
    limit = min(int(a["acc_hi"]), -int(a["acc_lo"]))
    oc.accumulator_bound, oc.accumulator_limit = bound, limit
    oc.headroom_bits = math.inf if bound == 0 else math.log2(max(limit, 1) / bound)


def _last_use(program: Model) -> dict[str, int]:
    last: dict[str, int] = {}
    for i, op in enumerate(program.ops):
        for t in op.inputs:
            last[t] = i
    for out in program.outputs:
        last[out["tensor"]] = len(program.ops)
    return last


def _run_batch(program: Model, x, checks: dict[str, OpCheck], last: dict[str, int]
               ) -> list[np.ndarray]:
    """One batch through the reference kernels, recording the per-op sample statistics;
    returns the program's integer outputs (as ``predict(output="int")``)."""
    tensors = {program.ops[0].name: program.quantize_inputs(x)}
    for i, op in enumerate(program.ops[1:], start=1):
        xs = [tensors[t] for t in op.inputs]
        for j in range(len(xs)):
            off = op.arrays.get(f"in_offset{j}")
            if off is not None:
                xs[j] = xs[j] + off
        try:
            if op.kind == "neural":
                acc = linear(op, aligned_input(op, xs[0]))
                y = neural_output(op, acc)
                acc = acc + op.arrays["bias"]
                oc = checks[op.name]
                bad = np.count_nonzero((acc < op.attrs["acc_lo"]) | (acc > op.attrs["acc_hi"]))
                oc.accumulator_saturations = (oc.accumulator_saturations or 0) + int(bad)
                oc.accumulator_values = (oc.accumulator_values or 0) + acc.size
            else:
                y = run_op(op, xs)
        except Exception as err:
            raise op_error(op, err) from err
        lo, hi = op.arrays.get("out_lo"), op.arrays.get("out_hi")
        if lo is not None and hi is not None:
            oc = checks[op.name]
            lo_b, hi_b = np.broadcast_to(lo, y.shape[-1:]), np.broadcast_to(hi, y.shape[-1:])
            oc.output_low = (oc.output_low or 0) + int(np.count_nonzero((y == lo_b) & (lo_b < 0)))
            oc.output_high = (oc.output_high or 0) + int(np.count_nonzero(y == hi_b))
            oc.output_values = (oc.output_values or 0) + y.size
        off = op.arrays.get("out_offset")
        tensors[op.name] = y if off is None else y - off
        for t in set(op.inputs):
            if last.get(t) == i:
                del tensors[t]
    return [tensors[o["tensor"]] + np.asarray(o["offset"], np.int64) if o.get("offset")
            else tensors[o["tensor"]] for o in program.outputs]


def check_program(program: Model, samples=None, batch_size: int = 32,
                  saturation_rate_threshold: float = 0.01, target: str | Target | None = None,
                  return_outputs: bool = False):
    """Check an engine program (converted, loaded or imported); see the module docstring.

    Args:
        program: a :class:`fixedq.engine.Model` (not a streaming model).
        samples: optional inputs (floats, or the integers an imported program reads).
        batch_size: samples per batch (memory grows with it, not with the number of samples).
        saturation_rate_threshold: largest acceptable rate of saturated outputs per op.
        target: optional hardware profile (name or :class:`Target`) to list violations of.
        return_outputs: also return the integer outputs of ``samples`` (a list per output).

    Returns:
        A :class:`ProgramCheck` (and the outputs with ``return_outputs``).

    Raises:
        TypeError: ``program`` is not an engine program (or is a streaming one).
        ValueError: bad ``samples`` shape/dtype, unknown target, bad threshold.
    """
    if not isinstance(program, Model):
        raise TypeError(f"check_program expects a fixedq.engine.Model, got "
                        f"{type(program).__name__} (streaming programs are not checked per op)")
    if not 0.0 <= float(saturation_rate_threshold) <= 1.0:
        raise ValueError(f"saturation_rate_threshold must be in [0, 1], got "
                         f"{saturation_rate_threshold!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(target, str):
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; known: {sorted(TARGETS)}")
        target = TARGETS[target]
    checks = {op.name: OpCheck(op.name, op.kind + (f"/{op.attrs['type']}"
                                                   if "type" in op.attrs else ""),
                               op.attrs.get("rounding", "half_up")
                               if "multiplier" in op.arrays else None)
              for op in program.ops[1:]}
    for op in program.ops[1:]:
        _static(op, checks[op.name])
    n = None
    outputs: list[list[np.ndarray]] = [[] for _ in program.outputs]
    if samples is not None:
        x = program.check_input(samples, convert=False)
        if len(x) == 0:
            raise ValueError("samples is empty")
        n, last = len(x), _last_use(program)
        for start in range(0, n, batch_size):
            ys = _run_batch(program, x[start:start + batch_size], checks, last)
            if return_outputs:
                for k, y in enumerate(ys):
                    outputs[k].append(y)
    thresholds = {"saturation_rate": float(saturation_rate_threshold)}
    problems = _problems(list(checks.values()), thresholds["saturation_rate"])
    if target is not None:
        problems += [ProgramProblem("(program)", "target", reason, 1.0, 0.0)
                     for reason in violations(program, target)]
    report = ProgramCheck(program.name, list(checks.values()), problems, n, thresholds,
                          None if target is None else target.name)
    if return_outputs:
        return report, [np.concatenate(parts) for parts in outputs]
    return report


def _problems(ocs: list[OpCheck], rate_threshold: float) -> list[ProgramProblem]:
    found = []
    for oc in ocs:
        if oc.accumulator_bound is not None and oc.accumulator_bound > oc.accumulator_limit:
            found.append(ProgramProblem(
                oc.name, "accumulator_bound",
                f"worst-case accumulator {oc.accumulator_bound} exceeds the range "
                f"±{oc.accumulator_limit} ({oc.headroom_bits:.1f} bits of headroom)",
                float(oc.accumulator_bound), float(oc.accumulator_limit)))
        if oc.accumulator_saturations:
            found.append(ProgramProblem(
                oc.name, "accumulator_saturated",
                f"{oc.accumulator_saturations} of {oc.accumulator_values} accumulator values "
                "saturated on the samples", float(oc.accumulator_saturations), 0.0))
        rate = oc.output_saturation_rate
        if rate is not None and rate > rate_threshold:
            found.append(ProgramProblem(
                oc.name, "output_saturated",
                f"{100 * rate:.2f} % of outputs on the clip bounds ({oc.output_low} low, "
                f"{oc.output_high} high, of {oc.output_values})", rate, rate_threshold))
    order = {k: i for i, k in enumerate(PROBLEM_KINDS)}
    return sorted(found, key=lambda p: order[p.kind])
