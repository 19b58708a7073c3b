"""The sweep's Optuna searcher: Ray Tune's ``OptunaSearch`` made safe to pickle and resume.

Ray pickles its searcher twice, into ``tuner.pkl`` and into the searcher state, both kept in
the Tune storage (a bucket on a cluster). ``OptunaSearch`` pickles its RDB storage and the
Optuna trials, which carry the database URL and its password. Here the pickled state holds
the study name and each Tune trial's Optuna trial id only; the storage is rebuilt on the
driver from :data:`STORAGE_ENV`, which the driver sets from ``--optuna-storage`` (or the
user sets, so the secret never appears on a command line).

What Optuna is told, so that it learns only from the objective:

* a trial that finished all its folds is COMPLETE with the objective's value;
* a trial the scheduler stopped is PRUNED (its running values are its intermediate values);
* a trial that errored is FAIL (with the running values it reported); when ``--resume`` re-runs it and it completes, its outcome is
  added as a new Optuna trial with the same parameters (an Optuna trial cannot leave FAIL), so
  MLflow's FINISHED run and Optuna's COMPLETE trial agree;
* a trial whose final value the study already holds (the driver died between Optuna's update
  and Tune's next state save) keeps it;
* an orphan, an Optuna trial of this Tune experiment that Tune's restored state does not know
  (a head lost after the trial was asked for and before Tune's state reached the storage), is
  adopted at the first suggestion: left RUNNING, it is told FAIL (``bst.orphan``) and its
  parameters are enqueued, so the next new trial runs them instead of a new sample; finished,
  it takes the place of a new trial (the experiment's ``n_trials`` count it). A resumed sweep
  thus runs exactly ``--trials`` trials. A RUNNING trial that names no Tune trial (the driver
  died between Optuna's ask and naming it) is told FAIL; an orphan's re-run among them is
  enqueued again.

Tune saves its trial list and the searcher's state as separate files and uploads them one by
one, so a head lost mid-upload can leave a searcher state older or newer than the trial list
that Tune restores. The trial list is the truth: :class:`TuneTrials` records it at the first
step of every Tune run, and the searcher (:meth:`SweepOptunaSearch._adopt_orphans`) and the
concurrency limit (:class:`SweepLimiter`) rebuild what they hold from it before they first act.

A driver that lost its lease (:mod:`bst_search.search.stopping`) neither asks nor tells.

A trial's running values are held by this searcher and written when it ends, and only when it
ends PRUNED or FAIL: a COMPLETE trial's value is its value (its per-fold curve is in MLflow,
``fold_hF`` by step), and one write per fold was a tenth of the driver's CPU at 32 concurrent
trials (``benchmarks/bench_scale.py``). Constant-liar TPE does not read a running trial's
intermediate values; for a PRUNED trial it ranks by the last one, which is written.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import optuna
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from bst_search.search.space import InvalidSample, SpaceError
from bst_search.search.stopping import STOPS

STORAGE_ENV = "BST_OPTUNA_STORAGE"
TUNE_TRIAL_ATTR = "bst.tune_trial_id"
SEGMENT_ATTR = "bst.segment"  # the Tune experiment (segment of the sweep) that asked for it
ORPHAN_ATTR = "bst.orphan"  # a RUNNING trial no Tune trial owned, told FAIL when adopted
ADOPTS_ATTR = "bst.adopts"  # an enqueued trial: the number of the orphan it runs again
log = logging.getLogger(__name__)
# consecutive rejected samples for one trial before the sweep gives up on the space
MAX_REJECTS = 500


_URL: str | None = None  # set by the driver (use_storage); never pickled
# Tune's trials (id -> status) at the first step of the current Tune run; None before it
_TUNE_TRIALS: dict[str, str] | None = None
_ENDED = ("TERMINATED", "ERROR")


class TuneTrials(tune.Callback):
    """Records Tune's trials, restored ones included, at the first step of a Tune run: the
    first step comes before Tune first asks the searcher for a trial (module docstring)."""

    def setup(self, **info: Any) -> None:
        global _TUNE_TRIALS
        _TUNE_TRIALS = None

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        global _TUNE_TRIALS
        if _TUNE_TRIALS is None:
            _TUNE_TRIALS = {t.trial_id: t.status for t in trials}


def use_storage(url: str) -> None:
    """The driver's Optuna storage URL (from --optuna-storage or the environment), kept in
    this process only; searchers restored from pickles connect through it."""
    global _URL
    _URL = url


def storage_from_env() -> optuna.storages.RDBStorage:
    """The study's RDB storage, from the driver's process state (never from pickled state)."""
    url = _URL or os.environ.get(STORAGE_ENV)
    if not url:
        raise RuntimeError(f"no Optuna storage: pass --optuna-storage or set ${STORAGE_ENV}")
    return optuna.storages.RDBStorage(url, heartbeat_interval=None)


def outcome(result: dict | None, metric: str, error: bool) -> tuple[optuna.trial.TrialState, float | None]:
    """What Optuna is told about a finished Tune trial (see the module docstring)."""
    S = optuna.trial.TrialState
    if error:
        return S.FAIL, None
    result = result or {}
    if result.get("trial_status") == "complete" and isinstance(result.get(metric), (int, float)):
        return S.COMPLETE, float(result[metric])
    return S.PRUNED, None  # stopped early: its reported running values are intermediate values


class ValidOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna FAIL for a sampled combination breaking a rule of
    the configuration and asks again, so Tune only ever starts valid trials."""

    def suggest(self, trial_id: str) -> dict | None:
        import optuna

        for _ in range(MAX_REJECTS):
            try:
                return super().suggest(trial_id)
            except InvalidSample as e:
                rejected = self._ot_trials.pop(trial_id)
                rejected.set_user_attr("bst.invalid", str(e))
                self._ot_study.tell(rejected, state=optuna.trial.TrialState.FAIL)
                self.n_rejected = getattr(self, "n_rejected", 0) + 1
                last = str(e)
        raise SpaceError(f"{MAX_REJECTS} sampled combinations in a row break configuration rules "
                         f"(the last: {last}); restrict the space with `when` conditions")


