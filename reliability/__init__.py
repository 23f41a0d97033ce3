"""Reliability tooling: the response/grant oracle and the ``make soak`` load test."""
