"""DER routing: the MDP over expert calls, its reward, the response cache and the PPO router.

Nothing heavy is imported here; import the submodules you need.
"""
