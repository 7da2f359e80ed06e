"""The fleet service (server side, torch): one trained RULE or PEEL model answers every device's request for a
file fitted to its memory, signed, cached and deduplicated (:mod:`pocketrec.fleet.app`). Needs the ``serve``
extra (FastAPI, uvicorn, prometheus-client); the device's client is :mod:`pocketrec.device.client`."""

#: what a missing ``serve`` extra says
SERVE_HINT = "the fleet service needs the serve extra: pip install 'pocketrec[serve]'"
