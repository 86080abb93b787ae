"""``load(run_dir)``: a saved run as a fitted scikit-learn estimator, from weights only.

The run folder is read as :func:`inference.reevaluate.evaluate_run` reads it, by the one
loader :func:`inference.run_loader.load` (``run.json`` against its schema, ``params.pt`` read
with ``torch.load(weights_only=True)`` and checked against the config: nothing unpickled,
nothing half-read), and the model found by the same rule (a run of a model from a user's file
needs that file named, ``model="FILE.py"``; nothing in the folder is imported). The estimator
class follows the model, by the estimator registry (``base.ESTIMATORS``: ``gmm`` ->
:class:`GaussianMixture`, ``ppca`` -> :class:`PPCA`, ``fa`` -> :class:`FactorAnalysis`, ``dglvm``
-> :class:`DeepLatentGaussian`, and what plugins register), any other ->
:class:`PyroLatentModel`. Its parameters are the run's (so ``clone(est).fit(X)`` refits the
way the run was fitted) and it computes in the run's dtype with the run's seed, so its
``score_samples`` are the run's numbers: the exact log p(x), or for a model without one the
same IWAE draws as the run's metrics. An SVI run's ``checkpoint.pt`` (weights only too) lets
``partial_fit`` continue it.
"""

from __future__ import annotations

from pathlib import Path

from sklearn.utils._param_validation import validate_parameter_constraints

from inference.estimators_sklearn import base
from inference.estimators_sklearn.base import ESTIMATORS, LatentModelEstimator
from inference.estimators_sklearn.generic import PyroLatentModel
from inference.results import FitResult
from inference.run_loader import SavedRun
from inference.run_loader import load as load_saved
from inference.runs import CHECKPOINT_FILE


def load(run_dir: str | Path, model: str | None = None, *,
         device: str = "cpu") -> LatentModelEstimator:
    """The fitted estimator of the run in ``run_dir`` (weights only, see the module docstring).

    ``model`` names the user's file for a run of a model declared there (``"FILE.py"`` or
    ``"FILE.py:NAME"``), as ``lvm-zoo evaluate --model``; ``device`` is where it computes.
    """
    return estimator_of(load_saved(run_dir, model), device=device)


def estimator_of(saved: SavedRun, *, device: str = "cpu") -> LatentModelEstimator:
    """The fitted estimator of a run folder read by :func:`inference.run_loader.load`."""
    run_dir = saved.path
    run, params, guide_params, metrics = (saved.record, saved.params, saved.guide_params,
                                          saved.metrics)
    reference, spec, config, history = saved.reference, saved.spec, saved.config, saved.history
    if base.is_file_reference(reference):
        base._FILE_MODELS[reference] = spec.name
    stored = str(run.get("model_ref", run["model"]))
    if base.is_file_reference(stored):
        base._FILE_MODELS[stored] = spec.name  # the estimator's model parameter
    cls = ESTIMATORS.get(spec.name, PyroLatentModel)
    estimator = cls(**cls._params_from_run(spec, config, run, metrics), device=device)
    # the device as fit checks it: scikit-learn's constraint, then CUDA where there is none
    validate_parameter_constraints({"device": cls._parameter_constraints["device"]},
                                   {"device": device}, caller_name=cls.__name__)
    base.resolve_device(device, cls.__name__)
    estimator._restore(spec, config, run, params, guide_params, metrics, history,
                       _svi_state(run, Path(run_dir)))
    return estimator


def _svi_state(run: dict, run_dir: Path) -> dict | None:
    """The SVI checkpoint of the state the run saved (its best restart's), or None."""
    if run["inference"] != "svi" or not (run_dir / CHECKPOINT_FILE).is_file():
        return None
    info = run.get("info") if isinstance(run.get("info"), dict) else {}
    result = FitResult(model=run["model"], inference="svi", guide=run["guide"], params={},
                       info={"best_restart": info.get("best_restart", 0)})
    return base.svi_state(result, run_dir / CHECKPOINT_FILE, kept=info.get("kept"))
