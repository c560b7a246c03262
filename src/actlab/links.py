"""Links into other tools' pages about a latent (Neuronpedia's dashboards)."""

from __future__ import annotations

NEURONPEDIA = "https://neuronpedia.org"


def neuronpedia_link(neuronpedia_id: str | None, latent: int) -> str | None:
    """Dashboard link, e.g. https://neuronpedia.org/gpt2-small/8-res-jb/123."""
    return f"{NEURONPEDIA}/{neuronpedia_id}/{int(latent)}" if neuronpedia_id else None
