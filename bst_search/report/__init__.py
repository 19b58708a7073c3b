"""``bst-search report``: one self-contained HTML page per sweep.

* :mod:`~bst_search.report.load`: the sweep's runs, study and ensemble, read once (:class:`Sweep`);
* :mod:`~bst_search.report.sections`: the page's sections, registered in page order;
* :mod:`~bst_search.report.render`: the page from its template (package data);
* :mod:`~bst_search.report.cli`: the command.
"""

from bst_search.report.cli import add_arguments, main, run
from bst_search.report.load import ReportError, Sweep, load_sweep
from bst_search.report.render import ARTIFACT, log_to_ensemble_run, render, write_report
from bst_search.report.sections import SECTIONS, section

__all__ = ["ARTIFACT", "SECTIONS", "ReportError", "Sweep", "add_arguments", "load_sweep",
           "log_to_ensemble_run", "main", "render", "run", "section", "write_report"]
