"""CORINE Land Cover (level 3, as used by BigEarthNet) -> promptmid land-use class ids.

Used to check the prompt selectors against labelled patches (``examples/prompt_confusion.py``,
tests). A CORINE class maps to one or more of our classes where the correspondence is genuinely
ambiguous (e.g. transitional woodland/shrub is forest or grassland depending on cover); a
prediction *agrees* with a multi-label patch when it is one of the classes its labels map to.

BigEarthNet-v2 (and the BigEarthNet-19 nomenclature of Sumbul et al. 2021) merges some level-3
classes ("Urban fabric", "Inland waters", ...); :data:`BEN19_TO_CLASSES` maps those names, and
:func:`classes_for_labels` accepts either nomenclature.
"""

from __future__ import annotations

CORINE_TO_CLASSES: dict[str, tuple[str, ...]] = {
    "Continuous urban fabric": ("dense_urban",),
    "Discontinuous urban fabric": ("residential",),
    "Industrial or commercial units": ("industrial",),
    "Road and rail networks and associated land": ("road_rail",),
    "Port areas": ("industrial",),
    "Airports": ("industrial",),
    "Mineral extraction sites": ("bare_soil",),
    "Dump sites": ("bare_soil",),
    "Construction sites": ("bare_soil", "industrial"),
    "Green urban areas": ("residential", "grassland"),
    "Sport and leisure facilities": ("residential", "grassland"),
    "Non-irrigated arable land": ("farmland",),
    "Permanently irrigated land": ("farmland",),
    "Rice fields": ("farmland", "wetland"),
    "Vineyards": ("farmland",),
    "Fruit trees and berry plantations": ("farmland",),
    "Olive groves": ("farmland",),
    "Pastures": ("grassland",),
    "Annual crops associated with permanent crops": ("farmland",),
    "Complex cultivation patterns": ("farmland",),
    "Land principally occupied by agriculture, with significant areas of natural vegetation": (
        "farmland",
    ),
    "Agro-forestry areas": ("farmland", "forest"),
    "Broad-leaved forest": ("forest",),
    "Coniferous forest": ("forest",),
    "Mixed forest": ("forest",),
    "Natural grassland": ("grassland",),
    "Moors and heathland": ("grassland",),
    "Sclerophyllous vegetation": ("grassland",),
    "Transitional woodland/shrub": ("forest", "grassland"),
    "Beaches, dunes, sands": ("bare_soil",),
    "Bare rock": ("mountain",),
    "Sparsely vegetated areas": ("bare_soil", "grassland"),
    "Burnt areas": ("bare_soil",),
    "Glaciers and perpetual snow": ("mountain",),
    "Inland marshes": ("wetland",),
    "Peatbogs": ("wetland",),
    "Salt marshes": ("wetland",),
    "Salines": ("wetland",),
    "Intertidal flats": ("wetland",),
    "Water courses": ("water",),
    "Water bodies": ("water",),
    "Coastal lagoons": ("water",),
    "Estuaries": ("water",),
    "Sea and ocean": ("water",),
}

# BigEarthNet-19 names that are not level-3 names (the shared ones, e.g. "Pastures", map as above).
BEN19_TO_CLASSES: dict[str, tuple[str, ...]] = {
    "Urban fabric": ("dense_urban", "residential"),
    "Arable land": ("farmland",),
    "Permanent crops": ("farmland",),
    "Natural grassland and sparsely vegetated areas": ("grassland", "bare_soil"),
    "Moors, heathland and sclerophyllous vegetation": ("grassland",),
    "Transitional woodland, shrub": ("forest", "grassland"),
    "Inland wetlands": ("wetland",),
    "Coastal wetlands": ("wetland",),
    "Inland waters": ("water",),
    "Marine waters": ("water",),
}


def classes_for_labels(labels: list[str]) -> set[str]:
    """The union of class ids a patch's labels (level 3 or BigEarthNet-19) map to; unknown ones are ignored."""
    out: set[str] = set()
    for lab in labels:
        out.update(CORINE_TO_CLASSES.get(lab, BEN19_TO_CLASSES.get(lab, ())))
    return out
