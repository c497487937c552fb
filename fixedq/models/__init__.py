"""Model-level API: quantize, calibrate, q-config dump/apply, load_model/save_model."""
