"""``deploykit probe``: send a probe task through each queue and wait until it has really run.

Workers that answer ``ping`` can still leave a queue unprocessed: a cancelled consumer, every
pool process stuck in a long task, a binding gone. The only check that proves a queue works is a
task that goes through it (celery/celery#4079).

* :mod:`deploykit.probe.core`: the decisions (which queues, how execution is confirmed, waiting,
  the verdict per queue), tested against fakes;
* :mod:`deploykit.probe.celery_adapter`: publishing the probes and reading their confirmations
  (result backend or task events) with the app's Celery/kombu connection.
"""

from __future__ import annotations

from deploykit.probe.celery_adapter import CeleryProbe, backend_unreachable, run_probe
from deploykit.probe.core import (
    Prober,
    ProbeReport,
    ProbeResult,
    confirmation_method,
    consumers_of,
    probe_queues,
    select_queues,
    workers_without_results,
)

__all__ = [
    "CeleryProbe",
    "ProbeReport",
    "ProbeResult",
    "Prober",
    "backend_unreachable",
    "confirmation_method",
    "consumers_of",
    "probe_queues",
    "run_probe",
    "select_queues",
    "workers_without_results",
]
