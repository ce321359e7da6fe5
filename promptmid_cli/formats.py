"""The output raster's format: GDAL drivers (by name or extension), their creation options checked
against GDAL's own option lists, and the profile the output is written with. Used before any work
(validate.py: a format GDAL would refuse is answered with exit 2 at once) and when writing
(outputs.py). Imports nothing heavy at module level: rasterio only inside the functions.
"""

from __future__ import annotations

import contextlib
import os

from .errors import BadInput

# output drivers by extension; anything else is asked of GDAL
EXT_DRIVERS = {".tif": "GTiff", ".tiff": "GTiff", ".img": "HFA"}


@contextlib.contextmanager
def quiet_rasterio():
    """No NotGeoreferencedWarning on stderr: a raster without georeference is a supported input."""
    import warnings

    import rasterio.errors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        yield


def parse_co(co) -> dict:
    """--co NAME=VALUE list -> {NAME: VALUE} (names upper-cased)."""
    out = {}
    for item in co or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise BadInput(f"--co expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().upper()] = v.strip()
    return out


def _gdal_lib():
    """ctypes handle on the libgdal rasterio itself uses (already loaded), or None."""
    import ctypes
    import ctypes.util
    import glob

    import rasterio

    base = os.path.dirname(rasterio.__file__)
    cands = sorted(glob.glob(os.path.join(base, "..", "rasterio.libs", "libgdal*")))
    cands += sorted(glob.glob(os.path.join(base, ".libs", "libgdal*")))
    name = ctypes.util.find_library("gdal")
    if name:
        cands.append(name)
    for c in cands:
        try:
            lib = ctypes.CDLL(c)
            lib.GDALGetDriverByName.restype = ctypes.c_void_p
            lib.GDALGetDriverByName.argtypes = [ctypes.c_char_p]
            lib.GDALGetMetadataItem.restype = ctypes.c_char_p
            lib.GDALGetMetadataItem.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
            return lib
        except (OSError, AttributeError):
            continue
    return None


_DRIVER_CACHE: dict = {}


def driver_metadata(name: str) -> dict | None:
    """{'create': bool, 'createcopy': bool, 'extensions': [...], 'options': {NAME: (type, [values])}}
    from GDAL's own driver metadata (DCAP_CREATE, DMD_CREATIONOPTIONLIST); None if unknown driver;
    {'options': None, ...} when the metadata cannot be read (then options are not checked)."""
    if name in _DRIVER_CACHE:
        return _DRIVER_CACHE[name]
    import rasterio

    with rasterio.Env():
        lib = _gdal_lib()
        if lib is None:  # no metadata: trust rasterio's list of drivers, check no option
            from rasterio._env import GDALEnv

            known = name in GDALEnv().drivers()
            info = {"create": True, "createcopy": True, "extensions": [], "options": None} if known else None
        else:
            d = lib.GDALGetDriverByName(name.encode())

            def md(k):
                v = lib.GDALGetMetadataItem(d, k.encode(), None)
                return v.decode("utf-8", "replace") if v else None

            if not d or md("DCAP_RASTER") != "YES":
                info = None
            else:
                info = {"create": md("DCAP_CREATE") == "YES", "createcopy": md("DCAP_CREATECOPY") == "YES",
                        "extensions": (md("DMD_EXTENSIONS") or "").split(),
                        "options": _parse_option_list(md("DMD_CREATIONOPTIONLIST"))}
    _DRIVER_CACHE[name] = info
    return info


def _parse_option_list(xml: str | None) -> dict:
    import xml.etree.ElementTree as ET

    if not xml:
        return {}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    out = {}
    for o in root.iter("Option"):
        nm = (o.get("name") or "").upper()
        if not nm:
            continue
        vals = []
        for v in o.iter("Value"):
            for s in (v.text, v.get("alias")):
                if s:
                    vals.append(s.strip().upper())
        out[nm] = (o.get("type") or "string", vals)
    return out


def output_driver(cfg) -> str:
    """GDAL driver of the output raster: cfg.driver, else by extension. Must write block by block."""
    ext = os.path.splitext(str(cfg.out))[1].lower()
    name = cfg.driver
    if not name:
        if ext == ".vrt":
            raise BadInput(f"-o {cfg.out}: a VRT cannot hold the warped pixels; write a GeoTIFF (.tif) "
                           f"(the GCP VRT is written anyway, see --vrt-out)")
        name = EXT_DRIVERS.get(ext)
        if name is None:
            import rasterio.drivers

            try:
                name = rasterio.drivers.driver_from_extension(str(cfg.out))
            except ValueError:
                raise BadInput(f"-o {cfg.out}: unknown raster extension {ext or '(none)'!r}; use .tif, .img, "
                               f"or name the format with --driver") from None
    info = driver_metadata(name)
    if info is None:
        raise BadInput(f"unknown or non-raster GDAL driver {name!r}")
    if name.upper() in ("VRT", "MEM"):
        raise BadInput(f"the {name} driver cannot hold the output raster; use GTiff")
    if not info["create"]:
        by = "" if cfg.driver else f"-o {cfg.out}: "
        raise BadInput(f"{by}the {name} driver cannot write a raster block by block (no DCAP_CREATE); write a GeoTIFF "
                       f"and convert it with gdal_translate")
    if cfg.cog and name != "GTiff":
        raise BadInput(f"--cog writes a Cloud Optimized GeoTIFF; it cannot be combined with the {name} driver")
    return name


_BOOL = {"YES", "NO", "TRUE", "FALSE", "ON", "OFF", "1", "0"}


def check_creation_options(cfg, driver: str) -> dict:
    """Every --co NAME=VALUE against the driver's own creation option list (also COG's with --cog)."""
    co = parse_co(cfg.co)
    lists = []
    info = driver_metadata(driver)
    if info and info["options"] is not None:
        lists.append((driver, info["options"]))
    if cfg.cog:
        ci = driver_metadata("COG")
        if ci and ci["options"] is not None:
            lists.insert(0, ("COG", ci["options"]))
    if not lists:
        return co
    for k, v in co.items():
        spec = next(((d, o[k]) for d, o in lists if k in o), None)
        if spec is None:
            names = " and ".join(d for d, _ in lists)
            raise BadInput(f"--co {k}={v}: {k} is not a creation option of the {names} driver")
        d, (typ, vals) = spec
        vu = v.upper()
        if typ == "string-select" and vals and vu not in vals:
            raise BadInput(f"--co {k}={v}: not a value the {d} driver accepts (choose from {', '.join(vals)})")
        if typ == "boolean" and vu not in _BOOL:
            raise BadInput(f"--co {k}={v}: expected YES or NO")
        if typ == "int":
            try:
                iv = int(v)
            except ValueError:
                raise BadInput(f"--co {k}={v}: expected an integer") from None
            if k in ("BLOCKXSIZE", "BLOCKYSIZE", "BLOCKSIZE") and (iv < 16 or iv % 16):
                tiled = co.get("TILED", "YES").upper() not in ("NO", "FALSE", "OFF", "0")
                if k != "BLOCKYSIZE" or tiled or cfg.cog:
                    raise BadInput(f"--co {k}={v}: tile sizes must be a positive multiple of 16")
        if typ == "float":
            try:
                float(v)
            except ValueError:
                raise BadInput(f"--co {k}={v}: expected a number") from None
    return co


def gdal_message(e: BaseException) -> str:
    """The most specific line of a rasterio error: GDAL's own message is often on the cause
    ("Write failed. See previous exception for details.")."""
    msgs = []
    while e is not None and len(msgs) < 5:
        m = str(e).strip()
        if m:
            msgs.append(m.splitlines()[0])
        e = e.__cause__ or e.__context__
    specific = [m for m in msgs if "previous exception" not in m]
    return (specific or msgs or ["failed"])[-1 if specific else 0]


def creation_profile(driver: str, dtype: str, count: int, width: int, height: int, co: dict) -> dict:
    """rasterio profile of the output raster: our defaults for GeoTIFF (tiled, DEFLATE with the
    predictor that fits the data type, BigTIFF when needed), then the user's --co on top."""
    prof = {"driver": driver, "width": width, "height": height, "count": count, "dtype": dtype}
    if driver == "GTiff":
        kind = dtype[0]  # f(loat), c(omplex), u/i(nt)
        prof.update(tiled=True, blockxsize=512, blockysize=512, compress="deflate", bigtiff="IF_SAFER")
        if kind in "fui":
            prof["predictor"] = 3 if kind == "f" else 2
        if width < 512 or height < 512:
            if min(width, height) >= 256:
                prof.update(blockxsize=256, blockysize=256)
            else:
                prof["tiled"] = False
                del prof["blockxsize"], prof["blockysize"]
    for k, v in co.items():
        prof[k.lower()] = v
    return prof


def probe_creation(driver: str, dtype: str, count: int, width: int, height: int, co: dict):
    """Create a small raster in memory (/vsimem/) with the real driver, data type and options, so
    combinations GDAL refuses (JPEG on Float32, ...) fail now rather than after matching."""
    import uuid

    import numpy as np
    import rasterio

    ext = {"GTiff": ".tif", "HFA": ".img"}.get(driver, "")
    path = f"/vsimem/promptmid-probe-{uuid.uuid4().hex}{ext}"
    prof = creation_profile(driver, dtype, count, width, height, co)
    n = 64
    prof.update(width=min(width, n), height=min(height, n))
    try:
        with rasterio.Env(), quiet_rasterio():
            with rasterio.open(path, "w", **prof) as dst:
                dst.write(np.zeros((count, prof["height"], prof["width"]), dtype=dtype))
    except (rasterio.errors.RasterioError, ValueError, TypeError) as e:
        msg = gdal_message(e)
        given = ", ".join(f"{k}={v}" for k, v in co.items()) or "the default options"
        raise BadInput(f"the {driver} driver cannot write {dtype} with {given}: {msg}") from None
    finally:
        try:
            from rasterio.shutil import delete

            delete(path)
        except Exception:  # noqa: BLE001 - nothing was created
            pass


def split_cog_options(co: dict) -> tuple[dict, dict]:
    """With --cog the pixels are first streamed to a GeoTIFF, then GDAL's COG driver lays them out:
    each stage gets the options it knows."""
    g = (driver_metadata("GTiff") or {}).get("options")
    c = (driver_metadata("COG") or {}).get("options")
    gt = {k: v for k, v in co.items() if g is None or k in g}
    cog = {k: v for k, v in co.items() if c is None or k in c}
    return gt, cog


def output_dtype(src_dtype: str, grid: str) -> str:
    """The output raster's data type: the moving raster's own, except that a complex raster warped
    onto the reference grid becomes its magnitude (float32; resampling complex values mixes phases)."""
    if src_dtype.startswith("complex") and grid == "reference":
        return "float32"
    return src_dtype
