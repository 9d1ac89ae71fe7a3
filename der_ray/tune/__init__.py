"""Ray Tune sweeps of the router's reward cost coefficient λ (``sweep``) and their analysis (``pareto``).

``der_ray.tune.pareto`` is pure (numpy, matplotlib lazily); ``der_ray.tune.sweep`` imports Ray Tune and RLlib.
"""
