"""Reading a metadata CSV safely; a first reading can skip it.

- read_metadata: a metadata CSV, every column as text, or a DataError saying what is wrong with the file;
- refuse_paths_outside: a DataError for an id that would lead outside the data folder ('../../etc/passwd');
- write_unreadable: OUT/unreadable.csv, every image that could not be read, where and why;
- keep_readable_images: prepare_data.py's check that every image decodes, and the list of those that do not.
"""
import os
from pathlib import Path

import pandas as pd

from helpers.files import DataError, leads_outside, report_skipped, save_atomically
from helpers.images import inspect_images


def refuse_paths_outside(table, csv):
    """An id such as '../../etc/passwd' in a CSV must not become a path outside the data folder."""
    root = os.path.normpath(csv.parent)
    for isic_id, path in zip(table["isic_id"], table["image_path"]):
        plain_name = not any(part in str(isic_id) for part in ("/", "\\", ".."))  # the cheap test first
        if not plain_name and leads_outside(path, root):
            raise DataError(f"{csv}: image id {isic_id!r} leads outside {root}; fix or remove that row")
    return table


def read_metadata(csv):
    """A metadata CSV as text, every column as it is (dtype=str: no guessing, no mixed-type warnings)."""
    try:
        meta = pd.read_csv(csv, dtype=str)
    except pd.errors.EmptyDataError:
        raise DataError(f"{csv} is empty; export the metadata again, with its header row") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{csv} is not a readable CSV ({error}); export it again as comma-separated UTF-8") \
            from None
    meta.columns = meta.columns.str.strip()
    return meta


def write_unreadable(path, ids, locations, reasons):
    """path (unreadable.csv): isic_id, location (the file, or FILE.hdf5::KEY) and reason of every image
    that could not be read, so that a batch is fixed in one round; a list left by an earlier run goes
    when nothing is unreadable any more."""
    path = Path(path)
    if not len(ids):
        path.unlink(missing_ok=True)
        return
    table = pd.DataFrame({"isic_id": list(ids), "location": list(locations), "reason": list(reasons)})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomically(path, lambda tmp: table.to_csv(tmp, index=False))


def keep_readable_images(table, listing):
    """The rows whose image (image_path) decodes, with its `sha1` and `shorter_side` added; the others are named,
    missing or unreadable, and listed in `listing` (id, where, why)."""
    results = inspect_images(table["image_path"])
    table = table.assign(sha1=[sha1 for sha1, _, _ in results], shorter_side=[side for _, _, side in results])
    reasons = pd.Series([reason for _, reason, _ in results], index=table.index)
    report_skipped("image file missing", table.loc[reasons == "missing", "isic_id"])
    unreadable = reasons.notna() & (reasons != "missing")
    report_skipped("image file unreadable",
                   [f"{i} {why}" for i, why in zip(table.loc[unreadable, "isic_id"], reasons[unreadable])])
    skipped = reasons.notna()
    write_unreadable(listing, table.loc[skipped, "isic_id"], table.loc[skipped, "image_path"], reasons[skipped])
    if skipped.any():
        print(f"the {skipped.sum()} images left out are listed in {listing}")
    return table[~skipped]
