"""Wire protocols: each module turns its clients' requests into UploadRequests.

- ``native``: ``POST /uploads`` (the broker's own JSON API, see ``schemas/openapi.yaml``)
- ``fineuploader``: Fine Uploader S3's v4 signature and upload-success endpoints (``/fineuploader/*``)
- ``companion``: Uppy AwsS3's Companion protocol (``/s3/params``, ``/s3/multipart/*``)

Each module has ``register(broker)`` adding its routes to ``broker.router``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..app import Broker


def register_all(broker: "Broker") -> None:
    """Add every protocol's routes to the broker."""
    from . import companion, fineuploader, native

    native.register(broker)
    fineuploader.register(broker)
    companion.register(broker)
