"""Learned PromptMID backbones: model loading, feature extraction, the feature aggregation
module (FAM), training, tiny test models and the `train` / `models` commands.

Heavy imports (torch, diffusers, transformers) live in the submodules, so importing this package
is cheap.
"""
