"""Serving a trained PRM over HTTP: ``python -m prm.serve checkpoint=<run or checkpoint>``.

- :mod:`prm.serve.app`: the FastAPI service (native scoring, OpenRLHF's remote reward-model
  protocol, health and metadata);
- :mod:`prm.serve.requests`: request bodies -> checked chains, errors naming the field;
- :mod:`prm.serve.batching`: one worker batching the chains of concurrent requests into one
  prefix-sharing scoring call;
- :mod:`prm.serve.client`: a small Python client (httpx);
- :mod:`prm.serve.__main__`: the entry point (Hydra, ``conf/serve.yaml``), loading the model as
  evaluate.py does.
"""
