"""The chapters: what the five scripts reach for, one subject to a file, each read from top
to bottom.

A first reading takes the five scripts (prepare_data.py -> dataset.py -> model.py -> train.py ->
evaluate.py), which hold the lesson whole, metrics included. A second reading takes the chapters,
each as the next one, in the order the data meets them; each adds its own options to the step that
reaches it:
  imbalance.py         rare malignant lesions: sampling, class weights, focal loss
  linear_probe.py      train.py --freeze-backbone: a pretrained network's features and one new layer
  cross_validation.py  train.py --folds K: every labelled image validates once; K models as one
  metadata.py          age, sex and site weighed beside the image: a logistic regression by hand
  isic2024.py          the Kaggle challenge's layout, HDF5 images and lesion measurements
  hardware.py          the device, the precision and the loader processes
  partial_auc.py       the ISIC 2024 challenge's metric: the ROC curve above 80 % sensitivity
  grad_cam.py          where a model looked
  unlabelled.py        evaluate.py --predict and --image: scoring images that have no label
  onnx_export.py       evaluate.py --export: the model as one ONNX file that takes the image as
                       decoded, for use without this project (the web page in web/)
  calibration.py       does P(malignant) come true, and for which population (--prevalence)
  novelty.py           a warning when an image is unlike any the model learnt from
The plumbing nobody needs to read (atomic writes, progress lines, image decoding, HDF5 reads, the
ISIC Archive download, resuming, torchrun, the charts) is in helpers/. Chapters import from helpers/
and from the steps before the one that calls them, never from a later one.
"""
