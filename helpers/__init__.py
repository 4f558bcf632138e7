"""Code that a first reading of the five scripts can skip.

The steps (prepare_data.py -> dataset.py -> model.py -> train.py -> evaluate.py) import what they need
from here: talking to the ISIC Archive, drawing synthetic lesions, opening image files safely (and images
inside HDF5 files), writing files atomically, progress lines, charts, Grad-CAM pictures, the ONNX export,
and the plumbing for resuming a run and for training in several processes. Nothing here imports any of
the five scripts.
"""
