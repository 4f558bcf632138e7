"""The real HAM10000 and ISIC UDA folders, when they sit in ../shared/data (skipped in a fresh clone)."""
import pandas as pd
import pytest

import prepare_data
from conftest import run_main, SHARED_DATA

HAM = SHARED_DATA / "ham10000"
UDA = SHARED_DATA / "isic_uda"


@pytest.mark.skipif(not HAM.exists(), reason=f"real HAM10000 images not found at {HAM}")
def test_real_ham10000_is_labelled_and_split_by_lesion(tmp_path, monkeypatch, capsys):
    assert run_main(prepare_data, "--source", HAM, "--out", tmp_path, monkeypatch=monkeypatch) == 0
    output = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "labels.csv")
    # Counts from the data's README: 1,627 malignant (mel + bcc), 8,061 benign; 327 akiec excluded.
    assert "excluded 327 rows with diagnosis 'akiec'" in output
    assert len(table) == 9688 and table["label"].sum() == 1627
    metadata = pd.read_csv(HAM / "HAM10000_metadata.csv").set_index("image_id")
    lesion = table["isic_id"].map(metadata["lesion_id"])
    assert (lesion.groupby(lesion).size() > 1).sum() > 1000     # many lesions have several images...
    assert (table.groupby(lesion)["split"].nunique() == 1).all()  # ...and none crosses a split
    split_of = table.set_index("isic_id")["split"]
    assert split_of["ISIC_0024366"] == split_of["ISIC_0029861"]  # byte-identical files
    share = table.groupby("split")["label"].mean()
    assert share.between(0.15, 0.19).all(), share
    assert table["split"].value_counts()["test"] == pytest.approx(0.15 * 9688, rel=0.03)


@pytest.mark.skipif(not UDA.exists(), reason=f"ISIC UDA images not found at {UDA}")
def test_real_isic_uda_as_an_external_test_set(tmp_path, monkeypatch):
    assert run_main(prepare_data, "--source", UDA, "--out", tmp_path, "--test-only", monkeypatch=monkeypatch) == 0
    table = pd.read_csv(tmp_path / "labels.csv")
    assert len(table) == 557 and table["label"].sum() == 159 and (table["split"] == "test").all()
    assert table["group"].nunique() == 555  # two byte-identical pairs join
