"""``make run``'s local stack: SeaweedFS (``store``) and the runner (``run``). Not in the Lambda zip."""
