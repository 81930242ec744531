"""Offline tools, apart from the run-time path: preparing models (download, checks,
conversion: `models.py`, `npm.py`, `tflite2onnx.py`, `tfjs2onnx.py`), INT8 calibration
(`calibrate.py`) and TensorRT engine building (`engines.py`). Run before a run, by `make`
and `edge-semvc models|calibrate|engines`; nothing at run time imports them."""
