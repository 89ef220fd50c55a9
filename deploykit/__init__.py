"""deploykit: make Celery deploys safe.

Inspect what is in flight, snapshot and diff task signatures, check waiting messages against new
code, and drain/restart workers without losing tasks.
"""

__version__ = "0.1.0"
