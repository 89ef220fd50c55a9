"""Orchestration: drain, resume, warm shutdown and rolling restart, as state machines.

Each machine sees the workers only through :class:`~deploykit.fleet.base.Fleet`, the broker only
through :class:`~deploykit.brokers.base.Broker` and the record of its own changes through
:class:`~deploykit.brokers.records.RecordStore`. Time comes from an injected clock and sleep, so
the unit tests drive the machines tick by tick with a fake clock and a fake fleet. ``step()``
advances one state; ``run()`` steps until a terminal state and returns a frozen result that the
CLI renders (the core never imports typer or rich).
"""
