"""The certification vocabulary shared by the CLI and the service: methods, noise laws, ISS modes."""

from __future__ import annotations

from enum import Enum
from typing import Literal


class Method(str, Enum):
    np = "np"  # Neyman-Pearson (Cohen et al. 2019)
    dsrs = "dsrs"  # double sampling (Li et al. 2022)


class NoiseKind(str, Enum):
    gaussian = "gaussian"
    general_gaussian = "general_gaussian"


Mode = Literal["absolute", "relative"]  # ISS: delta in radius units, or a fraction of the radius


class ISSMode(str, Enum):
    absolute = "absolute"
    relative = "relative"


# the one message for asking both torch.compile and a frozen TorchScript graph of one model
COMPILE_CONFLICT = "freeze and compile are two ways to compile the model: choose one"
