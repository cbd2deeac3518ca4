"""One report section from a `NoiseStability` (and optionally a `Resilience`), in the shapes htcore's
reports take: paragraphs + row tables + (PNG, caption) figures for the demo's HTML page
(`htcore.demo`'s ``Section(title, paragraphs, tables, figures)``), markdown for text reports, and a
JSON-ready dict for ``--json`` output."""
from __future__ import annotations

import os
from typing import Any, Optional

from ._resilience import Resilience
from ._stability import NoiseStability

TITLE = "Noise stability of the compressed net on real inputs"


def stability_section(stability: NoiseStability, resilience: Optional[Resilience] = None,
                      directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """A report section: ``title``, ``paragraphs`` (list of str), ``tables`` (lists of row dicts: the
    per-layer table, then the resilience rows), ``figures`` ((png path, caption) pairs, written to
    ``directory`` when given; needs matplotlib), ``markdown`` (the whole section as text) and ``json``
    (``{"noise_stability": ..., "resilience": ...}``, JSON-ready). ``Section(**{k: s[k] for k in
    ("title", "paragraphs", "tables", "figures")})`` makes a demo report section of it."""
    net = stability.net_figures()
    paragraphs = [
        "Per compressed layer W -> W_hat, on the vectors x that reach it in the data: the relative error "
        "||(W - W_hat) x|| / ||W x|| against ||W - W_hat||_F / ||W||_F (what a random isotropic x sees), and Arora "
        "et al. (2018)'s layer cushion ||W x|| / (||W||_F ||x||) against 1/sqrt(h) (h: input dimension). Below "
        "the Frobenius ratio and above 1/sqrt(h), real inputs are kinder than random ones.",
        f"All layers compressed, the median relative output error is {net['output_error_all_median']:.3g} (sum of the "
        f"single-layer errors {net['output_error_sum_median']:.3g}); median margin {net['margin_original_median']:.3g} -> "
        f"{net['margin_compressed_median']:.3g}; gamma = {net['gamma']:.3g} ({net['n_samples']} samples).",
    ]
    rows = [{"layer": l.name, "shape": "x".join(map(str, l.shape)), "density": l.density,
             "rel. error median": l.rel_error_median, "rel. error p90": l.rel_error_p90,
             "Frobenius ratio": l.frobenius_ratio, "random-x median": l.random_median,
             "cushion median": l.cushion_median, "1/sqrt(h)": l.cushion_reference,
             "output error (this layer only)": l.output_error_median, "gain": l.gain_median}
            for l in stability.layers]
    tables: list[list[dict[str, Any]]] = [rows]
    markdown = [f"## {TITLE}", "", *[p + "\n" for p in paragraphs], stability.to_markdown()]
    figures: list[tuple[str, str]] = []
    if resilience is not None:
        tables.append(resilience.rows())
        paragraphs.append(resilience.summary().replace("\n", " "))
        markdown += ["", resilience.to_markdown()]
    if directory is not None:
        figures.append((stability.plot(directory)[0], "relative errors vs the Frobenius prediction; cushions; margins"))
        if resilience is not None:
            figures.append((resilience.plot(directory)[0], "accuracy vs input and weight noise, dense and compressed"))
    return {"title": TITLE, "paragraphs": paragraphs, "tables": tables, "figures": figures,
            "markdown": "\n".join(markdown),
            "json": {"noise_stability": stability.as_dict(),
                     "resilience": None if resilience is None else resilience.as_dict()}}
