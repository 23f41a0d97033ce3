"""The pure core: decisions from values, no I/O, no boto3, no clock (``now`` and ids passed in).

- ``rules``: who is calling (``identify``) and may they upload this file (``evaluate``).
- ``keys``: key templates, server-random names, filename screening.
- ``mediatypes``: content types and the extensions each may carry.
- ``sizes``: ``'5 MiB'`` in, ``'5 MiB'`` out.
- ``grants``: grant tokens and the keys each rule can produce.
- ``multipart``: a rule's size limit at completion, and how many parts it can need.
"""
