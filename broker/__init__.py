"""The broker: issues S3 presigned POST forms only for uploads that ``rules.yaml`` allows.

Layers, imports pointing one way::

    errors, models                     values and the exception hierarchy
    keys, mediatypes, rules            pure decisions (no I/O, time passed in)
    config, schemas                    settings + rules loading and validation
    signing, audit, sources            the edges: boto3, log lines, rules files/S3
    protocols/, adapters/, app         HTTP: wire formats, Lambda + WSGI, routing
    cli                                ``broker check | explain | serve | hash-key``
"""
from __future__ import annotations

__version__ = "0.1.0"
