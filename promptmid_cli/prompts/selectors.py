"""Prompt selectors: pick one land-use class (and so one text prompt) for every tile.

One interface, four modes (``make_selector(mode, classes, ...)``):

``stats``
    Built-in, needs no weights. Per tile it measures a handful of statistics of the optical and
    SAR windows (see :func:`tile_features`) and scores each class with a diagonal-Gaussian
    prototype model whose parameters live in :data:`PROTOTYPES` (a naive-Bayes classifier written
    out by hand from typical values in the optical/SAR remote-sensing literature, not trained).
    Transparent: the report can show the features and the per-class scores.
``clip``
    Zero-shot classification with a CLIP-family model (transformers ``CLIPModel`` + tokenizer)
    from a Hugging Face id or a local folder. Default id: ``openai/clip-vit-base-patch32``.
    RemoteCLIP (Liu et al. 2024, a CLIP fine-tuned on remote-sensing captions) is usually better on
    satellite tiles; its OpenCLIP checkpoint converts to a transformers folder with
    ``promptmid_cli.prompts.remoteclip.convert_remoteclip``.
``fixed``
    One prompt text for every tile (``--prompt TEXT``); class id ``"fixed"``.
``auto`` (default)
    ``clip`` when the model is available locally (a folder, or already in the Hugging Face cache,
    checked without network), else ``stats``; ``settings()`` says which ran and why.

Featureless tiles. Every selector also reports whether a tile has too little structure to match
on (:func:`featureless_reason`): open water in SAR (most of the smoothed backscatter below
-18 dB with little texture; calibrated SAR only), a flat SAR window (smoothed texture below speckle level), a flat
optical window (almost no edges and tiny contrast), or a class flagged ``featureless`` (water,
bare soil / desert) whose tile also has weak structure. The pipeline may skip such tiles.
"""

from __future__ import annotations

import logging
import math

from ..errors import BadInput
from .base import Selector, TilePrompt
from .classes import LandUseClass
from .clip import DEFAULT_CLIP_MODEL, ClipSelector, clip_available
from .tile_stats import featureless_reason, tile_features

log = logging.getLogger(__name__)

MODES = ("auto", "clip", "stats", "fixed")


class FixedSelector(Selector):
    """The same prompt for every tile (class id ``"fixed"``); featureless from structure alone."""

    name = "fixed"

    def __init__(self, prompt: str, classes: list[LandUseClass] | None = None, nir_band=None):
        super().__init__(classes or [], nir_band)
        if prompt is None or not str(prompt).strip():
            raise BadInput("--prompt-mode fixed needs a non-empty --prompt TEXT")
        self.prompt = str(prompt).strip()

    def select(self, tiles):
        out = []
        for t in tiles:
            f = tile_features(t, self.nir_band)
            reason = featureless_reason(f)
            out.append(TilePrompt("fixed", self.prompt, 1.0, bool(reason), {"fixed": 1.0}, reason, f))
        return out

    def settings(self):
        s = super().settings()
        s["classes"] = ["fixed"]
        s["prompt"] = self.prompt
        return s


