"""Training the learned parts of PromptMID from co-registered optical/SAR pairs.

``train(pairs_source, stage, out_dir, ...)``

* ``stage="fam"``: the feature aggregation module. The backbones are frozen; their features
  (already on the descriptor grid) are computed once per image chunk and cached in
  ``out_dir/cache``. Each step takes random crops of corresponding optical and SAR chunks, shifts
  the moving crop by a few cells, and minimises a symmetric InfoNCE loss over corresponding cells.
  Validation: correct-match rate at 3 px (nearest neighbour over the whole moving crop) on crops
  of held-out pairs. Writes ``fam.safetensors`` + ``fam.json``, ``checkpoint.pt`` (resume with
  ``resume=True``) and ``log.jsonl``.
* ``stage="dm"``: LoRA fine-tuning of the UNet attention projections (to_q, to_k, to_v, to_out.0)
  with the standard denoising (epsilon or v) loss on both modalities, conditioned on the pair's
  land-use prompt. Writes ``lora.safetensors`` + ``lora.json``, ``checkpoint.pt`` and ``log.jsonl``;
  the descriptor loads the adapter with ``lora_weights``.

Pairs: a CSV with columns ``optical,sar`` (optional ``prompt``; paths relative to the CSV), or a
folder whose files carry a modality token in their names (``opt``/``optical``/``s2`` and
``sar``/``s1``, e.g. ``x_opt.tif`` + ``x_sar.tif``, ``opt1.png`` + ``sar1.png``), or subfolders
holding one optical and one SAR file each. GeoTIFF, PNG or JPEG; both images of a pair must have
the same size (same pixel grid).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BadInput
from .lora import LORA_FILE, LORA_TARGETS, save_lora

IMAGE_EXTS = {".tif", ".tiff", ".png", ".jpg", ".jpeg"}
_OPT = re.compile(r"(?i)(?:(?<=^)|(?<=[_\-. ]))(optical|opt|s2)(?=$|[_\-. 0-9])")
_SAR = re.compile(r"(?i)(?:(?<=^)|(?<=[_\-. ]))(sar|s1)(?=$|[_\-. 0-9])")
DEFAULT_PROMPT = "a satellite image"


@dataclass
class PairSpec:
    optical: Path
    sar: Path
    prompt: str | None = None
    name: str = ""


# ------------------------------------------------------------------------------------------------
# pairs


def _modality(stem: str) -> str | None:
    o, s = _OPT.search(stem), _SAR.search(stem)
    if o and not s:
        return "optical"
    if s and not o:
        return "sar"
    return None


def discover_pairs(source: str | Path) -> list[PairSpec]:
    src = Path(source).expanduser()
    if not src.exists():
        raise BadInput(f"pairs not found: {source}")
    pairs: list[PairSpec] = []
    if src.is_file():
        if src.suffix.lower() != ".csv":
            raise BadInput(f"pairs must be a folder or a CSV with columns optical,sar: {source}")
        with open(src, newline="") as f:
            reader = csv.DictReader(f)
            cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
            if "optical" not in cols or "sar" not in cols:
                raise BadInput(f"{source}: the CSV needs columns optical and sar")
            for i, row in enumerate(reader):
                o = Path(row[cols["optical"]].strip()).expanduser()
                s = Path(row[cols["sar"]].strip()).expanduser()
                o = o if o.is_absolute() else src.parent / o
                s = s if s.is_absolute() else src.parent / s
                prompt = (row.get(cols["prompt"]) or "").strip() if "prompt" in cols else ""
                pairs.append(PairSpec(o, s, prompt or None, f"row{i + 1}"))
    else:
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        groups: dict[tuple, dict] = {}
        for p in files:
            m = _modality(p.stem)
            if m is None:
                continue
            key = (p.parent, (_OPT if m == "optical" else _SAR).sub("", p.stem, count=1))
            groups.setdefault(key, {}).setdefault(m, []).append(p)
        by_dir: dict[Path, list] = {}
        for (parent, key), g in sorted(groups.items(), key=lambda kv: str(kv[0])):
            if len(g.get("optical", [])) == 1 and len(g.get("sar", [])) == 1:
                pairs.append(PairSpec(g["optical"][0], g["sar"][0], None, f"{parent.name}/{key}"))
            else:
                by_dir.setdefault(parent, []).append(g)
        for parent, gs in by_dir.items():  # a folder with exactly one optical and one SAR file
            opt = [p for g in gs for p in g.get("optical", [])]
            sar = [p for g in gs for p in g.get("sar", [])]
            if len(opt) == 1 and len(sar) == 1:
                pairs.append(PairSpec(opt[0], sar[0], None, parent.name))
    for p in pairs:
        for f in (p.optical, p.sar):
            if not f.is_file():
                raise BadInput(f"pair image not found: {f}")
    if not pairs:
        raise BadInput(f"no optical/SAR pairs found in {source}")
    return pairs


def _stretch(a: np.ndarray, valid: np.ndarray) -> np.ndarray:
    v = a[valid]
    if v.size == 0:
        return np.full(a.shape, 0.5, np.float32)
    lo, hi = np.percentile(v, [2, 98])
    if hi <= lo:
        hi = lo + 1e-6
    out = np.clip((a - lo) / (hi - lo), 0, 1)
    out[~valid] = float(np.mean(out[valid]))
    return out.astype(np.float32)


def read_grey(path: Path, modality: str) -> np.ndarray:
    """An image as float32 [H, W] in [0, 1]: optical -> mean of the first three bands; SAR in linear
    units -> dB; both stretched between the 2nd and 98th percentiles (nodata filled)."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            n = min(ds.count, 3) if modality == "optical" else 1
            data = ds.read(list(range(1, n + 1)), masked=True)
            dtype = ds.dtypes[0]
    except Exception as e:
        raise BadInput(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    arr = np.ma.filled(data.astype(np.float64), np.nan)
    valid = np.isfinite(arr).all(0)
    a = np.nanmean(np.where(np.isfinite(arr), arr, np.nan), axis=0) if arr.shape[0] > 1 else arr[0]
    a = np.where(valid, a, 0.0)
    if modality == "sar" and dtype != "uint8" and valid.any() and a[valid].min() >= 0:
        a = 10 * np.log10(np.maximum(a, 1e-6))  # linear power/amplitude -> dB
    return _stretch(a, valid)


def load_pair(spec: PairSpec) -> tuple[np.ndarray, np.ndarray]:
    o, s = read_grey(spec.optical, "optical"), read_grey(spec.sar, "sar")
    if o.shape != s.shape:
        raise BadInput(f"pair {spec.name}: optical {o.shape[::-1]} and SAR {s.shape[::-1]} differ in size; "
                       "training pairs must share one pixel grid")
    return o, s


def chunk_windows(H: int, W: int, tile: int) -> list[tuple[int, int, int, int]]:
    def starts(n):
        if n <= tile:
            return [0]
        k = math.ceil(n / tile)
        return sorted({min(i * tile, n - tile) for i in range(k)})

    return [(y, x, min(tile, H), min(tile, W)) for y in starts(H) for x in starts(W)]


# ------------------------------------------------------------------------------------------------
# progress + logging


class _Progress:
    def __init__(self, total: int, start: int, desc: str, quiet: bool):
        self.quiet = quiet
        if quiet:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                          console=Console(stderr=True), transient=False)
        self.p.start()
        self.t = self.p.add_task(desc, total=total, completed=start, info="")

    def update(self, n: int = 1, info: str | None = None):
        if not self.quiet:
            kw = {"info": info} if info is not None else {}
            self.p.update(self.t, advance=n, **kw)

    def close(self):
        if not self.quiet:
            self.p.stop()


