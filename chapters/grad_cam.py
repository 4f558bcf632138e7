"""Grad-CAM: where a model looked, drawn over the image.

A score says how sure a model is, not why. Grad-CAM shows which parts of the image raised the score
of the class it chose: evaluate.py draws a gallery of its most confident hits and misses on every
split it scores (OUT/grad_cam.png), and one map for --image (chapters/unlabelled.py). A map on the
skin around a lesion, or on a ruler or hair, is a model that learnt the context rather than
the lesion.
"""
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from helpers.charts import to_picture
from helpers.files import save_image


# Grad-CAM (Selvaraju et al., ICCV 2017): take the feature maps of the last convolution, weight each
# map by how much the log-odds of a class rise when that map rises (its gradient, averaged over the
# map), add them up and keep the positive part. Bright regions are the evidence the model used for
# that class. For an image it calls benign, the map for "malignant" is mostly zero (there was little
# such evidence), so what is drawn is always the map for the class it chose: for a missed melanoma,
# what looked benign.

def grad_cam(model, image, towards=1):
    """A map in [0, 1] of the image's size: the evidence for class `towards` (1: malignant,
    0: benign).
    image: one normalised tensor, C x H x W."""
    last_convolution = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    captured = {}
    hook = last_convolution.register_forward_hook(
        lambda module, inputs, output: captured.update(maps=output))
    try:
        with torch.enable_grad():
            logits = model(image.unsqueeze(0))
            maps = captured["maps"]
            (gradients,) = torch.autograd.grad(logits[0, towards] - logits[0, 1 - towards], maps)
    finally:
        hook.remove()
    weights = gradients.mean(dim=(2, 3), keepdim=True)             # one weight per feature map
    cam = torch.relu((weights * maps).sum(dim=1, keepdim=True)).detach()
    cam = nn.functional.interpolate(cam, size=image.shape[-2:], mode="bilinear",
                                    align_corners=False)[0, 0]
    cam -= cam.min()
    return cam / cam.max() if cam.max() > 0 else cam


def overlay(picture, cam):
    """The picture with the map laid over it as heat: transparent where 0, yellow-red where 1."""
    heat = torch.stack([(3 * cam).clamp(0, 1), (3 * cam - 1).clamp(0, 1),
                        (3 * cam - 2).clamp(0, 1) * 0.3])
    heat_image = Image.fromarray((heat.permute(1, 2, 0) * 255).byte().cpu().numpy())
    opacity = Image.fromarray((cam * 180).byte().cpu().numpy())
    return Image.composite(heat_image, picture, opacity)


def draw_grad_cam_gallery(model, dataset, probabilities, labels, threshold, path, device, mean, std,
                          per_row=3):
    """The most confident hits and misses, each as seen and with its Grad-CAM map for the
    class called."""
    ranked = sorted(range(len(labels)), key=lambda i: -probabilities[i])
    called = [int(p >= threshold) for p in probabilities]
    rows = {"true positives: malignant, called malignant (map: its malignant evidence)":
            [i for i in ranked if labels[i] and called[i]],
            "false negatives: malignant, called benign (map: what looked benign)":
            [i for i in ranked[::-1] if labels[i] and not called[i]],
            "false positives: benign, called malignant (map: what looked malignant)":
            [i for i in ranked if not labels[i] and called[i]]}
    size = dataset[0][0].shape[-1]
    font = ImageFont.load_default(13)
    cell_width, cell_height = 2 * size + 12, size + 40
    gallery = Image.new("RGB", (per_row * cell_width, len(rows) * cell_height), "white")
    draw = ImageDraw.Draw(gallery)
    for row, (title, indices) in enumerate(rows.items()):
        top = row * cell_height
        draw.text((4, top + 4), title if indices else f"{title}: none", fill="black", font=font)
        for column, index in enumerate(indices[:per_row]):
            image = dataset[index][0].to(device)
            picture = to_picture(image, mean, std)
            left = column * cell_width
            gallery.paste(picture, (left, top + 22))
            gallery.paste(overlay(picture, grad_cam(model, image, called[index])),
                          (left + size + 4, top + 22))
            draw.text((left, top + 24 + size),
                      f"{dataset.table['isic_id'][index]}  p={probabilities[index]:.2f}",
                      fill="black", font=font)
    save_image(gallery, path)
