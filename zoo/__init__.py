"""lvm-zoo models: what a latent-variable model IS (its generative story and closed forms)."""

from zoo.declare import declare
from zoo.errors import InputError
from zoo.registry import EMSteps, ModelSpec, get_model, models, register

__all__ = ["EMSteps", "InputError", "ModelSpec", "declare", "get_model", "models", "register"]
