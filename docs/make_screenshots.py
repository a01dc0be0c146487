"""Regenerate the screenshots in docs/images/ from the demo's dashboards, in headless Chromium.

    make demo && .venv/bin/python docs/make_screenshots.py [demo-output]

Writes docs/images/inspect-index.png (the index of the demo's TopK SAE, sorted by density) and
docs/images/inspect-latent.png (the latent of that SAE whose top activations agree most on one
token).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from saekit.dashboard import read_data_script
from saekit.dashboard.browser import open_browser

IMAGES = Path(__file__).resolve().parent / "images"


def clearest_latent(data: Path, sae: int, index: dict) -> int:
    """The latent whose top contexts most often fire on one token (then the densest)."""

    def agreement(latent: int) -> tuple[float, float]:
        detail = read_data_script(data / f"sae-{sae}" / "latents" / f"{latent}.js")
        centres = Counter(c["tokens"][c["centre"]] for c in detail["top"])
        top = centres.most_common(1)[0][1] / len(detail["top"]) if detail["top"] else 0.0
        return top, detail["density"]

    return max(index["latent"], key=agreement)


def main() -> None:
    site = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output") / "report" / "inspect"
    manifest = read_data_script(site / "data" / "site.js")
    sae = next(s["id"] for s in manifest["saes"] if s["variant"] == "topk")
    index = read_data_script(site / "data" / f"sae-{sae}" / "index.js")
    latent = clearest_latent(site / "data", sae, index)
    with open_browser(width=1280, height=860) as browser:
        page = browser.new_page()
        page.goto(f"{(site / 'index.html').as_uri()}#sae={sae}")
        page.wait_for_selector("body[data-ready=index]")
        page.click("th[data-key=density] button")
        page.screenshot(path=str(IMAGES / "inspect-index.png"))
        page.goto(f"{(site / 'index.html').as_uri()}#sae={sae}&latent={latent}")
        page.wait_for_selector("body[data-ready=latent]")
        page.locator("#top-contexts .tok.centre").first.hover()
        page.screenshot(path=str(IMAGES / "inspect-latent.png"))
    print(f"wrote {IMAGES / 'inspect-index.png'} and {IMAGES / 'inspect-latent.png'} "
          f"(latent {latent} of SAE {sae})")  # fmt: skip


if __name__ == "__main__":
    main()
