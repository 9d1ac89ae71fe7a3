"""Experts: one causal LM each, as a plain class (``HFExpert``) or a Ray actor (``ExpertPool``).

Nothing heavy is imported here; import the submodules you need.
"""
