"""Model-level API: quantize, calibrate, q-config dump/apply, load_model/save_model."""

from fixedq.models.streaming import predict_clips, reset_buffers, unroll_clips

__all__ = ["predict_clips", "reset_buffers", "unroll_clips"]
