"""Sharing a soft-label dataset across teams (issue #20): `publish` a dataset (or one version)
as a Hugging Face dataset repository, `ls` the datasets under a prefix, `pull` a verified
subset, and `export`/`import` plain JSONL for other trainers.

Everything goes through pipeline.io.storage.Store, so each verb works the same on a local folder
and on object storage; every location it stores or prints is redacted (pipeline/io/uris.py).
"""