def _log(path: Path, rec: dict):
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def _say(quiet: bool, msg: str):
    if not quiet:
        import sys

        print(msg, file=sys.stderr)


# ------------------------------------------------------------------------------------------------
# FAM stage


def _file_key(p: Path) -> str:
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}"


class FeatureCache:
    """Backbone features of optical/SAR chunks, one safetensors file per chunk in `folder`."""

    def __init__(self, folder: Path, keep: int = 64):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.mem: dict[str, dict] = {}

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, opt: list[torch.Tensor], sar: list[torch.Tensor]):
        from safetensors.torch import save_file

        tensors = {f"opt{i}": t.half().cpu().contiguous() for i, t in enumerate(opt)}
        tensors.update({f"sar{i}": t.half().cpu().contiguous() for i, t in enumerate(sar)})
        tmp = self.path(key).with_suffix(".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(self.path(key))

    def get(self, key: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if key not in self.mem:
            from safetensors.torch import load_file

            t = load_file(str(self.path(key)))
            n = len([k for k in t if k.startswith("opt")])
            if len(self.mem) >= self.keep:
                self.mem.pop(next(iter(self.mem)))
            self.mem[key] = ([t[f"opt{i}"].float() for i in range(n)], [t[f"sar{i}"].float() for i in range(n)])
        return self.mem[key]


def _split(pairs: list[PairSpec], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    idx = list(range(len(pairs)))
    if val_fraction <= 0 or len(pairs) < 2:
        return idx, []
    rng = np.random.default_rng(seed)
    rng.shuffle(idx)
    n_val = min(len(pairs) - 1, max(1, round(len(pairs) * val_fraction)))
    return sorted(idx[n_val:]), sorted(idx[:n_val])


def _crop_pair(opt, sar, cells: int, max_shift: int, gen: torch.Generator, swap: bool):
    """Random crop of the reference (optical or SAR) and a shifted crop of the other modality.
    Returns (ref_list, mov_list, offset) with ref cell (i, j) == mov cell (i + oy, j + ox)."""
    h, w = opt[0].shape[-2:]
    ch, cw = min(cells, h), min(cells, w)

    def rnd(n):
        return int(torch.randint(0, n + 1, (1,), generator=gen)) if n > 0 else 0

    y0, x0 = rnd(h - ch), rnd(w - cw)
    dy = int(torch.randint(-max_shift, max_shift + 1, (1,), generator=gen)) if max_shift else 0
    dx = int(torch.randint(-max_shift, max_shift + 1, (1,), generator=gen)) if max_shift else 0
    y1, x1 = min(max(y0 + dy, 0), h - ch), min(max(x0 + dx, 0), w - cw)
    ref, mov = (sar, opt) if swap else (opt, sar)
    r = [f[:, y0:y0 + ch, x0:x0 + cw] for f in ref]
    m = [f[:, y1:y1 + ch, x1:x1 + cw] for f in mov]
    return r, m, (y0 - y1, x0 - x1)


def _corr_index(ch: int, cw: int, off: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of corresponding cells (ref, mov) for crops of ch x cw cells."""
    oy, ox = off
    ii, jj = torch.meshgrid(torch.arange(ch, device=device), torch.arange(cw, device=device), indexing="ij")
    mi, mj = ii + oy, jj + ox
    ok = (mi >= 0) & (mi < ch) & (mj >= 0) & (mj < cw)
    return (ii * cw + jj)[ok], (mi * cw + mj)[ok]


def info_nce(ref: torch.Tensor, mov: torch.Tensor, off, n_pts: int, tau: float, gen: torch.Generator):
    """Symmetric InfoNCE over up to n_pts corresponding cells of one crop pair ([D, h, w] each)."""
    D, ch, cw = ref.shape
    ri, mi = _corr_index(ch, cw, off, ref.device)
    if len(ri) > n_pts:
        sel = torch.randperm(len(ri), generator=gen)[:n_pts].to(ri.device)
        ri, mi = ri[sel], mi[sel]
    a = ref.reshape(D, -1)[:, ri].T
    b = mov.reshape(D, -1)[:, mi].T
    logits = a @ b.T / tau
    target = torch.arange(len(ri), device=ref.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@torch.no_grad()
def correct_match_rate(ref: torch.Tensor, mov: torch.Tensor, off, stride: int, px: float = 3.0) -> tuple[int, int]:
    """(correct, total): nearest neighbour of every overlapping ref cell over the whole mov crop,
    correct when within `px` input pixels of the true position."""
    D, ch, cw = ref.shape
    ri, mi = _corr_index(ch, cw, off, ref.device)
    if len(ri) == 0:
        return 0, 0
    a = ref.reshape(D, -1)[:, ri].T
    sim = a @ mov.reshape(D, -1)
    pred = sim.argmax(1)
    py, px_ = pred // cw, pred % cw
    ty, tx = mi // cw, mi % cw
    err = torch.sqrt(((py - ty).float() ** 2 + (px_ - tx).float() ** 2)) * stride
    return int((err <= px).sum()), len(ri)


def _build_backbone(sd_model, vfm_model, sd_timestep, device, dtype, stride, sd_revision=None, vfm_revision=None,
                    lora_weights=None, local_files_only=True):
    from ..descriptors.promptmid import PromptMIDDescriptor

    return PromptMIDDescriptor.from_options({
        "sd_model": sd_model, "vfm_model": vfm_model, "sd_timestep": sd_timestep, "device": device,
        "dtype": dtype, "stride": stride, "sd_revision": sd_revision, "vfm_revision": vfm_revision,
        "lora_weights": lora_weights, "local_files_only": local_files_only, "batch_size": 1,
    })


def _cache_features(pairs, idxs, backbone, cache: FeatureCache, tile: int, quiet: bool) -> list[str]:
    backbone.load()  # resolves the layer defaults that enter the cache key
    settings = json.dumps({k: v for k, v in backbone.settings().items()
                           if k not in ("device", "batch_size", "fusion", "dim", "fam_weights")}, sort_keys=True,
                          default=str)
    keys, todo = [], []
    for i in idxs:
        spec = pairs[i]
        import rasterio

        with rasterio.open(spec.optical) as ds:
            H, W = ds.height, ds.width
        for win in chunk_windows(H, W, tile):
            k = hashlib.sha1(f"{_file_key(spec.optical)}|{_file_key(spec.sar)}|{spec.prompt}|{win}|{settings}"
                             .encode()).hexdigest()[:20]
            keys.append(k)
            if not cache.has(k):
                todo.append((i, win, k))
    _say(quiet, f"features: {len(keys) - len(todo)}/{len(keys)} chunks cached, computing {len(todo)}")
    bar = _Progress(len(todo), 0, "features", quiet or not todo)
    loaded: dict[int, tuple] = {}
    for i, (y, x, h, w), k in todo:
        if i not in loaded:
            loaded = {i: load_pair(pairs[i])}
        o, s = loaded[i]
        prompt = pairs[i].prompt or backbone.opts["default_prompt"]
        fo = backbone.backbone_features(torch.from_numpy(o[y:y + h, x:x + w].copy())[None], [prompt])
        fs = backbone.backbone_features(torch.from_numpy(s[y:y + h, x:x + w].copy())[None], [prompt])
        cache.put(k, [f[0] for f in fo], [f[0] for f in fs])
        bar.update()
    bar.close()
    return keys


def train_fam(pairs, out_dir: Path, *, steps, lr, batch_size, crop, sd_model, vfm_model, sd_timestep, device,
              dtype, resume, val_fraction, seed, quiet, dim=128, hidden=128, stride=8, max_shift=2, tile=256,
              n_pts=256, tau=0.07, val_every=None, ckpt_every=None, sd_revision=None, vfm_revision=None,
              lora_weights=None, local_files_only=True) -> dict:
    from .fam import FAM

    ckpt_path, log_path = out_dir / "checkpoint.pt", out_dir / "log.jsonl"
    backbone = _build_backbone(sd_model, vfm_model, sd_timestep, device, dtype, stride, sd_revision, vfm_revision,
                               lora_weights, local_files_only)
    train_idx, val_idx = _split(pairs, val_fraction, seed)
    cache = FeatureCache(out_dir / "cache")
    train_keys = _cache_features(pairs, train_idx, backbone, cache, tile, quiet)
    val_keys = _cache_features(pairs, val_idx, backbone, cache, tile, quiet) if val_idx else []
    dev = backbone.device
    fam = FAM(backbone.source_channels(), dim=dim, hidden=hidden, stride=stride, **backbone.feature_settings())
    backbone._sd = backbone._vfm = None  # backbones no longer needed: free their memory
    fam.to(dev)
    opt = torch.optim.AdamW(fam.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    start = 0
    if resume:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck.get("stage") != "fam" or ck["fam_config"]["in_channels"] != fam.config["in_channels"]:
            raise BadInput(f"{ckpt_path} is not a FAM checkpoint for these models")
        fam.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["generator"])
        start = int(ck["step"])
        _say(quiet, f"resuming from step {start}")
    cells = max(2, crop // stride)
    val_every = val_every or max(10, steps // 5)
    ckpt_every = ckpt_every or max(10, steps // 4)

    def validate() -> float | None:
        if not val_keys:
            return None
        fam.eval()
        vgen = torch.Generator().manual_seed(seed + 1)
        good = tot = 0
        with torch.no_grad():
            for k in val_keys:
                o, s = cache.get(k)
                for swap in (False, True):
                    r, m, off = _crop_pair(o, s, cells, max_shift, vgen, swap)
                    dr = fam([f[None].to(dev) for f in r])[0]
                    dm = fam([f[None].to(dev) for f in m])[0]
                    g, t = correct_match_rate(dr, dm, off, stride)
                    good, tot = good + g, tot + t
        fam.train()
        return good / tot if tot else None

    def save_ckpt(step):
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"stage": "fam", "step": step, "model": fam.state_dict(), "optimizer": opt.state_dict(),
                    "generator": gen.get_state(), "fam_config": fam.config}, tmp)
        tmp.replace(ckpt_path)

    if start == 0:
        v = validate()
        if v is not None:
            _log(log_path, {"step": 0, "val_cmr3": v})
    bar = _Progress(steps, min(start, steps), "train fam", quiet)
    fam.train()
    t0 = time.time()
    last_val = None
    losses = []
    for step in range(start + 1, steps + 1):
        total = 0.0
        opt.zero_grad()
        sel = torch.randint(0, len(train_keys), (batch_size,), generator=gen).tolist()
        for k in sel:
            o, s = cache.get(train_keys[k])
            swap = bool(torch.randint(0, 2, (1,), generator=gen))
            r, m, off = _crop_pair(o, s, cells, max_shift, gen, swap)
            dr = fam([f[None].to(dev) for f in r])[0]
            dm = fam([f[None].to(dev) for f in m])[0]
            loss = info_nce(dr, dm, off, n_pts, tau, gen) / batch_size
            loss.backward()
            total += float(loss.detach())
        opt.step()
        losses.append(total)
        rec = {"step": step, "loss": total, "lr": lr, "elapsed_s": round(time.time() - t0, 3)}
        if step % val_every == 0 or step == steps:
            last_val = validate()
            if last_val is not None:
                rec["val_cmr3"] = last_val
        _log(log_path, rec)
        if step % ckpt_every == 0 or step == steps:
            save_ckpt(step)
        bar.update(1, f"loss {total:.3f}" + (f" val@3px {last_val:.2f}" if last_val is not None else ""))
    bar.close()
    if start >= steps:
        save_ckpt(start)
    weights = fam.cpu().save(out_dir / "fam.safetensors")
    return {"stage": "fam", "weights": str(weights), "steps": steps, "start_step": start, "losses": losses,
            "val_cmr3": last_val if last_val is not None else validate(), "log": str(log_path),
            "train_chunks": len(train_keys), "val_chunks": len(val_keys)}


# ------------------------------------------------------------------------------------------------
# DM stage (LoRA)

def train_dm(pairs, out_dir: Path, *, steps, lr, batch_size, crop, sd_model, sd_timestep, device, dtype, resume,
             seed, quiet, rank=4, sd_revision=None, local_files_only=True, ckpt_every=None, **_) -> dict:
    from peft import LoraConfig

    from .loading import load_sd, resolve_device, resolve_dtype

    dev = resolve_device(device)
    amp = resolve_dtype(dtype, dev)
    comps = load_sd(sd_model, sd_revision, device=dev, dtype=torch.float32, local_files_only=local_files_only)
    unet, vae, te, tok, sched = comps.unet, comps.vae, comps.text_encoder, comps.tokenizer, comps.scheduler
    cfg = {"r": rank, "lora_alpha": rank, "target_modules": LORA_TARGETS, "sd_model": str(sd_model),
           "base": "UNet2DConditionModel"}
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, init_lora_weights="gaussian"))
    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise BadInput("the UNet has no attention projections to adapt with LoRA")
    unet.train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed)
    ckpt_path, log_path = out_dir / "checkpoint.pt", out_dir / "log.jsonl"
    start = 0
    if resume:
        from peft.utils import set_peft_model_state_dict

        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck.get("stage") != "dm":
            raise BadInput(f"{ckpt_path} is not a LoRA (dm) checkpoint")
        set_peft_model_state_dict(unet, ck["lora"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["generator"])
        start = int(ck["step"])
        _say(quiet, f"resuming from step {start}")
    multiple = 2 ** (len(vae.config.block_out_channels) - 1) * 2 ** (len(unet.config.block_out_channels) - 1)
    images = []  # (grey [H, W], prompt) for both modalities of every pair
    for spec in pairs:
        o, s = load_pair(spec)
        images += [(o, spec.prompt or DEFAULT_PROMPT), (s, spec.prompt or DEFAULT_PROMPT)]
    size = max(multiple, (min(crop, *[min(im.shape) for im, _ in images]) // multiple) * multiple)
    prompt_cache: dict[str, torch.Tensor] = {}

    def embed(p):
        if p not in prompt_cache:
            ids = tok(p, padding="max_length", truncation=True, max_length=tok.model_max_length,
                      return_tensors="pt").input_ids.to(dev)
            with torch.no_grad():
                prompt_cache[p] = te(ids)[0][0]
        return prompt_cache[p]

    ckpt_every = ckpt_every or max(10, steps // 4)

    def save_ckpt(step):
        from peft.utils import get_peft_model_state_dict

        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"stage": "dm", "step": step, "lora": get_peft_model_state_dict(unet),
                    "optimizer": opt.state_dict(), "generator": gen.get_state(), "config": cfg}, tmp)
        tmp.replace(ckpt_path)

    bar = _Progress(steps, min(start, steps), "train dm (LoRA)", quiet)
    losses = []
    t0 = time.time()
    n_train = sched.config.num_train_timesteps
    pred_type = getattr(sched.config, "prediction_type", "epsilon")
    for step in range(start + 1, steps + 1):
        batch, prompts = [], []
        for k in torch.randint(0, len(images), (batch_size,), generator=gen).tolist():
            im, p = images[k]
            y = int(torch.randint(0, im.shape[0] - size + 1, (1,), generator=gen))
            x = int(torch.randint(0, im.shape[1] - size + 1, (1,), generator=gen))
            batch.append(torch.from_numpy(im[y:y + size, x:x + size].copy()))
            prompts.append(p)
        xb = (torch.stack(batch)[:, None].expand(-1, 3, -1, -1) * 2 - 1).to(dev)
        with torch.no_grad():
            lat = vae.encode(xb).latent_dist.sample(generator=None) * vae.config.scaling_factor
        noise = torch.randn(lat.shape, generator=gen).to(dev)
        t = torch.randint(0, n_train, (lat.shape[0],), generator=gen).to(dev)
        noisy = sched.add_noise(lat, noise, t)
        target = sched.get_velocity(lat, noise, t) if pred_type == "v_prediction" else noise
        emb = torch.stack([embed(p) for p in prompts])
        with torch.autocast(dev.type, dtype=amp, enabled=amp != torch.float32 and dev.type == "cuda"):
            pred = unet(noisy, t, encoder_hidden_states=emb).sample
        loss = F.mse_loss(pred.float(), target.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        _log(log_path, {"step": step, "loss": losses[-1], "lr": lr, "elapsed_s": round(time.time() - t0, 3)})
        if step % ckpt_every == 0 or step == steps:
            save_ckpt(step)
        bar.update(1, f"loss {losses[-1]:.4f}")
    bar.close()
    if start >= steps:
        save_ckpt(start)
    weights = save_lora(unet, out_dir / LORA_FILE, cfg)
    return {"stage": "dm", "weights": str(weights), "steps": steps, "start_step": start, "losses": losses,
            "log": str(log_path), "images": len(images), "crop": size}


# ------------------------------------------------------------------------------------------------


def train(pairs_source, stage: str = "fam", out_dir="promptmid-train", *, steps: int = 1000, lr: float | None = None,
          batch_size: int = 4, crop: int = 128, sd_model: str | None = None, vfm_model: str | None = None,
          sd_timestep: int = 50, device: str = "auto", dtype: str = "auto", resume: bool = False,
          val_fraction: float = 0.1, seed: int = 0, quiet: bool = False, **kw) -> dict:
    """Train stage "fam" or "dm" from co-registered pairs; returns a summary dict (weights path,
    per-step losses, validation metric, log path). Raises BadInput on bad input."""
    from .loading import DEFAULT_SD_MODEL, DEFAULT_VFM_MODEL

    if stage not in ("fam", "dm"):
        raise BadInput(f"--stage must be fam or dm, got {stage!r}")
    if steps < 1 or batch_size < 1 or crop < 8:
        raise BadInput("--steps and --batch-size must be >= 1 and --crop >= 8")
    if not 0 <= val_fraction < 1:
        raise BadInput("--val-fraction must be in [0, 1)")
    pairs = discover_pairs(pairs_source)
    out = Path(out_dir).expanduser()
    ckpt = out / "checkpoint.pt"
    if resume and not ckpt.is_file():
        raise BadInput(f"--resume: no checkpoint in {out}")
    if not resume and ckpt.is_file():
        raise BadInput(f"{out} already holds a checkpoint: pass --resume to continue or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    common = dict(steps=steps, batch_size=batch_size, crop=crop, sd_model=sd_model or DEFAULT_SD_MODEL,
                  sd_timestep=sd_timestep, device=device, dtype=dtype, resume=resume, seed=seed, quiet=quiet)
    try:
        if stage == "fam":
            return train_fam(pairs, out, lr=lr or 1e-3, vfm_model=vfm_model or DEFAULT_VFM_MODEL,
                             val_fraction=val_fraction, **common, **kw)
        return train_dm(pairs, out, lr=lr or 1e-4, **common, **kw)
    except torch.cuda.OutOfMemoryError:
        raise BadInput("CUDA ran out of memory while training; try a smaller --batch-size or --crop, "
                       "or --dtype fp16") from None
