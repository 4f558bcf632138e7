"""Draw the README's picture of the web page (docs/pictures/web.png) from a real run of it.

Exports the checkpoint as evaluate.py --export does, serves the page with it and the image on this
computer only, opens it in headless Chromium with the image (and the metadata) in its address, as the
automation does, and keeps a screenshot of the result, shrunk to a 256-colour PNG. Needs what the
browser tests need: Debian's chromium and chromium-driver, the selenium package and web/node_modules
(npm ci --prefix web).

Usage:
  python benchmarks/web_picture.py checkpoints/ham.pt ../shared/data/ham10000/images/ISIC_0024310.jpg \\
      --age 60 --sex male --site back
"""
import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageChops

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from helpers import browser  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint written by train.py")
    parser.add_argument("image", help="the image to score")
    parser.add_argument("--age", default="")
    parser.add_argument("--sex", default="")
    parser.add_argument("--site", default="")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "pictures" / "web.png")
    args = parser.parse_args()
    reason = browser.missing()
    if reason:
        sys.exit(f"cannot draw the page: {reason}")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        subprocess.run([sys.executable, str(ROOT / "evaluate.py"), args.checkpoint, "--export",
                        str(folder / "model.onnx")], check=True)
        image = f"images/{Path(args.image).name}"
        site = browser.site(folder / "site", {"model.onnx": folder / "model.onnx", image: args.image})
        page = browser.Page(width=760, height=900)
        try:
            with browser.serving(site) as origin:
                result = page.score(origin, image, age=args.age, sex=args.sex, site=args.site)
                page.driver.save_screenshot(str(folder / "page.png"))
                foreign = page.foreign_requests(origin)
        finally:
            page.close()
        if result["status"] != "done" or foreign:
            sys.exit(f"the page did not score the image: {result}; requests elsewhere: {foreign}")
        picture = Image.open(folder / "page.png").convert("RGB")
        bottom = ImageChops.invert(picture).getbbox()[3]  # the page's end: white below it
        picture = picture.crop((0, 0, picture.width, min(picture.height, bottom + 16)))
        picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"{result}\nwrote {args.out}: {picture.width}x{picture.height}, {args.out.stat().st_size // 1024} kB")


if __name__ == "__main__":
    main()
