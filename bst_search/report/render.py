"""The page: the header (the numbers to believe), every section, plotly's JavaScript embedded
once, so the file opens from disk with no network. The template and styles are package data
(``bst_search/report/templates``)."""

from __future__ import annotations

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
BELIEVE = ("The number to believe is the <b>honest</b> estimate: the whole ensemble selection "
           "re-run inside a cross-validation over the OOF folds (selected on four folds, scored "
           "on the fifth). The <i>selected</i> score was measured on the rows it was chosen on, "
           "and the best single trial's score was picked as the maximum over many trials: both "
           "are optimistic.")




def _header(s: Sweep) -> dict[str, Any]:
    """The numbers at the top of the page, with which one to believe."""
    e = s.ensemble
    best = s.complete.head(1)
    out: dict[str, Any] = {"believe": BELIEVE, "cards": []}
    if e and e.get("honest"):
        h = e["honest"]
        out["cards"].append(("honest estimate (believe this)", f"{h['mean']:.4f} ± {h['std']:.4f}",
                             "main"))
        out["cards"].append(("selected ensemble (optimistic)", f"{e['selected_score']:.4f}", ""))
    elif e:
        out["cards"].append(("selected ensemble (optimistic; no honest estimate)",
                             f"{e['selected_score']:.4f}", "main"))
    if len(best):
        out["cards"].append((f"best single trial ({best['name'].iloc[0]})",
                             f"{best[s.metric].iloc[0]:.4f}", "" if e else "main"))
    if s.eval_score:
        out["cards"].append(("evaluation labels, official hF", f"{s.eval_score['hF']:.4f}", ""))
    if not e:
        out["believe"] = ("No ensemble yet. A single trial's OOF score is out-of-fold, but the "
                          "best of many trials is optimistic: expect the next sweep's best to score "
                          "a little lower. " + BELIEVE)
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


