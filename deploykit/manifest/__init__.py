"""Task signature manifest: snapshot the tasks an app registers, diff two snapshots into findings.

* :mod:`~deploykit.manifest.model`: the manifest (frozen dataclasses), its JSON form and validation;
* :mod:`~deploykit.manifest.collect`: builds a manifest from a live Celery app (the only module here
  that touches user code, through :func:`deploykit.userapp.load_app`);
* :mod:`~deploykit.manifest.rules`: the rule catalogue (stable IDs, levels, hints);
* :mod:`~deploykit.manifest.diff`: a pure generator of :class:`~deploykit.manifest.rules.Finding`;
* :mod:`~deploykit.manifest.suppress`: inline and ``[tool.deploykit] ignore`` suppressions;
* :mod:`~deploykit.manifest.check`: the ``check``/``diff``/``snapshot --check`` use cases.
"""
