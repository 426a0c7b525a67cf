"""The one command registry: every command that is a config plus a run function, for the CLI and the pipeline.

A `Command` names its module, its config class and its run function as strings, so nothing is imported until
the command runs: `alignkit --help` lists the registry without loading a model library. The CLI builds a
command's options from its config's fields (`alignkit.options.add_arguments`) and the pipeline runs it as a
stage (a recipe's `method:` is the command's name) from the same config, with the same defaults.

`TOOLS` lists the other top-level commands (data, models, score, ...: no config, no stage) with the function
that fills in their options once chosen; a group's function (cai, guard) returns its sub-commands object, and
the CLI adds the group's config commands (`under("cai")`) to it.

Layers: this module imports only `config`; the CLI and the pipeline import it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from alignkit.config import build_config
from alignkit.errors import AlignkitError

MODEL_HELP = " Options override the --config recipe; TRL's option names work."


@dataclass(frozen=True)
class Command:
    """A command run from a config: by `alignkit CLI ...` and as a pipeline stage named `name`."""

    name: str
    module: str
    config: str
    run: str
    help: str
    description: str = ""
    cli: str = ""
    """How the CLI spells it ("rm", "cai revise"; default: the name with dashes)."""
    aliases: tuple[str, ...] = ()
    output: str = ""
    """What stage:NAME stands for inside the stage's output_dir."""
    defaults: dict = field(default_factory=dict)
    """Values over the config's own defaults (orpo is SimPOConfig with loss_type orpo)."""
    trains: bool = False
    """A training method: --num_processes/--accelerate_config, a finished-run summary."""
    output_flags: tuple[str, ...] = ()
    """CLI only: spellings of an option (destination `output`) naming a file to write instead of output_dir."""
    flags: dict = field(default_factory=dict)
    typed: bool = False
    required: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    """How `add_arguments` builds the options (see there); a typed command takes no --config recipe."""

    @property
    def path(self) -> tuple[str, ...]:
        """The CLI words: ("rm",), ("cai", "revise")."""
        return tuple((self.cli or self.name.replace("_", "-")).split())

    def load(self):
        """(config class, run function), importing the module now."""
        module = importlib.import_module(self.module)
        return getattr(module, self.config), getattr(module, self.run)


