"""Time-to-accuracy races: models trained one after another on the same wall-clock budget.

``run`` trains and writes the result files, ``summary`` turns the runs into per-model figures
and verdicts, ``plot`` draws curves.png.
"""

from satunet.race.plot import plot_race
from satunet.race.run import race, race_configs, run_name, write_race
from satunet.race.summary import race_markdown, run_facts, summarize_race, time_to, verdicts

__all__ = [
    "plot_race",
    "race",
    "race_configs",
    "race_markdown",
    "run_facts",
    "run_name",
    "summarize_race",
    "time_to",
    "verdicts",
    "write_race",
]
