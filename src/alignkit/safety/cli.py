"""`alignkit redteam`, `alignkit safety-loop` and `alignkit guard train | classify | serve` (docs/safety.md)."""

from __future__ import annotations


def cmd_redteam(args) -> int:
    from alignkit.cli import _config_from_args
    from alignkit.safety.redteam import RedTeamConfig, run_redteam

    run_redteam(_config_from_args(RedTeamConfig, args))
    return 0


def cmd_safety_loop(args) -> int:
    from alignkit.cli import _config_from_args
    from alignkit.safety.loop import SafetyLoopConfig, run_safety_loop

    run_safety_loop(_config_from_args(SafetyLoopConfig, args))
    return 0


def add_commands(commands, option, parser_class, config_command) -> None:
    from alignkit.safety.guard_cli import add_commands as add_guard_commands
    from alignkit.safety.loop import SafetyLoopConfig
    from alignkit.safety.proxy_cli import add_serve_command
    from alignkit.safety.redteam import RedTeamConfig

    add_serve_command(add_guard_commands(commands, option, parser_class))
    config_command(commands, "redteam", RedTeamConfig, cmd_redteam,
                   "attack a policy with harmful requests x attack techniques; ASR and over-refusal",
                   "Send every harmful request under every attack to the policy (a local model or an "
                   "OpenAI-compatible server), score each reply (refused? harmful?), and report the attack success "
                   "rate by attack and hazard, and over-refusal on benign look-alikes, with 95% intervals. "
                   "Writes transcripts.jsonl, results.json, report.md and asr_heatmap.png.")
    config_command(commands, "safety-loop", SafetyLoopConfig, cmd_safety_loop,
                   "attack -> collect -> train -> re-attack; ASR and over-refusal before and after",
                   "Red-team the policy on the held-out split, collect safety SFT data and preference pairs from "
                   "attacks on the training split, train, and red-team the result again. A killed loop resumes.",
                   aliases=("safety_loop",))
