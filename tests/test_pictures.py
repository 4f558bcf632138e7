"""The pictures the code draws: written, of the expected size, not blank; Grad-CAM looks where it should."""
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

import chapters.grad_cam
from chapters.grad_cam import grad_cam
from dataset import CustomDataset, build_transforms, read_split
from helpers.charts import draw_augmentation_grid
from model import IMAGENET_MEAN, IMAGENET_STD, BaselineCNN


def assert_not_blank(path, min_colours=10):
    colours = Image.open(path).convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is None or len(colours) >= min_colours, f"{path} is (nearly) blank"


def test_augmentation_grid(synthetic_data, tmp_path):
    path = tmp_path / "grid.png"
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    training = CustomDataset(read_split(synthetic_data, "train"), build_transforms(32, True, mean, std))
    plain = build_transforms(32, False, mean, std)
    draw_augmentation_grid(training, plain, path, mean, std, rows=4, variants=3)
    # a label column of 110 px and a header of 30 px, then 4 rows of 4 images of 32 px with 4 px gaps
    assert Image.open(path).size == (110 + 4 * 36, 30 + 4 * 36)
    assert_not_blank(path)
    # Drawing it leaves the global random state alone, so training stays reproducible.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    draw_augmentation_grid(training, plain, path, mean, std, rows=2)
    assert torch.equal(torch.rand(3), expected)


def test_training_writes_its_log_curves_and_augmentations(trained_baseline):
    checkpoint, _ = trained_baseline
    log = pd.read_csv(checkpoint.with_name("baseline-log.csv"))
    assert list(log["epoch"]) == list(range(1, len(log) + 1)) and 1 <= len(log) <= 12
    assert {"train_loss", "val_loss", "val_accuracy", "val_auc", "seconds", "images_per_second", "lr"} <= set(log)
    assert log["lr"].is_monotonic_decreasing  # the cosine schedule
    curves = checkpoint.with_name("baseline-curves.png")
    assert Image.open(curves).size == (2 * 505, 500)  # two 400 x 400 charts with their margins
    assert_not_blank(curves)
    assert_not_blank(checkpoint.with_name("baseline-augmentations.png"))


def test_grad_cam_has_the_image_size_and_is_normalised():
    torch.manual_seed(0)
    cam = grad_cam(BaselineCNN().eval(), torch.randn(3, 48, 40))
    assert cam.shape == (48, 40)
    assert cam.min() == 0 and cam.max() == 1


@pytest.fixture(scope="module")
def corner_model():
    """Every image has a bright square somewhere; malignant ones (and only they) also have one in the
    top-left corner. A model that learns the task must look at that corner to call "malignant"."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(256, 3, 32, 32, generator=generator) * 0.3
    labels = torch.arange(256) % 2
    for i in range(256):
        y, x = torch.randint(12, 24, (2,), generator=generator).tolist()
        images[i, :, y:y + 8, x:x + 8] = 1.0  # a distractor, in both classes
        if labels[i]:
            images[i, :, 0:8, 0:8] = 1.0
    torch.manual_seed(0)
    model = BaselineCNN(widths=(16, 32, 64))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        batch = torch.randint(0, 256, (32,), generator=generator)
        loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() > 0.95  # it did learn the rule
    return model, images


def test_grad_cam_looks_at_the_corner_that_decides_the_class(corner_model):
    model, images = corner_model
    peak_in_corner, on_corner, on_distractor = [], [], []
    for i in range(1, 80, 2):  # malignant images
        cam = grad_cam(model, images[i])
        row, column = divmod(cam.argmax().item(), 32)
        peak_in_corner.append(row < 12 and column < 12)
        distractor = images[i, 0] == 1.0
        distractor[:8, :8] = False
        on_corner.append(cam[:8, :8].mean())
        on_distractor.append(cam[distractor].mean())
    assert sum(peak_in_corner) >= 0.9 * len(peak_in_corner)
    assert torch.stack(on_corner).mean() > 2 * torch.stack(on_distractor).mean()


def test_the_gallery_maps_the_evidence_for_the_class_each_image_was_called(tmp_path, monkeypatch):
    # A missed melanoma has almost no malignant evidence, and its "malignant" map would be empty: the
    # gallery draws the map of the class the model called instead (benign for a false negative).
    asked = {}

    def recording_grad_cam(model, image, towards=1):
        asked[round(image[0, 0, 0].item())] = towards
        return torch.zeros(image.shape[-2:])

    monkeypatch.setattr(chapters.grad_cam, "grad_cam", recording_grad_cam)

    class Images:  # image i is filled with the value i, so that the recorder knows which it was given
        table = pd.DataFrame({"isic_id": [f"i{i}" for i in range(4)]})

        def __getitem__(self, index):
            return torch.full((3, 16, 16), float(index)), 0

    labels, probabilities = [1, 1, 0, 0], [0.9, 0.1, 0.8, 0.2]  # a hit, a miss, a false alarm, a benign
    chapters.grad_cam.draw_grad_cam_gallery(None, Images(), probabilities, labels, 0.5, tmp_path / "g.png", "cpu",
                                           (0, 0, 0), (1, 1, 1))
    assert asked == {0: 1, 1: 0, 2: 1}  # true positive, false negative, false positive
    assert (tmp_path / "g.png").exists()
