"""The consent announcement: prompts, rules, the pjsua2 announcer and the sweep that checks
recordings for the prompt (see docs/architecture.md, "Consent announcement")."""
