"""Every name bst-search writes to MLflow, once: run tags, metrics and artifacts.

One experiment per sweep, one run per trial (``bst.kind=trial``) and one per ensemble
(``bst.kind=ensemble``). Who writes: only the search driver's MLflow writer process and the
ensemble coordinator; trial workers never do, so a SQLite store on one machine has a single
writer during a sweep, and on a cluster the driver talks to an MLflow tracking server.

Trial run:
  tags      bst.kind, bst.sweep, bst.trial_id, bst.data_fp, bst.fold_fp, bst.eval_fp,
            bst.backbones, bst.status (complete | early_stopped | failed | interrupted),
            bst.cpus, bst.gpus, bst.node (the Ray node that ran it; bst.nodes when it moved);
            run name "<trial no> <model> [<fusion>/<head>] <objective>"
  params    the resolved configuration's keys the trial uses (config.active_keys)
  metrics   SUMMARY_METRICS, hF_<code> per class; fold_hF and fold_hF_strict with step = fold
  artifacts ARTIFACTS
Ensemble run: bst.kind=ensemble, the fingerprints, bst.members, bst.submission.
See docs/design.md, "Tracking".
"""

from __future__ import annotations

KIND, SWEEP, TRIAL_ID, STATUS = "bst.kind", "bst.sweep", "bst.trial_id", "bst.status"
NODE, ATTEMPT = "bst.node", "bst.attempt"  # the Ray node that ran the trial; one create_run call
DATA_FP, FOLD_FP, EVAL_FP, BACKBONES = "bst.data_fp", "bst.fold_fp", "bst.eval_fp", "bst.backbones"
CPUS, GPUS, RUN_NAME, NOTE = "bst.cpus", "bst.gpus", "mlflow.runName", "mlflow.note.content"
VIEW_KEY = "bst-sweep"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"  # MLflow UI: a shareable runs-table view
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"  # MLflow 3
SUMMARY_METRICS = ("oof_hF", "oof_hF_strict", "oof_hP", "oof_hR", "oof_hP_strict", "oof_hR_strict",
                   "oof_acc", "oof_top_acc", "oof_macro_acc", "oof_macro_top_acc", "oof_top2_acc",
                   "oof_top_top2_acc", "oof_n_never_predicted", "fold_hF_mean", "fold_hF_std",
                   "fold_hF_strict_mean", "fold_hF_strict_std", "train_seconds",
                   "model_seconds", "wall_seconds", "epochs_mean", "folds_resumed")
CONFIG_KEYS, RUN_NOTE, NODES = "bst.config_keys", "bst.note", "bst.nodes"
MEMBERS, SUBMISSION = "bst.members", "bst.submission"  # ensemble runs
KIND_TRIAL, KIND_ENSEMBLE = "trial", "ensemble"
OOF_FILE, EVAL_FILE, HOLDOUT_FILE, CONFIG_FILE, METRICS_FILE = (
    "oof.parquet", "eval.parquet", "holdout.parquet", "config.yaml", "metrics.json")
CROWD_FILE = "crowd.parquet"  # every fold model's crowd predictions (float16), with --crowd-data
ARTIFACTS = (OOF_FILE, EVAL_FILE, HOLDOUT_FILE, CROWD_FILE, CONFIG_FILE, METRICS_FILE)
ENSEMBLE_FILE, SUBMISSION_FILE = "ensemble.json", "submission.csv"  # ensemble run artifacts
