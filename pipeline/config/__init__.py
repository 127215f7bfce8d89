"""The options of every verb and file, defined once (docs/ARCHITECTURE.md: below the CLI and the
stages, importing neither).

- `fields`: per-field metadata (help, rule, mode, CLI and job wiring) and the value rules;
- `stages`: the config dataclasses of label, train, evaluate, audit, tokenizer and bigram;
- `check`: the one checker, for flags (`check_config`) and TOML tables (`check_table`);
- `toml`: the one TOML reader and writer.
"""