# Diagonal-Gaussian prototypes: feature -> (mean, sigma), plus a prior weight per class.
# Values are typical figures for 10-20 m optical (reflectance) and C-band VV backscatter (dB);
# sigmas are deliberately wide: these are soft votes, not a trained classifier.
#   - water: very dark SAR (specular reflection), negative NDVI, positive NDWI, few edges.
#   - forest: dark visible reflectance (canopy shadow), high NDVI, volume scattering ~ -8 dB.
#   - farmland vs grassland: both green; fields give parcel edges and higher contrast.
#   - urban: bright, double-bounce SAR (> -5 dB) with strong texture, low NDVI, many edges.
#   - bare soil / desert: bright optical, low NDVI, smooth surface -> dark SAR, little texture.
#   - mountain / rock: relief gives strong SAR texture (layover/shadow) and optical contrast.
#   - road / rail: rarely fills a tile; low prior so it only wins on a strong match.
#   - sar_lcv (log10 CV of linear intensity): ~-0.2 for speckle over natural cover; urban point
#     targets give a heavy tail (CV 2-3+), relief only a moderate one (layover, CV ~1.1).
PROTOTYPES: dict[str, tuple[float, dict[str, tuple[float, float]]]] = {
    "dense_urban": (0.6, {"brightness": (-0.9, 0.25), "edges": (0.75, 0.2), "opt_cv": (0.5, 0.25),
                          "ndvi": (0.1, 0.15), "ndwi": (-0.05, 0.15),
                          "sar_db": (-2.0, 3.5), "sar_tex": (4.5, 1.5), "sar_lcv": (0.45, 0.25)}),
    "residential": (0.8, {"brightness": (-1.05, 0.25), "edges": (0.6, 0.2), "opt_cv": (0.45, 0.25),
                          "ndvi": (0.35, 0.15), "ndwi": (-0.3, 0.15),
                          "sar_db": (-6.0, 3.0), "sar_tex": (3.5, 1.2), "sar_lcv": (0.25, 0.25)}),
    "industrial": (0.6, {"brightness": (-0.85, 0.25), "edges": (0.5, 0.2), "opt_cv": (0.5, 0.25),
                         "ndvi": (0.1, 0.15), "ndwi": (-0.05, 0.2),
                         "sar_db": (-6.0, 4.0), "sar_tex": (5.0, 2.0), "sar_lcv": (0.4, 0.25)}),
    "farmland": (1.0, {"brightness": (-1.2, 0.3), "edges": (0.5, 0.2), "opt_cv": (0.5, 0.2),
                       "ndvi": (0.6, 0.25), "ndwi": (-0.55, 0.25),
                       "sar_db": (-12.0, 3.0), "sar_tex": (2.3, 1.0), "sar_lcv": (-0.1, 0.2)}),
    "forest": (1.0, {"brightness": (-1.5, 0.2), "edges": (0.35, 0.25), "opt_cv": (0.3, 0.2),
                     "ndvi": (0.8, 0.1), "ndwi": (-0.7, 0.12),
                     "sar_db": (-8.5, 2.0), "sar_tex": (1.5, 1.2), "sar_lcv": (-0.15, 0.15)}),
    "grassland": (1.0, {"brightness": (-1.3, 0.2), "edges": (0.25, 0.15), "opt_cv": (0.25, 0.15),
                        "ndvi": (0.75, 0.15), "ndwi": (-0.65, 0.15),
                        "sar_db": (-12.0, 2.5), "sar_tex": (1.5, 0.8), "sar_lcv": (-0.15, 0.15)}),
    "bare_soil": (0.8, {"brightness": (-0.7, 0.2), "edges": (0.1, 0.1), "opt_cv": (0.15, 0.15),
                        "ndvi": (0.1, 0.1), "ndwi": (-0.15, 0.15),
                        "sar_db": (-17.0, 4.0), "sar_tex": (1.2, 0.8), "sar_lcv": (-0.2, 0.2)}),
    "water": (1.0, {"brightness": (-1.5, 0.3), "edges": (0.05, 0.1), "opt_cv": (0.15, 0.2),
                    "ndvi": (-0.2, 0.2), "ndwi": (0.3, 0.25),
                    "sar_db": (-21.0, 3.0), "sar_tex": (1.0, 0.8), "sar_dark": (0.95, 0.3),
                    "sar_lcv": (-0.15, 0.2)}),
    "wetland": (0.7, {"brightness": (-1.4, 0.25), "edges": (0.3, 0.2), "opt_cv": (0.35, 0.2),
                      "ndvi": (0.4, 0.25), "ndwi": (-0.2, 0.3),
                      "sar_db": (-13.0, 4.0), "sar_tex": (3.0, 1.5), "sar_dark": (0.3, 0.3),
                      "sar_lcv": (0.0, 0.25)}),
    "mountain": (0.6, {"brightness": (-0.95, 0.3), "edges": (0.5, 0.2), "opt_cv": (0.55, 0.25),
                       "ndvi": (0.2, 0.2), "ndwi": (-0.2, 0.2),
                       "sar_db": (-8.0, 5.0), "sar_tex": (5.0, 1.5), "sar_lcv": (0.05, 0.15)}),
    "road_rail": (0.3, {"brightness": (-1.1, 0.3), "edges": (0.5, 0.2), "opt_cv": (0.45, 0.25),
                        "ndvi": (0.4, 0.2), "ndwi": (-0.4, 0.2),
                        "sar_db": (-10.0, 3.0), "sar_tex": (3.0, 1.2), "sar_lcv": (0.2, 0.25)}),
}


