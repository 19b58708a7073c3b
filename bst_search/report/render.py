"""The page: the header (the number to believe, and why), every section, plotly's JavaScript
embedded once, so the file opens from disk with no network. The template and styles are package data
(``bst_search/report/templates``)."""

from __future__ import annotations

import html
import time
from importlib import resources
from pathlib import Path
from typing import Any

from bst_search import tracking
from bst_search.report.load import Sweep
from bst_search.report.sections import SECTIONS

TEMPLATES = resources.files("bst_search.report") / "templates"
TEMPLATE, STYLES = "report.html.j2", "report.css"
ARTIFACT = "report.html"  # its name in the ensemble run
BELIEVE = ("The <i>selected</i> score was measured on the rows it was chosen on, and the best "
           "single trial's score was picked as the maximum over many trials: both are "
           "optimistic.")
NO_ENSEMBLE = ("No ensemble yet. A single trial's OOF score is out-of-fold, but the best of many "
               "trials is optimistic: expect the next sweep's best to score a little lower. Run "
               "<code>bst-search ensemble</code>: with a holdout (<code>search "
               "--holdout-fraction F</code>) the number to believe is the submission's holdout "
               "score, without one the honest estimate, a lower bound.")


def _header(s: Sweep) -> dict[str, Any]:
    """The numbers at the top of the page, with which one to believe and why.

    The headline is :func:`bst_search.ensemble.compare.headline` of the ensemble run's
    ensemble.json: the very function its ``estimate`` and the printed summary come from, so
    the three always agree (with a holdout: the submission's holdout score; without one: the
    honest estimate of the submitted method, a lower bound)."""
    e = s.ensemble
    best = s.complete.head(1)
    out: dict[str, Any] = {"believe": NO_ENSEMBLE, "cards": [], "kind": None}
    if e:
        from bst_search.ensemble.compare import HONEST, headline

        head = headline(e)
        value = f"{head.value:.4f}" + (f" ± {head.std:.4f}" if head.std is not None else "")
        out["cards"].append((f"{head.label} (believe this)", value, "main"))
        out["kind"] = head.kind
        out["believe"] = (f"The number to believe is the <b>{html.escape(head.label)}</b>. "
                          f"Why: {html.escape(head.why)} {BELIEVE}")
        h = e.get("honest")
        if h and not (head.kind == HONEST and e.get("method", "greedy") == "greedy"):
            out["cards"].append(("honest estimate (greedy, nested CV, one fold model per row)",
                                 f"{h['mean']:.4f} ± {h['std']:.4f}", ""))
        out["cards"].append(("selected ensemble (optimistic)", f"{e['selected_score']:.4f}", ""))
    if len(best):
        out["cards"].append((f"best single trial ({best['name'].iloc[0]})",
                             f"{best[s.metric].iloc[0]:.4f}", "" if e else "main"))
    if s.eval_score:
        out["cards"].append(("evaluation labels, official hF", f"{s.eval_score['hF']:.4f}", ""))
    return out


def render(s: Sweep) -> str:
    """The whole page as one HTML string (plotly's JavaScript embedded once)."""
    import jinja2
    import plotly.offline

    sections = [build(s) for build in SECTIONS.values()]
    env = jinja2.Environment(autoescape=jinja2.select_autoescape(["html", "j2"]))
    template = env.from_string((TEMPLATES / TEMPLATE).read_text(encoding="utf-8"))
    page = template.render(
        title=f"bst-search report: {s.experiment}", s=s, header=_header(s), sections=sections,
        missing=s.missing, styles=(TEMPLATES / STYLES).read_text(encoding="utf-8"),
        plotlyjs=plotly.offline.get_plotlyjs(),
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        n_trials=len(s.trials), n_complete=len(s.complete))
    return page


def write_report(s: Sweep, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(s), encoding="utf-8")
    return out


def log_to_ensemble_run(s: Sweep, path: Path) -> str | None:
    """Attach the report to the latest ensemble run, so it travels with the submission."""
    if s.ensemble_run is None:
        return None
    import shutil
    import tempfile

    cl = tracking.client(s.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:  # one name in every ensemble run
        named = Path(tmp) / ARTIFACT
        shutil.copyfile(path, named)
        tracking.with_retry(cl.log_artifact, s.ensemble_run.info.run_id, str(named))
    return s.ensemble_run.info.run_id


