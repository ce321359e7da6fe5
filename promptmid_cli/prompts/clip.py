"""The CLIP prompt selector: zero-shot land-use classification of each tile with a CLIP-family
model (transformers `CLIPModel` + tokenizer) from a Hugging Face id or a local folder, found
without network (`clip_available`)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from ..errors import BadInput
from .base import Selector, TileImages, TilePrompt
from .tile_stats import featureless_reason, tile_features

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _resolve_clip_source(model: str, local_files_only: bool) -> tuple[str, str]:
    """(path or id to load, where it was found) or raise BadInput saying what is missing."""
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise BadInput(f"CLIP model folder {p} has no config.json")
        return str(p), "local folder"
    if p.exists():
        raise BadInput(f"--clip-model {model}: expected a folder or a Hugging Face id, got a file")
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise BadInput(f"CLIP model folder not found: {model}")
    if not local_files_only:
        return model, "hugging face hub"
    from huggingface_hub import try_to_load_from_cache

    try:
        cfg = try_to_load_from_cache(model, "config.json")
    except Exception:  # invalid repo id etc.
        cfg = None
    if not isinstance(cfg, str):
        raise BadInput(
            f"CLIP model '{model}' is not available locally (not a folder, not in the Hugging Face "
            "cache); download it once or pass --clip-model DIR"
        )
    weights = [try_to_load_from_cache(model, n) for n in ("model.safetensors", "pytorch_model.bin")]
    if not any(isinstance(w, str) for w in weights):
        raise BadInput(f"CLIP model '{model}' is in the Hugging Face cache without its weights")
    return model, "hugging face cache"


def clip_available(model: str = DEFAULT_CLIP_MODEL, local_files_only: bool = True) -> tuple[bool, str]:
    """Whether ``model`` can be loaded without network; (False, reason) otherwise."""
    try:
        _, where = _resolve_clip_source(model, local_files_only)
    except BadInput as e:
        return False, str(e)
    return True, where


def check_tokenizer(tokenizer, vocab_size: int, texts: list[str] | None = None) -> None:
    """Raise BadInput unless the tokenizer fits the text model's embedding table.

    An offline ``from_pretrained`` of a missing or partial tokenizer can return a nearly empty
    tokenizer that maps everything to a couple of ids; that silently makes all prompts alike.
    """
    n = len(tokenizer)
    if n > vocab_size or n < 0.9 * vocab_size:
        raise BadInput(
            f"CLIP tokenizer has {n} tokens but the text model expects {vocab_size}; "
            "the tokenizer files are missing or do not belong to this model"
        )
    if texts:
        ids = tokenizer(texts, padding=True)["input_ids"]
        top = max(max(r) for r in ids)
        if top >= vocab_size:
            raise BadInput(f"CLIP tokenizer produces id {top} outside the text model's vocabulary")
        if len({tuple(r) for r in ids}) < min(len(set(texts)), 2):
            raise BadInput("CLIP tokenizer maps different prompts to the same tokens; it is broken")


def _stretch(img: np.ndarray) -> np.ndarray:
    """[C, H, W] raw -> [C, H, W] float32 in [0, 1], joint 2-98 % stretch, NaN filled mid-grey."""
    ok = np.all(np.isfinite(img), axis=0)
    if not ok.any():
        return np.full(img.shape, 0.5, dtype=np.float32)
    vals = img[:, ok]
    lo, hi = np.percentile(vals, [2, 98])
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((img - lo) / (hi - lo), 0, 1)
    return np.where(ok[None], out, 0.5).astype(np.float32)


class ClipSelector(Selector):
    """Zero-shot CLIP: image embedding vs. the mean text embedding of each class's templates.

    Optical tile -> 3 channels (``rgb_bands``, default the first three non-NIR bands, or one band
    repeated), 2-98 % stretch; SAR tile -> dB clipped to [-25, 0] as grey. Both are resized
    (bicubic, antialiased; shortest side then centre crop) to the model's image size and
    normalised with the mean/std of the folder's preprocessor_config.json (OpenAI CLIP values if
    absent). Class logits are ``(1 - sar_weight) * optical + sar_weight * SAR``. Deterministic
    (eval mode, no sampling); tiles run in batches of ``batch_size``.
    """

    name = "clip"

    def __init__(self, classes, clip_model=None, *, nir_band=None, device="cpu",
                 local_files_only=True, rgb_bands=None, sar_weight=0.25, batch_size=16):
        super().__init__(classes, nir_band)
        if not self.classes:
            raise BadInput("no land-use classes to choose from")
        import torch
        from transformers import CLIPModel, CLIPTokenizer

        self.model_id = clip_model or DEFAULT_CLIP_MODEL
        src, self.source = _resolve_clip_source(self.model_id, local_files_only)
        self.device = str(device)
        self.rgb_bands = tuple(rgb_bands) if rgb_bands is not None else None
        self.sar_weight = float(sar_weight)
        self.batch_size = int(batch_size)
        with quiet_transformers():
            try:
                model = CLIPModel.from_pretrained(src, local_files_only=local_files_only)
            except Exception as e:  # OSError, ValueError, safetensors errors ...
                raise BadInput(f"cannot load CLIP model '{self.model_id}': {_first_line(e)}") from None
            try:
                tok = CLIPTokenizer.from_pretrained(src, local_files_only=local_files_only)
            except Exception as e:
                raise BadInput(
                    f"cannot load the CLIP tokenizer of '{self.model_id}': {_first_line(e)}") from None
        texts_per_class = [c.texts() for c in self.classes]
        all_texts = [t for ts in texts_per_class for t in ts]
        check_tokenizer(tok, model.config.text_config.vocab_size, all_texts)
        try:
            self.torch_device = torch.device(self.device)
            model = model.to(self.torch_device).eval()
        except (RuntimeError, AssertionError) as e:
            raise BadInput(f"cannot use device '{self.device}': {_first_line(e)}") from None
        self.model = model
        self.tokenizer = tok
        vc = model.config.vision_config
        self.image_size = int(vc.image_size)
        self.mean, self.std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        pp = Path(src) / "preprocessor_config.json" if Path(src).is_dir() else None
        if pp is None and self.source == "hugging face cache":
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(src, "preprocessor_config.json")
            pp = Path(cached) if isinstance(cached, str) else None
        if pp is not None and pp.is_file():
            try:
                cfg = json.loads(pp.read_text())
                self.mean = tuple(cfg.get("image_mean", self.mean))
                self.std = tuple(cfg.get("image_std", self.std))
            except (OSError, ValueError):
                self.warnings.append(f"unreadable {pp.name}; using OpenAI CLIP normalisation")
        max_len = int(model.config.text_config.max_position_embeddings)
        with torch.no_grad():
            embs = []
            for ts in texts_per_class:
                enc = tok(ts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
                enc = {k: v.to(self.torch_device) for k, v in enc.items()}
                e = _as_tensor(model.get_text_features(**enc))
                e = e / e.norm(dim=-1, keepdim=True)
                m = e.mean(dim=0)
                embs.append(m / m.norm())
            self.text_emb = torch.stack(embs)  # [K, P]
            self.logit_scale = float(model.logit_scale.exp().item())

    def _pixels(self, imgs: list[np.ndarray]):
        import torch
        import torch.nn.functional as F

        s = self.image_size
        out = []
        for im in imgs:
            t = torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32))[None]
            h, w = t.shape[-2:]
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            t = F.interpolate(t, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            top, left = (nh - s) // 2, (nw - s) // 2
            out.append(t[0, :, top:top + s, left:left + s].clamp(0, 1))
        x = torch.stack(out)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.torch_device)

    def _rgb(self, t: TileImages) -> np.ndarray:
        opt = np.asarray(t.optical, dtype=np.float32)
        if opt.ndim == 2:
            opt = opt[None]
        nb = opt.shape[0]
        nir = t.nir_band if t.nir_band is not None else self.nir_band
        if self.rgb_bands is not None:
            if any(not 0 <= b < nb for b in self.rgb_bands):
                raise BadInput(f"RGB bands {self.rgb_bands} out of range for {nb} optical bands")
            bands = list(self.rgb_bands)
        else:
            cand = [b for b in range(nb) if b != nir] or list(range(nb))
            bands = cand[:3] if len(cand) >= 3 else [cand[0]] * 3
        return _stretch(opt[bands])

    @staticmethod
    def _sar(t: TileImages) -> np.ndarray:
        db = np.asarray(t.sar_db, dtype=np.float32)
        g = np.clip((db + 25.0) / 25.0, 0, 1)
        g = np.where(np.isfinite(db), g, 0.5).astype(np.float32)
        return np.repeat(g[None], 3, axis=0)

    def _logits(self, imgs):
        e = _as_tensor(self.model.get_image_features(pixel_values=self._pixels(imgs)))
        e = e / e.norm(dim=-1, keepdim=True)
        return self.logit_scale * e @ self.text_emb.T

    def select(self, tiles):
        import torch

        out: list[TilePrompt] = []
        for i in range(0, len(tiles), self.batch_size):
            chunk = tiles[i:i + self.batch_size]
            with torch.no_grad():
                lo = self._logits([self._rgb(t) for t in chunk])
                if self.sar_weight > 0:
                    ls = self._logits([self._sar(t) for t in chunk])
                    lo = (1 - self.sar_weight) * lo + self.sar_weight * ls
                probs = torch.softmax(lo.double(), dim=-1).cpu().numpy()
            for t, p in zip(chunk, probs):
                k = int(np.argmax(p))
                cls = self.classes[k]
                f = tile_features(t, self.nir_band)
                reason = featureless_reason(f, cls)
                scores = {c.id: float(v) for c, v in zip(self.classes, p)}
                out.append(TilePrompt(cls.id, cls.prompt, float(p[k]), bool(reason), scores, reason, f))
        return out

    def settings(self):
        s = super().settings()
        s.update({
            "model": self.model_id,
            "model_source": self.source,
            "device": self.device,
            "image_size": self.image_size,
            "rgb_bands": list(self.rgb_bands) if self.rgb_bands else "first three non-NIR bands",
            "sar_weight": self.sar_weight,
            "templates_per_class": {c.id: len(c.templates) for c in self.classes},
        })
        return s


@contextlib.contextmanager
def quiet_transformers():
    """No progress bars / info chatter from transformers while loading or saving."""
    from transformers.utils import logging as tlog

    bars = tlog.is_progress_bar_enabled()
    level = tlog.get_verbosity()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def _as_tensor(x):
    """get_*_features returns a tensor (or, in some versions, an output object)."""
    if hasattr(x, "pooler_output") and not hasattr(x, "norm"):
        return x.pooler_output
    return x


def _first_line(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__
