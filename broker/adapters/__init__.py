"""Edges that turn transport input into ``HttpRequest`` and ``HttpResponse`` back.

- ``apigw``: AWS Lambda events (API Gateway REST v1 proxy and non-proxy, HTTP API v2,
  Lambda Function URLs).
- ``wsgi``: the local server (``broker serve``), plus the static upload page.
"""