def _training(name, module, config, run, help_text, description, **kw) -> Command:
    return Command(name, module, config, run, help_text, description + MODEL_HELP, output="model", trains=True, **kw)


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("generate", "alignkit.rollout.stage", "GenerateConfig", "run_generate",
            "sample responses to a file of prompts",
            "Sample responses to prompt-format rows ({\"prompt\": ...}); writes JSONL rows with a completion field.",
            output="generations.jsonl", output_flags=("--output", "--output_file", "-o"), typed=True,
            required=("model_name_or_path", "dataset_name"), exclude=("output_dir", "show"),
            flags={"model_name_or_path": ("--model_name_or_path", "--model"),
                   "dataset_name": ("--prompts", "--dataset_name", "--data"),
                   "num_return_sequences": ("--num_return_sequences", "--num_generations"),
                   "batch_size": ("--batch_size", "--per_device_eval_batch_size"),
                   "dtype": ("--dtype", "--torch_dtype")}),
    _training("sft", "alignkit.methods.sft", "SFTConfig", "train_sft", "supervised fine-tuning on demonstrations",
              "Supervised fine-tuning."),
    _training("reward_model", "alignkit.methods.reward_model", "RewardConfig", "train_reward_model",
              "train a Bradley-Terry reward model on preference pairs", "Train a reward model (an LM with a scalar "
              "head) on preference data with the Bradley-Terry loss.", cli="rm", aliases=("reward",)),
    _training("dpo", "alignkit.methods.dpo", "DPOConfig", "train_dpo",
              "direct preference optimisation (DPO, cDPO, robust, IPO, hinge, RPO)",
              "Train a policy on preference pairs with DPO or a reference-based variant."),
    _training("simpo", "alignkit.methods.simpo", "SimPOConfig", "train_simpo",
              "SimPO preference optimisation (no reference model)", "SimPO: length-normalised, reference-free.",
              defaults={"loss_type": "simpo"}),
    _training("orpo", "alignkit.methods.simpo", "SimPOConfig", "train_simpo",
              "ORPO preference optimisation (no reference model)", "ORPO: odds-ratio term + NLL, reference-free.",
              defaults={"loss_type": "orpo"}),
    _training("cpo", "alignkit.methods.simpo", "SimPOConfig", "train_simpo",
              "CPO preference optimisation (no reference model)", "CPO: DPO with a uniform reference + NLL.",
              defaults={"loss_type": "cpo"}),
    _training("kto", "alignkit.methods.kto", "KTOConfig", "train_kto",
              "KTO on unpaired thumbs-up/down data (or pairs, split in two)",
              "Kahneman-Tversky optimisation: learns from labelled single completions; preference pairs are split "
              "into a desirable and an undesirable example."),
    _training("grpo", "alignkit.methods.grpo", "GRPOConfig", "train_grpo",
              "online RL with group-relative advantages (GRPO, Dr. GRPO, REINFORCE++)",
              "Sample a group of responses per prompt, score them with reward sources, and follow the "
              "group-relative advantage (docs/rl.md)."),
    _training("ppo", "alignkit.methods.ppo", "PPOConfig", "train_ppo",
              "PPO with a KL penalty, a value model and GAE (RLHF)",
              "PPO: sample, score, penalise KL to the reference per token, GAE with a value model, several "
              "clipped epochs per rollout (docs/rl.md)."),
    _training("rloo", "alignkit.methods.grpo", "GRPOConfig", "train_grpo",
              "online RL with RLOO's leave-one-out baseline", "RLOO: GRPO's loop with each response's baseline "
              "the mean reward of the other responses to its prompt.", defaults={"advantage": "rloo"}),
    Command("generate_pairs", "alignkit.rollout.pairs", "GeneratePairsConfig", "run_generate_pairs",
            "sample N responses per prompt for judging", "Sample several responses per prompt; writes one JSONL row "
            "per prompt with a responses list, ready for `alignkit judge` or the annotation app.",
            aliases=("generate_pairs",), output="pairs.jsonl", output_flags=("--output", "-o")),
    Command("judge", "alignkit.feedback.stage", "JudgeConfig", "run_judge",
            "judge response pairs and write preference data", "Compare every pair of responses in a pairs file "
            "with a judge and write preference rows (prompt, chosen, rejected, p_chosen), ready for `alignkit rm`.",
            output="preferences.jsonl", output_flags=("--out", "--output", "-o")),
    Command("win_rate", "alignkit.feedback.winrate", "WinRateConfig", "run_win_rate",
            "win rate of one policy's answers against another's", "Judge the answers of policy A against policy "
            "B's to the same prompts (two `alignkit generate` outputs) and report A's win rate with a 95% interval.",
            aliases=("win_rate",), output="win_rate.json"),
    Command("best_of_n", "alignkit.methods.best_of_n", "BestOfNConfig", "run_best_of_n",
            "sample n responses, keep the best by reward", "Best-of-n (rejection) sampling: n responses per prompt, "
            "scored by reward sources (rm:PATH, rules, a Python function, ...); writes the best as SFT data and "
            "best-over-worst preferences.", aliases=("best_of_n",), output="best.jsonl"),
    Command("eval", "alignkit.methods.evaluate", "EvalConfig", "run_eval",
            "pass@k and mean reward on held-out problems, with confidence intervals", "Sample n responses (or episodes in "
            "an environment) per held-out problem, score them (the environment's reward or reward sources), and "
            "report pass@k and the mean reward with 95% bootstrap intervals over problems. Writes eval.json and "
            "samples.jsonl.", output="eval.json"),
    Command("env_demos", "alignkit.rollout.env_demos", "EnvDemosConfig", "run_env_demos",
            "an environment's demonstrations as SFT data, each replayed and checked", "Ask the environment to "
            "solve each prompt row (demonstration(row)), replay every demonstration through a fresh instance, "
            "drop those that do not replay with reward 1, and write the rest as SFT rows (one per assistant turn).",
            aliases=("env_demos",), output="demos.jsonl", output_flags=("--output", "-o")),
    Command("cai_revise", "alignkit.feedback.cai", "CAIReviseConfig", "run_cai_revise",
            "phase 1: answer, critique and revise under drawn principles", "Answer each prompt, then critique and "
            "revise the answer under drawn principles; writes SFT data (prompt -> final revision), preferences "
            "(revision over original) and an audit of every model call. A killed run resumes where it stopped.",
            cli="cai revise", output="sft.jsonl"),
    Command("cai_label", "alignkit.feedback.cai", "CAILabelConfig", "run_cai_label",
            "phase 2: an LLM judge labels response pairs with soft preferences", "Ask an LLM judge which response "
            "is better under drawn comparison principles (A/B probabilities, both orders averaged, or each reply "
            "scored alone); writes preference rows with the soft label as p_chosen and margin.",
            cli="cai label", output="preferences.jsonl"),
    Command("redteam", "alignkit.safety.redteam", "RedTeamConfig", "run_redteam",
            "attack a policy with harmful requests x attack techniques; ASR and over-refusal",
            "Send every harmful request under every attack to the policy (a local model or an OpenAI-compatible "
            "server), score each reply (refused? harmful?), and report the attack success rate by attack and "
            "hazard, and over-refusal on benign look-alikes, with 95% intervals. Writes transcripts.jsonl, "
            "results.json, report.md and asr_heatmap.png.", output="results.json"),
    Command("safety_loop", "alignkit.safety.loop", "SafetyLoopConfig", "run_safety_loop",
            "attack -> collect -> train -> re-attack; ASR and over-refusal before and after",
            "Red-team the policy on the held-out split, collect safety SFT data and preference pairs from attacks "
            "on the training split, train, and red-team the result again. A killed loop resumes.",
            aliases=("safety_loop",), output="after/results.json"),
    Command("safety_eval", "alignkit.safety.evaluate", "SafetyEvalConfig", "run_safety_eval",
            "the guard's and a policy's safety numbers, with intervals, in one table each",
            "Measure the guard's prompt classification (precision, recall, F1, false-positive rate, AUPRC) on the "
            "built-in held-out split and XSTest (--xstest PATH), and with --model a policy's refusals of bare "
            "harmful requests and over-refusal of look-alikes. Writes safety_eval.json and report.md.",
            aliases=("safety_eval",), output="safety_eval.json"),
)}


