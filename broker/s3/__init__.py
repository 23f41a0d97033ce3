"""Store access: the only package that imports boto3 or botocore.

- ``client``: the botocore client of the broker (and boto3 clients for a local store).
- ``store``: :class:`S3Store`, which owns every S3 call and maps botocore's errors once.
- ``post``: presigned POST forms (:class:`Signer`), with its fast path in ``fastpost``.
- ``sigv4``: signatures for checked Fine Uploader requests (:class:`StoreSigner`).
"""
