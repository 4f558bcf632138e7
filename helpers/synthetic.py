"""The built-in synthetic set of drawn lesions, so that everything runs offline; a first reading can skip it.

prepare_data.py --source synthetic calls make_synthetic; isic_2024_metadata writes a table shaped as
Kaggle's ISIC 2024 metadata, for the tests and benchmarks/speed.py.
"""
import math
import random

import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from helpers.files import number


def add_synthetic_options(parser):
    parser.add_argument("--synthetic-count", type=number(int, 20), default=600, help="images in the synthetic set")
    parser.add_argument("--synthetic-size", type=number(int, 32), default=128, help="side of a drawn image, in pixels")


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




# --- An ISIC 2024-shaped metadata table (tests, benchmarks/speed.py --big-table) ---------------------------
# The columns of Kaggle's train-metadata.csv, in its order; test-metadata.csv has all but LABEL_COLUMNS.
ISIC_2024_COLUMNS = (
    "isic_id target patient_id age_approx sex anatom_site_general clin_size_long_diam_mm image_type "
    "tbp_tile_type tbp_lv_A tbp_lv_Aext tbp_lv_B tbp_lv_Bext tbp_lv_C tbp_lv_Cext tbp_lv_H tbp_lv_Hext tbp_lv_L "
    "tbp_lv_Lext tbp_lv_areaMM2 tbp_lv_area_perim_ratio tbp_lv_color_std_mean tbp_lv_deltaA tbp_lv_deltaB "
    "tbp_lv_deltaL tbp_lv_deltaLB tbp_lv_deltaLBnorm tbp_lv_eccentricity tbp_lv_location tbp_lv_location_simple "
    "tbp_lv_minorAxisMM tbp_lv_nevi_confidence tbp_lv_norm_border tbp_lv_norm_color tbp_lv_perimeterMM "
    "tbp_lv_radial_color_std_max tbp_lv_stdL tbp_lv_stdLExt tbp_lv_symm_2axis tbp_lv_symm_2axis_angle tbp_lv_x "
    "tbp_lv_y tbp_lv_z attribution copyright_license lesion_id iddx_full iddx_1 iddx_2 iddx_3 iddx_4 iddx_5 "
    "mel_mitotic_index mel_thick_mm tbp_lv_dnn_lesion_confidence").split()
ISIC_2024_LABEL_COLUMNS = ["target", "lesion_id", "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4", "iddx_5",
                           "mel_mitotic_index", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence"]


def isic_2024_metadata(ids, targets, patients, seed=0, test=False):
    """A table with train-metadata.csv's columns (test-metadata.csv's with test=True) for these ids, targets
    and patients, the rest filled as Kaggle fills them: ages now and then empty or 'NA', numbers in the
    tbp_lv_ columns, text elsewhere, a lesion id and a diagnosis only for some rows, mostly empty mel_ columns."""
    rng = random.Random(seed)
    rows = len(ids)
    table = {"isic_id": list(ids), "target": list(targets), "patient_id": list(patients),
             "age_approx": [rng.choice([45, 60, 75, "", "NA"]) for _ in range(rows)],
             "sex": [rng.choice(["male", "female", ""]) for _ in range(rows)],
             "anatom_site_general": [rng.choice(["posterior torso", "lower extremity", "head/neck", ""])
                                     for _ in range(rows)],
             "tbp_lv_location": [rng.choice(["Torso Back Top Third", "Left Leg - Lower"]) for _ in range(rows)],
             "image_type": ["TBP tile: close-up"] * rows, "tbp_tile_type": ["3D: white"] * rows,
             "attribution": ["Memorial Sloan Kettering Cancer Center"] * rows, "copyright_license": ["CC-BY"] * rows,
             "lesion_id": [f"IL_{rng.randrange(10**7):07d}" if rng.random() < 0.05 else "" for _ in range(rows)],
             "iddx_full": ["Malignant::Malignant epidermal proliferations" if t else "Benign" for t in targets],
             "iddx_1": ["Malignant" if t else "Benign" for t in targets]}
    for column in ISIC_2024_COLUMNS:
        if column not in table:  # the measurements: numbers, the rare melanoma figures mostly empty
            empty = column.startswith(("iddx_", "mel_"))
            table[column] = ["" if empty else round(rng.uniform(0, 100), 4) for _ in range(rows)]
    columns = [c for c in ISIC_2024_COLUMNS if not (test and c in ISIC_2024_LABEL_COLUMNS)]
    return pd.DataFrame(table)[columns]
