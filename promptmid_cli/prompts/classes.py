"""The land-use classes a tile's text prompt is chosen from, and user prompt files.

PromptMID conditions its descriptors on a land-use text prompt, and TAR-style feature enhancement
uses text descriptions of the scene's land cover. Every tile therefore gets exactly one class from
a fixed, documented list; the class's first template (with ``{}`` replaced by nothing: templates
are complete sentences) is the prompt handed to the descriptor backend, and all templates are
used (averaged) by the CLIP zero-shot selector.

Default classes (id: display name; * = typically featureless, i.e. a tile of it has little
structure to match on and the pipeline may skip it when its structure statistics agree):

==================  =========================  ==============================================
id                  name                       covers (CORINE-like)
==================  =========================  ==============================================
dense_urban         dense urban                continuous urban fabric, city centres
residential         residential                discontinuous urban fabric, villages, suburbs
industrial          industrial / airport       industrial/commercial units, ports, airports
farmland            farmland                   arable land, crops, orchards, complex cultivation
forest              forest                     broad-leaved, coniferous, mixed forest
grassland           grassland                  pastures, natural grassland, shrubland
bare_soil           bare soil / desert *       sand, dunes, bare soil, sparsely vegetated
water               water *                    sea, lakes, rivers, reservoirs
wetland             wetland                    marshes, peat bogs, salt marshes, intertidal
mountain            mountain / bare rock       bare rock, glaciers, steep relief
road_rail           road / railway             motorways, rail networks, their surroundings
==================  =========================  ==============================================

Prompt file schema (YAML or JSON, chosen by the file's suffix: ``.yaml``/``.yml`` or ``.json``;
any other suffix is tried as YAML, which is a superset of JSON)::

    # either a top-level list ...
    - id: farmland                 # required, unique, [A-Za-z0-9_-]+
      name: farmland               # optional, defaults to id
      templates:                   # required: one string or a non-empty list of strings
        - a remote sensing image of farmland
        - a satellite image of crop fields
      featureless: false           # optional, default false
    # ... or a mapping with the list under "classes":
    # classes: [ {id: ..., templates: [...]}, ... ]

A template may contain ``{}`` (or ``{name}``), which is replaced by the class's display name;
e.g. ``"a satellite image of {}"``. Unknown keys in a class entry are an error (typos are caught
instead of silently ignored). Every problem is reported as :class:`promptmid_cli.errors.BadInput`
with a one-line reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput

_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_KEYS = {"id", "name", "templates", "featureless"}


@dataclass(frozen=True)
class LandUseClass:
    """One land-use class: a stable id, a display name, prompt templates, a featureless hint."""

    id: str
    name: str
    templates: tuple[str, ...]
    featureless: bool = False

    def __post_init__(self):
        object.__setattr__(self, "templates", tuple(self.templates))

    @property
    def prompt(self) -> str:
        """The prompt text handed to the descriptor backend (the first template)."""
        return self.texts()[0]

    def texts(self) -> list[str]:
        """All templates with ``{}`` / ``{name}`` filled in with the display name."""
        return [t.replace("{name}", self.name).replace("{}", self.name) for t in self.templates]

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "templates": list(self.templates),
            "featureless": self.featureless,
        }


def _c(id_: str, name: str, phrases: list[str], featureless: bool = False) -> LandUseClass:
    templates = []
    for i, p in enumerate(phrases):
        templates.append(f"a remote sensing image of {p}")
        templates.append(f"a satellite image of {p}")
        if i == 0:
            templates.append(f"an aerial photo of {p}")
    return LandUseClass(id_, name, tuple(templates), featureless)


_DEFAULT = (
    _c("dense_urban", "dense urban", ["a dense urban area", "a city centre with tall buildings"]),
    _c("residential", "residential", ["a residential area", "houses and gardens"]),
    _c("industrial", "industrial / airport", ["an industrial area", "an airport"]),
    _c("farmland", "farmland", ["farmland", "agricultural crop fields"]),
    _c("forest", "forest", ["a forest", "dense trees"]),
    _c("grassland", "grassland", ["grassland", "meadows and pastures"]),
    _c("bare_soil", "bare soil / desert", ["bare soil", "a sandy desert"], featureless=True),
    _c("water", "water", ["water", "a lake or the sea"], featureless=True),
    _c("wetland", "wetland", ["a wetland", "marshes and bogs"]),
    _c("mountain", "mountain / bare rock", ["mountains", "bare rock"]),
    _c("road_rail", "road / railway", ["a highway", "a railway"]),
)


def default_classes() -> list[LandUseClass]:
    """The built-in class list (a fresh list; the classes themselves are immutable)."""
    return list(_DEFAULT)


def classes_from_data(data, source: str = "prompt list") -> list[LandUseClass]:
    """Validate parsed YAML/JSON data (see the module docstring) into classes."""
    if isinstance(data, dict):
        if set(data) != {"classes"}:
            raise BadInput(f"{source}: expected a list of classes or a mapping with only 'classes'")
        data = data["classes"]
    if not isinstance(data, list):
        raise BadInput(f"{source}: expected a list of classes, got {type(data).__name__}")
    if not data:
        raise BadInput(f"{source}: the class list is empty")
    out: list[LandUseClass] = []
    seen: set[str] = set()
    for i, entry in enumerate(data, 1):
        where = f"{source}: class #{i}"
        if not isinstance(entry, dict):
            raise BadInput(f"{where}: expected a mapping with 'id' and 'templates'")
        unknown = set(entry) - _KEYS
        if unknown:
            raise BadInput(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        cid = entry.get("id")
        if not isinstance(cid, str) or not _ID_RE.match(cid):
            raise BadInput(f"{where}: 'id' must be a non-empty string of letters, digits, _ or -")
        if cid in seen:
            raise BadInput(f"{source}: duplicate class id '{cid}'")
        seen.add(cid)
        name = entry.get("name", cid)
        if not isinstance(name, str) or not name.strip():
            raise BadInput(f"{where} ('{cid}'): 'name' must be a non-empty string")
        templates = entry.get("templates")
        if isinstance(templates, str):
            templates = [templates]
        if (
            not isinstance(templates, list)
            or not templates
            or not all(isinstance(t, str) and t.strip() for t in templates)
        ):
            raise BadInput(f"{where} ('{cid}'): 'templates' must be a non-empty list of strings")
        featureless = entry.get("featureless", False)
        if not isinstance(featureless, bool):
            raise BadInput(f"{where} ('{cid}'): 'featureless' must be true or false")
        out.append(LandUseClass(cid, name.strip(), tuple(t.strip() for t in templates), featureless))
    return out


def load_prompt_file(path) -> list[LandUseClass]:
    """Read a user's class list from a YAML or JSON file (schema in the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"prompt file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read prompt file {p}: {e}") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BadInput(f"{p}: invalid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(e, "problem", None) or "syntax error"
            raise BadInput(f"{p}: invalid YAML{where}: {problem}") from None
    if data is None:
        raise BadInput(f"{p}: the class list is empty")
    return classes_from_data(data, source=str(p))


def class_by_id(classes: list[LandUseClass]) -> dict[str, LandUseClass]:
    return {c.id: c for c in classes}