class StatsSelector(Selector):
    """Prototype classifier on :func:`tile_features` (no weights; parameters in :data:`PROTOTYPES`).

    log score(c) = log prior(c) + sum_f [-log sigma_cf - 1/2 min(z_cf^2, Z2_MAX)],
    z_cf = (x_f - mean_cf) / sigma_cf, over the features the tile has (no NIR band: no NDVI/NDWI;
    unknown reflectance scale: no brightness; uncalibrated SAR: no absolute level); scores are the
    softmax of these. The -log sigma term is the Gaussian's normalisation: without it the class
    with the widest sigma wins every value far from all prototypes (how uncalibrated +14 dB
    GaoFen-3 tiles all became "mountain"). The cap makes a feature more than 3 sigma from every
    prototype an outlier that votes for none of them rather than for the least narrow one. Only
    classes whose id
    is a built-in id can be scored; other ids in a user's list are never chosen (a warning says
    so), and a list with no built-in id is an error.
    """

    name = "stats"

    def __init__(self, classes, nir_band=None):
        super().__init__(classes, nir_band)
        self.known = [c for c in self.classes if c.id in PROTOTYPES]
        unknown = [c.id for c in self.classes if c.id not in PROTOTYPES]
        if not self.known:
            raise BadInput(
                "the stats prompt selector only knows the built-in class ids "
                f"({', '.join(PROTOTYPES)}); use --prompt-mode clip or fixed with this prompt list"
            )
        if unknown:
            self.warnings.append(
                f"stats selector cannot score class(es) {', '.join(unknown)}; they are never chosen"
            )

    Z2_MAX = 9.0

    def score(self, f: dict[str, float]) -> dict[str, float]:
        logs = {}
        for c in self.known:
            prior, proto = PROTOTYPES[c.id]
            s = math.log(prior)
            for k, (mu, sd) in proto.items():
                if k in f:
                    s -= math.log(sd) + 0.5 * min(((f[k] - mu) / sd) ** 2, self.Z2_MAX)
            logs[c.id] = s
        mx = max(logs.values())
        ex = {k: math.exp(v - mx) for k, v in logs.items()}
        tot = sum(ex.values())
        probs = {c.id: 0.0 for c in self.classes}
        probs.update({k: v / tot for k, v in ex.items()})
        return probs

    def select(self, tiles):
        out = []
        for t in tiles:
            f = tile_features(t, self.nir_band)
            probs = self.score(f)
            best = max(self.known, key=lambda c: probs[c.id])  # ties: first in list order
            reason = featureless_reason(f, best)
            out.append(TilePrompt(best.id, best.prompt, probs[best.id], bool(reason), probs, reason, f))
        return out

    def settings(self):
        s = super().settings()
        s["model"] = "builtin prototype rules (promptmid_cli.prompts.selectors.PROTOTYPES)"
        return s


def make_selector(mode: str, classes: list[LandUseClass], *, prompt: str | None = None,
                  clip_model: str | None = None, nir_band: int | None = None, device: str = "cpu",
                  local_files_only: bool = True, rgb_bands=None, sar_weight: float = 0.25,
                  batch_size: int = 16) -> Selector:
    """Build the selector for ``--prompt-mode``. ``--prompt TEXT`` with mode auto means fixed."""
    mode = (mode or "auto").lower()
    if mode not in MODES:
        raise BadInput(f"unknown prompt mode '{mode}' (choose from {', '.join(MODES)})")
    if nir_band is not None and nir_band < 0:
        raise BadInput(f"--nir-band must be >= 0, got {nir_band}")
    if prompt is not None and mode not in ("auto", "fixed"):
        raise BadInput(f"--prompt cannot be combined with --prompt-mode {mode}")
    if mode == "fixed" or (mode == "auto" and prompt is not None):
        sel = FixedSelector(prompt, classes, nir_band)
        sel.requested = mode
        return sel
    if not classes:
        raise BadInput("no land-use classes to choose from")
    if mode == "stats":
        return StatsSelector(classes, nir_band)
    clip_kw = dict(nir_band=nir_band, device=device, local_files_only=local_files_only,
                   rgb_bands=rgb_bands, sar_weight=sar_weight, batch_size=batch_size)
    if mode == "clip":
        return ClipSelector(classes, clip_model, **clip_kw)
    # auto
    model = clip_model or DEFAULT_CLIP_MODEL
    ok, why = clip_available(model, local_files_only)
    if ok:
        try:
            sel = ClipSelector(classes, model, **clip_kw)
            sel.requested = "auto"
            return sel
        except BadInput as e:
            why = str(e)
    sel = StatsSelector(classes, nir_band)
    sel.requested = "auto"
    sel.fallback_reason = why
    # auto mode falling back is expected: the report's prompt_selector records it (fallback_reason),
    # it is no warning on every default run
    log.info(f"CLIP prompt selector unavailable, using the built-in stats selector: {why}")
    return sel