@dataclass(frozen=True)
class Tool:
    """A top-level command that is not a config command; `fill` ("module:function") adds its options (or its
    sub-commands) to the parser the CLI made for it, and sets `func`."""

    cli: str
    fill: str
    help: str
    aliases: tuple[str, ...] = ()


TOOLS = (
    Tool("data", "alignkit.cli_tools:add_data", "validate and describe datasets"),
    Tool("models", "alignkit.cli_tools:add_models", "list the embedded models and where they are cached"),
    Tool("judge-agreement", "alignkit.cli_tools:add_judge_agreement",
         "how far a judge agrees with labelled preferences (e.g. human labels)", aliases=("judge_agreement",)),
    Tool("score", "alignkit.cli_tools:add_score", "score prompt/response rows with reward models"),
    Tool("pipeline", "alignkit.cli_tools:add_pipeline", "run a recipe's stages in order, skipping completed ones"),
    Tool("report", "alignkit.cli_tools:add_report", "rebuild report.html of a run (or index.html of a pipeline)"),
    Tool("demo", "alignkit.cli_tools:add_demo", "run the demo pipeline on the embedded model (what `make demo` runs)"),
    Tool("cai", "alignkit.feedback.cai_cli:add_commands",
         "Constitutional AI: principles, critique and revision, RLAIF labels"),
    Tool("guard", "alignkit.safety.cli:add_guard_commands", "hazard guard classifier and guardrails proxy: train, "
         "classify, serve, add-key"),
    Tool("annotate", "alignkit.annotate.cli:add_commands", "the human-preference web app and its admin tasks"),
)

# the order `alignkit --help` lists them in
ORDER = ("data", "generate", "models", "sft", "rm", "dpo", "simpo", "orpo", "cpo", "kto", "grpo", "ppo", "rloo",
         "generate-pairs", "judge-agreement", "best-of-n", "env-demos", "eval", "judge", "win-rate", "score",
         "pipeline", "report", "demo", "cai", "guard", "redteam", "safety-loop", "safety-eval", "annotate")


def get(name: str) -> Command:
    """The command a recipe's `method:` names."""
    if name not in COMMANDS:
        raise AlignkitError(f"pipeline: unknown method {name!r}; known: {', '.join(COMMANDS)}")
    return COMMANDS[name]


def under(*path: str) -> list[Command]:
    """The config commands of a command group (`under("cai")`: cai revise and cai label)."""
    return [c for c in COMMANDS.values() if c.path[:-1] == path]


def make_config(command: Command, values: dict):
    """The command's config from recipe or stage values, over the command's own defaults (checked)."""
    return build_config(command.load()[0], {**command.defaults, **values})
