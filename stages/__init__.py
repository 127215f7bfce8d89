"""Stages are recipes: label, train, evaluate, run. A stage never imports another stage."""
