"""Model names -> classes. The one list of models the CLI, trainer and checkpoints accept."""

from __future__ import annotations

import importlib

from torch import nn

MODELS: dict[str, str] = {
    "apron": "training.models.apron:APRON",
    "multidae": "training.models.multidae:MultiDAE",
    "multivae": "training.models.multivae:MultiVAE",
    "recvae": "training.models.recvae:RecVAE",
    "macridvae": "training.models.macridvae:MacridVAE",
    "sem-macridvae": "training.models.macridvae:SemMacridVAE",  # the APRON paper's: k-means init only
    "sem-macridvae-tags": "training.models.macridvae:TagSupervisedMacridVAE",  # + tag prototypes, Eq. 11
}


def model_class(name: str) -> type[nn.Module]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    module_name, class_name = MODELS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
