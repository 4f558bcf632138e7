"""dataset.py: any image mode becomes RGB, EXIF orientation is applied, bad files name themselves."""
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest import make_image
from chapters.cross_validation import cross_validation_folds, train_and_val
from dataset import CustomDataset, EpochSampler, build_loaders, build_transforms, read_split
from helpers.files import DataError
from helpers.images import load_image

# Any normalisation will do where the test does not look at the values.
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.mark.parametrize("mode, colour", [("L", 128), ("LA", (128, 200)), ("RGBA", (10, 20, 30, 0)),
                                          ("CMYK", (0, 255, 255, 0)), ("P", 3), ("RGB", (1, 2, 3))])
def test_every_mode_becomes_rgb(tmp_path, mode, colour):
    suffix = ".jpg" if mode in ("L", "CMYK", "RGB") else ".png"
    image = load_image(make_image(tmp_path / f"x{suffix}", colour, mode=mode))
    assert image.mode == "RGB" and image.size == (40, 30)


def test_cmyk_and_gray_keep_their_colour(tmp_path):
    assert load_image(make_image(tmp_path / "c.tif", (0, 255, 255, 0), mode="CMYK")).getpixel((0, 0)) == (255, 0, 0)
    assert load_image(make_image(tmp_path / "g.png", 128, mode="L")).getpixel((0, 0)) == (128, 128, 128)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    image = Image.new("I;16", (8, 8))
    image.putpixel((0, 0), 65535)
    image.putpixel((1, 0), 32768)
    image.save(path)
    rgb = load_image(path)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 0)) == (128, 128, 128)
    assert rgb.getpixel((2, 0)) == (0, 0, 0)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.new("RGB", (40, 30), "white").save(path, exif=exif)
    assert Image.open(path).size == (40, 30)
    assert load_image(path).size == (30, 40)


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0 truncated", b"<html>not an image</html>"])
def test_unreadable_file_raises_data_error_naming_it(tmp_path, content):
    path = tmp_path / "ISIC_0000001.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match="ISIC_0000001.jpg"):
        load_image(path)


def test_truncated_jpeg_names_the_file(tmp_path):
    path = make_image(tmp_path / "cut.jpg", size=(200, 200))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="cut.jpg"):
        load_image(path)


def test_missing_image_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="not found: .*gone.jpg"):
        load_image(tmp_path / "gone.jpg")


def test_transforms_give_normalised_tensors_of_the_requested_size(tmp_path):
    image = load_image(make_image(tmp_path / "a.jpg", size=(200, 150)))
    for train in (True, False):
        tensor = build_transforms(64, train, MEAN, STD)(image)
        assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32
    # Evaluation is deterministic; training augmentation is not.
    evaluation = build_transforms(64, False, MEAN, STD)
    assert torch.equal(evaluation(image), evaluation(image))
    noisy = make_image(tmp_path / "n.png", size=(64, 64))
    Image.effect_noise((64, 64), 60).convert("RGB").save(noisy)
    augment = build_transforms(64, True, MEAN, STD)
    assert not torch.equal(augment(load_image(noisy)), augment(load_image(noisy)))


def test_evaluation_transform_normalises_with_the_given_mean_and_std(tmp_path):
    # A flat image of (204, 102, 51) is (0.8, 0.4, 0.2) as floats; minus the mean, divided by the std.
    image = load_image(make_image(tmp_path / "flat.png", colour=(204, 102, 51), size=(50, 40)))
    tensor = build_transforms(16, False, mean=(0.5, 0.5, 0.5), std=(0.1, 0.2, 0.4))(image)
    expected = torch.tensor([(0.8 - 0.5) / 0.1, (0.4 - 0.5) / 0.2, (0.2 - 0.5) / 0.4]).view(3, 1, 1)
    assert torch.allclose(tensor, expected.expand(3, 16, 16), atol=1e-5)