class SweepOptunaSearch(ValidOptunaSearch):
    """``OptunaSearch`` (valid by construction, :mod:`bst_search.search.samplers`) with secret-free
    pickles, PRUNED early stops and re-run agreement."""

    _VOLATILE = ("_storage", "_ot_study", "_ot_trials", "_open", "_adopted")

    def __init__(self, *args: Any, segment: str | None = None, n_trials: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._segment, self._n_trials = segment, n_trials  # None/negative n_trials: no cap
        self._finished_orphans = 0  # trials of this segment that finished unknown to Tune
        self._adopted = False
        # per Tune trial: whether its Optuna trial still takes values; read from the study once
        # per trial and driver (this searcher is its only writer), never once per result
        self._open: dict[str, bool] = {}
        self._running: dict[str, dict[int, float]] = {}  # running values, kept in the state

    def _state(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in self._VOLATILE}
        state["_ot_trial_ids"] = {tid: t._trial_id for tid, t in (self._ot_trials or {}).items()}
        return state

    def _reconnect(self, state: dict[str, Any]) -> None:
        ids = state.pop("_ot_trial_ids", {})
        self.__dict__.update(state)
        self._storage = storage_from_env()
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage,
                                           sampler=self._sampler)
        self._ot_trials = {tid: optuna.trial.Trial(self._ot_study, i) for tid, i in ids.items()}
        self._open = {}
        self._adopted = False
        for k, v in (("_running", {}), ("_segment", None), ("_n_trials", None), ("_finished_orphans", 0)):
            self.__dict__.setdefault(k, v)  # a state saved before it existed

    def __getstate__(self) -> dict[str, Any]:  # tuner.pkl
        return self._state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._reconnect(dict(state))

    def save(self, checkpoint_path: str) -> None:  # the searcher state in the Tune storage
        import pickle

        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self._state(), fh)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as fh:
            self._reconnect(pickle.load(fh))

    def suggest(self, trial_id: str) -> dict | str | None:
        if not STOPS.may_write():
            return None
        self._ensure_adopted()
        if trial_id not in self._ot_trials and self._n_trials is not None and 0 <= self._n_trials <= (
                len(self._ot_trials) + self._finished_orphans):
            return Searcher.FINISHED  # finished orphans took the places of the last trials
        params = super().suggest(trial_id)
        t = self._ot_trials.get(trial_id)
        if t is not None:  # lets a reader of the study find the Tune trial (and MLflow run)
            storage = self._ot_study._storage
            storage.set_trial_user_attr(t._trial_id, TUNE_TRIAL_ATTR, trial_id)
            if self._segment is not None:
                storage.set_trial_user_attr(t._trial_id, SEGMENT_ATTR, self._segment)
            self._open[trial_id] = True
        return params

    def _ensure_adopted(self) -> None:
        """Adopt before the first hook that acts on a trial: a restored trial can report, or
        end, before Tune first asks for a new one (the concurrency limit is reached)."""
        if not self._adopted and STOPS.may_write():
            self._adopt_orphans()

    def _adopt_orphans(self) -> None:
        """Once per driver, before it first acts on a trial: the orphans of this segment (module
        docstring). RUNNING ones are told FAIL and their parameters enqueued; finished ones
        are counted against ``n_trials``."""
        self._adopted = True
        if self._segment is None:
            return
        S = optuna.trial.TrialState
        trials = self._ot_study.get_trials(deepcopy=False)
        if _TUNE_TRIALS is not None:
            self._follow_tune(_TUNE_TRIALS, trials)
        known = {t._trial_id for t in self._ot_trials.values()}
        finished = 0
        by_number = {t.number: t for t in trials}
        for t in trials:
            if t.state == S.RUNNING and TUNE_TRIAL_ATTR not in t.user_attrs:
                # asked for by a driver that died before it named the Tune trial (the lease
                # makes this driver the study's only writer): no Tune trial ever ran it
                self._fail_orphan(t, by_number.get(t.user_attrs.get(ADOPTS_ATTR)))
                continue
            if (t.user_attrs.get(SEGMENT_ATTR) != self._segment or t._trial_id in known
                    or "bst.rerun_of" in t.user_attrs):
                continue
            if t.state == S.RUNNING:
                self._fail_orphan(t, t)
            elif t.state in (S.COMPLETE, S.PRUNED):
                finished += 1
        self._finished_orphans = finished

    def _fail_orphan(self, t: optuna.trial.FrozenTrial, again: optuna.trial.FrozenTrial | None) -> None:
        """Tell orphan ``t`` FAIL; the parameters of ``again`` (``t`` itself, or the orphan an
        enqueued ``t`` was to run again) run as the next trial."""
        self._ot_study._storage.set_trial_user_attr(t._trial_id, ORPHAN_ATTR, True)
        self._ot_study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        if again is None:
            log.warning("Optuna trial %s was asked for but never named a Tune trial: told FAIL", t.number)
            return
        self._ot_study.enqueue_trial(again.params, user_attrs={ADOPTS_ATTR: again.number},
                                     skip_if_exists=False)
        log.warning("Optuna trial %s was asked for but never reached Tune's saved state: "
                    "the parameters of trial %s run as the next trial", t.number, again.number)

    def _follow_tune(self, tune_trials: dict[str, str], trials: list[optuna.trial.FrozenTrial]) -> None:
        """Make the Optuna trials this searcher holds those of Tune's restored trials: one
        Tune restored but the saved searcher state missed is taken back; one the state holds
        but Tune did not restore is let go (it is then an orphan)."""
        for tid in [tid for tid in self._ot_trials if tid not in tune_trials]:
            self._ot_trials.pop(tid)
            self._open.pop(tid, None)
            self._running.pop(tid, None)
        for t in trials:
            tid = t.user_attrs.get(TUNE_TRIAL_ATTR)
            if (t.user_attrs.get(SEGMENT_ATTR) == self._segment and tid in tune_trials
                    and tid not in self._ot_trials and "bst.rerun_of" not in t.user_attrs
                    and ORPHAN_ATTR not in t.user_attrs):
                self._ot_trials[tid] = optuna.trial.Trial(self._ot_study, t._trial_id)
                log.warning("Tune trial %s was restored without the searcher state that asked for "
                            "it: it keeps its Optuna trial %s", tid, t.number)

    def _is_open(self, trial_id: str) -> bool:
        if trial_id not in self._open:
            frozen = self._frozen(trial_id)
            self._open[trial_id] = frozen is not None and not frozen.state.is_finished()
        return self._open[trial_id]

    def _frozen(self, trial_id: str) -> optuna.trial.FrozenTrial | None:
        t = self._ot_trials.get(trial_id)
        return None if t is None else self._ot_study._storage.get_trial(t._trial_id)

    def _rerun_told(self, number: int) -> bool:
        """Whether a re-run of FAIL trial ``number`` already has its own Optuna trial."""
        return any(t.user_attrs.get("bst.rerun_of") == number
                   for t in self._ot_study.get_trials(deepcopy=False))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric not in result or result.get("trial_status") == "complete":
            return  # the last result's value is the trial's value (on_trial_complete)
        self._ensure_adopted()
        if trial_id in self._ot_trials:  # written when the trial ends (module docstring)
            step = int(result["training_iteration"])
            self._running.setdefault(trial_id, {})[step] = float(result[self.metric])

    def _write_running(self, trial_id: str) -> None:
        """The running values of a trial that ends PRUNED or FAIL, as its intermediate values."""
        for step, value in sorted(self._running.get(trial_id, {}).items()):
            try:
                self._ot_trials[trial_id].report(value, step)
            except optuna.exceptions.UpdateFinishedTrialError:
                return

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if not STOPS.may_write():
            return
        self._ensure_adopted()
        if trial_id not in self._ot_trials:
            return
        state, value = outcome(result, self.metric, error)
        S = optuna.trial.TrialState
        if self._is_open(trial_id):
            if state != S.COMPLETE:
                self._write_running(trial_id)
            self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
            self._open[trial_id] = False
        else:
            frozen = self._frozen(trial_id)
            if frozen.state == S.FAIL and state != S.FAIL and not self._rerun_told(frozen.number):
                # an errored trial re-run on resume
                values = {**frozen.intermediate_values, **self._running.get(trial_id, {})}
                if state == S.PRUNED and result and isinstance(result.get(self.metric), (int, float)):
                    values[int(result.get("training_iteration", len(values) + 1))] = float(result[self.metric])
                self._ot_study.add_trial(optuna.trial.create_trial(
                    state=state, value=value, params=frozen.params, distributions=frozen.distributions,
                    intermediate_values=values,
                    user_attrs={**frozen.user_attrs, "bst.rerun_of": frozen.number}))
                log.info("trial %s re-run after FAIL: its outcome is Optuna trial %s", trial_id, state.name)
        self._running.pop(trial_id, None)
        self._completed_trials.add(trial_id)


class SweepLimiter(ConcurrencyLimiter):
    """Ray's ``ConcurrencyLimiter``, whose running trials after a restore are Tune's restored
    unfinished trials (not its own saved set, which can be older or newer), and which passes
    every ended trial to the searcher (Ray's drops one it does not hold)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._synced = False

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._synced = False

    def suggest(self, trial_id: str) -> dict | None:
        if not self._synced and _TUNE_TRIALS is not None:
            self.live_trials = {tid for tid, status in _TUNE_TRIALS.items() if status not in _ENDED}
            self.num_unfinished_live_trials = len(self.live_trials)
            self._synced = True
        return super().suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.live_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
        else:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
