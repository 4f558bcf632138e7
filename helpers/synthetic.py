"""The built-in synthetic set of drawn lesions, so that everything runs offline; a first reading can skip it.

prepare_data.py --source synthetic calls make_synthetic.
"""
import math
import random

import pandas as pd
from PIL import Image, ImageDraw, ImageFilter


# Drawn lesions with the ABCD cues dermatologists use: benign ones are small, round, evenly bordered
# and one even brown; malignant ones are larger, asymmetric, with an irregular border and several
# colours. Each cue is drawn from the *other* class one time in five, so the classes overlap and no
# model can be perfect: a model has to weigh the cues together, as on real data.

def draw_lesion(rng, malignant, size):
    def cue():  # does this cue look malignant?
        return malignant != (rng.random() < 0.2)
    large, irregular, multicoloured = cue(), cue(), cue()

    # Skin: a random skin tone with soft blotches and fine grain.
    red = rng.randint(190, 240)
    green = red - rng.randint(35, 65)
    tone = (red, green, green - rng.randint(15, 40))
    blotches = Image.frombytes("L", (6, 6), rng.randbytes(36)).resize((size, size), Image.BICUBIC)
    image = Image.composite(Image.new("RGB", (size, size), tuple(c - 25 for c in tone)),
                            Image.new("RGB", (size, size), tone), blotches)
    grain = Image.frombytes("L", (size, size), rng.randbytes(size * size)).convert("RGB")
    image = Image.blend(image, grain, 0.08)

    # The outline: a circle whose radius wobbles with a few random harmonics, then stretched.
    radius = size * (rng.uniform(0.24, 0.36) if large else rng.uniform(0.13, 0.25))
    wobble = 0.12 if irregular else 0.025
    harmonics = [(k, rng.uniform(0, wobble), rng.uniform(0, 2 * math.pi)) for k in range(2, 8)]
    stretch = rng.uniform(1.0, 1.5) if irregular else rng.uniform(1.0, 1.1)
    centre = (size / 2 + rng.uniform(-0.08, 0.08) * size, size / 2 + rng.uniform(-0.08, 0.08) * size)
    outline = []
    for step in range(72):
        angle = 2 * math.pi * step / 72
        r = radius * (1 + sum(a * math.sin(k * angle + phase) for k, a, phase in harmonics))
        outline.append((centre[0] + stretch * r * math.cos(angle), centre[1] + r * math.sin(angle)))
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon(outline, fill=255)

    # The pigment: one brown, plus blotches of black, blue-grey or red when multicoloured.
    red = rng.randint(90, 150)
    brown = (red, int(red * rng.uniform(0.5, 0.65)), int(red * rng.uniform(0.25, 0.4)))
    pigment = Image.new("RGB", (size, size), brown)
    if multicoloured:
        draw = ImageDraw.Draw(pigment)
        for _ in range(rng.randint(2, 4)):
            colour = rng.choice([(45, 30, 28), (85, 95, 120), (165, 70, 60), (70, 40, 30)])
            x, y = rng.choice(outline)
            x, y = (x + centre[0]) / 2, (y + centre[1]) / 2
            blob = radius * rng.uniform(0.25, 0.5)
            draw.ellipse([x - blob, y - blob * rng.uniform(0.6, 1.4), x + blob, y + blob], fill=colour)
    mask = mask.filter(ImageFilter.GaussianBlur(size / 100 if irregular else size / 40))
    image = Image.composite(pigment.filter(ImageFilter.GaussianBlur(size / 60)), image, mask)
    return image


def draw_metadata(rng, malignant):
    """Age, sex and body site, as a metadata CSV would give them: malignant lesions come a little older
    and more often on the back, as melanoma does, and one field in ten is unknown."""
    age = round(min(90, max(5, rng.gauss(62 if malignant else 45, 14))))
    site = rng.choice(["posterior torso"] * (3 if malignant else 1) + ["anterior torso", "lower extremity",
                                                                        "upper extremity", "head/neck"])
    row = {"age": age, "sex": rng.choice(["female", "male"]), "site": site}
    return {key: None if rng.random() < 0.1 else value for key, value in row.items()}


def make_synthetic(out, count, size, seed):
    """Draw `count` lesions (about a third malignant) into OUT/images, each with its metadata;
    deterministic for a seed."""
    rng, metadata_rng = random.Random(seed), random.Random(seed + 1)  # the images do not depend on the metadata
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        malignant = rng.random() < 0.35
        image_id = f"SYN_{index:05d}"
        path = folder / f"{image_id}.jpg"
        draw_lesion(rng, malignant, size).save(path, quality=92)
        rows.append({"isic_id": image_id, "image_path": path, "label": int(malignant),
                     "diagnosis": "synthetic " + ("malignant" if malignant else "benign"),
                     **draw_metadata(metadata_rng, malignant)})
    print(f"drew {count} synthetic lesions of {size}x{size} px into {folder}")
    return pd.DataFrame(rows)


