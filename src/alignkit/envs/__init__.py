"""Environments for multi-turn RL: a policy acts (calls a tool, answers), the environment replies and rewards.

`envs.base` holds the interface (`Environment`: reset(row) -> opening, step(action_text) -> (observation,
reward, done)), the tool-call format and the loader of `module:Class` / `file.py:Class` specs; the built-in
environments (`envs.calculator`, `envs.retrieval`) build on `envs.base.ToolEnvironment`. How an episode is
sampled token-in/token-out is `rollout.episodes`.
"""
