"""Training LeNet-BN as the seed notebook does, in pieces that stay apart.

>>> from bncheck.training.data import synthetic_dataset
>>> from bncheck.reference.lenet import lenet_bn
>>> from bncheck.training import train
>>> history = train(lenet_bn("torch"), synthetic_dataset(256), synthetic_dataset(64, seed=1),
...                 epochs=2, batch_size=32)
>>> history.epochs[-1].test_acc > 0.9
True

* the loop (:func:`train`, :func:`evaluate_accuracy`, :func:`xavier_init`);
* the checkpoint format (:func:`save_checkpoint`, :func:`load_checkpoint`: a plain
  ``state_dict``);
* where the data comes from (:func:`find_data`: Fashion-MNIST on disk, else a labelled stand-in);
* the picture (:func:`plot_curves`; matplotlib, an optional extra, imported only there);
* scratch = torch step by step (:func:`compare_variants`);
* running statistics against the population statistics of real activations
  (:func:`population_gaps`);
* a whole run with its output folder (:func:`run_training`), which ``bncheck train`` renders.
"""

from bncheck.training._checkpoint import load_checkpoint, read_state_dict, save_checkpoint
from bncheck.training._lockstep import LockstepDivergence, LockstepReport, compare_variants
from bncheck.training._loop import (
    DIVERGENCE_FACTOR,
    BatchProgress,
    CurvePoint,
    EpochStats,
    TrainingDiverged,
    TrainingHistory,
    check_batch_size,
    evaluate_accuracy,
    train,
    xavier_init,
)
from bncheck.training._plot import plot_curves, plotting_available
from bncheck.training._population import PopulationGap, population_gaps
from bncheck.training._run import (
    RunOutputs,
    RunResult,
    RunSettings,
    default_run_dir,
    plan_outputs,
    run_training,
    write_metrics,
)
from bncheck.training._sources import (
    STAND_IN_LABEL,
    DataSource,
    find_data,
    how_to_get_fashion_mnist,
    stand_in_datasets,
    user_cache_dir,
)

__all__ = [
    "DIVERGENCE_FACTOR",
    "STAND_IN_LABEL",
    "BatchProgress",
    "CurvePoint",
    "DataSource",
    "EpochStats",
    "LockstepDivergence",
    "LockstepReport",
    "PopulationGap",
    "RunOutputs",
    "RunResult",
    "RunSettings",
    "TrainingDiverged",
    "TrainingHistory",
    "check_batch_size",
    "compare_variants",
    "default_run_dir",
    "evaluate_accuracy",
    "find_data",
    "how_to_get_fashion_mnist",
    "load_checkpoint",
    "plan_outputs",
    "plot_curves",
    "plotting_available",
    "population_gaps",
    "read_state_dict",
    "run_training",
    "save_checkpoint",
    "stand_in_datasets",
    "train",
    "user_cache_dir",
    "write_metrics",
    "xavier_init",
]
