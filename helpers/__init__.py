"""The engine room: plumbing that no reading of the lesson needs (the chapters are in chapters/).

Talking to the ISIC Archive, drawing synthetic lesions, opening image files safely (and images inside
HDF5 files), reading metadata CSVs, writing files atomically, progress lines, the charts, and the
plumbing for resuming a run and for training in several processes. Nothing here imports the five
scripts or the chapters.
"""
