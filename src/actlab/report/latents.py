"""The latent browser: a self-contained folder that opens from file://.

    index.html                 the app (latents_page.PAGE: inline CSS and JS, no network)
    data/meta.js               the run, its SAEs, the histogram's bin edges
    data/S/list.js             SAE S's latents: count, frequency, mean, max, explanation, score
    data/S/chunk-NNNN.js       CHUNK latents each: histogram, top and interval examples (the windows'
                               tokens once per chunk, each example's nonzero values), logit effects,
                               neighbours, co-firing

Data files are scripts that call a loader (`actlabData(kind, sae, chunk,
value)`), since a page from file:// may not fetch files; a latent's chunk is
loaded when it is first opened, so 65k latents open at once. What the files
hold is gathered by actlab.pipelines (LatentBrowserData); this module writes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ActlabError
from ..runs.atomic import write_text_atomic
from .data import LatentBrowserData
from .latents_page import PAGE


def _script(kind: str, sae: int, chunk: int, value) -> str:
    return f"actlabData({json.dumps(kind)},{sae},{chunk},{json.dumps(value, separators=(',', ':'))});\n"


def write_latent_browser(data: LatentBrowserData, out: Path) -> Path:
    """Write the browser's folder into `out`; returns its index.html."""
    for index, listing in enumerate(data.lists):
        (out / "data" / str(index)).mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "data" / str(index) / "list.js", _script("list", index, 0, listing))
    for index, chunk, value in data.chunks:
        write_text_atomic(out / "data" / str(index) / f"chunk-{chunk:04d}.js", _script("chunk", index, chunk, value))
    write_text_atomic(out / "data" / "meta.js", f"var ACTLAB_META = {json.dumps(data.meta)};\n")
    write_text_atomic(out / "index.html", PAGE)
    return out / "index.html"


def browser_links(browser: Path, page: Path, saes: dict) -> dict[str, str]:
    """{SAE name: link prefix} into a latent browser, relative to the page
    that links (append the latent): SAEs match by name, else by hook and
    width when one SAE of the browser has them. `saes`: name -> SAEConfig."""
    meta_file = Path(browser) / "data" / "meta.js"
    if not meta_file.is_file():
        raise ActlabError(f"{browser} is not a latent browser (no data/meta.js); write one with actlab latents report",
                          param="browser")
    meta = json.loads(meta_file.read_text().split("=", 1)[1].strip().rstrip(";"))
    index = Path(os.path.relpath(Path(browser).resolve() / "index.html", Path(page).resolve().parent)).as_posix()
    links = {}
    for name, cfg in saes.items():
        same = [i for i, s in enumerate(meta["saes"]) if s["name"] == name] or \
            [i for i, s in enumerate(meta["saes"]) if (s["hook"], s["d_sae"]) == (cfg.hook_name, cfg.d_sae)]
        if len(same) == 1:
            links[name] = f"{index}#{same[0]}/"
    return links
