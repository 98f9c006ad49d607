"""Search the UNet design space for the fastest designs on this hardware: sample, measure, Pareto.

Candidates are :class:`~satunet.models.Preset` designs (levels + options). Each is measured with
``satunet.benchmark``'s method (the same numbers `satunet benchmark` prints), optionally trained
briefly for a proxy accuracy, and the non-dominated ones (speed vs accuracy, speed vs GMACs)
are reported as a Markdown table, JSON and a PNG chart. ``space`` draws designs, ``measure``
times and proxy-trains them, ``front`` ranks and reports, ``run`` is the whole search.
"""

from satunet.search.front import markdown_table, pareto_front, plot_pareto, save_front, summarize
from satunet.search.measure import measure, proxy_accuracy, within_budget
from satunet.search.run import search
from satunet.search.space import SEEDS, SPACE, Candidate, propose, sample_design

__all__ = [
    "SEEDS",
    "SPACE",
    "Candidate",
    "markdown_table",
    "measure",
    "pareto_front",
    "plot_pareto",
    "propose",
    "proxy_accuracy",
    "sample_design",
    "save_front",
    "search",
    "summarize",
    "within_budget",
]