def make_labels(root, n_benign, n_malignant):
    rows = []
    for i in range(n_benign + n_malignant):
        make_image(root / "images" / f"{i}.png", colour=(i, 0, 0), size=(20, 20))
        split = ["train", "train", "val"][i % 3]
        rows.append({"isic_id": f"id{i}", "image_path": f"images/{i}.png", "label": int(i >= n_benign),
                     "split": split, "group": f"id{i}"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)


def test_dataset_reads_one_split(tmp_path):
    make_labels(tmp_path, 30, 6)
    table = read_split(tmp_path, "val")
    assert table["isic_id"].tolist() == [f"id{i}" for i in range(2, 36, 3)]  # every third row is val
    dataset = CustomDataset(table, build_transforms(16, False, MEAN, STD))
    assert len(dataset) == 12
    image, label = dataset[0]
    assert image.shape == (3, 16, 16) and label == 0
    with pytest.raises(DataError, match="split 'test' .* has no images"):
        read_split(tmp_path, "test")
    with pytest.raises(DataError, match="run prepare_data.py"):
        read_split(tmp_path / "nowhere", "train")


def test_balanced_sampler_draws_both_classes_about_equally(tmp_path):
    make_labels(tmp_path, 90, 10)  # 60 + 7 training images: about 1 in 10 malignant
    def loaders(balanced):
        train_set = CustomDataset(read_split(tmp_path, "train"), build_transforms(8, True, MEAN, STD))
        val_set = CustomDataset(read_split(tmp_path, "val"), build_transforms(8, False, MEAN, STD))
        return build_loaders(train_set, val_set, EpochSampler(train_set.labels, 0, balanced), batch_size=16)

    loader, _ = loaders(balanced=True)
    drawn = torch.cat([labels for epoch in range(10) if loader.sampler.set_epoch(epoch) is None
                       for _, labels in loader])
    assert 0.4 < drawn.float().mean() < 0.6
    plain, _ = loaders(balanced=False)
    drawn = torch.cat([labels for _, labels in plain])
    assert drawn.float().mean() < 0.2


def test_epoch_sampler_plain_negatives_per_positive_and_shares():
    labels = [1] * 5 + [0] * 95
    plain = EpochSampler(labels, seed=0)
    assert sorted(plain) == list(range(100))  # every image once...
    plain.set_epoch(1)
    first = list(plain)
    plain.set_epoch(2)
    assert list(plain) != first and sorted(plain) == list(range(100))  # ...in a new order each epoch
    plain.set_epoch(1)
    assert list(plain) == first  # a function of (seed, epoch): a resumed run draws the same

    # 3 benign per malignant: every malignant image, 15 benign ones, a different 15 each epoch.
    sampler = EpochSampler(labels, seed=0, neg_per_pos=3)
    seen_benign = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(sampler) == 20 and len(set(drawn)) == 20
        assert sorted(i for i in drawn if labels[i]) == [0, 1, 2, 3, 4]
        seen_benign |= {i for i in drawn if not labels[i]}
    assert len(seen_benign) > 50  # fresh negatives: 6 epochs x 15 draws cover most of the 95

    # Three processes: disjoint shares of one epoch, of equal length (padded), covering it all.
    shares = [list(EpochSampler(labels, seed=0, neg_per_pos=3, rank=k, world_size=3)) for k in range(3)]
    assert [len(share) for share in shares] == [7, 7, 7]
    assert sorted(set(sum(shares, []))) == sorted(drawn_at_epoch_0(labels))


def drawn_at_epoch_0(labels):
    return list(EpochSampler(labels, seed=0, neg_per_pos=3))


def test_worker_processes_also_work_when_started_by_spawn(tmp_path):
    # macOS and Windows start DataLoader workers fresh ("spawn"), not as copies of this process ("fork"):
    # the dataset and its transforms must reach them by pickling.
    make_labels(tmp_path, 30, 6)
    dataset = CustomDataset(read_split(tmp_path, "train"), build_transforms(16, True, MEAN, STD))
    loader = DataLoader(dataset, batch_size=4, num_workers=1, multiprocessing_context="spawn")
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == dataset.labels[:4]


def test_cross_validation_folds_keep_lesions_whole_and_share_each_class():
    # Two folds. Benign groups of 3, 2, 1 and 1 images, dealt biggest first to the emptier fold: 3 -> fold 0,
    # 2 -> fold 1, then the two single images one to each (3 + 1 and 2 + 1). Malignant groups of 2, 1 and 1:
    # 2 -> fold 0, both singles -> fold 1. A group with one malignant image is a malignant group.
    groups = ["b3"] * 3 + ["b2"] * 2 + ["b1", "c1"] + ["m2", "m2", "m1", "n1"]
    labels = [0] * 7 + [1, 0, 1, 1]
    table = pd.DataFrame({"isic_id": [f"id{i}" for i in range(11)], "group": groups, "label": labels})
    for seed in range(5):
        folds = cross_validation_folds(table, 2, seed)
        fold_of = dict(zip(groups, folds))
        assert all(fold == fold_of[group] for group, fold in zip(groups, folds))  # no lesion split in two
        assert fold_of["b3"] == fold_of["m2"] == 0 and fold_of["b2"] == fold_of["m1"] == fold_of["n1"] == 1
        assert {fold_of["b1"], fold_of["c1"]} == {0, 1}
    assert list(cross_validation_folds(table, 2, 7)) == list(cross_validation_folds(table, 2, 7))


def test_each_fold_validates_on_its_own_share_of_train_and_val(tmp_path):
    make_labels(tmp_path, 30, 6)  # 24 train, 12 val images, each its own group
    train_val = set(read_split(tmp_path, "train")["isic_id"]) | set(read_split(tmp_path, "val")["isic_id"])
    validated = []
    for fold in (1, 2, 3):
        train, val = train_and_val(tmp_path, fold, 3, seed=0)
        assert not set(train["isic_id"]) & set(val["isic_id"])
        assert set(train["isic_id"]) | set(val["isic_id"]) == train_val
        assert len(val) == 12 and val["label"].sum() == 2  # a third of each class
        validated += val["isic_id"].tolist()
    assert sorted(validated) == sorted(train_val)  # every image validated once
    with pytest.raises(DataError, match="7 folds need both classes in every fold, but .* fill only 6; use fewer"):
        train_and_val(tmp_path, 1, 7, seed=0)  # 6 malignant images
