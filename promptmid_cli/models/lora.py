"""LoRA adapters of the diffusion UNet: the file written by `train --stage dm` and read back by
`load_sd(..., lora_weights=...)`.

Its own module so that loading (models/loading.py) and training (models/train.py) both depend on it,
and neither on the other: the arrows run loading -> lora <- train.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BadInput

LORA_FILE = "lora.safetensors"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def save_lora(unet, path: Path, config: dict) -> Path:
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    save_file(state, str(path), metadata={"format": "pt", "promptmid_lora": json.dumps(config)})
    path.with_suffix(".json").write_text(json.dumps(config, indent=2))
    return path


def load_lora_into_unet(unet, path: str | Path) -> None:
    """Add the LoRA adapter saved by ``train --stage dm`` to a UNet2DConditionModel."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    from .fam import _first_line, read_weights

    cfg, state = read_weights(path, LORA_FILE, "promptmid_lora", "LoRA")
    try:
        unet.add_adapter(LoraConfig(r=cfg["r"], lora_alpha=cfg["lora_alpha"],
                                    target_modules=cfg["target_modules"], init_lora_weights="gaussian"))
        res = set_peft_model_state_dict(unet, state)
    except Exception as e:
        raise BadInput(f"cannot load LoRA weights {path}: {_first_line(e)}") from None
    unexpected = getattr(res, "unexpected_keys", None) or []
    if unexpected:
        raise BadInput(f"LoRA weights {path} do not fit this UNet ({len(unexpected)} unexpected tensors)")
