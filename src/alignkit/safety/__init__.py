"""Safety: attacks, red-teaming, scorers, guard classifier and runtime guardrails."""
