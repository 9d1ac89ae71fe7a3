"""Ray Serve deployment of the routing and fusion graphs behind an OpenAI-compatible HTTP API.

Modules: ``config`` (typed serve config), ``protocol`` (pure request validation and response
building, no Ray), ``experts`` / ``router`` / ``fusion`` (deployments), ``sessions`` (sticky KV-cache
sessions for fusion), ``errors`` (handle exceptions -> typed errors), ``app`` (FastAPI ingress, the
one error -> HTTP mapping, ``build_app``), ``launch`` (start-up for the CLI and ``jobs/serve.py``).
Nothing heavy is imported here.
"""
