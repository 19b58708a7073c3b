"""The search: Ray Tune runs Optuna-suggested trials; one driver process owns a sweep.

How the pieces fit:

* :mod:`~bst_search.search.cli`: the arguments of ``bst-search search`` and
  ``launch/search.py``, the summary and exit codes;
* :mod:`~bst_search.search.driver`: one sweep, from its arguments (a :class:`SweepPlan`) to
  its summary;
* :mod:`~bst_search.search.trainable`: what every trial runs on a Ray worker, reporting after
  each fold (running objective, checkpoint of the finished folds), so a scheduler can stop it
  early and a retried or resumed trial continues from its last finished fold;
* :mod:`~bst_search.search.space`: search-space YAML files, turned into Optuna define-by-run;
* :mod:`~bst_search.search.searcher`: Ray Tune's ``OptunaSearch``, valid samples only, safe to
  pickle (no database URL in Tune's state) and to resume;
* :mod:`~bst_search.search.samplers`, :mod:`~bst_search.search.schedulers`: the registries
  behind ``--sampler`` and ``--scheduler``;
* :mod:`~bst_search.search.warm_start`: the best configurations of an earlier experiment;
* :mod:`~bst_search.search.state`: the sweep's identity and lease in the Optuna database, so
  ``--resume`` works from any machine that reaches the shared state;
* :mod:`~bst_search.search.storage`: the Tune storage every node writes (a path, s3://, gs://);
* :mod:`~bst_search.search.mlflow_logger`: one MLflow run per trial, written by a child process;
* :mod:`~bst_search.search.console`: the progress view, a line per ended trial, the time budget.

Ctrl-C (and ``--time-budget``) leaves a sweep resumable: interrupted runs end KILLED, and
``--resume`` continues them from their last finished fold; ``--resume --trials N+M`` extends a
finished sweep.
"""

from bst_search.search.cli import (
    add_search_arguments,
    build_parser,
    main,
    print_summary,
    run_search_from_args,
)

__all__ = ["add_search_arguments", "build_parser", "main", "print_summary",
           "run_search_from_args"]
